"""wire/normalize: GSO super-packets re-segmented like the kernel would, partial checksums completed."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import Dot1Q, Ether

from nodeagent.wire import headers, normalize
from nodeagent.wire.normalize import Normalizer

MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
"""Explicit MACs: scapy would otherwise resolve them (seconds per IPv6 packet)."""


def _fold(words_sum: int) -> int:
    while words_sum >> 16:
        words_sum = (words_sum & 0xFFFF) + (words_sum >> 16)
    return words_sum


def _word_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _pseudo(frame: bytes) -> int:
    """Folded pseudo-header sum, computed word by word (independent of the module under test)."""
    meta = headers.decode(frame)
    l4_len = meta.end - meta.l4
    return _fold(_word_sum(meta.src + meta.dst) + meta.proto + l4_len)


def _with_partial(pkt) -> bytes:
    """The frame as tc mirred copies it: L4 checksum field = folded pseudo-header sum."""
    frame = bytearray(bytes(pkt))
    meta = headers.decode(bytes(frame))
    struct.pack_into("!H", frame, normalize.checksum_offset(meta), _pseudo(bytes(frame)))
    return bytes(frame)


def _l4_valid(frame: bytes) -> bool:
    """A checksum verifies when the ones' complement sum over pseudo-header + segment is 0xFFFF."""
    meta = headers.decode(frame)
    total = (
        _word_sum(meta.src + meta.dst)
        + meta.proto
        + (meta.end - meta.l4)
        + _word_sum(frame[meta.l4 : meta.end])
    )
    return _fold(total) == 0xFFFF


def _apply(frame: bytes, max_frame: int = 1514) -> tuple[Normalizer, list[bytes] | None]:
    norm = Normalizer(max_frame=max_frame)
    out = norm.apply(memoryview(frame), headers.decode(frame), len(frame))
    return norm, None if out is None else [bytes(f) for f in out]


def _tcp4(payload: bytes, flags: str = "PA", **ip) -> Ether:
    return (
        Ether(src=MAC1, dst=MAC2)
        / IP(src="10.0.0.5", dst="10.0.0.9", id=100, flags="DF", **ip)
        / TCP(
            sport=40000,
            dport=80,
            seq=1000,
            flags=flags,
            options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))],
        )
        / payload
    )


def test_ones_sum_matches_word_by_word_sum_for_odd_and_even_lengths():
    for data in (b"", b"\x01", b"\xff\xff", b"\x12\x34\x56", bytes(range(256)) * 3 + b"\x07"):
        assert normalize.ones_sum(data) == _fold(_word_sum(data)) % 0xFFFF


def test_finish_maps_negative_zero_to_zero():
    assert normalize.finish(0) == 0
    assert normalize.finish(0xFFFF) == 0
    assert normalize.finish(1) == 0xFFFE


def test_small_frame_with_valid_checksum_is_left_alone():
    frame = bytes(_tcp4(b"hello"))
    norm, out = _apply(frame)
    assert out is None
    assert norm.fixed == 0


def test_partial_tcp_checksum_is_completed():
    frame = _with_partial(_tcp4(b"hello world"))
    assert not _l4_valid(frame)
    norm, out = _apply(frame)
    assert out is not None and len(out) == 1
    assert _l4_valid(out[0])
    assert out[0] == bytes(_tcp4(b"hello world"))  # what the NIC would have sent
    assert norm.fixed == 1


def test_partial_udp_checksum_over_ipv6_is_completed():
    pkt = (
        Ether(src=MAC1, dst=MAC2)
        / IPv6(src="fd00::5", dst="fd00::9")
        / UDP(sport=5353, dport=53)
        / b"\x00\x01query"
    )
    norm, out = _apply(_with_partial(pkt))
    assert out is not None and _l4_valid(out[0])
    assert norm.fixed == 1


def test_udp_without_checksum_is_left_alone():
    pkt = (
        Ether(src=MAC1, dst=MAC2)
        / IP(src="10.0.0.5", dst="10.0.0.9")
        / UDP(sport=1, dport=2, chksum=0)
        / b"x"
    )
    _, out = _apply(bytes(pkt))
    assert out is None


def test_sliced_frame_is_left_alone():
    frame = _with_partial(_tcp4(b"x" * 100))
    norm = Normalizer()
    sliced = frame[:80]
    assert norm.apply(memoryview(sliced), headers.decode(sliced), len(frame)) is None


def test_fragment_is_left_alone():
    whole = _with_partial(
        Ether(src=MAC1, dst=MAC2) / IP(src="10.0.0.5", dst="10.0.0.9") / UDP(sport=1, dport=2) / (b"x" * 40)
    )
    first_fragment = Ether(whole)
    first_fragment[IP].flags = "MF"
    del first_fragment[IP].chksum
    frame = bytes(first_fragment)
    assert headers.decode(frame).fragment
    _, out = _apply(frame)
    assert out is None


