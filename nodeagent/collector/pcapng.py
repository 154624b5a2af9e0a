"""pcapng blocks (pure): section header, one interface per pod, enhanced packets.

Why pcapng and not pcap: each pod gets an Interface Description Block whose ``if_name`` is
``namespace/name`` and whose ``if_description`` carries the VNI and the agent, and each packet's
``epb_flags`` carries its direction, so Wireshark, tshark and Zeek (which reads pcapng) see pod
identity without a side file. Timestamps are nanoseconds (``if_tsresol`` = 9). Little-endian.
Invariant: a file is a section header, then blocks; an interface is described before its first
packet (``Writer`` numbers interfaces per file).
"""

from __future__ import annotations

import struct

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_OPT = struct.Struct("<HH")
_EPB_HEAD = struct.Struct("<IIIIIII")
_U32 = struct.Struct("<I")
FLAG_INBOUND, FLAG_OUTBOUND = 1, 2


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return _OPT.pack(code, len(value)) + _pad(value)


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return _U32.pack(kind) + _U32.pack(total) + body + _U32.pack(total)


def section_header(application: str = "podmirror collector") -> bytes:
    opts = _option(4, application.encode()) + _option(0, b"")   # shb_userappl
    return _block(_SHB, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + opts)


def interface(name: str, description: str) -> bytes:
    opts = (_option(2, name.encode()) + _option(3, description.encode())
            + _option(9, b"\x09") + _option(0, b""))            # if_name, if_description, if_tsresol
    return _block(_IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN) + opts)


def packet(iface: int, ts_ns: int, frame: bytes, wire_len: int, flags: int = 0,
           comment: str = "") -> bytes:
    """One Enhanced Packet Block. ``flags``: FLAG_INBOUND / FLAG_OUTBOUND or 0 (unknown)."""
    opts = b""
    if flags:
        opts += _option(2, _U32.pack(flags))                    # epb_flags
    if comment:
        opts += _option(1, comment.encode())                    # opt_comment
    if opts:
        opts += _option(0, b"")
    cap = len(frame)
    total = 32 + cap + (-cap % 4) + len(opts)
    head = _EPB_HEAD.pack(_EPB, total, iface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, cap, wire_len)
    return head + _pad(frame) + opts + _U32.pack(total)


class Writer:
    """Numbers interfaces within one file: ``encode(key, description, ...)`` -> bytes to append."""

    def __init__(self) -> None:
        self._ifaces: dict[str, int] = {}

    def start(self) -> bytes:
        self._ifaces.clear()
        return section_header()

    def encode(self, key: str, description: str, ts_ns: int, frame: bytes, wire_len: int,
               flags: int = 0, comment: str = "", name: str | None = None) -> bytes:
        """``key`` picks the interface; its ``if_name`` is ``name`` (default: ``key``)."""
        idx = self._ifaces.get(key)
        head = b""
        if idx is None:
            idx = self._ifaces[key] = len(self._ifaces)
            head = interface(key if name is None else name, description)
        return head + packet(idx, ts_ns, frame, wire_len, flags, comment)
