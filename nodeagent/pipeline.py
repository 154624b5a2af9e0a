"""The packet's path through the agent, on one screen.

``Pipeline.process(datagram, sender, now)`` takes one VXLAN datagram (the UDP payload), the
tunnel's source address and the time, and returns ``Forward`` or one ``Drop`` reason. It is pure:
no sockets, no clock, no Kubernetes. Stages run cheapest first, so a spoofed tunnel costs one dict
lookup and never a parse:

1. sender: the source address must be a monitored pod on this node, and the VNI its own;
2. decode: VXLAN, then the inner Ethernet/IP/transport headers; with a container selection
   (``PodInfo.ports``), packets of the pod's other containers go (``OTHER_CONTAINER``,
   ``containerports``);
3. vantage (``vantage``): a flow seen from two vantages is kept from one (``OTHER_VANTAGE``), a
   flow between two nodes' monitored pods from one node (``NOT_OWNER``);
4. filters (``filters``): ordered rules from the copy's own vantage (``FILTERED``), maybe a snap
   length;
5. dedup (``flowkey`` + ``dedup``): another vantage's copy of a packet forwarded moments ago
   (``DUPLICATE``); after the filters, so a copy one vantage's rules exclude does not hide the
   other vantage's copy;
6. cutoff (``cutoff``): encrypted flows past their budget are cut to headers or dropped
   (``CUT_OFF``); then the snap length, keeping ``wire_len``.

Stages 3-6 are optional (None: skipped), which is also the no-op baseline of ``bench/``. Every
call counts the datagram once as received and once as its outcome (see ``stats``); bytes not sent
are added per mechanism with ``Stats.save`` (dedup, filter, slice, cutoff).
"""

from __future__ import annotations

from typing import Any

from nodeagent import containerports, flowkey
from nodeagent import cutoff as cutoff_mod
from nodeagent.cutoff import Cutoff
from nodeagent.dedup import DedupWindow
from nodeagent.filters import EXCLUDE, FilterSet
from nodeagent.pods import PodIndex, PodInfo
from nodeagent.stats import UNKNOWN_POD, Counters, Stats
from nodeagent.vantage import Vantage
from nodeagent.verdict import Direction, Drop, Forward, Verdict
from nodeagent.wire import Malformed, headers, vxlan
from nodeagent.wire.headers import PacketMeta

DEDUP, FILTER, SLICE, CUTOFF = "dedup", "filter", "slice", "cutoff"
"""``Stats.saved_bytes`` mechanisms."""


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

    def process(self, datagram: bytes | memoryview, sender: str, now: float) -> Verdict:
        stats = self._stats
        size = len(datagram)
        pod = self._pods.sender(sender)
        if pod is None:
            counters = stats.pod(UNKNOWN_POD)
            stats.receive(counters, size, now)
            stats.drop(counters, Drop.UNKNOWN_SENDER, size)
            return Drop.UNKNOWN_SENDER
        counters = stats.pod(pod.key)
        stats.receive(counters, size, now)
        try:
            frame = vxlan.decode(datagram)
            if frame.vni != pod.vni:
                stats.drop(counters, Drop.WRONG_VNI, size)
                return Drop.WRONG_VNI
            meta = headers.decode(frame.inner)
        except Malformed:
            stats.drop(counters, Drop.MALFORMED, size)
            return Drop.MALFORMED
        if meta.src == pod.addr:
            direction = Direction.EGRESS
        elif meta.dst == pod.addr:
            direction = Direction.INGRESS
        elif meta.src in pod.addrs:  # a dual-stack pod's other family (rare: checked last)
            direction = Direction.EGRESS
        elif meta.dst in pod.addrs:
            direction = Direction.INGRESS
        else:
            direction = Direction.UNKNOWN
        return self._stages(frame, meta, pod, direction, counters, size, now)

    def _stages(self, frame: vxlan.VxlanFrame, meta: PacketMeta, pod: PodInfo, direction: Direction,
                counters: Counters, size: int, now: float) -> Verdict:
        stats, inner = self._stats, frame.inner
        if pod.ports and not containerports.selected(inner, meta, pod, direction):
            return self._drop(counters, Drop.OTHER_CONTAINER, size, FILTER)
        peer = self._peer(meta, direction)
        if self._vantage is not None:
            # A peer whose container selection excludes this flow forwards none of it: not a vantage.
            seen = peer if peer is None or not peer.ports or containerports.peer_sees(meta, peer) else None
            reason = self._vantage.decide(meta, pod, seen, now)
            if reason is not None:
                return self._drop(counters, reason, size, DEDUP)
        keep = 0
        if self._filters is not None:
            keep = self._filters.decide(inner, meta, pod, peer, direction)
            if keep == EXCLUDE:
                return self._drop(counters, Drop.FILTERED, size, FILTER)
        if self._dedup is not None and self._dedup.check_and_add(flowkey.digest(meta, inner), pod.addr, now):
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
        stats.forward(counters, size)
        return Forward(inner, meta, frame.vni, pod, direction, len(frame.inner), now)

    def _peer(self, meta: PacketMeta, direction: Direction) -> PodInfo | None:
        """The monitored pod at the other end (local or on another node), if any."""
        if direction == Direction.EGRESS:
            return self._pods.by_addr(meta.dst)
        if direction == Direction.INGRESS:
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
