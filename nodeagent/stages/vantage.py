"""Flow-consistent vantage and cross-node ownership: which copy of a flow the agent forwards.

Model. A TCP or UDP flow between two monitored pods is seen from two vantages (the two sidecars).
Forwarding each packet once is not enough: the sensor must see the whole connection from *one*
vantage, or it sees one connection split across two address pairs (with a Service, the client's
copies show ClusterIP:port, the server's podIP:targetPort). The rule, with ``prefer`` = client
(default) or server:

- Every flow has a client, learned from its handshake (the sender of a SYN without ACK, the
  receiver of a SYN+ACK) and remembered in a bounded table; without a handshake (UDP, a flow
  older than the agent) the server is the endpoint with the lower port, the lower address on a
  tie. The fallback depends on the 5-tuple only, so two vantages and two agents agree on it.
- Same node (the peer is a local sender): the copy from the preferred end's vantage is forwarded,
  the other one is dropped as ``OTHER_VANTAGE``.
- Across nodes (the peer is a monitored pod on another node, ``PodInfo.local`` False): the node of
  the preferred end owns the flow; the other node drops its copies as ``NOT_OWNER``. No
  coordination: both agents compute the same answer from the same packet, provided every agent in
  the cluster uses the same ``prefer`` (one DaemonSet configuration).

Why the client side is the default: it is exact under Service DNAT. From the server's vantage the
peer is always the client's real address (DNAT rewrote the destination before the packet reached
the server), so the server-side copies of a monitored client are recognised and dropped. From the
client's vantage the peer is the ClusterIP, which is no pod: the client side never needs to know
where the Service led. With ``prefer="server"`` the agent learns, from the server's copies, which
client endpoints (address, port, protocol) a local server covers and then drops the client's
DNAT'd copies; the packets the client's sidecar delivers before the server's first copy (the SYN)
are forwarded from the client's side, and across nodes a DNAT'd client copy cannot be recognised
at all. Both limits are why "client" is the default.

ICMP echo is treated as a flow whose client is the requester. Other packets without a flow (ICMP
errors, non-first fragments, other protocols) between two nodes' monitored pods belong to the node
of the lower address; on one node they, and flows with an unmonitored peer, go to per-packet dedup.
SNAT (masquerade) hides the client from the server's vantage: both copies pass this stage and
per-packet dedup removes one.
Pure: the caller passes the peer ``PodInfo`` (or None) and ``now``.
"""

from __future__ import annotations

from nodeagent.pods.index import PodInfo
from nodeagent.stages.flowtable import FlowTable
from nodeagent.verdict import Drop
from nodeagent.wire.headers import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_ACK,
    TCP_SYN,
    PacketMeta,
)

CLIENT, SERVER = "client", "server"
_REQUEST, _REPLY = 1, 2
_ECHO = {(IPPROTO_ICMP, 8): _REQUEST, (IPPROTO_ICMP, 0): _REPLY,
         (IPPROTO_ICMPV6, 128): _REQUEST, (IPPROTO_ICMPV6, 129): _REPLY}
"""(protocol, ICMP type) of echo requests and replies: a "flow" whose client is the requester."""


class Vantage:
    """Decide per packet whether this vantage forwards a flow seen from two vantages."""

    def __init__(self, *, prefer: str = CLIENT, capacity: int = 262_144, idle: float = 300.0) -> None:
        if prefer not in (CLIENT, SERVER):
            raise ValueError(f"prefer must be client or server, got {prefer!r}")
        self._prefer_client = prefer == CLIENT
        self._clients: FlowTable[tuple[bytes, int]] = FlowTable(capacity=capacity, idle=idle)
        """Canonical 5-tuple -> client endpoint (packed address, port)."""
        self._covered: FlowTable[bool] = FlowTable(capacity=capacity, idle=idle)
        """prefer=server only: client endpoints (address, port, proto) whose server is local."""

    @property
    def evictions(self) -> int:
        return self._clients.evictions + self._covered.evictions

    def __len__(self) -> int:
        """Entries held (flows' clients and, prefer=server, covered client endpoints)."""
        return len(self._clients) + len(self._covered)

    def decide(self, meta: PacketMeta, pod: PodInfo, peer: PodInfo | None, now: float) -> Drop | None:
        """None to keep this copy, else ``Drop.OTHER_VANTAGE`` or ``Drop.NOT_OWNER``."""
        proto = meta.proto
        if meta.l4 < 0 or (proto != IPPROTO_TCP and proto != IPPROTO_UDP):
            return self._without_flow(meta, pod, peer)
        # ``addrs``: a dual-stack pod's IPv6 flows are its flows too (``pod.addr`` is one address).
        if meta.src == pod.addr or meta.src in pod.addrs:
            own, own_port, peer_addr, peer_port = meta.src, meta.sport, meta.dst, meta.dport
        elif meta.dst == pod.addr or meta.dst in pod.addrs:
            own, own_port, peer_addr, peer_port = meta.dst, meta.dport, meta.src, meta.sport
        else:
            return None
        if peer is None or peer.addr == pod.addr:
            # Nobody else sees this flow, except a local server behind a Service (prefer=server).
            if self._prefer_client or peer is not None:
                return None
            covered = self._covered.get((own, own_port, proto), now)
            if covered and self._client(meta, now) == (own, own_port):
                return Drop.OTHER_VANTAGE
            return None
        pod_is_client = self._client(meta, now) == (own, own_port)
        keep = pod_is_client if self._prefer_client else not pod_is_client
        if not peer.local:
            return None if keep else Drop.NOT_OWNER
        if keep:
            if not self._prefer_client:  # the client's DNAT'd copies are ours to drop later
                self._covered.put((peer_addr, peer_port, proto), True, now)
            return None
        return Drop.OTHER_VANTAGE

    def _without_flow(self, meta: PacketMeta, pod: PodInfo, peer: PodInfo | None) -> Drop | None:
        """ICMP echo: the requester is the client. Anything else across nodes: the lower address's
        node owns it. Same node (both copies here): left to per-packet dedup."""
        if peer is None or peer.addr == pod.addr:
            return None
        kind = _ECHO.get((meta.proto, meta.sport)) if meta.l4 >= 0 else None
        if kind is not None:
            pod_is_client = (meta.src in pod.addrs) == (kind == _REQUEST)
            keep = pod_is_client if self._prefer_client else not pod_is_client
            if keep:
                return None
            return Drop.OTHER_VANTAGE if peer.local else Drop.NOT_OWNER
        if peer.local or pod.addr < peer.addr:
            return None
        return Drop.NOT_OWNER

    def _client(self, meta: PacketMeta, now: float) -> tuple[bytes, int]:
        src, dst = (meta.src, meta.sport), (meta.dst, meta.dport)
        key = (meta.proto, src, dst) if src < dst else (meta.proto, dst, src)
        flags = meta.tcp_flags if meta.proto == IPPROTO_TCP else 0
        if flags & TCP_SYN:
            client = src if not flags & TCP_ACK else dst
            self._clients.put(key, client, now)
            return client
        known = self._clients.get(key, now)
        client = known if known is not None else _guess_client(src, dst)
        self._clients.put(key, client, now)
        return client


def _guess_client(a: tuple[bytes, int], b: tuple[bytes, int]) -> tuple[bytes, int]:
    """Without a handshake: the server listens on the lower port (ephemeral ports are high)."""
    if a[1] != b[1]:
        return a if a[1] > b[1] else b
    return a if a[0] > b[0] else b
