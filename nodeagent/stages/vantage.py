"""Flow-consistent vantage with a bounded hold: which pod's copies of a connection are forwarded.

Model. A TCP or UDP connection between two monitored pods on one node is seen twice, by each end's
sidecar. The sensor must see it once and from *one* vantage (one VNI, one address pair: with a
Service, the client's copies show ClusterIP:port, the server's podIP:targetPort). The preferred
vantage (``prefer``: the client's, default, or the server's) owns the connection, but a copy is
suppressed **only in favour of a copy that exists**:

- ``Conn`` (one per connection, shared by its two 5-tuples when DNAT gives it two) records the
  ``owner`` (the pod whose copies are forwarded) and when the owner last delivered a copy of it.
  The client is learned from the handshake (the sender of a SYN), else the end with the higher
  port (ephemeral ports are high), the same rule on every agent and in both vantages.
- A copy from the owner is forwarded. A copy from the other end is dropped (``OTHER_VANTAGE``) only
  while the owner is *live* (its tunnel delivered anything within ``live`` seconds: a declared pod
  without a sidecar never is) and delivered a copy of this connection within ``confirm`` seconds.
- Otherwise, while the owner is live, the copy is **held**: copied, queued in order behind the
  connection's other held copies, until the owner's copy of the connection arrives (the held
  copies are then dropped as ``OTHER_VANTAGE``) or ``hold`` seconds pass (they are released in
  order and the connection is decided for their vantage, which stays its owner while it delivers).
  A new connection's first copy from the non-preferred end waits this way for the preferred
  end's first copy (``bench/bench_copygap.py`` measures that gap: microseconds in kernel mode,
  milliseconds in sniff mode, where either copy may arrive first).
- If the owner is not live, the copy is forwarded at once and its vantage becomes the owner.
- Bounds: ``hold_flow_packets``/``hold_flow_bytes`` per connection and ``hold_bytes`` in all; a
  copy that does not fit decides its connection for its own vantage at once (held copies released
  first, in order; ``overflows`` counts it). Connection state is a ``FlowTable`` (``capacity``,
  ``idle``, evictions counted); held copies live in their own registry, never evicted unseen.

DNAT: a connection through a Service has two 5-tuples, (client, ClusterIP:port) at the client
and (client, pod:targetPort) at the server. The two ``Conn`` are **linked by content**: the first
``YOUNG`` copies of a connection that may have a second tuple (the other end is not a pod and
another local pod exists; or the other end is a local pod that has not delivered a copy of it)
are indexed by their NAT-invariant digest (``stages.digest``), and a copy from the client's tuple
matches one from the server's tuple when the digests are equal and the server's copy shows the
client's endpoint (address, port). Content, not the endpoint alone: another pod cannot claim a
client's connection without the client's packet, and a client port reused toward two destinations
links only the connection that really went to the server. With ``prefer="server"`` a client's copy
toward a non-pod address (within ``service_cidrs`` when set) waits (held) for a local server's copy
to link it, else it is released at ``hold`` and the connection stays the client's. With
``prefer="client"`` the server's copies wait for the client's. A link that never happens (a lost
first packet) costs duplicates, never blindness: both tuples then ask for content dedup (``CHECK``).

Across nodes (the peer is a monitored pod on another node, ``PodInfo.local`` False): the node of the
preferred end owns the connection, the other drops its copies as ``NOT_OWNER``. No coordination:
both agents compute the same answer from the same packet if every agent uses the same ``prefer``.
What holds: the other node's agent receives that pod's tunnel only as far as Kubernetes says so
(the pod table admits a remote peer only when its injected sidecar container is Ready, and that
readiness probe asks the pod's own agent whether it receives the tunnel, ``pods.kube``); static
``--peer`` entries are the operator's word. Liveness across nodes is not observed.

Packets without a flow (ICMP, fragments, other protocols): across nodes ICMP echo belongs to the
requester's node and anything else to the node of the lower address; on one node they go to
content dedup (``CHECK``), which drops a copy only when the other end's pod delivered it.

``decide`` answers ``KEEP`` (forward; no other copy will pass), ``CHECK`` (forward unless content
dedup finds the other end's copy), ``HOLD`` (call ``hold`` with the packet's record), or a ``Drop``.
When a decision also ends other packets' wait, ``fallout`` is True and ``take_fallout`` returns the
held records to drop and those to release, in order. ``expire(now)`` releases timed-out holds.
Pure: the caller passes the peer ``PodInfo`` and ``now``; records are opaque.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.stages import digest
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
KEEP, CHECK, HOLD = 0, 1, 2
"""``decide`` results besides a ``Drop``."""
YOUNG = 8
"""Copies of a connection indexed by content for DNAT linking (the handshake links it at once;
later copies cover a connection first seen mid-stream)."""
_NEVER = float("-inf")
_REQUEST, _REPLY = 1, 2
_ECHO = {(IPPROTO_ICMP, 8): _REQUEST, (IPPROTO_ICMP, 0): _REPLY,
         (IPPROTO_ICMPV6, 128): _REQUEST, (IPPROTO_ICMPV6, 129): _REPLY}
"""(protocol, ICMP type) of echo requests and replies: a "flow" whose client is the requester."""
_CLIENT_SIDE, _SERVER_SIDE = 0, 1
Endpoint = tuple[bytes, int]


class Conn:
    """One connection's vantage state (``keys``: its one or two 5-tuples)."""

    __slots__ = ("client", "isn", "owner", "owner_key", "owner_seen", "first", "paired", "young",
                 "held", "held_from", "held_bytes", "deadline")

    def __init__(self, client: Endpoint, isn: int) -> None:
        self.client = client
        self.isn = isn
        """Sequence number of the client's SYN (-1: not seen): a new SYN is a new connection."""
        self.owner: bytes | None = None
        """Packed address of the pod whose copies are forwarded; None: not yet known."""
        self.owner_key = ""
        self.owner_seen = _NEVER
        self.first: bytes | None = None
        """The first vantage that delivered a copy; ``paired`` once another one did (or linked)."""
        self.paired = False
        self.young = YOUNG
        self.held: list[Any] | None = None
        self.held_from: bytes | None = None
        self.held_bytes = 0
        self.deadline = 0.0


