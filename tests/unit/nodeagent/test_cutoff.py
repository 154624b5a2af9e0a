"""Encrypted flows on any port: handshake and budget whole, then headers only or nothing."""

from __future__ import annotations

from nodeagent.stages import cutoff
from nodeagent.stages.cutoff import Cutoff
from tests.unit.nodeagent.pipeline_packets import meta, tcp, udp

TLS_HELLO = b"\x16\x03\x01\x00\xc8" + b"\x01" * 200
QUIC_INITIAL = b"\xc3\x00\x00\x00\x01" + b"\x00" * 1195


VANTAGE, OTHER_END = b"\x0a\x00\x00\x05", b"\x0a\x00\x00\x09"


def apply(c: Cutoff, frame: bytes, now: float = 0.0, vantage: bytes = VANTAGE) -> int:
    return c.apply(meta(frame), frame, vantage, now)


def test_tls_on_a_non_standard_port_is_cut_to_headers_after_the_budget() -> None:
    c = Cutoff(budget=1000, after="headers")
    hello = bytes(tcp("10.0.0.5", "10.0.0.9", dport=9443, payload=TLS_HELLO))
    assert apply(c, hello) == cutoff.FORWARD
    data = bytes(tcp("10.0.0.5", "10.0.0.9", dport=9443, seq=2000, payload=b"\x17" * 900))
    assert apply(c, data) == cutoff.FORWARD  # 205 + 900 bytes: the budget is crossed by this one
    later = tcp("10.0.0.5", "10.0.0.9", dport=9443, seq=3000, payload=b"\x17" * 500)
    cut = apply(c, bytes(later))
    assert cut == 14 + 20 + 20 == meta(bytes(later)).payload
    reply = bytes(tcp("10.0.0.9", "10.0.0.5", sport=9443, dport=40000, payload=b"\x16\x03\x03" + b"s" * 800))
    assert apply(c, reply) == cutoff.FORWARD  # the other direction has its own budget


def test_drop_mode_drops_payload_but_keeps_fin_and_rst_headers() -> None:
    c = Cutoff(budget=30, after="drop")
    assert apply(c, bytes(tcp("10.0.0.5", "10.0.0.9", dport=2222, payload=b"SSH-2.0-OpenSSH_9.2\r\n"))) == 0
    crossing = bytes(tcp("10.0.0.5", "10.0.0.9", dport=2222, payload=b"x" * 100))
    assert apply(c, crossing) == cutoff.FORWARD  # 21 + 100 bytes: crosses the budget of 30
    assert apply(c, crossing) == cutoff.CUT
    assert apply(c, bytes(tcp("10.0.0.5", "10.0.0.9", dport=2222, flags="A"))) == cutoff.CUT
    fin = bytes(tcp("10.0.0.5", "10.0.0.9", dport=2222, flags="FA", payload=b"x" * 10))
    assert apply(c, fin) == meta(fin).payload


def test_quic_long_header_marks_a_udp_flow_encrypted() -> None:
    c = Cutoff(budget=1200, after="headers")
    assert apply(c, bytes(udp("10.0.0.5", "1.1.1.1", dport=8443, payload=QUIC_INITIAL))) == 0
    short = bytes(udp("10.0.0.5", "1.1.1.1", dport=8443, payload=b"\x41" + b"q" * 300))
    assert apply(c, short) == meta(short).payload


def test_clear_flows_are_never_cut_even_if_a_later_payload_looks_like_tls() -> None:
    c = Cutoff(budget=10, after="drop")
    assert apply(c, bytes(tcp("10.0.0.5", "10.0.0.9", payload=b"GET / HTTP/1.1\r\n"))) == 0
    for i in range(5):
        frame = bytes(tcp("10.0.0.5", "10.0.0.9", seq=5000 + i, payload=TLS_HELLO))
        assert apply(c, frame) == cutoff.FORWARD


def test_a_pods_fake_tls_hello_does_not_cut_the_other_ends_copies() -> None:
    """Cutoff poisoning: pod 10.0.0.5 forges a TLS hello on its flow with 10.0.0.9 before the real
    cleartext; the state is per vantage, so 10.0.0.9's copies of that flow stay whole."""
    c = Cutoff(budget=10, after="drop")
    forged = bytes(tcp("10.0.0.5", "10.0.0.9", dport=8080, payload=TLS_HELLO))
    assert apply(c, forged, vantage=VANTAGE) == cutoff.FORWARD
    clear = bytes(tcp("10.0.0.5", "10.0.0.9", dport=8080, seq=9000, payload=b"GET /secret HTTP/1.1\r\n" * 4))
    assert apply(c, clear, vantage=VANTAGE) == cutoff.CUT  # the poisoner may do that to its own copies
    for i in range(5):
        assert apply(c, clear, now=i, vantage=OTHER_END) == cutoff.FORWARD  # never to the other end's


def test_flow_state_is_bounded() -> None:
    c = Cutoff(budget=10, capacity=2)
    for port in range(3):
        apply(c, bytes(tcp("10.0.0.5", "10.0.0.9", sport=40000 + port, payload=TLS_HELLO)))
    assert c.evictions == 1


def test_headers_only_is_a_valid_packet_with_fixed_lengths_and_checksums() -> None:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    for pkt in (tcp("10.0.0.5", "10.0.0.9", dport=9443, flags="PA", payload=b"\x17" * 700),
                udp("10.0.0.5", "1.1.1.1", dport=443, payload=b"\x41" * 300),
                Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IPv6(src="fd00::5", dst="fd00::9")
                / TCP(sport=1, dport=2, flags="A", seq=77) / (b"x" * 900)):
        frame = bytes(pkt)
        m = meta(frame)
        out = bytes(cutoff.headers_only(frame, m))
        assert len(out) == m.payload
        parsed = Ether(out)
        again = Ether(out)  # a second parse whose checksums we delete and let scapy recompute
        if IP in parsed:
            ip_ok = parsed[IP].len == len(out) - 14
            del again[IP].chksum
            ip_ok = ip_ok and Ether(bytes(again))[IP].chksum == parsed[IP].chksum
        else:
            ip_ok = parsed[IPv6].plen == len(out) - 54
        l4 = TCP if TCP in parsed else UDP
        del again[l4].chksum
        assert ip_ok and Ether(bytes(again))[l4].chksum == parsed[l4].chksum
        if l4 is TCP:
            assert parsed[TCP].seq == Ether(frame)[TCP].seq and parsed[TCP].flags == Ether(frame)[TCP].flags
