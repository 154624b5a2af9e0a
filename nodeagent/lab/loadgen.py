"""Offered load for the benchmarks: many flows of mixed sizes as sidecars mirror them, sent at a rate.

``mix(...)`` builds, once and without scapy, the VXLAN datagrams of a node's mirrored traffic
(``Mix``): ``flows`` TCP flows (default 10,000) between monitored pods and outside hosts,

- a share ``intra`` between two monitored pods of the node through a Service: every packet is
  mirrored twice, by the client's sidecar before kube-proxy's DNAT (``client:cport ->
  VIP:80``) and by the server's after it (``client:cport -> server:8080``), both directions;
- the rest between a pod and an outside address (one copy each), a fifth of them TLS on 443
  (the first payload is a TLS record, so the encrypted-flow cutoff recognises them);
- frame sizes from the simple IMIX of RFC 6985 (60, 590 and 1514 bytes, Ethernet without FCS, in
  the ratio 7:4:1: mean 354 bytes), whatever the direction;
- L4 checksums as tc mirred copies them: *partial* (pseudo-header sum only) on frames a pod sent
  (locally generated), complete on frames that came from outside the node;
- sequence numbers advancing per flow, so consecutive packets of a flow are distinct.

Each pod's datagrams leave from the pod's own address (the agent accepts a tunnel only from its
pod), grouped in runs of ``RUN`` per system call (``mmsg.SendBatch``: prepared once, so sending
costs the generator almost nothing in Python), the pods' runs interleaved: a packet's two
copies leave within a few runs of each other, microseconds apart, as in kernel mode.

``send(...)`` is the generator process's loop: it offers the mix, round after round, at ``rate``
datagrams per second (an absolute schedule: a late run is caught up, never skipped) for
``seconds``, and reports what the kernel took (``sent``), in packets and bytes. What the socket
buffer of a saturated receiver refuses is the receiver's loss, counted on its side.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import socket
import struct
import time
from collections.abc import Iterator, Sequence

from nodeagent.adapters import mmsg
from nodeagent.wire import headers, normalize, vxlan

RUN = 32
"""Datagrams per sendmmsg call (one pod's run)."""
IMIX = ((60, 7), (590, 4), (1514, 1))
"""Simple IMIX (RFC 6985 section 4 lists it as 64/594/1518 with the FCS)."""
ETH = struct.Struct("!6s6sH")
IPV4 = struct.Struct("!BBHHHBBH4s4s")
TCP = struct.Struct("!HHIIBBHHH")
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@dataclasses.dataclass
class Mix:
    """The datagrams, by sender address, and how to send them."""

    senders: list[str]
    """Tunnel source addresses (the monitored pods), one socket each."""
    runs: list[tuple[int, int, int]]
    """(sender index, first datagram, count) in sending order; indexes into ``datagrams``."""
    datagrams: list[bytes]
    flows: int

    @property
    def packets(self) -> int:
        return len(self.datagrams)

    @property
    def bytes(self) -> int:
        return sum(len(d) for d in self.datagrams)


def frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, size: int, payload_head: bytes,
          partial: bool, ident: int) -> bytes:
    """An Ethernet/IPv4/TCP frame of ``size`` bytes (ACK|PSH, payload ``payload_head`` then zeros),
    its TCP checksum partial or complete, its IPv4 header checksum complete."""
    payload_len = max(0, size - 54)
    payload = (payload_head + bytes(payload_len))[:payload_len]
    flags = 0x18 if payload_len else 0x10
    ip = bytearray(IPV4.pack(0x45, 0, 40 + payload_len, ident & 0xFFFF, 0x4000, 64, 6, 0, src, dst))
    struct.pack_into("!H", ip, 10, normalize.finish(normalize.ones_sum(ip)))
    tcp = bytearray(TCP.pack(sport, dport, seq & 0xFFFFFFFF, 1, 0x50, flags, 502, 0, 0))
    out = bytearray(ETH.pack(MAC_B, MAC_A, 0x0800) + ip + tcp + payload)
    meta = headers.decode(bytes(out))
    if partial:
        value = normalize.pseudo_sum(meta, meta.end - meta.l4) or 0xFFFF
    else:
        value = normalize.l4_checksum(out, meta, meta.end)
    struct.pack_into("!H", out, meta.l4 + 16, value)
    return bytes(out)


