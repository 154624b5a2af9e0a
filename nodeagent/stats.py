"""Plain integer counters, each incremented where its event happens: received, forwarded, held, drops.

Written only from the event loop's thread; read at any time by ``/status`` and ``/metrics``.

Model: three independent places count.
- ``Stats.received`` / ``received_bytes``: every datagram the receiver read from its socket, counted
  by the receiver before the pipeline sees it (``read``);
- ``Counters.received`` per pod: every datagram at the pipeline's entry, once its sender is looked
  up (``UNKNOWN_POD`` for unknown senders), before anything can drop it;
- the outcomes per pod: ``forwarded``, ``drops`` by reason, and ``held`` (packets waiting in a
  hold queue right now, see ``stages.vantage``; a held packet later moves to forwarded or a drop).

So ``received == forwarded + sum(drops) + held`` is a real check, in total and per pod, that breaks
if any path loses a datagram between the socket and its outcome (the tests assert it; ``/status``
shows all four). Totals are sums over the pods, computed when read, plus the pods already
forgotten (``retired``), so the totals never go down when a pod's counters are removed.

Per-pod state is bounded by the pod table: ``forget(key)`` removes a pod's counters (the pipeline's
sender cache is cleared by the pod table's version change, so nobody writes to a forgotten object)
and adds them to ``retired``. ``adapters/kube.py`` forgets pods some time after they left the table.
"""

from __future__ import annotations

from typing import Any

from nodeagent.verdict import Drop

UNKNOWN_POD = "-"
"""Per-pod key for datagrams whose sender is not a known pod."""


class Counters:
    """One pod's counts. The pipeline updates ``received``, ``forwarded`` (and their bytes) and
    ``last_seen`` inline on its hot path; everything else goes through ``Stats``."""

    __slots__ = ("received", "received_bytes", "forwarded", "forwarded_bytes", "held", "held_bytes",
                 "drops", "drop_bytes", "last_seen")

    def __init__(self) -> None:
        self.received = self.received_bytes = 0
        self.forwarded = self.forwarded_bytes = 0
        self.held = self.held_bytes = 0
        """Packets (and their bytes) held right now: a gauge, not a counter."""
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)
        self.drop_bytes: dict[Drop, int] = dict.fromkeys(Drop, 0)
        self.last_seen: float | None = None
        """When the pod's tunnel last delivered a datagram (its liveness, ``stages.vantage``)."""

    def add(self, other: Counters) -> None:
        """Add ``other``'s counts to these (for totals)."""
        self.received += other.received
        self.received_bytes += other.received_bytes
        self.forwarded += other.forwarded
        self.forwarded_bytes += other.forwarded_bytes
        self.held += other.held
        self.held_bytes += other.held_bytes
        for reason, n in other.drops.items():
            self.drops[reason] += n
        for reason, n in other.drop_bytes.items():
            self.drop_bytes[reason] += n
        if other.last_seen is not None and (self.last_seen is None or other.last_seen > self.last_seen):
            self.last_seen = other.last_seen

    def snapshot(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "received_bytes": self.received_bytes,
            "forwarded": self.forwarded,
            "forwarded_bytes": self.forwarded_bytes,
            "held": self.held,
            "held_bytes": self.held_bytes,
            "drops": {reason.value: n for reason, n in self.drops.items()},
            "drop_bytes": {reason.value: n for reason, n in self.drop_bytes.items()},
        }


class Stats:
    """Per-pod counters, the receiver's total, and bytes not sent per mechanism (``saved_bytes``)."""

    def __init__(self) -> None:
        self.pods: dict[str, Counters] = {}
        self.saved_bytes: dict[str, int] = {}
        self.received = self.received_bytes = 0
        """Datagrams (and bytes) the receiver read from its socket (``read``)."""
        self.retired = Counters()
        """The counts of pods already forgotten: kept in the totals, gone from ``pods``."""
        self._departed: dict[str, float] = {}
        """Pods with counters that are no longer in the pod table, and since when (``sweep``)."""

    @property
    def total(self) -> Counters:
        """The sum over every pod (and the retired ones), computed now (a fresh object)."""
        total = Counters()
        total.add(self.retired)
        for counters in self.pods.values():
            total.add(counters)
        return total

    def pod(self, key: str) -> Counters:
        counters = self.pods.get(key)
        if counters is None:
            counters = self.pods[key] = Counters()
        return counters

    def last_seen(self, key: str) -> float | None:
        """When ``key``'s tunnel last delivered (None: never, or unknown pod)."""
        counters = self.pods.get(key)
        return None if counters is None else counters.last_seen

    def read(self, nbytes: int) -> None:
        """The receiver read one datagram (the receiver inlines this on its hot path)."""
        self.received += 1
        self.received_bytes += nbytes

    def receive(self, pod: Counters, nbytes: int, now: float) -> None:
        """A datagram of ``pod`` entered the pipeline (the pipeline inlines this on its hot path)."""
        pod.received += 1
        pod.received_bytes += nbytes
        pod.last_seen = now

    def forward(self, pod: Counters, nbytes: int) -> None:
        pod.forwarded += 1
        pod.forwarded_bytes += nbytes

    def drop(self, pod: Counters, reason: Drop, nbytes: int) -> None:
        pod.drops[reason] += 1
        pod.drop_bytes[reason] += nbytes

    def hold(self, pod: Counters, nbytes: int) -> None:
        pod.held += 1
        pod.held_bytes += nbytes

    def unhold(self, pod: Counters, nbytes: int) -> None:
        """A held packet's wait ended; the caller counts its outcome (``forward`` or ``drop``)."""
        pod.held -= 1
        pod.held_bytes -= nbytes

    def save(self, mechanism: str, nbytes: int) -> None:
        self.saved_bytes[mechanism] = self.saved_bytes.get(mechanism, 0) + nbytes

    def forget(self, key: str) -> bool:
        """Remove ``key``'s counters (a pod that left); its counts stay in the totals. False when
        unknown or while it still holds packets (forgotten on a later call)."""
        counters = self.pods.get(key)
        if counters is None or counters.held:
            return False
        del self.pods[key]
        counters.last_seen = None
        self.retired.add(counters)
        return True

    def sweep(self, present: set[str], now: float, grace: float) -> list[str]:
        """Forget the counters of pods absent from ``present`` (the pod table's keys) for ``grace``
        seconds; a pod back within the grace keeps its counters. The keys forgotten."""
        gone = []
        for key in list(self.pods):
            if key == UNKNOWN_POD or key in present:
                self._departed.pop(key, None)
                continue
            since = self._departed.setdefault(key, now)
            if now - since >= grace and self.forget(key):
                del self._departed[key]
                gone.append(key)
        for key in [k for k in self._departed if k not in self.pods]:
            del self._departed[key]
        return gone

    def snapshot(self) -> dict[str, Any]:
        """Totals (``received`` is the receiver's own count) and every pod's counters."""
        total = self.total.snapshot()
        total["pipeline_received"] = total["received"]
        total["received"], total["received_bytes"] = self.received, self.received_bytes
        total["pods"] = {key: counters.snapshot() for key, counters in self.pods.items()}
        total["saved_bytes"] = dict(self.saved_bytes)
        return total