@pytest.mark.parametrize("size", [1449, 2896, 5000, 64000])
def test_super_packet_is_cut_into_mss_segments_like_gso(size):
    payload = bytes(i % 251 for i in range(size))
    frame = _with_partial(_tcp4(payload, flags="FPA"))
    norm, out = _apply(frame)
    assert out is not None
    header_len = headers.decode(frame).payload
    mss = 1514 - header_len
    assert len(out) == -(-size // mss)
    assert all(len(seg) <= 1514 for seg in out)
    rebuilt = b""
    for i, seg in enumerate(out):
        parsed = Ether(seg)
        assert _l4_valid(seg)
        ip_copy = parsed[IP].copy()
        del ip_copy.chksum
        assert IP(bytes(ip_copy))[IP].chksum == parsed[IP].chksum  # IPv4 header checksum valid
        assert parsed[IP].len == len(seg) - 14
        assert parsed[IP].id == 100 + i
        assert parsed[TCP].seq == 1000 + i * mss
        last = i == len(out) - 1
        assert bool(parsed[TCP].flags & 0x01) == last  # FIN only on the last
        assert bool(parsed[TCP].flags & 0x08) == last  # PSH only on the last
        assert parsed[TCP].flags & 0x10  # ACK on all
        assert parsed[TCP].options == [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
        rebuilt += bytes(parsed[TCP].payload)
    assert rebuilt == payload
    assert norm.segmented == 1 and norm.segments == len(out)


def test_cwr_stays_only_on_the_first_segment():
    frame = _with_partial(_tcp4(b"y" * 3000, flags="AC"))
    _, out = _apply(frame)
    assert out is not None
    assert [bool(Ether(s)[TCP].flags & 0x80) for s in out] == [True, False, False]


def test_ipv6_super_packet_with_extension_header_and_vlan_is_segmented():
    pkt = (
        Ether(src=MAC1, dst=MAC2)
        / Dot1Q(vlan=7)
        / IPv6(src="fd00::5", dst="fd00::9")
        / IPv6ExtHdrDestOpt()
        / TCP(sport=1, dport=2, seq=5, flags="PA")
        / (b"z" * 4000)
    )
    _, out = _apply(_with_partial(pkt))
    assert out is not None and len(out) == 3
    total = b""
    for seg in out:
        parsed = Ether(seg)
        assert parsed[IPv6].plen == len(seg) - 18 - 40
        assert _l4_valid(seg)
        total += bytes(parsed[TCP].payload)
    assert total == b"z" * 4000


def test_sequence_number_wraps():
    pkt = (
        Ether(src=MAC1, dst=MAC2)
        / IP(src="10.0.0.5", dst="10.0.0.9")
        / TCP(seq=0xFFFFFF00, flags="A")
        / (b"q" * 3000)
    )
    _, out = _apply(_with_partial(pkt))
    assert out is not None
    assert Ether(out[1])[TCP].seq == (0xFFFFFF00 + 1460) & 0xFFFFFFFF


def test_oversize_udp_is_counted_not_split():
    pkt = (
        Ether(src=MAC1, dst=MAC2) / IP(src="10.0.0.5", dst="10.0.0.9") / UDP(sport=1, dport=2) / (b"u" * 3000)
    )
    norm, out = _apply(bytes(pkt))
    assert out is None
    assert norm.oversize == 1


def test_segmentation_can_be_disabled_but_checksum_still_fixed():
    frame = _with_partial(_tcp4(b"w" * 3000))
    norm = Normalizer(segment=False)
    out = norm.apply(memoryview(frame), headers.decode(frame), len(frame))
    assert out is not None and len(out) == 1 and _l4_valid(bytes(out[0]))


def test_icmp_is_never_touched():
    pkt = Ether(src=MAC1, dst=MAC2) / IP(src="10.0.0.5", dst="10.0.0.9") / ICMP() / b"ping"
    _, out = _apply(bytes(pkt))
    assert out is None


@pytest.mark.parametrize(
    "pkt",
    [
        Ether(src=MAC1, dst=MAC2) / IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=1, dport=2) / b"abc",
        Ether(src=MAC1, dst=MAC2) / IPv6(src="fd00::5", dst="fd00::9") / UDP(sport=1, dport=2) / b"abcd",
        Ether(src=MAC1, dst=MAC2) / IP(src="10.0.0.5", dst="10.0.0.9") / ICMP(),
    ],
)
def test_fast_partial_check_agrees_with_the_reference(pkt):
    full = bytes(pkt)
    meta = headers.decode(full)
    assert normalize._is_partial_fast(memoryview(full), meta) == normalize.is_partial(full, meta)
    if normalize.checksum_offset(meta) >= 0:
        partial = _with_partial(pkt)
        assert normalize._is_partial_fast(memoryview(partial), meta) is True
        assert normalize.is_partial(partial, meta) is True


@pytest.mark.parametrize("size", [2920, 2921, 20000])
def test_segments_are_views_into_one_buffer_all_but_the_last_of_one_length(size):
    """What ``offer_segments`` outputs rely on (UDP GSO needs equal segments, the last may be shorter)."""
    frame = _with_partial(_tcp4(bytes(size), flags="A"))
    out = Normalizer().apply(memoryview(frame), headers.decode(frame), len(frame))
    assert out is not None and len(out) >= 2
    assert all(isinstance(seg, memoryview) and seg.obj is out[0].obj for seg in out)
    assert {len(seg) for seg in out[:-1]} == {len(out[0])} and 0 < len(out[-1]) <= len(out[0])
    assert all(_l4_valid(bytes(seg)) for seg in out)


def test_ipv4_header_checksum_is_right_whatever_the_template_sum():
    """The per-segment IPv4 checksum is derived from the template's sum; compare it to scapy's
    for several identifications, TTLs and addresses (the derivation must not special-case 0)."""
    for ident, ttl in ((0, 1), (0xFFFF, 255), (0x1234, 64)):
        pkt = Ether(src=MAC1, dst=MAC2) / IP(src="10.255.0.5", dst="10.0.255.9", id=ident, ttl=ttl)
        frame = _with_partial(pkt / TCP(sport=1, dport=2, flags="A") / bytes(4000))
        _, out = _apply(frame)
        assert out is not None
        for seg in out:
            parsed = Ether(bytes(seg))
            again = parsed[IP].copy()
            del again.chksum
            assert IP(bytes(again)).chksum == parsed[IP].chksum


@pytest.mark.parametrize("max_frame", [1513, 1514, 9014])
def test_segment_checksums_verify_for_odd_and_even_mss(max_frame):
    """An odd MSS (payload rows that are not whole 16-bit words) takes the per-chunk path."""
    frame = _with_partial(_tcp4(bytes(i * 7 % 256 for i in range(30001)), flags="PA"))
    _, out = _apply(frame, max_frame=max_frame)
    assert out is not None and len(out) == -(-30001 // (max_frame - 66))
    assert all(_l4_valid(seg) for seg in out)
    assert b"".join(bytes(Ether(seg)[TCP].payload) for seg in out) == bytes(i * 7 % 256 for i in range(30001))


def _v6_super(ext_bytes: int, payload: int) -> bytes:
    """An IPv6 TCP super-packet behind ``ext_bytes`` of destination options and the longest TCP
    options (60-byte header): the longest headers ``headers.decode`` accepts when ext_bytes = 256."""
    from scapy.layers.inet6 import PadN

    exts = None
    for _ in range(ext_bytes // 32):
        ext = IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 28)])
        exts = ext if exts is None else exts / ext
    tcp = TCP(sport=1, dport=2, seq=5, flags="PA", options=[("NOP", None)] * 40)
    pkt = Ether(src=MAC1, dst=MAC2) / Dot1Q(vlan=7) / IPv6(src="fd00::5", dst="fd00::9")
    pkt = (pkt / exts / tcp) if exts is not None else (pkt / tcp)
    return _with_partial(pkt / bytes(i % 249 for i in range(payload)))


