"""wire/pcap: global and record headers, microsecond and nanosecond, slicing keeps orig_len."""

from __future__ import annotations

import struct

import pytest

from nodeagent.wire import Malformed, pcap


def test_nanosecond_global_header_fields():
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack("=IHHiIII", pcap.global_header())
    assert (magic, major, minor, zone, sigfigs) == (pcap.MAGIC_NS, 2, 4, 0, 0)
    assert snaplen == 262144 and linktype == 1


def test_microsecond_header_and_record_round_trip():
    buf = bytearray(pcap.global_header(nanos=False))
    pcap.append_record(buf, 1_700_000_000_123_456_789, b"\xaa" * 60, 60, nanos=False)
    nanos, records = pcap.read(bytes(buf))
    assert not nanos
    assert records == [pcap.Record(1_700_000_000, 123_456, 60, b"\xaa" * 60)]


def test_nanosecond_record_keeps_nanoseconds():
    buf = bytearray(pcap.global_header())
    pcap.append_record(buf, 5_000_000_007, b"x" * 20, 20)
    nanos, records = pcap.read(bytes(buf))
    assert nanos and records[0].ts_sec == 5 and records[0].ts_frac == 7


def test_sliced_frame_keeps_its_wire_length():
    buf = bytearray(pcap.global_header())
    added = pcap.append_record(buf, 0, b"y" * 64, 1514)
    assert added == pcap.RECORD_SIZE + 64
    _, records = pcap.read(bytes(buf))
    assert records[0].orig_len == 1514 and len(records[0].data) == 64


def test_frame_longer_than_snaplen_is_cut():
    buf = bytearray(pcap.global_header(snaplen=100))
    pcap.append_record(buf, 0, b"z" * 300, 300, snaplen=100)
    _, records = pcap.read(bytes(buf))
    assert len(records[0].data) == 100 and records[0].orig_len == 300


def test_orig_len_is_never_below_caplen():
    assert struct.unpack("=IIII", pcap.record_header(0, 80, 10))[3] == 80


def test_big_endian_file_is_read():
    data = (
        struct.pack(">IHHiIII", pcap.MAGIC_US, 2, 4, 0, 0, 65535, 1)
        + struct.pack(">IIII", 1, 2, 3, 3)
        + b"abc"
    )
    nanos, records = pcap.read(data)
    assert not nanos and records == [pcap.Record(1, 2, 3, b"abc")]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 24,
        pcap.global_header() + b"\x00" * 10,
        pcap.global_header() + struct.pack("=IIII", 0, 0, 100, 100) + b"short",
    ],
)
def test_damaged_files_are_malformed(data):
    with pytest.raises(Malformed):
        pcap.read(data)
