"""pcapng blocks (pure, bytes out and in): the project's one pcapng encoder, and a small reader.

Why pcapng and not pcap: each pod gets an Interface Description Block whose ``if_name`` is
``namespace/name`` and whose ``if_description`` carries the VNI and the agent, and each packet's
``epb_flags`` carries its direction (and ``opt_comment`` says it in words), so Wireshark, tshark and
Zeek see pod identity without a side file. Timestamps are nanoseconds (``if_tsresol`` = 9).
Little-endian. Used by the collector's files (``collector/sinks.py``) and by live capture
(``capture/stream.py``, and ``nodeagent capture``'s merge, which reads agents' streams with
``Reader``).

Invariant: a stream is a section header, then blocks; an interface is described before its
first packet and before its statistics (``Writer`` numbers interfaces per section).
Block layouts: the pcapng specification (draft-ietf-opsawg-pcapng), sections 4.1-4.6.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from nodeagent.wire.errors import Malformed

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
SHB, IDB, EPB, ISB = 0x0A0D0D0A, 0x00000001, 0x00000006, 0x00000005
BYTE_ORDER_MAGIC = 0x1A2B3C4D
MAX_BLOCK = 16 << 20
"""The reader refuses a block longer than this (a hostile or broken stream cannot make it buffer
without bound); a 256 KiB frame plus options is far below."""
_OPT = struct.Struct("<HH")
_EPB_HEAD = struct.Struct("<IIIIIII")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
FLAG_INBOUND, FLAG_OUTBOUND = 1, 2
OPT_COMMENT = 1
IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
EPB_FLAGS = 2
ISB_STARTTIME, ISB_ENDTIME, ISB_IFRECV, ISB_IFDROP = 2, 3, 4, 5


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return _OPT.pack(code, len(value)) + _pad(value)


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return _U32.pack(kind) + _U32.pack(total) + body + _U32.pack(total)


def _timestamp(ts_ns: int) -> bytes:
    return struct.pack("<II", ts_ns >> 32, ts_ns & 0xFFFFFFFF)


def section_header(application: str = "podmirror collector") -> bytes:
    opts = _option(4, application.encode()) + _option(0, b"")   # shb_userappl
    return _block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + opts)


def interface(name: str, description: str, snaplen: int = SNAPLEN) -> bytes:
    opts = (_option(IF_NAME, name.encode()) + _option(IF_DESCRIPTION, description.encode())
            + _option(IF_TSRESOL, b"\x09") + _option(0, b""))
    return _block(IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen) + opts)


def packet(iface: int, ts_ns: int, frame: bytes | memoryview, wire_len: int, flags: int = 0,
           comment: str = "") -> bytes:
    """One Enhanced Packet Block. ``flags``: FLAG_INBOUND / FLAG_OUTBOUND or 0 (unknown)."""
    opts = b""
    if flags:
        opts += _option(EPB_FLAGS, _U32.pack(flags))
    if comment:
        opts += _option(OPT_COMMENT, comment.encode())
    if opts:
        opts += _option(0, b"")
    cap = len(frame)
    total = 32 + cap + (-cap % 4) + len(opts)
    head = _EPB_HEAD.pack(EPB, total, iface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, cap, max(wire_len, cap))
    return b"".join((head, frame, b"\0" * (-cap % 4), opts, _U32.pack(total)))


def statistics(iface: int, ts_ns: int, *, start_ns: int | None = None, received: int | None = None,
               dropped: int | None = None, comment: str = "") -> bytes:
    """One Interface Statistics Block: ``isb_ifrecv`` (packets offered to the capture),
    ``isb_ifdrop`` (packets it lost), ``isb_starttime``/``isb_endtime``, an optional comment."""
    opts = b""
    if start_ns is not None:
        opts += _option(ISB_STARTTIME, _timestamp(start_ns)) + _option(ISB_ENDTIME, _timestamp(ts_ns))
    if received is not None:
        opts += _option(ISB_IFRECV, _U64.pack(received))
    if dropped is not None:
        opts += _option(ISB_IFDROP, _U64.pack(dropped))
    if comment:
        opts += _option(OPT_COMMENT, comment.encode())
    if opts:
        opts += _option(0, b"")
    return _block(ISB, _U32.pack(iface) + _timestamp(ts_ns) + opts)


class Writer:
    """Numbers interfaces within one section: ``encode(key, description, ...)`` -> bytes to append."""

    def __init__(self) -> None:
        self._ifaces: dict[str, int] = {}

    def start(self, application: str = "podmirror collector") -> bytes:
        self._ifaces.clear()
        return section_header(application)

    def describe(self, key: str, description: str, name: str | None = None) -> tuple[int, bytes]:
        """The interface number of ``key`` and the IDB to write first (b"" if already described);
        the interface's ``if_name`` is ``name`` (default: ``key``)."""
        idx = self._ifaces.get(key)
        if idx is not None:
            return idx, b""
        idx = self._ifaces[key] = len(self._ifaces)
        return idx, interface(key if name is None else name, description)

    def encode(self, key: str, description: str, ts_ns: int, frame: bytes | memoryview, wire_len: int,
               flags: int = 0, comment: str = "", name: str | None = None) -> bytes:
        idx, head = self.describe(key, description, name)
        return head + packet(idx, ts_ns, frame, wire_len, flags, comment)

    @property
    def interfaces(self) -> dict[str, int]:
        return dict(self._ifaces)


