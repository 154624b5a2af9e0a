"""The tunnel exclusion and mirror programs, run by the reference cBPF interpreter on scapy frames."""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether

from sidecar_lite import bpf, cbpf
from tests import cbpf_reference

AGENT, PORT, POD = "10.77.0.1", 14789, "10.77.0.2"


def verdict(frame: bytes, pushed: cbpf.Program | None = None) -> int:
    return cbpf_reference.run(bpf.mirror_program(AGENT, PORT, pushed), frame)


def eth() -> Ether:
    return Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def test_tunnel_datagram_is_skipped() -> None:
    frame = bytes(eth() / IP(src=POD, dst=AGENT) / UDP(sport=40000, dport=PORT) / (b"\x08" + b"\0" * 60))
    assert verdict(frame) == 0


def test_every_fragment_of_a_large_tunnel_datagram_is_skipped() -> None:
    packet = IP(src=POD, dst=AGENT, flags=0) / UDP(sport=40000, dport=PORT) / (b"x" * 4000)
    frags = fragment(packet, fragsize=1400)
    assert len(frags) >= 3
    assert [verdict(bytes(eth() / f)) for f in frags] == [0] * len(frags)


@pytest.mark.parametrize(
    "packet",
    [
        IP(src=POD, dst=AGENT)
        / UDP(sport=5353, dport=53)
        / b"dns?",  # UDP to the agent's host, not the tunnel
        IP(src=POD, dst="10.77.0.9") / UDP(sport=40000, dport=PORT) / b"x",  # tunnel port, other host
        IP(src=POD, dst=AGENT) / TCP(dport=PORT),
        IP(src=POD, dst=AGENT) / ICMP(),
        IP(src=AGENT, dst=POD) / UDP(sport=PORT, dport=PORT) / b"x",  # from the agent
        IPv6(src="fd77::2", dst="fd77::1") / ICMPv6EchoRequest(),
        ARP(psrc=POD, pdst=AGENT),
    ],
    ids=["dns-to-agent-host", "port-elsewhere", "tcp", "icmp", "from-agent", "ipv6", "arp"],
)
def test_other_traffic_is_mirrored_whole(packet: object) -> None:
    assert verdict(bytes(eth() / packet)) == cbpf.SNAPLEN


def test_first_fragment_of_other_udp_to_agent_is_mirrored() -> None:
    frags = fragment(IP(src=POD, dst=AGENT) / UDP(dport=53) / (b"x" * 3000), fragsize=1400)
    assert verdict(bytes(eth() / frags[0])) == cbpf.SNAPLEN


def test_pushed_program_runs_after_the_exclusion() -> None:
    # "not udp port 5353" compiled by libpcap, as the agent would push it.
    from scapy.arch.common import compile_filter

    pushed = cbpf.parse([list(i) for i in _insns(compile_filter("not udp port 5353", linktype=1))])
    mdns = bytes(eth() / IP(src=POD, dst="224.0.0.251") / UDP(sport=5353, dport=5353) / b"q")
    dns = bytes(eth() / IP(src=POD, dst="10.77.0.1") / UDP(sport=4444, dport=53) / b"q")
    tunnel = bytes(eth() / IP(src=POD, dst=AGENT) / UDP(sport=1, dport=PORT) / b"q")
    assert verdict(mdns, pushed) == 0
    assert verdict(dns, pushed) != 0
    assert verdict(tunnel, pushed) == 0


def _insns(fprog: object) -> list[tuple[int, int, int, int]]:
    length = fprog.bf_len  # type: ignore[attr-defined]
    return [(i.code, i.jt, i.jf, i.k) for i in fprog.bf_insns[:length]]  # type: ignore[attr-defined]


def test_drop_all_returns_shot() -> None:
    assert cbpf_reference.run(bpf.drop_all(), b"\0" * 60) == bpf.TC_ACT_SHOT


def test_the_exclusion_leaves_room_for_the_longest_pushed_program() -> None:
    pushed = cbpf.REJECT_ALL * cbpf.MAX_PUSHED_INSNS
    assert len(bpf.tunnel_exclusion(AGENT, PORT)) == cbpf.EXCLUSION_INSNS
    assert len(cbpf.validate(bpf.mirror_program(AGENT, PORT, pushed))) == cbpf.MAX_INSNS


def test_socket_filter_attaches_on_a_plain_socket() -> None:
    # SO_ATTACH_FILTER works on any socket, so the packing is checked by the kernel without root.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        bpf.attach_socket_filter(sock, bpf.mirror_program(AGENT, PORT))
        bpf.attach_socket_filter(sock, bpf.mirror_program(AGENT, PORT, (cbpf.Instruction(6, 0, 0, 0),)))
