"""Classic pcap (libpcap 2.4) file format: the global header and per-record headers. Pure.

Two timestamp precisions, told apart by the magic number: microseconds (0xa1b2c3d4, read by every
tool) and nanoseconds (0xa1b23c4d, read by libpcap >= 1.5, tshark, Zeek, Suricata). Written in the
machine's byte order, as libpcap does; readers detect the order from the magic.

A record stores ``incl_len`` captured bytes and ``orig_len``, the packet's length on the wire; when
the agent slices a packet, ``orig_len`` keeps the length before slicing, so tools show both.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from nodeagent.wire.errors import Malformed

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
"""libpcap's maximum snap length for Ethernet; covers 64 KB GSO super-packets whole."""

_GLOBAL = struct.Struct("=IHHiIII")
RECORD = struct.Struct("=IIII")
"""A record header: seconds, fraction (us or ns), captured length, original length."""
GLOBAL_SIZE = _GLOBAL.size
RECORD_SIZE = RECORD.size


class Record(NamedTuple):
    ts_sec: int
    ts_frac: int
    """Microseconds or nanoseconds, depending on the file's magic."""
    orig_len: int
    data: bytes


def global_header(*, nanos: bool = True, snaplen: int = SNAPLEN, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    return _GLOBAL.pack(MAGIC_NS if nanos else MAGIC_US, 2, 4, 0, 0, snaplen, linktype)


def record_header(ts_ns: int, caplen: int, orig_len: int, *, nanos: bool = True) -> bytes:
    """Header for one record captured at ``ts_ns`` (nanoseconds since the epoch)."""
    sec, frac = divmod(ts_ns, 1_000_000_000)
    if not nanos:
        frac //= 1000
    return RECORD.pack(sec, frac, caplen, max(orig_len, caplen))


def append_record(
    buf: bytearray,
    ts_ns: int,
    frame: bytes | memoryview,
    orig_len: int,
    *,
    nanos: bool = True,
    snaplen: int = SNAPLEN,
) -> int:
    """Append one record to ``buf`` (frame cut to ``snaplen``); returns the bytes appended."""
    caplen = min(len(frame), snaplen)
    buf += record_header(ts_ns, caplen, orig_len, nanos=nanos)
    buf += frame[:caplen] if caplen < len(frame) else frame
    return RECORD_SIZE + caplen


def read(data: bytes) -> tuple[bool, list[Record]]:
    """Parse a whole pcap file (tests and tools): returns (nanos, records). Raises ``Malformed``."""
    if len(data) < GLOBAL_SIZE:
        raise Malformed("pcap: shorter than the global header")
    for order in ("<", ">"):
        (magic,) = struct.unpack_from(order + "I", data)
        if magic in (MAGIC_US, MAGIC_NS):
            break
    else:
        raise Malformed("pcap: bad magic")
    record = struct.Struct(order + "IIII")
    offset, records = GLOBAL_SIZE, []
    while offset < len(data):
        if offset + record.size > len(data):
            raise Malformed("pcap: truncated record header")
        sec, frac, caplen, orig = record.unpack_from(data, offset)
        offset += record.size
        if offset + caplen > len(data):
            raise Malformed("pcap: truncated record data")
        records.append(Record(sec, frac, orig, data[offset : offset + caplen]))
        offset += caplen
    return magic == MAGIC_NS, records
