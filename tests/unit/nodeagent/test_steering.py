"""steering.program: every copy of a flow gets one worker index; packets without ports get worker 0.

The program runs here through the agent's cBPF-to-Python translation (``bpfexpr``, checked against
a reference interpreter in its own tests); the kernel runs it in
``tests/component/test_steering_group.py``.
"""

from __future__ import annotations

import collections

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.sctp import SCTP

from nodeagent.adapters import steering
from nodeagent.stages import bpfexpr
from nodeagent.wire import vxlan
from sidecar_lite import cbpf

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def worker(packet: object, workers: int, vni: int = 5) -> int:
    """The index the program returns for ``packet`` in a VXLAN datagram (the UDP payload)."""
    payload = vxlan.encode(vni, bytes(packet))  # type: ignore[call-overload]
    return bpfexpr.to_function(steering.program(workers))(payload)


def test_program_is_valid_classic_bpf_for_every_group_size() -> None:
    for n in (1, 2, 3, 16, 1024):
        cbpf.validate(steering.program(n))
    with pytest.raises(ValueError):
        steering.program(0)


@pytest.mark.parametrize("workers", [2, 3, 16])
def test_the_four_copies_of_a_dnated_flow_get_one_worker(workers: int) -> None:
    """Client vantage before DNAT (ClusterIP:80), server vantage after (pod:8080), both directions."""
    for cport in range(40000, 40400, 2):
        copies = [
            Ether(**MACS) / IP(src="10.0.0.5", dst="10.96.0.10") / TCP(sport=cport, dport=80),
            Ether(**MACS) / IP(src="10.96.0.10", dst="10.0.0.5") / TCP(sport=80, dport=cport),
            Ether(**MACS) / IP(src="10.0.0.5", dst="10.0.0.9", ttl=63) / TCP(sport=cport, dport=8080),
            Ether(**MACS) / IP(src="10.0.0.9", dst="10.0.0.5") / TCP(sport=8080, dport=cport),
        ]
        assert len({worker(c, workers, vni=v) for c, v in zip(copies, (5, 5, 9, 9), strict=True)}) == 1


def test_snat_keeps_the_worker_when_the_port_is_kept() -> None:
    """Masquerade changes the client's address, not (unless it clashes) its port."""
    before = Ether(**MACS) / IP(src="10.0.0.5", dst="10.0.0.9") / UDP(sport=51000, dport=53)
    after = Ether(**MACS) / IP(src="192.168.1.1", dst="10.0.0.9") / UDP(sport=51000, dport=53)
    assert worker(before, 4) == worker(after, 4)


def test_ipv6_ports_and_sctp_are_steered_like_ipv4() -> None:
    v4 = Ether(**MACS) / IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=45678, dport=443)
    v6 = Ether(**MACS) / IPv6(src="fd00::5", dst="fd00::9") / TCP(sport=45678, dport=443)
    v6_reply = Ether(**MACS) / IPv6(src="fd00::9", dst="fd00::5") / TCP(sport=443, dport=45678)
    assert worker(v4, 8) == worker(v6, 8) == worker(v6_reply, 8)
    sctp = {worker(Ether(**MACS) / IP(src="10.0.0.5", dst="10.0.0.9") / SCTP(sport=p, dport=3868), 8)
            for p in range(45000, 45040)}
    assert len(sctp) > 1, "SCTP has ports: its flows spread"


def test_packets_without_ports_or_unparsed_go_to_worker_zero() -> None:
    fragments = IP(src="10.0.0.5", dst="10.0.0.9", id=7) / UDP(sport=41001, dport=53) / (b"x" * 3000)
    frags = [Ether(**MACS) / f for f in fragment(fragments, fragsize=1000)]
    cases = [
        Ether(**MACS) / IP(src="10.0.0.5", dst="10.0.0.9") / ICMP(),
        Ether(**MACS) / IPv6(src="fd00::5", dst="fd00::9") / b"\x80\x00\x00\x00\x00\x01\x00\x01",
        Ether(**MACS) / ARP(psrc="10.0.0.5", pdst="10.0.0.9"),
        Ether(**MACS) / Dot1Q(vlan=3) / IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=41001, dport=80),
        *frags,
    ]
    for packet in cases:
        for n in (2, 5):
            assert worker(packet, n) == 0, packet.summary()
    assert bpfexpr.to_function(steering.program(4))(vxlan.header(5) + b"short") == 0


def test_even_client_ports_spread_over_the_workers() -> None:
    """Linux gives connect() even ports first: the hash must not follow the port's parity."""
    for n in (2, 3, 4):
        counts = collections.Counter(
            worker(Ether(**MACS) / IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=p, dport=80), n)
            for p in range(32768, 32768 + 2 * 600, 2))
        assert len(counts) == n
        assert min(counts.values()) > 0.7 * 600 / n, counts
