"""Push-down: fetch the agent's classic BPF program for this pod.

The agent answers ``GET <rules-url>?ip=<pod ip>&vni=<vni>&mode=<kernel|sniff>`` with
``{"version": "<opaque>", "bpf": [[code, jt, jf, k], ...] | null}``; ``null`` means mirror
everything. The sidecar prepends its own tunnel exclusion (``bpf.mirror_program``).

Fail open: when the agent cannot be reached or answers nonsense, nothing changes (no new filtering
is ever added because of an error) and it is logged once per outage; the agent enforces every rule
itself anyway. ``parse`` and ``build_url`` are pure; ``Poller`` is the thin urllib adapter.

The same endpoint answers ``tunnel`` (true while the agent receives this pod's tunnel): the
readiness probe (``sidecar-lite --check-tunnel``, ``tunnel_received``) asks with ``check=1`` and
no mode, so a pod's sidecar is Ready only while its mirror really reaches its agent.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import NamedTuple

from sidecar_lite import cbpf

log = logging.getLogger(__name__)

TIMEOUT = 2.0
"""Seconds per request: the agent is on the same node; a slow answer must not stall repair."""
MAX_BODY = 1 << 20


class Pushdown(NamedTuple):
    version: str
    program: cbpf.Program | None


class BadAnswer(ValueError):
    pass


def build_url(base: str, *, ip: str, vni: int, mode: str, agent_host: str | None = None) -> str:
    """``base`` with ``{agent_host}`` substituted and the query parameters of the contract added."""
    if agent_host is not None:
        base = base.replace("{agent_host}", agent_host)
    query = urllib.parse.urlencode({"ip": ip, "vni": vni, "mode": mode})
    return f"{base}{'&' if '?' in base else '?'}{query}"


def build_check_url(base: str, *, ip: str, vni: int, agent_host: str | None = None) -> str:
    """The readiness probe's question (``check=1``: the agent records no mode)."""
    if agent_host is not None:
        base = base.replace("{agent_host}", agent_host)
    query = urllib.parse.urlencode({"ip": ip, "vni": vni, "check": 1})
    return f"{base}{'&' if '?' in base else '?'}{query}"


def tunnel_received(url: str) -> tuple[bool, str]:
    """(whether the agent says it receives this pod's tunnel, why not)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            doc = json.loads(response.read(MAX_BODY))
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # URLError, HTTPError, timeouts: OSError
        return False, f"agent not asked: {exc}"
    if not isinstance(doc, dict) or doc.get("tunnel") is not True:
        return False, "the agent receives nothing from this pod's tunnel"
    return True, ""


def parse(body: bytes) -> Pushdown:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadAnswer(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), str):
        raise BadAnswer("missing string field 'version'")
    raw = doc.get("bpf")
    try:
        program = None if raw is None else cbpf.parse(raw, cbpf.MAX_PUSHED_INSNS)
    except cbpf.BpfError as exc:
        raise BadAnswer(str(exc)) from exc
    return Pushdown(doc["version"], program)


class Poller:
    """Poll ``url``; ``poll()`` returns a Pushdown only when its version changed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.current: Pushdown | None = None
        self._failing = False

    def poll(self) -> Pushdown | None:
        try:
            with urllib.request.urlopen(self.url, timeout=TIMEOUT) as response:
                answer = parse(response.read(MAX_BODY))
        except (OSError, BadAnswer) as exc:  # URLError and timeouts are OSErrors
            if not self._failing:
                log.warning("push-down: %s unusable (%s); keeping the current program", self.url, exc)
            self._failing = True
            return None
        if self._failing:
            log.info("push-down: %s reachable again", self.url)
            self._failing = False
        if self.current is not None and answer.version == self.current.version:
            return None
        self.current = answer
        return answer
