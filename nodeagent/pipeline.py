"""The packet's path through the agent, on one screen.

``Pipeline.process(datagram, sender, now)`` takes one VXLAN datagram (the UDP payload), the
tunnel's source address and the time, and returns the datagram's verdict: ``Forward``, one
``Drop`` reason, ``HELD`` (its outcome comes later), or ``Released`` (packets to hand to the outputs
now, in order: held packets whose wait ended, then maybe this one). ``expire(now)`` releases the
held packets whose wait ended; the caller runs it on a timer, so nothing waits on traffic; ``flush``
releases everything (shutdown). Pure: no sockets, no clock, no Kubernetes. Stages run cheapest
first, so a spoofed tunnel costs one dict lookup and never a parse:

1. sender: the source address must be one of a monitored pod's addresses on this node, and the VNI
   its own; the pod's ``received`` is counted here, before anything can drop the datagram;
2. decode: VXLAN, then the inner Ethernet/IP/transport headers; a frame whose ends are none of the
   pod's addresses (nor link-scoped: its link-local neighbour discovery, multicast) is ``FOREIGN``
   (a pod's tunnel speaks only for the pod); with a container selection (``PodInfo.ports``),
   packets of the pod's other containers go (``OTHER_CONTAINER``, ``stages.containers``);
3. vantage (``vantage``): one pod's copies of each connection (``OTHER_VANTAGE``), one node's
   across nodes (``NOT_OWNER``); a copy whose preferred twin may still come is held;
4. filters (``filters``): ordered rules from the copy's own vantage (``FILTERED``), maybe a snap
   length;
5. dedup (``dedup``): only where the vantage stage asks (``CHECK``): the other end's pod already
   forwarded this content (``DUPLICATE``); after the filters, so a copy one vantage's rules exclude
   does not hide the other vantage's copy;
6. cutoff (``cutoff``, state per vantage): encrypted flows past their budget are cut to headers or
   dropped (``CUT_OFF``); then the snap length, keeping ``wire_len``.

A held packet is copied (the receiver reuses its buffer) and resumes at step 4 when released. Stages
3-6 are optional (None: skipped), which is also the no-op baseline of ``bench/``. Counting
(``stats``): ``received`` per pod at step 1, then exactly one outcome per datagram: forwarded, one
drop reason, or held until one of those; bytes not sent are added per mechanism (``Stats.save``).

Speed (the target: receive + decode >= 250k packets/s on one core, ``bench/bench_agent.py``):
``process`` is the per-packet path, so it caches the sender lookup, updates the counters inline and
skips the stages call when no stage is configured; each such choice carries its measured reason
where it is made.
"""

from __future__ import annotations

from typing import Any

from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.stages import containers
from nodeagent.stages import cutoff as cutoff_mod
from nodeagent.stages.cutoff import Cutoff
from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.filters import EXCLUDE, FilterSet
from nodeagent.stages.vantage import CHECK, HOLD, Vantage
from nodeagent.stats import UNKNOWN_POD, Counters, Stats
from nodeagent.verdict import HELD, Direction, Drop, Forward, Held, Released, Verdict
from nodeagent.wire import Malformed, headers, vxlan
from nodeagent.wire.headers import ETH_P_ARP, PacketMeta