# ---- reading (``nodeagent capture`` merges agents' streams; tests) ---------------------------
class Block(NamedTuple):
    kind: int
    body: bytes
    """The block without its type, lengths and trailing length."""


class Packet(NamedTuple):
    iface: int
    ts_ns: int
    wire_len: int
    frame: bytes
    flags: int
    comment: str


class Interface(NamedTuple):
    name: str
    description: str


class Stats(NamedTuple):
    iface: int
    ts_ns: int
    received: int | None
    dropped: int | None
    comment: str


def options(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(code, value) of an options list, up to opt_endofopt."""
    offset = 0
    while offset + 4 <= len(data):
        code, length = _OPT.unpack_from(data, offset)
        if code == 0:
            return
        yield code, data[offset + 4:offset + 4 + length]
        offset += 4 + length + (-length % 4)


class Reader:
    """Incremental: ``feed(bytes)`` then ``blocks()`` yields each complete block. Little-endian
    sections only (what this project writes); raises ``Malformed`` on anything else."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._started = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def blocks(self) -> Iterator[Block]:
        buf = self._buf
        while len(buf) >= 8:
            kind, total = struct.unpack_from("<II", buf)
            if not self._started:
                if len(buf) < 12:
                    return
                if kind != SHB or _U32.unpack_from(buf, 8)[0] != BYTE_ORDER_MAGIC:
                    raise Malformed("pcapng: not a little-endian section header")
                self._started = True
            if total < 12 or total % 4 or total > MAX_BLOCK:
                raise Malformed(f"pcapng: bad block length {total}")
            if len(buf) < total:
                return
            body = bytes(buf[8:total - 4])
            del buf[:total]
            yield Block(kind, body)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete block (0 at a clean end of stream)."""
        return len(self._buf)


def read_interface(body: bytes) -> Interface:
    opts = dict(options(body[8:]))
    return Interface(opts.get(IF_NAME, b"").decode(errors="replace"),
                     opts.get(IF_DESCRIPTION, b"").decode(errors="replace"))


def read_packet(body: bytes) -> Packet:
    if len(body) < 20:
        raise Malformed("pcapng: short enhanced packet block")
    iface, high, low, cap, wire_len = struct.unpack_from("<IIIII", body)
    if 20 + cap > len(body):
        raise Malformed("pcapng: packet overruns its block")
    opts = dict(options(body[20 + cap + (-cap % 4):]))
    flags = _U32.unpack(opts[EPB_FLAGS])[0] if len(opts.get(EPB_FLAGS, b"")) == 4 else 0
    return Packet(iface, (high << 32) | low, wire_len, body[20:20 + cap], flags,
                  opts.get(OPT_COMMENT, b"").decode(errors="replace"))


def read_statistics(body: bytes) -> Stats:
    if len(body) < 12:
        raise Malformed("pcapng: short interface statistics block")
    iface, high, low = struct.unpack_from("<III", body)
    opts = dict(options(body[12:]))

    def number(code: int) -> int | None:
        raw = opts.get(code, b"")
        return _U64.unpack(raw)[0] if len(raw) == 8 else None

    return Stats(iface, (high << 32) | low, number(ISB_IFRECV), number(ISB_IFDROP),
                 opts.get(OPT_COMMENT, b"").decode(errors="replace"))
