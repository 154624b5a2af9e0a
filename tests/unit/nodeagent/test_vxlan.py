"""wire/vxlan: RFC 7348 header, no-copy decode, malformed inputs."""

from __future__ import annotations

import pytest
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from nodeagent.wire import Malformed, vxlan

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800)) + b"\x45" + b"\x00" * 19


def test_encode_matches_scapy():
    assert vxlan.encode(0xABCDEF, FRAME) == bytes(VXLAN(vni=0xABCDEF, flags=0x08) / Ether(FRAME))


def test_decode_returns_vni_and_inner_view_without_copy():
    datagram = bytearray(vxlan.encode(42, FRAME))
    frame = vxlan.decode(memoryview(datagram))
    assert frame.vni == 42 and bytes(frame.inner) == FRAME
    datagram[8] = 0xFF
    assert frame.inner[0] == 0xFF  # a view, not a copy


def test_reserved_low_byte_is_ignored():
    datagram = bytearray(vxlan.encode(7, FRAME))
    datagram[7] = 0x99
    assert vxlan.decode(bytes(datagram)).vni == 7


@pytest.mark.parametrize("datagram", [b"", b"\x08\x00\x00\x00", vxlan.header(1) + b"\x00" * 13])
def test_truncated_datagram_is_malformed(datagram):
    with pytest.raises(Malformed, match="shorter"):
        vxlan.decode(datagram)


def test_missing_i_flag_is_malformed():
    with pytest.raises(Malformed, match="I flag"):
        vxlan.decode(b"\x00" * 8 + FRAME)


@pytest.mark.parametrize("vni", [-1, 1 << 24])
def test_vni_out_of_range_is_refused(vni):
    with pytest.raises(ValueError):
        vxlan.header(vni)


def test_extreme_vnis_round_trip():
    for vni in (0, (1 << 24) - 1):
        assert vxlan.decode(vxlan.encode(vni, FRAME)).vni == vni