def test_longest_headers_still_split_with_an_mss_of_at_least_1136():
    frame = _v6_super(256, 65000)
    meta = headers.decode(frame)
    assert meta.payload == 14 + 4 + 40 + 256 + 60
    norm, out = _apply(frame)
    assert out is not None and len(out) == -(-65000 // (1514 - meta.payload)) <= 58
    assert all(_l4_valid(seg) for seg in out) and norm.unsplittable == 0


V6_HEADERS = 14 + 4 + 40 + 60
"""Ethernet, one VLAN tag, IPv6, TCP with 40 bytes of options: ``_v6_super(0, ...)``'s headers."""


@pytest.mark.parametrize("max_frame, splits", [(1514, True), (V6_HEADERS + 536, True),
                                               (V6_HEADERS + 535, False)])
def test_a_split_below_the_minimum_mss_is_refused_and_counted(max_frame, splits):
    """With a small ``max_frame`` the MSS would fall under 536: the frame goes on whole, counted."""
    frame = _v6_super(0, 20000)
    norm, out = _apply(frame, max_frame=max_frame)
    if splits:
        assert out is not None and len(out) <= -(-20000 // normalize.MIN_MSS) and norm.unsplittable == 0
    else:
        assert (out is None or len(out) == 1) and norm.unsplittable == 1 and norm.oversize == 1


def test_more_than_max_segments_is_refused():
    """A frame above 64 KB (total length 0, as BIG TCP sends them) is not cut into more than 128."""

    def big(payload: int) -> bytes:
        frame = bytearray(bytes(_tcp4(b""))) + bytes(payload)
        frame[16:18] = b"\x00\x00"  # IPv4 total length 0: the frame's length counts
        return bytes(frame)

    mss = 1514 - 66
    norm, out = _apply(big(128 * mss + 1))
    assert (out is None or len(out) == 1) and norm.unsplittable == 1
    norm, out = _apply(big(128 * mss))
    assert out is not None and len(out) == normalize.MAX_SEGMENTS and norm.unsplittable == 0
