"""What the receiver logs about datagrams it did not forward: rate-limited lines, never one per packet.

Counting happens in the pipeline (``Stats``); this module only decides what a human reads:

- ``DropLog``: the first drop of each reason at once, then at most one line per ``interval``
  seconds per reason, saying how many were not logged in between;
- ``MalformedLog``: the first and the last reason a datagram was malformed (shown in ``/status``),
  found by decoding again only the datagrams the pipeline called malformed;
- ``ErrorLog``: the traceback of a datagram whose processing raised (a bug), at most once per
  ``interval`` seconds; every such datagram is still counted (``internal_error``).
"""

from __future__ import annotations

import logging

from nodeagent.verdict import Drop
from nodeagent.wire import Malformed, headers, vxlan

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL = 10.0
"""Seconds between two tracebacks of datagrams whose processing raised (each one is counted)."""


class DropLog:
    """Log the first drop of each reason at once, then at most one line per ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next: dict[Drop, float] = {}
        self._since: dict[Drop, int] = {}

    def note(self, reason: Drop, sender: str, now: float) -> None:
        due = self._next.get(reason)
        if due is not None and now < due:
            self._since[reason] = self._since.get(reason, 0) + 1
            return
        more = self._since.pop(reason, 0)
        self._next[reason] = now + self._interval
        suffix = f" (+{more} more since the last line)" if more else ""
        log.warning("dropped a datagram from %s: %s%s", sender, reason.value, suffix)


class MalformedLog:
    """First and last reason a datagram was malformed (re-decoded only for malformed datagrams)."""

    def __init__(self) -> None:
        self.first: str | None = None
        self.last: str | None = None

    def note(self, datagram: memoryview, sender: str) -> None:
        text = f"{sender}: {describe_malformed(datagram)}"
        if self.first is None:
            self.first = text
        self.last = text


def describe_malformed(datagram: memoryview | bytes) -> str:
    try:
        headers.decode(vxlan.decode(datagram).inner)
    except Malformed as exc:
        return str(exc)
    return "malformed (reason not reproduced)"


class ErrorLog:
    """A traceback for a datagram whose processing raised, at most once per ``interval`` seconds."""

    def __init__(self, interval: float = ERROR_LOG_INTERVAL) -> None:
        self._interval = interval
        self._next = 0.0

    def note(self, sender: str, reason: Drop, now: float) -> None:
        """Call from the ``except`` block (the traceback is the one being handled)."""
        if now >= self._next:
            self._next = now + self._interval
            log.exception("processing a datagram from %s raised; counted as %s", sender, reason)
