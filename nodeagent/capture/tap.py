"""The tap: an output (``adapters/outputs.py`` contract) that copies forwarded packets to capture sessions.

It sees what every other output sees (after the pipeline and normalization) and costs one
attribute test per packet while no session is open. With sessions open, per packet and session:
the pod decision (cached per pod and per pod-table version), the optional BPF expression, one
copy of the frame (cut to the session's snaplen) and a non-blocking ``Session.offer``.

Attribution (see ``filter``): the packet's own pod when the session selects it; otherwise the end
of the packet that is a selected monitored pod (its direction then relative to that pod).
At most ``max_sessions`` sessions at once: ``open_session`` raises ``TooManySessions`` beyond.
"""

from __future__ import annotations

import time
from typing import Any

from nodeagent.capture import filter as capture_filter
from nodeagent.capture.session import QUEUE_BYTES, QUEUE_LIMIT, Session, TooManySessions
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.transport.records import Record
from nodeagent.verdict import Direction, Forward, OutputDrop

MAX_SESSIONS = 8


class _Reader:
    """A session with its compiled filter and per-pod decisions."""

    __slots__ = ("session", "matcher", "decisions", "version")

    def __init__(self, session: Session, matcher: capture_filter.Matcher) -> None:
        self.session, self.matcher = session, matcher
        self.decisions: dict[str, bool] = {}
        self.version = -1

    def selects(self, pod: PodInfo | None, version: int) -> bool:
        if pod is None:
            return False
        if version != self.version:  # labels or pods changed: decide again
            self.decisions.clear()
            self.version = version
        decision = self.decisions.get(pod.key)
        if decision is None:
            decision = self.decisions[pod.key] = self.matcher.pod(pod)
        return decision


class Tap:
    name = "capture"

    def __init__(self, pods: PodIndex, max_sessions: int = MAX_SESSIONS,
                 queue_bytes: int = QUEUE_BYTES) -> None:
        self._pods = pods
        self.max_sessions = max_sessions
        self.queue_bytes = queue_bytes
        self._readers: list[_Reader] = []
        self._opened = 0
        self.sessions_refused = 0
        self._ended = {"delivered": 0, "dropped": 0}
        """What the sessions already closed delivered and dropped (the totals stay monotonic)."""

    # ---- the capture API ----------------------------------------------------------------------
    def open_session(self, flt: capture_filter.CaptureFilter, queue_limit: int = QUEUE_LIMIT) -> Session:
        """A new session for ``flt`` (``CaptureError`` for a bad BPF expression)."""
        self._prune()
        if len(self._readers) >= self.max_sessions:
            self.sessions_refused += 1
            raise TooManySessions(f"{self.max_sessions} capture sessions are open already")
        matcher = capture_filter.compile(flt)
        self._opened += 1
        session = Session(flt, queue_limit, self.queue_bytes, ident=self._opened)
        self._readers.append(_Reader(session, matcher))
        return session

    def _prune(self) -> None:
        for reader in self._readers:
            if reader.session.closed:
                self._ended["delivered"] += reader.session.delivered
                self._ended["dropped"] += reader.session.total_dropped
        self._readers = [r for r in self._readers if not r.session.closed]

    @property
    def sessions(self) -> list[Session]:
        return [r.session for r in self._readers if not r.session.closed]

    # ---- Output -----------------------------------------------------------------------------
    def offer(self, fwd: Forward) -> None:
        if not self._readers:
            return
        self._copy(fwd, (fwd.frame,), time.time_ns())

    def offer_segments(self, fwd: Forward, frames: list[memoryview]) -> None:
        if not self._readers:
            return
        self._copy(fwd, frames, time.time_ns())

    def _copy(self, fwd: Forward, frames: Any, ts_ns: int) -> None:
        version = self._pods.version
        for reader in self._readers:
            session = reader.session
            if session.closed:
                continue
            owner = self._owner(reader, fwd, version)
            if owner is None:
                continue
            pod, vni, direction = owner
            match, snap = reader.matcher.frame, reader.matcher.snaplen
            for frame in frames:
                if match is not None and not match(frame):
                    continue
                wire_len = fwd.wire_len if len(frames) == 1 else len(frame)
                data = bytes(frame[:snap]) if snap and len(frame) > snap else bytes(frame)
                session.offer(Record(ts_ns, wire_len, pod, vni, direction, data))

    def _owner(self, reader: _Reader, fwd: Forward, version: int) -> tuple[str, int, int] | None:
        """(pod key, vni, direction) the packet is shown under for this reader, or None."""
        if reader.selects(fwd.pod, version):
            return fwd.pod.key, fwd.vni, int(fwd.direction)
        meta = fwd.meta
        for addr, direction in ((meta.src, Direction.EGRESS), (meta.dst, Direction.INGRESS)):
            if not addr or addr in fwd.pod.addrs:
                continue
            peer = self._pods.by_addr(addr)
            if reader.selects(peer, version):
                assert peer is not None
                return peer.key, peer.vni, int(direction)
        return None

    # the rest of the Output contract
    async def open(self) -> None:
        return None

    async def run(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        for reader in self._readers:
            reader.session.close()
        self._prune()

    def state(self) -> dict[str, Any]:
        """``delivered``/``dropped``: records of every session so far (open and closed), for
        ``/metrics``; a record a session's full queue (or a relay's upstream) lost is
        ``OutputDrop.QUEUE_FULL``; ``open``: each open session's own counters."""
        self._prune()
        sessions = [s.state() for s in self.sessions]
        lost = self._ended["dropped"] + sum(s["dropped"] for s in sessions)
        return {"sessions": len(sessions), "sessions_opened": self._opened,
                "sessions_refused": self.sessions_refused,
                "delivered": self._ended["delivered"] + sum(s["delivered"] for s in sessions),
                "dropped": {OutputDrop.QUEUE_FULL: lost}, "open": sessions}
