"""The packet's path through the agent, on one screen.

``Pipeline.process(datagram, sender, now)`` takes one VXLAN datagram (the UDP payload), the
tunnel's source address and the time, and returns ``Forward`` or one ``Drop`` reason. It is pure:
no sockets, no clock, no Kubernetes. Stages run cheapest first, so a spoofed tunnel costs one dict
lookup and never a parse:

1. sender: the source address must be a monitored pod on this node, and the VNI its own;
2. decode: VXLAN, then the inner Ethernet/IP/transport headers;
3. (later stages: dedup, filters, slicing) each may drop with its own reason.

Every call counts the datagram once as received and once as its outcome (see ``stats``).
"""

from __future__ import annotations

from nodeagent.pods import PodIndex
from nodeagent.stats import UNKNOWN_POD, Stats
from nodeagent.verdict import Direction, Drop, Forward, Verdict
from nodeagent.wire import Malformed, headers, vxlan


class Pipeline:
    def __init__(self, *, pods: PodIndex, stats: Stats) -> None:
        self._pods = pods
        self._stats = stats

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
        else:
            direction = Direction.UNKNOWN
        stats.forward(counters, size)
        return Forward(frame.inner, meta, frame.vni, pod, direction, len(frame.inner), now)