class Vantage:
    """Decide per copy which vantage forwards a connection (see the module docstring)."""

    def __init__(self, *, pods: PodIndex, last_seen: Callable[[str], float | None], prefer: str = CLIENT,
                 capacity: int = 262_144, idle: float = 300.0, hold: float = 0.05,
                 hold_flow_packets: int = 64, hold_flow_bytes: int = 256 << 10, hold_bytes: int = 16 << 20,
                 live: float = 60.0, confirm: float = 1.0, service_cidrs: Sequence[str] = ()) -> None:
        if prefer not in (CLIENT, SERVER):
            raise ValueError(f"prefer must be client or server, got {prefer!r}")
        self._pods, self._last_seen = pods, last_seen
        self._prefer_client = prefer == CLIENT
        self._hold, self._live, self._confirm = hold, live, confirm
        self._flow_packets, self._flow_bytes = hold_flow_packets, hold_flow_bytes
        self._total_bytes = hold_bytes
        self._services = [ipaddress.ip_network(c, strict=False) for c in service_cidrs]
        self._conns: FlowTable[Conn] = FlowTable(capacity=capacity, idle=idle)
        self._recent: FlowTable[tuple[Conn, int, Endpoint, tuple[Any, ...]]] = FlowTable(
            capacity=capacity, idle=max(hold, 0.05))
        """Digest -> (conn, side, client endpoint, key): young copies waiting to be linked."""
        self._holding: OrderedDict[int, Conn] = OrderedDict()
        """Connections with held copies, oldest deadline first (deadline = first hold + ``hold``)."""
        self._pending: Conn | None = None
        self.held_packets = 0
        self.held_bytes = 0
        self.overflows = 0
        """Copies that did not fit the hold bounds (their connection decided early)."""
        self.links = 0
        self.fallout = False
        self._dropped: list[Any] = []
        self._released: list[Any] = []

    # ---- state -------------------------------------------------------------------------------
    @property
    def evictions(self) -> int:
        return self._conns.evictions + self._recent.evictions

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def next_deadline(self) -> float | None:
        """When the oldest hold ends (None: nothing held): the caller's timer calls ``expire``."""
        for conn in self._holding.values():
            return conn.deadline
        return None

    def take_fallout(self) -> tuple[list[Any], list[Any]]:
        """(records to drop as ``OTHER_VANTAGE``, records to release in order) of the last call."""
        dropped, released = self._dropped, self._released
        self._dropped, self._released, self.fallout = [], [], False
        return dropped, released

    # ---- the decision ------------------------------------------------------------------------
    def decide(self, meta: PacketMeta, frame: memoryview | bytes, pod: PodInfo, peer: PodInfo | None,
               now: float) -> int | Drop:
        proto = meta.proto
        if meta.l4 < 0 or (proto != IPPROTO_TCP and proto != IPPROTO_UDP):
            return self._without_flow(meta, pod, peer)
        src, sport, dst, dport = meta.src, meta.sport, meta.dst, meta.dport
        addrs = pod.addrs
        if src not in addrs and dst not in addrs:
            return CHECK  # link-scoped (e.g. DHCPv6 from fe80::): no connection of the pod
        # The canonical tuple (the lower (address, port) first) from the flat fields: the key the
        # (own, other) tuples gave, without building them (0.13 -> 0.05 us, measured per call).
        key = ((proto, src, sport, dst, dport) if src < dst or (src == dst and sport < dport)
               else (proto, dst, dport, src, sport))
        conn = self._conns.refresh(key, now)
        p = pod.addr
        if conn is not None and conn.paired and not meta.tcp_flags & TCP_SYN \
                and (peer is None or peer is pod or peer.local):
            # The short path of a decided connection that both vantages delivered (or linked):
            # what _between_pods and _toward_non_pod answer for it (neither links nor indexes a
            # paired connection), without building endpoints or calling them: 0.75 -> 0.51 us
            # per owner's copy, measured per call against the full path (tests/unit/nodeagent/
            # test_fastpaths.py checks both decide alike).
            if conn.held_from == p:
                return self._queue(conn, p, now)
            owner = conn.owner
            if owner == p:
                conn.owner_seen = now
                if conn.held is not None:
                    self._resolve(conn, p)
                return KEEP
            if owner is not None:
                return self._not_owner(conn, p, now)
        if src in addrs:
            own, other = (src, sport), (dst, dport)
        else:
            own, other = (dst, dport), (src, sport)
        conn = self._conn(conn, key, meta, own, other, now)
        if conn.first is None:
            conn.first = p
        elif conn.first != p:
            conn.paired = True
        if conn.held_from == p:
            return self._queue(conn, p, now)  # behind this vantage's held copies, in order
        if peer is not None and peer is not pod:
            if not peer.local:
                return self._across_nodes(conn, own, peer)
            return self._between_pods(conn, key, meta, frame, pod, peer, own, other, now)
        return self._toward_non_pod(conn, key, meta, frame, pod, own, other, now)

    def _conn(self, conn: Conn | None, key: tuple[Any, ...], meta: PacketMeta, own: Endpoint,
              other: Endpoint, now: float) -> Conn:
        """The connection of ``key`` (``conn``: what the table holds for it, refreshed): a SYN
        (without ACK) with a new sequence number starts a new one."""
        flags = meta.tcp_flags if meta.proto == IPPROTO_TCP else 0
        if conn is not None and not flags & TCP_SYN:  # the common case: a known connection
            return conn
        syn = flags & TCP_SYN and not flags & TCP_ACK
        if conn is None or (syn and conn.isn != meta.seq and conn.held is None):
            src, dst = (meta.src, meta.sport), (meta.dst, meta.dport)
            client = src if syn else dst if flags & TCP_SYN else _guess_client(own, other)
            conn = Conn(client, meta.seq if syn else -1)
            self._conns.put(key, conn, now)
        elif flags & TCP_SYN:
            conn.client = (meta.src, meta.sport) if syn else (meta.dst, meta.dport)
        return conn

    def _across_nodes(self, conn: Conn, own: Endpoint, peer: PodInfo) -> int | Drop:
        """The preferred end's node owns the connection; no hold (the other node's copy is there)."""
        pod_is_client = conn.client == own
        keep = pod_is_client if self._prefer_client else not pod_is_client
        return KEEP if keep else Drop.NOT_OWNER

    def _between_pods(self, conn: Conn, key: tuple[Any, ...], meta: PacketMeta, frame: memoryview | bytes,
                      pod: PodInfo, peer: PodInfo, own: Endpoint, other: Endpoint, now: float) -> int | Drop:
        """Both ends are local pods: the preferred one owns the connection, if its copy exists."""
        p = pod.addr
        if conn.owner is None:
            pod_is_client = conn.client == own
            preferred = pod if pod_is_client == self._prefer_client else peer
            conn.owner, conn.owner_key = preferred.addr, preferred.key
        # The server's copy shows the client's real endpoint; the client's copy of the same
        # connection may carry a ClusterIP (another tuple): link them by content while young.
        linkable = not conn.paired and conn.young and conn.client == other
        if conn.owner == p:
            conn.owner_seen = now
            if conn.held is not None:
                self._resolve(conn, p)
            if linkable:
                self._index(conn, key, meta, frame, _SERVER_SIDE, other, p, now)
            return KEEP if conn.paired else CHECK
        if linkable and self._index(conn, key, meta, frame, _SERVER_SIDE, other, p, now):
            return Drop.OTHER_VANTAGE  # linked: the owner delivered this very packet
        return self._not_owner(conn, p, now)

    def _toward_non_pod(self, conn: Conn, key: tuple[Any, ...], meta: PacketMeta, frame: memoryview | bytes,
                        pod: PodInfo, own: Endpoint, other: Endpoint, now: float) -> int | Drop:
        """The other end is no pod: a ClusterIP (a local server may see it too), or elsewhere."""
        p = pod.addr
        maybe_dnat = (conn.young and not conn.paired and conn.client == own and self._pods.locals > 1
                      and self._service(other[0]))
        if conn.owner is None:
            if not maybe_dnat or self._prefer_client:
                conn.owner, conn.owner_key, conn.owner_seen = p, pod.key, now
            elif self._index(conn, key, meta, frame, _CLIENT_SIDE, own, p, now):
                return Drop.OTHER_VANTAGE  # a local server's copy of this packet came first
            else:
                return self._queue(conn, p, now)  # wait for a local server's copy (prefer=server)
        if conn.owner == p:
            conn.owner_seen = now
            if conn.held is not None:
                self._resolve(conn, p)
            if maybe_dnat:
                self._index(conn, key, meta, frame, _CLIENT_SIDE, own, p, now)
            # A twin exists only if another local pod may be this connection's server (DNAT).
            return KEEP if conn.paired or self._pods.locals < 2 else CHECK
        return self._not_owner(conn, p, now)

    def _not_owner(self, conn: Conn, p: bytes, now: float) -> int | Drop:
        """A copy from the end that does not own the connection: drop, wait, or take over."""
        seen = self._last_seen(conn.owner_key)
        if seen is not None and now - seen <= self._live:
            if now - conn.owner_seen <= self._confirm:
                return Drop.OTHER_VANTAGE
            return self._queue(conn, p, now)
        conn.owner, conn.owner_seen = p, now  # the owner is not live: never suppress in its favour
        conn.owner_key = self._key_of(p)
        return KEEP if conn.paired else CHECK

    def _without_flow(self, meta: PacketMeta, pod: PodInfo, peer: PodInfo | None) -> int | Drop:
        """Across nodes: ICMP echo to the requester's node, anything else to the lower address's
        node. On one node: content dedup."""
        if peer is None or peer is pod or peer.local:
            return CHECK
        kind = _ECHO.get((meta.proto, meta.sport)) if meta.l4 >= 0 else None
        if kind is not None:
            pod_is_client = (meta.src in pod.addrs) == (kind == _REQUEST)
            return KEEP if pod_is_client == self._prefer_client else Drop.NOT_OWNER
        return KEEP if pod.addr < peer.addr else Drop.NOT_OWNER

    # ---- DNAT links ----------------------------------------------------------------------------
    def _index(self, conn: Conn, key: tuple[Any, ...], meta: PacketMeta, frame: memoryview | bytes, side: int,
               client: Endpoint, p: bytes, now: float) -> bool:
        """Look this young copy's content up among the other side's; link on a match (True when the
        connection is now owned by the other end), else index it for the other side to find."""
        conn.young -= 1
        mark = digest.compute(meta, frame)
        entry = self._recent.get(mark, now)
        if entry is not None:
            other, other_side, other_client, other_key = entry
            if other_side != side and other_client == client and other is not conn:
                if side == _CLIENT_SIDE:
                    owner = self._link(conn, key, other, other_key, now)
                else:
                    owner = self._link(other, other_key, conn, key, now)
                return owner != p
        self._recent.put(mark, (conn, side, client, key), now)
        return False

    def _link(self, c_conn: Conn, c_key: tuple[Any, ...], s_conn: Conn, s_key: tuple[Any, ...],
              now: float) -> bytes | None:
        """The client's tuple and the server's tuple are one connection: both keys share one
        ``Conn`` from now on, owned by the preferred end's pod (the first vantage of its tuple);
        copies held on either tuple were waiting for it. Returns the owner."""
        self.links += 1
        owner = c_conn.first if self._prefer_client else s_conn.first
        merged = s_conn
        merged.owner, merged.owner_key, merged.owner_seen = owner, self._key_of(owner or b""), now
        merged.paired, merged.young = True, 0
        for side in (c_conn, s_conn):
            if side.held is not None:
                self._resolve(side, owner)
        self._conns.put(c_key, merged, now)
        self._conns.put(s_key, merged, now)
        return owner

    def _service(self, addr: bytes) -> bool:
        if not self._services:
            return True
        ip = ipaddress.ip_address(addr)
        return any(ip in net for net in self._services)

    def _key_of(self, addr: bytes) -> str:
        pod = self._pods.by_addr(addr)
        return pod.key if pod is not None else ""

    # ---- holding -------------------------------------------------------------------------------
    def _queue(self, conn: Conn, p: bytes, now: float) -> int:
        """HOLD into ``conn`` (``hold`` stores the record), unless the bounds say decide now."""
        if conn.held is None:
            if self.held_bytes >= self._total_bytes:
                self.overflows += 1
                return self._decide_for(conn, p, now)
            conn.held, conn.held_from, conn.held_bytes, conn.deadline = [], p, 0, now + self._hold
            self._holding[id(conn)] = conn
        elif len(conn.held) >= self._flow_packets or conn.held_bytes >= self._flow_bytes \
                or self.held_bytes >= self._total_bytes:
            self.overflows += 1
            return self._decide_for(conn, p, now)
        self._pending = conn
        return HOLD

    def hold(self, record: Any, nbytes: int) -> None:
        """Store the record of the copy ``decide`` answered ``HOLD`` for."""
        conn = self._pending
        assert conn is not None and conn.held is not None
        conn.held.append((record, nbytes))
        conn.held_bytes += nbytes
        self.held_packets += 1
        self.held_bytes += nbytes
        self._pending = None

    def _take(self, conn: Conn) -> list[Any]:
        held = conn.held or []
        self._holding.pop(id(conn), None)
        conn.held, conn.held_from, conn.held_bytes = None, None, 0
        self.held_packets -= len(held)
        self.held_bytes -= sum(n for _, n in held)
        return [record for record, _ in held]

    def _resolve(self, conn: Conn, owner: bytes | None) -> None:
        """The owner's copy arrived: the held copies of the other end are dropped (and the owner's
        own, which cannot happen but would be released, never lost)."""
        mine = conn.held_from == owner
        (self._released if mine else self._dropped).extend(self._take(conn))
        self.fallout = True

    def _decide_for(self, conn: Conn, p: bytes, now: float) -> int:
        """Decide ``conn`` for vantage ``p`` now: its held copies go first, in order."""
        if conn.held is not None:
            self._released.extend(self._take(conn))
            self.fallout = True
        conn.owner, conn.owner_seen = p, now
        conn.owner_key = self._key_of(p)
        return CHECK

    def expire(self, now: float) -> list[Any]:
        """Release, in order, the held copies whose ``hold`` ended; their connections are decided for
        the held vantage. Run by the caller's timer even when no packet arrives."""
        out: list[Any] = []
        while self._holding:
            conn = next(iter(self._holding.values()))
            if conn.deadline > now:
                break
            p = conn.held_from
            out.extend(self._take(conn))
            if p is not None:
                conn.owner, conn.owner_seen, conn.owner_key = p, now, self._key_of(p)
        return out

    def release_all(self) -> list[Any]:
        """Every held copy, in order (shutdown: nothing is left uncounted)."""
        out: list[Any] = []
        for conn in list(self._holding.values()):
            out.extend(self._take(conn))
        return out


def _guess_client(a: Endpoint, b: Endpoint) -> Endpoint:
    """Without a handshake: the client is the end with the higher port (ephemeral ports are high;
    the same rule steers a connection's copies to one worker), the higher address on a tie."""
    if a[1] != b[1]:
        return a if a[1] > b[1] else b
    return a if a[0] > b[0] else b
