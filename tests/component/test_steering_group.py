"""steering.open_sockets: the kernel runs the steering program for a real SO_REUSEPORT group on loopback.

Two "sidecars" (two source addresses) send every copy of many flows (client vantage before DNAT,
server vantage after, both directions); each flow's copies must all arrive on one socket of the
group, the flows must spread over every socket, and packets without ports must reach socket 0.
"""

from __future__ import annotations

import collections
import select
import socket
import time

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from nodeagent.adapters import steering
from nodeagent.settings import ListenSettings
from nodeagent.wire import vxlan

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def _copies(cport: int) -> list[tuple[str, bytes]]:
    client, server = "127.0.0.1", "127.0.0.2"
    frames = [
        (client, Ether(**MACS) / IP(src="10.0.0.5", dst="10.96.0.10") / TCP(sport=cport, dport=80)),
        (client, Ether(**MACS) / IP(src="10.96.0.10", dst="10.0.0.5") / TCP(sport=80, dport=cport)),
        (server, Ether(**MACS) / IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=cport, dport=8080)),
        (server, Ether(**MACS) / IP(src="10.0.0.9", dst="10.0.0.5") / TCP(sport=8080, dport=cport)),
    ]
    return [(src, vxlan.encode(5, bytes(f))) for src, f in frames]


def _receive_all(socks: list[socket.socket], expected: int) -> dict[int, list[bytes]]:
    got: dict[int, list[bytes]] = collections.defaultdict(list)
    deadline = time.monotonic() + 5
    while sum(len(v) for v in got.values()) < expected and time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 0.1)
        for sock in ready:
            while True:
                try:
                    got[socks.index(sock)].append(sock.recv(65536))
                except BlockingIOError:
                    break
    return got


def test_every_copy_of_a_flow_reaches_one_socket_of_the_group() -> None:
    socks = steering.open_sockets(ListenSettings(host="127.0.0.1", port=0, rcvbuf=1 << 20), 3)
    senders = {}
    try:
        port = socks[0].getsockname()[1]
        assert {s.getsockname()[1] for s in socks} == {port}
        for source in ("127.0.0.1", "127.0.0.2"):
            senders[source] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            senders[source].bind((source, 0))
        flows = {cport: _copies(cport) for cport in range(40000, 40240, 2)}
        icmp = vxlan.encode(5, bytes(Ether(**MACS) / IP(src="10.0.0.5", dst="10.0.0.9") / ICMP(id=7)))
        sent = 0
        for copies in flows.values():
            for source, datagram in copies:
                senders[source].sendto(datagram, ("127.0.0.1", port))
                sent += 1
        for _ in range(10):
            senders["127.0.0.2"].sendto(icmp, ("127.0.0.1", port))
        got = _receive_all(socks, sent + 10)
        where = {datagram: index for index, datagrams in got.items() for datagram in datagrams}
        for cport, copies in flows.items():
            assert len({where[d] for _, d in copies}) == 1, f"flow {cport} split across sockets"
        per_socket = collections.Counter(where[copies[0][1]] for copies in flows.values())
        assert set(per_socket) == {0, 1, 2} and min(per_socket.values()) > 10, per_socket
        assert got[0].count(icmp) == 10, "packets without ports: all on socket 0"
        assert sum(len(v) for v in got.values()) == sent + 10
    finally:
        for sock in (*socks, *senders.values()):
            sock.close()


def test_a_socket_joining_the_group_later_is_never_chosen() -> None:
    socks = steering.open_sockets(ListenSettings(host="127.0.0.1", port=0, rcvbuf=1 << 20), 2)
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        port = socks[0].getsockname()[1]
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        intruder.bind(("127.0.0.1", port))
        intruder.setblocking(False)
        count = 0
        for cport in range(41000, 41200):
            for _, datagram in _copies(cport)[:1]:
                tx.sendto(datagram, ("127.0.0.1", port))
                count += 1
        got = _receive_all([*socks, intruder], count)
        assert not got.get(2) and sum(len(v) for v in got.values()) == count
    finally:
        for sock in (*socks, intruder, tx):
            sock.close()