DEDUP, FILTER, SLICE, CUTOFF = "dedup", "filter", "slice", "cutoff"
"""``Stats.saved_bytes`` mechanisms."""
_EGRESS, _INGRESS, _UNKNOWN = Direction.EGRESS, Direction.INGRESS, Direction.UNKNOWN
"""Module constants: an enum member read from its class costs ~0.08 us each (measured per call)."""
_new = tuple.__new__
_mv = memoryview
Record = tuple[memoryview, PacketMeta, int, PodInfo, Direction, Counters, int, float, "PodInfo | None"]
"""A held packet: its own copy of the frame, meta, VNI, pod, direction, counters, datagram size,
reception time and peer, everything the remaining stages need when it is released."""


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
        # pod's ``Counters`` while it is in the table, so the cached object stays the live one).
        known = self._senders.get(sender)
        if known is None:
            known = self._learn(sender)
            if known is None:
                return self._unknown_sender(size, now)
        pod, counters = known
        counters.received += 1  # Stats.receive, inlined: the first thing after the lookup
        counters.received_bytes += size
        counters.last_seen = now
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
        elif _link_scoped(meta, inner, pod):
            direction = _UNKNOWN
        else:
            self._stats.drop(counters, Drop.FOREIGN, size)
            return Drop.FOREIGN
        frame = inner
        if self._staged or pod.ports:
            kept = self._stages(inner, meta, pod, direction, counters, size, vni, now)
            if type(kept) is not _mv:
                return kept  # type: ignore[return-value]  # a Drop, HELD or Released (not a frame)
            frame = kept
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

        A known sender's ``received`` was counted at the entry (nothing before it can raise); an
        unknown sender's is counted here."""
        known = self._senders.get(sender) or self._learn(sender)
        if known is not None:
            counters = known[1]
        else:
            counters = self._stats.pod(UNKNOWN_POD)
            self._stats.receive(counters, len(datagram), counters.last_seen or 0.0)
        self._stats.drop(counters, Drop.INTERNAL_ERROR, len(datagram))
        return Drop.INTERNAL_ERROR

    def _unknown_sender(self, size: int, now: float) -> Drop:
        counters = self._stats.pod(UNKNOWN_POD)
        self._stats.receive(counters, size, now)
        self._stats.drop(counters, Drop.UNKNOWN_SENDER, size)
        return Drop.UNKNOWN_SENDER

    def _stages(self, inner: memoryview, meta: PacketMeta, pod: PodInfo, direction: Direction,
                counters: Counters, size: int, vni: int, now: float) -> memoryview | Drop | Held | Released:
        """The optional stages: a ``Drop`` (counted), ``HELD``, ``Released``, or the frame to forward."""
        if pod.ports and not containers.selected(inner, meta, pod, direction):
            return self._drop(counters, Drop.OTHER_CONTAINER, size, FILTER)
        peer = self._peer(meta, direction) if self._needs_peer else None
        check = True
        vantage = self._vantage
        if vantage is not None:
            # A peer whose container selection excludes this flow forwards none of it: not a vantage.
            seen = peer if peer is None or not peer.ports or containers.peer_sees(meta, peer) else None
            code = vantage.decide(meta, inner, pod, seen, now)
            if vantage.fallout:  # other packets' wait ended too (rare: an attribute read otherwise)
                return self._with_fallout(code, (inner, meta, vni, pod, direction, counters, size, now, peer))
            if type(code) is Drop:
                return self._drop(counters, code, size, DEDUP)
            if code == HOLD:
                self._hold((inner, meta, vni, pod, direction, counters, size, now, peer))
                return HELD
            check = code == CHECK
        return self._rest(inner, meta, pod, peer, direction, counters, size, check, now)

    def _rest(self, inner: memoryview, meta: PacketMeta, pod: PodInfo, peer: PodInfo | None,
              direction: Direction, counters: Counters, size: int, check: bool,
              now: float) -> memoryview | Drop:
        """Steps 4-6 (filters, dedup, cutoff and slicing): the frame to forward, or a counted Drop."""
        stats = self._stats
        keep = 0
        if self._filters is not None:
            keep = self._filters.decide(inner, meta, pod, peer, direction)
            if keep == EXCLUDE:
                return self._drop(counters, Drop.FILTERED, size, FILTER)
        if check and self._dedup is not None and self._dedup.check(meta, inner, pod, now):
            return self._drop(counters, Drop.DUPLICATE, size, DEDUP)
        if self._cutoff is not None:
            cut = self._cutoff.apply(meta, inner, pod.addr, now)
            if cut == cutoff_mod.CUT:
                return self._drop(counters, Drop.CUT_OFF, size, CUTOFF)
            if cut and cut < len(inner):
                stats.save(CUTOFF, len(inner) - cut)
                inner = memoryview(cutoff_mod.headers_only(inner, meta))
        if keep and keep < len(inner):
            stats.save(SLICE, len(inner) - keep)
            inner = inner[:keep]
        return inner

    # ---- held packets ----------------------------------------------------------------------------
    def _hold(self, record: Record) -> None:
        """Keep a copy of the frame (the receiver reuses its buffer) and count the packet as held."""
        inner = record[0]
        kept = (memoryview(bytes(inner)), *record[1:])
        self._stats.hold(record[5], record[6])
        assert self._vantage is not None
        self._vantage.hold(kept, record[6])

    def _with_fallout(self, code: int | Drop, record: Record) -> Drop | Held | Released:
        """The vantage stage ended other packets' wait: count those dropped, run those released
        through the remaining stages (in order), then this packet; a ``Released`` when any is kept."""
        assert self._vantage is not None
        dropped, released = self._vantage.take_fallout()
        for held in dropped:
            self._stats.unhold(held[5], held[6])
            self._drop(held[5], Drop.OTHER_VANTAGE, held[6], DEDUP)
        forwards = [f for f in map(self._release, released) if f is not None]
        inner, meta, vni, pod, direction, counters, size, now, peer = record
        if code == HOLD:
            self._hold(record)
            return Released(tuple(forwards)) if forwards else HELD
        if type(code) is Drop:
            reason = self._drop(counters, code, size, DEDUP)
            return Released(tuple(forwards)) if forwards else reason
        kept = self._rest(inner, meta, pod, peer, direction, counters, size, code == CHECK, now)
        if type(kept) is Drop:
            return Released(tuple(forwards)) if forwards else kept
        counters.forwarded += 1
        counters.forwarded_bytes += size
        # kept is a frame here: ``type(kept) is Drop`` (cheaper than isinstance) does not narrow for mypy.
        forwards.append(Forward(kept, meta, vni, pod, direction, len(inner), now))  # type: ignore[arg-type]
        return Released(tuple(forwards))

    def _release(self, record: Record) -> Forward | None:
        """A held packet's wait ended: the remaining stages decide (counted); its Forward or None."""
        inner, meta, vni, pod, direction, counters, size, now, peer = record
        self._stats.unhold(counters, size)
        kept = self._rest(inner, meta, pod, peer, direction, counters, size, True, now)
        if type(kept) is Drop:
            return None
        counters.forwarded += 1
        counters.forwarded_bytes += size
        return Forward(kept, meta, vni, pod, direction, len(inner), now)  # type: ignore[arg-type]  # as above

    def expire(self, now: float) -> list[Forward]:
        """Release the held packets whose wait ended (in order); call on a timer (``next_deadline``)."""
        if self._vantage is None:
            return []
        return [f for f in map(self._release, self._vantage.expire(now)) if f is not None]

    def flush(self) -> list[Forward]:
        """Release every held packet, in order (shutdown: every datagram ends with an outcome)."""
        if self._vantage is None:
            return []
        return [f for f in map(self._release, self._vantage.release_all()) if f is not None]

    @property
    def next_deadline(self) -> float | None:
        """When ``expire`` has something to release (None: nothing is held)."""
        return None if self._vantage is None else self._vantage.next_deadline

    @property
    def held(self) -> int:
        return 0 if self._vantage is None else self._vantage.held_packets

    # ---- helpers ---------------------------------------------------------------------------------
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
        """Table sizes, evictions (lost state, not packet drops) and holds for ``/status``."""
        out: dict[str, Any] = {}
        if self._dedup is not None:
            out["dedup"] = {"entries": len(self._dedup), "evictions": self._dedup.evictions}
        v = self._vantage
        if v is not None:
            out["vantage"] = {"entries": len(v), "evictions": v.evictions, "links": v.links}
            out["hold"] = {"packets": v.held_packets, "bytes": v.held_bytes, "overflows": v.overflows}
        if self._cutoff is not None:
            out["cutoff"] = {"entries": len(self._cutoff), "evictions": self._cutoff.evictions}
        return out


_V6_UNSPECIFIED = bytes(16)


def _link_scoped(meta: PacketMeta, frame: memoryview, pod: PodInfo) -> bool:
    """Whether a frame none of whose ends is one of the pod's addresses is still the pod's own link
    traffic: each end is link-scoped (IPv6 link-local, unspecified or multicast; IPv4 0.0.0.0,
    link-local, broadcast or multicast), so it names no other host; ARP naming the pod."""
    if meta.version == 0:
        if meta.ethertype != ETH_P_ARP or len(frame) < meta.l3 + 28:
            return False
        body = bytes(frame[meta.l3 : meta.l3 + 28])
        return body[14:18] in pod.addrs or body[24:28] in pod.addrs
    return _scoped(meta.src, pod) and _scoped(meta.dst, pod)


def _scoped(addr: bytes, pod: PodInfo) -> bool:
    if addr in pod.addrs:
        return True
    if len(addr) == 16:
        return (addr[0] == 0xFE and addr[1] & 0xC0 == 0x80) or addr[0] == 0xFF or addr == _V6_UNSPECIFIED
    return addr[0] >= 224 or addr == b"\0\0\0\0" or addr[:2] == b"\xa9\xfe"