FIXED, HEAVY = "fixed", "heavy"
"""Flow lengths: ``packets_per_flow`` each, or heavy-tailed (``heavy_length``)."""
HEAVY_SHAPE, HEAVY_MIN, HEAVY_MAX = 1.1, 2, 2000
"""Bounded Pareto flow lengths in packets: most flows are a few packets, most packets belong to
long flows, the shape data-centre measurements report (Benson, Akella and Maltz, "Network Traffic
Characteristics of Data Centers in the Wild", IMC 2010: most flows are small and short, sizes
heavy-tailed; Alizadeh et al., "Data Center TCP", SIGCOMM 2010: many short query flows beside a
few long background flows that carry most bytes). The parameters are ours, not fitted to a trace.
With these parameters the median flow has 3 packets,
95% have at most 30, the mean is about 11, and flows longer than 33 packets (about 10 KB of this
mix's frames) carry half of the packets."""
CONCURRENT = 256
"""Flows in progress at once in the heavy-tailed mix: packets of concurrent flows interleave."""


def heavy_length(rng: random.Random) -> int:
    """A flow's packet count from the bounded Pareto distribution above (inverse transform)."""
    u = rng.random()
    low, high, a = HEAVY_MIN, HEAVY_MAX, HEAVY_SHAPE
    n = low / (1 - u * (1 - (low / high) ** a)) ** (1 / a)
    return int(n)


def mix(pods: Sequence[tuple[str, int]], *, flows: int = 10_000, packets_per_flow: int = 4,
        intra: float = 0.4, vip: str = "10.96.0.10", outside: str = "192.0.2.0", seed: int = 1,
        lengths: str = FIXED) -> Mix:
    """``pods``: (address, VNI) of the monitored pods, at least two (see the module docstring).
    ``lengths``: ``FIXED`` (``packets_per_flow`` each, one flow after the other) or ``HEAVY``
    (``heavy_length`` each, ``CONCURRENT`` flows interleaved)."""
    rng = random.Random(seed)
    sizes = [size for size, weight in IMIX for _ in range(weight)]
    per_flow: list[list[list[tuple[int, bytes]]]] = []
    """Per flow, per packet: its copies (pod index, datagram)."""
    packed = [socket.inet_aton(ip) for ip, _ in pods]
    outside_base = int.from_bytes(socket.inet_aton(outside), "big")
    ident = 0

    def mirror(pod: int, src: bytes, dst: bytes, sport: int, dport: int, seq: int, size: int, head: bytes,
               partial: bool) -> tuple[int, bytes]:
        """One sidecar's copy of the current packet (``ident``: both copies of a packet share it)."""
        return pod, vxlan.encode(pods[pod][1], frame(src, dst, sport, dport, seq, size, head, partial, ident))

    for f in range(flows):
        client, cport = rng.randrange(len(pods)), 32768 + rng.randrange(28000)
        c_ip, seq = packed[client], [rng.getrandbits(32), rng.getrandbits(32)]
        packets: list[list[tuple[int, bytes]]] = []
        per_flow.append(packets)
        if rng.random() < intra:  # the client's copy shows the VIP, the server's the pod (after DNAT)
            server = (client + 1 + rng.randrange(len(pods) - 1)) % len(pods)
            s_ip, v_ip = packed[server], socket.inet_aton(vip)
            for n in range(packets_per_flow if lengths == FIXED else heavy_length(rng)):
                size, up, ident = rng.choice(sizes), n % 2, ident + 1
                head = b"GET /item HTTP/1.1\r\n" if n == 0 else b""
                if up == 0:
                    packets.append([mirror(client, c_ip, v_ip, cport, 80, seq[0], size, head, True),
                                    mirror(server, c_ip, s_ip, cport, 8080, seq[0], size, head, True)])
                else:
                    packets.append([mirror(server, s_ip, c_ip, 8080, cport, seq[1], size, head, True),
                                    mirror(client, v_ip, c_ip, 80, cport, seq[1], size, head, True)])
                seq[up] += max(0, size - 54)
            continue
        remote = (outside_base + 1 + f % 250).to_bytes(4, "big")
        tls = rng.random() < 0.2
        rport = 443 if tls else 80
        for n in range(packets_per_flow if lengths == FIXED else heavy_length(rng)):
            size, up, ident = rng.choice(sizes), n % 2, ident + 1
            if n == 0:
                head = TLS_HELLO if tls else b"GET / HTTP/1.1\r\n"
            else:
                head = b"\x17\x03\x03" if tls else b""
            if up == 0:  # sent by the pod: partial checksum; received from outside: complete
                packets.append([mirror(client, c_ip, remote, cport, rport, seq[0], size, head, True)])
            else:
                packets.append([mirror(client, remote, c_ip, rport, cport, seq[1], size, head, False)])
            seq[up] += max(0, size - 54)
    per_pod: list[list[bytes]] = [[] for _ in pods]
    for copies in _in_order(per_flow) if lengths == FIXED else _concurrent(per_flow, rng):
        for pod, datagram in copies:
            per_pod[pod].append(datagram)
    return _interleave([ip for ip, _ in pods], per_pod, flows)


