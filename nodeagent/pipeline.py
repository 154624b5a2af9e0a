"""The packet's path through the agent, on one screen.

``Pipeline.process(datagram, sender, now)`` takes one VXLAN datagram (the UDP payload), the
tunnel's source address and the time, and returns ``Forward`` or one ``Drop`` reason. It is pure:
no sockets, no clock, no Kubernetes. Stages run cheapest first, so a spoofed tunnel costs one dict
lookup and never a parse:

1. sender: the source address must be a monitored pod on this node, and the VNI its own;
2. decode: VXLAN, then the inner Ethernet/IP/transport headers; with a container selection
   (``PodInfo.ports``), packets of the pod's other containers go (``OTHER_CONTAINER``,
   ``stages.containers``);
3. vantage (``vantage``): a flow seen from two vantages is kept from one (``OTHER_VANTAGE``), a
   flow between two nodes' monitored pods from one node (``NOT_OWNER``);
4. filters (``filters``): ordered rules from the copy's own vantage (``FILTERED``), maybe a snap
   length;
5. dedup (``digest`` + ``dedup``): another vantage's copy of a packet forwarded moments ago
   (``DUPLICATE``); after the filters, so a copy one vantage's rules exclude does not hide the
   other vantage's copy;
6. cutoff (``cutoff``): encrypted flows past their budget are cut to headers or dropped
   (``CUT_OFF``); then the snap length, keeping ``wire_len``.

Stages 3-6 are optional (None: skipped), which is also the no-op baseline of ``bench/``. Every
call counts exactly one outcome for the datagram, forwarded or one drop reason (``received`` is
derived from the outcomes, see ``stats``); bytes not sent are added per mechanism with
``Stats.save`` (dedup, filter, slice, cutoff).

Speed (the target: receive + decode >= 250k packets/s on one core, ``bench/bench_agent.py``):
``process`` is the per-packet path, so it caches the sender lookup, updates the forward counters
inline and skips the stages call when no stage is configured; each such choice carries its measured
reason where it is made.
"""

from __future__ import annotations

from typing import Any

from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.stages import containers, digest
from nodeagent.stages import cutoff as cutoff_mod
from nodeagent.stages.cutoff import Cutoff
from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.filters import EXCLUDE, FilterSet
from nodeagent.stages.vantage import Vantage
from nodeagent.stats import UNKNOWN_POD, Counters, Stats
from nodeagent.verdict import Direction, Drop, Forward, Verdict
from nodeagent.wire import Malformed, headers, vxlan
from nodeagent.wire.headers import PacketMeta

DEDUP, FILTER, SLICE, CUTOFF = "dedup", "filter", "slice", "cutoff"
"""``Stats.saved_bytes`` mechanisms."""
_EGRESS, _INGRESS, _UNKNOWN = Direction.EGRESS, Direction.INGRESS, Direction.UNKNOWN
"""Module constants: an enum member read from its class costs ~0.08 us each (measured per call)."""
_new = tuple.__new__


