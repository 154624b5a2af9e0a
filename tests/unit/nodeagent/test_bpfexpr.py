"""The generated cBPF evaluator agrees with the tests' reference interpreter (``tests/cbpf_reference``)."""

from __future__ import annotations

import functools
import random

import pytest

from nodeagent.stages import bpfexpr
from sidecar_lite import cbpf
from tests import cbpf_reference
from tests.unit.nodeagent.pipeline_packets import ARP, ICMP, IP, UDP, Dot1Q, IPv6, eth, tcp, udp

EXPRESSIONS = [
    "tcp port 80", "udp and not port 53", "ip[6:2] & 0x1fff != 0 or udp", "tcp[tcpflags] & tcp-syn != 0",
    "vlan and tcp", "ip6 and tcp", "net 10.0.0.0/8 and not port 22", "icmp or arp", "greater 100",
    "ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2) > 0", "portrange 8000-8100 or src host 10.0.0.5",
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420", "udp[8:1] & 0xc0 = 0xc0 and udp[9:4] = 1",
    "ip6 dst net fd00::/64 and tcp", "(ip[1] % 4) * 3 / 2 - 1 = 3 or ip[8] ^ 3 = 0",
]


@functools.cache
def packets() -> tuple[bytes, ...]:
    rng = random.Random(7)
    out = [bytes(tcp("10.0.0.5", "10.0.0.9", dport=80, flags="S")),
           bytes(tcp("10.0.0.5", "10.0.0.9", dport=8050, payload=b"GET / HTTP/1.1\r\n")),
           bytes(udp("10.0.0.5", "10.96.0.10")),
           bytes(udp("192.168.1.1", "10.0.0.9", dport=443, payload=b"\xc3\x00\x00\x00\x01" + b"x" * 40)),
           bytes(tcp("10.0.0.5", "10.0.0.9", sport=22, payload=b"x" * 200)),
           bytes(tcp("1.2.3.4", "10.0.0.9", ttl=3)),
           bytes(eth() / ARP(psrc="10.0.0.5", pdst="10.0.0.1")),
           bytes(eth() / Dot1Q(vlan=5) / tcp("10.0.0.5", "10.0.0.9")[IP]),
           bytes(eth() / IPv6(src="fd00::5", dst="fd00::9") / UDP() / b"hello"),
           bytes(eth() / IPv6(src="fd00::5", dst="fd00::9") / tcp("1.1.1.1", "2.2.2.2")[2]),
           bytes(eth() / IP(src="10.0.0.5", dst="10.0.0.9", frag=3, proto=17) / b"fragment"),
           bytes(eth() / IP(src="10.0.0.5", dst="10.0.0.9", tos=3) / ICMP() / b"ping")]
    for _ in range(200):  # random mutations: truncations and byte flips hit the out-of-bounds paths
        base = bytearray(rng.choice(out))
        if rng.random() < 0.5:
            base = base[: rng.randrange(0, len(base) + 1)]
        for _ in range(rng.randrange(0, 4)):
            if base:
                base[rng.randrange(len(base))] = rng.randrange(256)
        out.append(bytes(base))
    return tuple(out)


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_generated_code_agrees_with_reference_interpreter(expression: str) -> None:
    program = bpfexpr.compile_expression(expression)
    fast = bpfexpr.to_function(program)
    results = [(fast(p), cbpf_reference.run(program, p)) for p in packets()]
    assert all(f == r for f, r in results)
    assert any(f for f, _ in results) or expression in ("greater 100",)  # the corpus exercises matches


def test_handwritten_programs_cover_scratch_memory_division_and_txa() -> None:
    program = (
        (0x80, 0, 0, 0),       # A = len
        (0x02, 0, 0, 3),       # M[3] = A
        (0x01, 0, 0, 0),       # X = 0
        (0x3C, 0, 0, 0),       # A /= X  (division by zero: return 0)
        (0x16, 0, 0, 0),       # ret A
    )
    fast = bpfexpr.to_function(program)
    assert fast(b"abc") == cbpf_reference.run(program, b"abc") == 0
    program = ((0x80, 0, 0, 0), (0x07, 0, 0, 0), (0x87, 0, 0, 0), (0x02, 0, 0, 1),
               (0x60, 0, 0, 1), (0x94, 0, 0, 7), (0x16, 0, 0, 0))
    fast = bpfexpr.to_function(program)
    for size in range(20):
        assert fast(bytes(size)) == cbpf_reference.run(program, bytes(size)) == size % 7


def test_long_chains_of_joins_compile_without_hitting_indentation_limits() -> None:
    # 300 alternating tests, each branch joining the next: a deep DAG.
    body: list[tuple[int, int, int, int]] = []
    for i in range(300):
        body.append((0x30, 0, 0, i % 60))             # A = p[i % 60]
        body.append((0x15, 0, 0, i % 256))            # if A == i: fall through either way (joins)
    body.append((0x06, 0, 0, 1))
    fast = bpfexpr.to_function(tuple(body))
    assert fast(bytes(60)) == 1 and fast(bytes(10)) == 0


def test_a_syntax_error_is_a_bpf_error() -> None:
    with pytest.raises(cbpf.BpfError, match="syntax error"):
        bpfexpr.compile_expression("tcp portx 80")


@pytest.mark.parametrize("program", [(), ((0x15, 5, 0, 1), (0x06, 0, 0, 0)), ((0x30, 0, 0, 0),),
                                     ((0x20, 0, 0, 0xFFFFF004), (0x06, 0, 0, 1)),
                                     ((0x0E, 0, 0, 0),), ((0x02, 0, 0, 16), (0x06, 0, 0, 0))])
def test_invalid_programs_are_rejected(program: cbpf.Program) -> None:
    with pytest.raises(cbpf.BpfError):
        bpfexpr.to_function(program)


def test_accepts_memoryview_and_bytes_alike() -> None:
    fast = bpfexpr.to_function(bpfexpr.compile_expression("tcp dst port 80"))
    frame = bytes(tcp("10.0.0.5", "10.0.0.9"))
    assert fast(frame) == fast(memoryview(frame)) != 0
