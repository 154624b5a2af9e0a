"""wire/headers: Ethernet/802.1Q/IPv4/IPv6/TCP/UDP/ICMP decoding, extension headers, fragments, damage."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from nodeagent.wire import Malformed, headers

A4, B4 = "10.0.0.5", "10.0.0.9"
A6, B6 = "fd00::5", "fd00::9"

MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
"""Explicit MACs: scapy would otherwise resolve them (seconds per IPv6 packet)."""


def _decode(pkt) -> headers.PacketMeta:
    return headers.decode(bytes(pkt))


def test_ipv4_tcp():
    pkt = (
        Ether(src=MAC1, dst=MAC2)
        / IP(src=A4, dst=B4, ttl=33, id=77)
        / TCP(sport=1234, dport=80, seq=99, flags="S")
        / b"abc"
    )
    meta = _decode(pkt)
    assert (meta.version, meta.proto, meta.ttl, meta.ident) == (4, 6, 33, 77)
    assert meta.src == ipaddress.ip_address(A4).packed and meta.dst == ipaddress.ip_address(B4).packed
    assert (meta.sport, meta.dport, meta.seq, meta.tcp_flags) == (1234, 80, 99, headers.TCP_SYN)
    assert (meta.l3, meta.l4, meta.payload, meta.end) == (14, 34, 54, 57)
    assert meta.vlan == -1 and not meta.fragment


def test_ipv4_options_move_the_transport_header():
    meta = _decode(
        Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4, options=[IPOption_RR()]) / UDP(sport=53, dport=5353)
    )
    assert meta.l4 > 34 and (meta.sport, meta.dport) == (53, 5353)


def test_ethernet_padding_is_outside_the_ip_packet():
    frame = bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / UDP(sport=1, dport=2)) + b"\x00" * 18
    meta = headers.decode(frame)
    assert meta.end == 14 + 28 and len(frame) == 60


def test_vlan_and_qinq():
    meta = _decode(Ether(src=MAC1, dst=MAC2) / Dot1Q(vlan=100) / IP(src=A4, dst=B4) / UDP(sport=1, dport=2))
    assert meta.vlan == 100 and meta.l3 == 18 and meta.dport == 2
    meta = _decode(
        Ether(src=MAC1, dst=MAC2)
        / Dot1AD(vlan=5)
        / Dot1Q(vlan=100)
        / IP(src=A4, dst=B4)
        / UDP(sport=1, dport=2)
    )
    assert meta.vlan == 5 and meta.l3 == 22 and meta.ethertype == headers.ETH_P_IP


def test_ipv6_udp_and_icmpv6():
    meta = _decode(Ether(src=MAC1, dst=MAC2) / IPv6(src=A6, dst=B6, hlim=9) / UDP(sport=53, dport=999))
    assert (meta.version, meta.proto, meta.ttl, meta.l4) == (6, 17, 9, 54)
    assert meta.src == ipaddress.ip_address(A6).packed
    meta = _decode(Ether(src=MAC1, dst=MAC2) / IPv6(src=A6, dst=B6) / ICMPv6EchoRequest())
    assert meta.proto == 58 and meta.sport == 128


@pytest.mark.parametrize(
    "ext",
    [
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrDestOpt(),
        IPv6ExtHdrRouting(),
        IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(),
    ],
)
def test_ipv6_extension_headers_are_skipped(ext):
    meta = _decode(Ether(src=MAC1, dst=MAC2) / IPv6(src=A6, dst=B6) / ext / TCP(sport=5, dport=6))
    assert meta.proto == 6 and (meta.sport, meta.dport) == (5, 6) and meta.l4 == 54 + len(bytes(ext))


def test_ipv6_ah_length_is_in_4_byte_units():
    meta = _decode(
        Ether(src=MAC1, dst=MAC2)
        / IPv6(src=A6, dst=B6)
        / AH(nh=17, payloadlen=4, spi=1, icv=b"\x00" * 12)
        / UDP(sport=7, dport=8)
    )
    assert meta.proto == 17 and (meta.sport, meta.dport) == (7, 8)


def test_ipv6_fragments_first_has_ports_later_do_not():
    first = _decode(
        Ether(src=MAC1, dst=MAC2)
        / IPv6(src=A6, dst=B6)
        / IPv6ExtHdrFragment(id=55, m=1, offset=0)
        / UDP(sport=1, dport=2)
    )
    assert first.fragment and first.ident == 55 and first.dport == 2
    later = _decode(
        Ether(src=MAC1, dst=MAC2)
        / IPv6(src=A6, dst=B6)
        / IPv6ExtHdrFragment(id=55, offset=10, nh=17)
        / (b"x" * 16)
    )
    assert later.fragment and later.l4 == -1 and later.dport == 0 and later.proto == 17


def test_ipv4_fragments_first_has_ports_later_do_not():
    first = _decode(
        Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4, flags="MF", id=9) / UDP(sport=1, dport=2) / (b"x" * 8)
    )
    assert first.fragment and first.l4 == 34 and first.dport == 2
    later = _decode(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4, frag=3, proto=17) / (b"x" * 16))
    assert later.fragment and later.l4 == -1 and later.sport == 0 and later.ident == 1


def test_icmp_type_and_code_in_ports():
    meta = _decode(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / ICMP(type=3, code=3))
    assert (meta.proto, meta.sport, meta.dport) == (1, 3, 3)


def test_arp_and_unknown_ethertypes_are_not_ip():
    meta = _decode(Ether(src=MAC1, dst=MAC2) / ARP())
    assert meta.ethertype == headers.ETH_P_ARP and meta.version == 0 and meta.l4 == -1 and meta.src == b""
    assert _decode(Ether(type=0x88CC) / (b"\x00" * 46)).version == 0


def test_gso_super_packet_with_zero_total_length_uses_the_frame():
    frame = bytearray(bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / TCP() / (b"x" * 100)))
    frame[16:18] = b"\x00\x00"
    assert headers.decode(bytes(frame)).end == len(frame)


def test_unknown_transport_has_payload_at_l4():
    meta = _decode(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4, proto=132) / (b"\x00" * 12))
    assert meta.proto == 132 and meta.payload == meta.l4 == 34


def _cut(pkt, n: int) -> bytes:
    return bytes(pkt)[:n]


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"\x00" * 13, "ethernet"),
        (_cut(Ether(src=MAC1, dst=MAC2) / Dot1Q() / IP(), 16), "802.1q"),
        (_cut(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4), 30), "ipv4: truncated"),
        (_cut(Ether(src=MAC1, dst=MAC2) / IPv6(src=A6, dst=B6), 50), "ipv6: truncated header"),
        (_cut(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / TCP(), 50), "tcp"),
        (_cut(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / UDP(), 38), "udp"),
        (_cut(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / ICMP(), 36), "icmp"),
        (
            _cut(Ether(src=MAC1, dst=MAC2) / IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / UDP(), 58),
            "ipv6: truncated extension",
        ),
        (
            _cut(Ether(src=MAC1, dst=MAC2) / IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment() / UDP(), 58),
            "ipv6: truncated fragment",
        ),
    ],
)
def test_truncated_headers_are_malformed(frame, reason):
    with pytest.raises(Malformed, match=reason):
        headers.decode(frame)


def test_bad_versions_and_lengths_are_malformed():
    v4 = bytearray(bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / UDP()))
    bad = bytearray(v4)
    bad[14] = 0x65
    with pytest.raises(Malformed, match="version"):
        headers.decode(bytes(bad))
    bad = bytearray(v4)
    bad[14] = 0x44  # IHL 16 bytes
    with pytest.raises(Malformed, match="header length"):
        headers.decode(bytes(bad))
    bad = bytearray(v4)
    bad[16:18] = b"\x00\x10"  # total length 16 < IHL
    with pytest.raises(Malformed, match="total length"):
        headers.decode(bytes(bad))
    v6 = bytearray(bytes(Ether(src=MAC1, dst=MAC2) / IPv6(src=A6, dst=B6) / UDP()))
    v6[14] = 0x40
    with pytest.raises(Malformed, match="version is not 6"):
        headers.decode(bytes(v6))
    tcp = bytearray(bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / TCP()))
    tcp[46] = 0x20  # data offset 8 bytes
    with pytest.raises(Malformed, match="data offset"):
        headers.decode(bytes(tcp))


def _outcome(decoder, frame: bytes):
    try:
        return (
            decoder(memoryview(frame), len(frame)) if decoder is headers._decode_general else decoder(frame)
        )
    except Malformed as exc:
        return ("malformed", str(exc))


def test_fast_path_agrees_with_the_general_decoder_on_mutated_frames():
    """Differential check: byte mutations of IPv4 TCP/UDP frames in the fields the fast path reads."""
    import random

    rng = random.Random(7)
    bases = [
        bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / TCP(sport=1, dport=2, seq=3) / b"payload"),
        bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4, flags="DF") / UDP(sport=53, dport=9) / b"q"),
        bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / TCP(options=[("MSS", 1460)])),
        bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / UDP()) + b"\x00" * 6,
    ]
    positions = [12, 13, 14, 16, 17, 20, 21, 23, 46]
    checked = 0
    for base in bases:
        for _ in range(400):
            frame = bytearray(base)
            for _ in range(rng.randint(1, 3)):
                pos = rng.choice(positions)
                if pos < len(frame):
                    frame[pos] = rng.choice([0, 1, 0x20, 0x40, 0x45, 0x50, 0x80, 0xFF, rng.randrange(256)])
            frame = frame[: rng.choice([len(frame), len(frame), 41, 42, 47, 48, 53, 54])]
            assert _outcome(headers.decode, bytes(frame)) == _outcome(headers._decode_general, bytes(frame))
            checked += 1
    assert checked == 1600


def test_fast_path_is_taken_for_plain_ipv4_tcp_and_udp(monkeypatch):
    frames = [
        bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / TCP(sport=1, dport=2) / b"x"),
        bytes(Ether(src=MAC1, dst=MAC2) / IP(src=A4, dst=B4) / UDP(sport=1, dport=2)),
    ]
    expected = [headers.decode(f) for f in frames]

    def no_general(view, size):
        raise AssertionError("general path taken")

    monkeypatch.setattr(headers, "_decode_general", no_general)
    assert [headers.decode(f) for f in frames] == expected
    assert all(type(m) is headers.PacketMeta and m.l4 == 34 for m in expected)


def _udp_after(ext_or_tags) -> bytes:
    return bytes(ext_or_tags / UDP(sport=1, dport=2) / b"x")


def test_two_vlan_tags_are_decoded_a_third_is_malformed():
    two = Ether(src=MAC1, dst=MAC2) / Dot1AD(vlan=5) / Dot1Q(vlan=6) / IP(src=A4, dst=B4)
    assert headers.decode(_udp_after(two)).l3 == 22
    three = Ether(src=MAC1, dst=MAC2) / Dot1AD(vlan=5) / Dot1Q(vlan=6) / Dot1Q(vlan=7) / IP(src=A4, dst=B4)
    with pytest.raises(Malformed, match="more than 2 VLAN tags"):
        headers.decode(_udp_after(three))


def test_a_vlan_tag_storm_is_malformed_after_two_tags():
    """The amplification attack: 364 tags before a 64 KB TCP super-packet."""
    storm = bytes(Ether(src=MAC1, dst=MAC2, type=0x8100)) + b"\x00\x07\x81\x00" * 363 + b"\x00\x07\x08\x00"
    frame = storm + bytes(IP(src=A4, dst=B4) / TCP(sport=1, dport=2) / (b"s" * 60000))
    with pytest.raises(Malformed, match="VLAN"):
        headers.decode(frame)


def _dest_opts(count: int, extra: bool) -> bytes:
    """``count`` destination-options headers of 32 bytes each (PadN of 28), plus one of 8 if ``extra``."""
    from scapy.layers.inet6 import PadN

    chain = b"".join(bytes(IPv6ExtHdrDestOpt(nh=60, options=[PadN(optdata=b"\x00" * 28)]))
                     for _ in range(count))
    return chain + (bytes(IPv6ExtHdrDestOpt(nh=60)) if extra else b"")


@pytest.mark.parametrize("extra", [False, True])
def test_ipv6_extension_headers_up_to_256_bytes(extra):
    chain = bytearray(_dest_opts(8, extra))
    assert len(chain) == (264 if extra else 256)
    chain[len(chain) - (8 if extra else 32)] = 6  # the last header's next header: TCP
    tcp = bytes(TCP(sport=5, dport=6))
    frame = bytes(Ether(src=MAC1, dst=MAC2) / IPv6(src=A6, dst=B6, nh=60, plen=len(chain) + 20)) + chain + tcp
    if not extra:
        meta = headers.decode(frame)
        assert meta.l4 == 54 + 256 and meta.dport == 6
    else:
        with pytest.raises(Malformed, match="longer than 256 bytes"):
            headers.decode(frame)


def test_ipv6_extension_headers_cannot_point_past_the_packet():
    ext = bytes(IPv6ExtHdrDestOpt(nh=99))
    hdr = bytearray(ext)
    hdr[1] = 20  # claims 168 bytes, the packet ends after 8
    frame = bytes(Ether(src=MAC1, dst=MAC2) / IPv6(src=A6, dst=B6, nh=60, plen=8)) + bytes(hdr)
    with pytest.raises(Malformed, match="overrun"):
        headers.decode(frame)