class Pipeline:
    def __init__(self, *, pods: PodIndex, stats: Stats, vantage: Vantage | None = None,
                 filters: FilterSet | None = None, dedup: DedupWindow | None = None,
                 cutoff: Cutoff | None = None) -> None:
        self._pods = pods
        self._stats = stats
        self._vantage = vantage
        self._filters = filters
        self._dedup = dedup
        self._cutoff = cutoff
        self._staged = any(stage is not None for stage in (vantage, filters, dedup, cutoff))
        self._needs_peer = vantage is not None or filters is not None
        self._senders: dict[str, tuple[PodInfo, Counters]] = {}
        """Tunnel source -> (pod, its counters), valid while ``PodIndex.version`` is unchanged."""
        self._senders_version = -1

    def process(self, datagram: bytes | memoryview, sender: str, now: float) -> Verdict:
        size = len(datagram)
        pods = self._pods
        if pods.version != self._senders_version:  # the pod table changed: forget cached senders
            self._senders.clear()
            self._senders_version = pods.version
        # One dict hit from the tunnel's source to (pod, its counters) instead of two lookups and
        # two Stats calls (about 0.45 -> 0.15 us, measured per call; ``Stats`` never replaces a
        # pod's ``Counters``, so the cached object stays the live one).
        known = self._senders.get(sender)
        if known is None:
            known = self._learn(sender)
            if known is None:
                return self._unknown_sender(size, now)
        pod, counters = known
        counters.last_seen = now  # Stats.receive, inlined: received itself is derived (stats)
        try:
            vni, inner = vxlan.decode(datagram)
            if vni != pod.vni:
                self._stats.drop(counters, Drop.WRONG_VNI, size)
                return Drop.WRONG_VNI
            meta = headers.decode(inner)
        except Malformed:
            self._stats.drop(counters, Drop.MALFORMED, size)
            return Drop.MALFORMED
        if meta.src == pod.addr:
            direction = _EGRESS
        elif meta.dst == pod.addr:
            direction = _INGRESS
        elif meta.src in pod.addrs:  # a dual-stack pod's other family (rare: checked last)
            direction = _EGRESS
        elif meta.dst in pod.addrs:
            direction = _INGRESS
        else:
            direction = _UNKNOWN
        frame = inner
        if self._staged or pod.ports:
            kept = self._stages(inner, meta, pod, direction, counters, size, now)
            if type(kept) is Drop:
                return kept
            frame = kept  # type: ignore[assignment]  # narrowed: ``type() is`` is the fast check (a Drop is a str)
        # Stats.forward, inlined: one call less per forwarded packet (~0.1 us, measured per call).
        counters.forwarded += 1
        counters.forwarded_bytes += size
        # tuple.__new__ skips the NamedTuple's Python-level __new__: same object, ~0.15 us less.
        return _new(Forward, (frame, meta, vni, pod, direction, len(inner), now))

    def _learn(self, sender: str) -> tuple[PodInfo, Counters] | None:
        """Look ``sender`` up in the pod table; cache a known one (unknown ones are never cached, so
        spoofed sources cannot grow the cache)."""
        pod = self._pods.sender(sender)
        if pod is None:
            return None
        known = self._senders[sender] = (pod, self._stats.pod(pod.key))
        return known

    def fail(self, datagram: bytes | memoryview, sender: str) -> Drop:
        """Count a datagram whose ``process`` raised, so that every datagram still has one outcome.

        ``process`` counts an outcome only where it returns, so a call that raised counted nothing.
        """
        known = self._senders.get(sender) or self._learn(sender)
        counters = known[1] if known is not None else self._stats.pod(UNKNOWN_POD)
        self._stats.drop(counters, Drop.INTERNAL_ERROR, len(datagram))
        return Drop.INTERNAL_ERROR

    def _unknown_sender(self, size: int, now: float) -> Drop:
        counters = self._stats.pod(UNKNOWN_POD)
        self._stats.receive(counters, size, now)
        self._stats.drop(counters, Drop.UNKNOWN_SENDER, size)
        return Drop.UNKNOWN_SENDER

    def _stages(self, inner: memoryview, meta: PacketMeta, pod: PodInfo, direction: Direction,
                counters: Counters, size: int, now: float) -> memoryview | Drop:
        """The optional stages: a ``Drop`` (counted), or the frame to forward (maybe cut)."""
        stats = self._stats
        if pod.ports and not containers.selected(inner, meta, pod, direction):
            return self._drop(counters, Drop.OTHER_CONTAINER, size, FILTER)
        peer = self._peer(meta, direction) if self._needs_peer else None
        if self._vantage is not None:
            # A peer whose container selection excludes this flow forwards none of it: not a vantage.
            seen = peer if peer is None or not peer.ports or containers.peer_sees(meta, peer) else None
            reason = self._vantage.decide(meta, pod, seen, now)
            if reason is not None:
                return self._drop(counters, reason, size, DEDUP)
        keep = 0
        if self._filters is not None:
            keep = self._filters.decide(inner, meta, pod, peer, direction)
            if keep == EXCLUDE:
                return self._drop(counters, Drop.FILTERED, size, FILTER)
        if self._dedup is not None and self._dedup.check_and_add(digest.compute(meta, inner), pod.addr, now):
            return self._drop(counters, Drop.DUPLICATE, size, DEDUP)
        if self._cutoff is not None:
            cut = self._cutoff.apply(meta, inner, now)
            if cut == cutoff_mod.CUT:
                return self._drop(counters, Drop.CUT_OFF, size, CUTOFF)
            if cut and cut < len(inner):
                stats.save(CUTOFF, len(inner) - cut)
                inner = memoryview(cutoff_mod.headers_only(inner, meta))
        if keep and keep < len(inner):
            stats.save(SLICE, len(inner) - keep)
            inner = inner[:keep]
        return inner

    def _peer(self, meta: PacketMeta, direction: Direction) -> PodInfo | None:
        """The monitored pod at the other end (local or on another node), if any."""
        if direction == _EGRESS:
            return self._pods.by_addr(meta.dst)
        if direction == _INGRESS:
            return self._pods.by_addr(meta.src)
        return None

    def _drop(self, counters: Counters, reason: Drop, size: int, mechanism: str) -> Drop:
        self._stats.drop(counters, reason, size)
        self._stats.save(mechanism, size)
        return reason

    def state(self) -> dict[str, Any]:
        """Table sizes and evictions (lost state, not packet drops) for ``/status``."""
        out: dict[str, Any] = {}
        if self._dedup is not None:
            out["dedup"] = {"entries": len(self._dedup), "evictions": self._dedup.evictions}
        if self._vantage is not None:
            out["vantage"] = {"entries": len(self._vantage), "evictions": self._vantage.evictions}
        if self._cutoff is not None:
            out["cutoff"] = {"entries": len(self._cutoff), "evictions": self._cutoff.evictions}
        return out