def _in_order(per_flow: list[list[list[tuple[int, bytes]]]]) -> Iterator[list[tuple[int, bytes]]]:
    for packets in per_flow:
        yield from packets


def _concurrent(per_flow: list[list[list[tuple[int, bytes]]]],
                rng: random.Random) -> Iterator[list[tuple[int, bytes]]]:
    """Packets of ``CONCURRENT`` flows in progress at once, each step one random flow's next packet;
    a finished flow's place goes to the next flow."""
    waiting = iter(per_flow)
    active = [iter(packets) for packets in itertools.islice(waiting, CONCURRENT)]
    while active:
        index = rng.randrange(len(active))
        packet = next(active[index], None)
        if packet is not None:
            yield packet
            continue
        following = next(waiting, None)
        if following is None:
            active[index] = active[-1]
            active.pop()
        else:
            active[index] = iter(following)


def _interleave(senders: list[str], per_pod: list[list[bytes]], flows: int) -> Mix:
    datagrams: list[bytes] = []
    runs: list[tuple[int, int, int]] = []
    cursors = [0] * len(per_pod)
    while any(c < len(q) for c, q in zip(cursors, per_pod, strict=True)):
        for index, queue in enumerate(per_pod):
            chunk = queue[cursors[index] : cursors[index] + RUN]
            if chunk:
                runs.append((index, len(datagrams), len(chunk)))
                datagrams.extend(chunk)
                cursors[index] += len(chunk)
    return Mix(senders, runs, datagrams, flows)


@dataclasses.dataclass
class Sent:
    packets: int
    bytes: int
    seconds: float
    cpu_seconds: float
    started: float
    """``time.monotonic()`` of the first send (the clock is system-wide: comparable across processes)."""

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0

    @property
    def bps(self) -> float:
        return 8 * self.bytes / self.seconds if self.seconds else 0.0


def send(the_mix: Mix, target: tuple[str, int], rate: float, seconds: float) -> Sent:
    """Offer ``the_mix`` to ``target`` at ``rate`` datagrams/s for ``seconds`` (0: as fast as the
    kernel takes them); returns what was sent. Runs in the calling process (the generator)."""
    batch = mmsg.SendBatch(the_mix.datagrams)
    socks = []
    for address in the_mix.senders:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((address, 0))
        sock.connect(target)
        socks.append(sock)
    fds = [s.fileno() for s in socks]
    sizes = batch.sizes
    run_bytes = [sum(sizes[first : first + count]) for _, first, count in the_mix.runs]
    packets = nbytes = 0
    cpu0, start = time.process_time(), time.monotonic()
    deadline = start + seconds
    try:
        while True:
            for (sender, first, count), size in zip(the_mix.runs, run_bytes, strict=True):
                now = time.monotonic()
                if now >= deadline:
                    return Sent(packets, nbytes, now - start, time.process_time() - cpu0, start)
                if rate:
                    due = start + packets / rate
                    if due > now:
                        time.sleep(due - now)
                sent = batch.send(fds[sender], first, count)
                packets += sent
                nbytes += size if sent == count else sum(sizes[first : first + sent])
    finally:
        for sock in socks:
            sock.close()
