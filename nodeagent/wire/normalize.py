"""Make mirrored frames acceptable to sensors: re-segment GSO super-packets, complete partial checksums.

Why (measured, docs/datapath.md "MTU, GSO and checksums"): tc mirred copies a pod's packets
*before* the NIC would segment or checksum them. TCP arrives as GSO super-packets of up to 64 KB,
and locally generated TCP/UDP carries a *partial* L4 checksum (only the folded pseudo-header sum,
CHECKSUM_PARTIAL). Zeek drops packets whose checksum does not verify and truncates frames beyond its
9216-byte snap length; Suricata flags them; tshark marks them bad. So the agent rewrites what it
hands on, once, before every output, and the sensors need no "ignore checksums" option:

- **Re-segmentation** of a TCP frame longer than ``max_frame`` (default 1514: an Ethernet MTU of
  1500) into MSS-sized segments, exactly as the kernel's GSO would have put them on the wire:
  the headers (Ethernet, VLAN, IP with options/extension headers, TCP with options) are copied;
  IP total/payload length is set; IPv4 identification increments per segment and its header
  checksum is recomputed; the TCP sequence number advances by the payload offset; FIN and PSH stay
  only on the last segment and CWR only on the first; each segment gets a full TCP checksum.
  MSS = ``max_frame`` - header length, which equals the sender's own MSS for standard frames.
- **Checksum completion**: a TCP/UDP checksum is *partial* when the stored value equals the folded
  pseudo-header sum. Compared modulo 0xFFFF, which makes the ones' complement "negative zero"
  (0xFFFF) equal to 0. A complete checksum that collides with that value (1 in 65535) is recomputed
  to the same valid value, so the test has no harmful false positives. UDP checksum 0 over IPv4
  means "no checksum" and is left alone; a computed UDP checksum of 0 is sent as 0xFFFF (RFC 768).

Not changed: IP fragments, frames already sliced (``len(frame) < wire_len``: the payload needed to
checksum is gone), non-TCP frames above ``max_frame`` (UDP GSO is rare; counted as ``oversize``).

**Never amplified.** A split is refused (the frame goes on whole, counted as ``unsplittable``) when
its segments would carry fewer than ``MIN_MSS`` payload bytes or number more than ``MAX_SEGMENTS``.
With the header bounds of ``headers`` (at most 378 bytes) and ``max_frame`` >= 590 (settings),
the output of one frame of at most 64 KB is at most ``ceil(payload / MIN_MSS)`` <= 123 frames, and
with the default 1514 at most 58 (MSS >= 1136); before the bounds, one crafted datagram with 364
VLAN tags (MSS 4) became 15,873 frames.

The ones' complement sum uses ``int.from_bytes(data, "big") % 0xFFFF``: 65536 is 1 modulo 65535,
so a big-endian integer is congruent to the sum of its 16-bit words. One C call for a 64 KB packet
instead of a Python loop; an odd length is padded by a shift (``<< 8``) instead of a copy. Splitting
a super-packet needs one sum per segment: numpy sums all full segments' payloads in one pass
(``_chunk_sums``), the headers' sums are taken once and patched per segment (``split``), and all
segments are built in one buffer, so outputs can send them together (``offer_segments``).

Pure: bytes in, new bytes out; counters are plain ints read by ``/status``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from nodeagent.wire.headers import IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_PSH, PacketMeta

TCP_CWR = 0x80
MIN_MSS = 536
"""Smallest segment payload a split may produce: the IPv4 default MSS (RFC 879, RFC 9293 3.7.1)."""
MAX_SEGMENTS = 128
"""Most segments one frame may become: ``ceil(65536 / MIN_MSS)`` = 123, rounded up; a frame above
64 KB (a receive buffer raised for BIG TCP) is left whole rather than cut into more."""
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_HH = struct.Struct("!HH")


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of ``data`` as 16-bit big-endian words, modulo 0xFFFF (0 == 0xFFFF)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def finish(total: int) -> int:
    """The checksum field for a ones' complement sum ``total`` taken with the field zeroed."""
    total %= 0xFFFF
    return 0xFFFF - total if total else 0


def pseudo_sum(meta: PacketMeta, l4_len: int) -> int:
    """Pseudo-header sum (RFC 793 / RFC 8200 8.1) modulo 0xFFFF; the same formula serves v4 and v6."""
    return (int.from_bytes(meta.src + meta.dst, "big") + meta.proto + l4_len) % 0xFFFF


def checksum_offset(meta: PacketMeta) -> int:
    """Offset of the L4 checksum field in the frame, or -1 when there is none to fix."""
    if meta.l4 < 0 or meta.fragment:
        return -1
    if meta.proto == IPPROTO_TCP:
        return meta.l4 + 16
    if meta.proto == IPPROTO_UDP:
        return meta.l4 + 6
    return -1


def is_partial(frame: memoryview | bytes, meta: PacketMeta) -> bool:
    """True when the stored L4 checksum is only the pseudo-header sum (CHECKSUM_PARTIAL)."""
    off = checksum_offset(meta)
    if off < 0 or off + 2 > meta.end:
        return False
    stored: int = _U16.unpack_from(frame, off)[0]
    if stored == 0 and meta.proto == IPPROTO_UDP:
        return False  # IPv4 "no checksum" (and never partial: the pseudo sum is never 0 folded)
    return stored % 0xFFFF == pseudo_sum(meta, meta.end - meta.l4)


def _is_partial_fast(frame: memoryview, meta: PacketMeta) -> bool:
    """``is_partial`` inlined for the per-packet path (two calls fewer: about a third of its cost)."""
    proto, l4 = meta.proto, meta.l4
    if proto == IPPROTO_TCP:
        off = l4 + 16
    elif proto == IPPROTO_UDP:
        off = l4 + 6
    else:
        return False
    end = meta.end
    if off + 2 > end:
        return False
    stored = frame[off] << 8 | frame[off + 1]
    if stored == 0 and proto == IPPROTO_UDP:
        return False
    return stored % 0xFFFF == (int.from_bytes(meta.src + meta.dst, "big") + proto + end - l4) % 0xFFFF


def l4_checksum(frame: memoryview | bytes | bytearray, meta: PacketMeta, end: int) -> int:
    """Full L4 checksum of ``frame[meta.l4:end]``, ignoring whatever the checksum field holds."""
    off = checksum_offset(meta)
    (stored,) = _U16.unpack_from(frame, off)
    total = pseudo_sum(meta, end - meta.l4) + ones_sum(memoryview(frame)[meta.l4 : end]) - stored
    csum = finish(total)
    if csum == 0 and meta.proto == IPPROTO_UDP:
        return 0xFFFF
    return csum


class Normalizer:
    """Applies the rules above and counts what it did."""

    def __init__(self, *, max_frame: int = 1514, segment: bool = True, fix_checksums: bool = True) -> None:
        self.max_frame = max_frame
        self.segment = segment
        self.fix_checksums = fix_checksums
        self.segmented = 0
        """Super-packets split."""
        self.segments = 0
        """Frames produced by splitting."""
        self.fixed = 0
        """Partial checksums completed (not counting segments, which always get a full checksum)."""
        self.oversize = 0
        """Frames above ``max_frame`` left whole (not TCP, or headers too long to split)."""
        self.unsplittable = 0
        """TCP frames above ``max_frame`` left whole because a split would yield segments of fewer
        than ``MIN_MSS`` payload bytes or more than ``MAX_SEGMENTS`` of them (crafted headers or a
        small ``max_frame``): the bound on frames per datagram. Also counted in ``oversize``."""

    def apply(
        self, frame: memoryview, meta: PacketMeta, wire_len: int
    ) -> list[memoryview] | list[bytearray] | None:
        """New frames to send instead of ``frame``, or None to send ``frame`` unchanged. A split
        super-packet's segments are views into one buffer, all but the last of one length."""
        size = len(frame)
        if size != wire_len or meta.l4 < 0 or meta.fragment:
            return None
        if size > self.max_frame:
            splittable = meta.proto == IPPROTO_TCP and meta.payload < min(meta.end, self.max_frame)
            if self.segment and splittable:
                mss = self.max_frame - meta.payload
                if mss >= MIN_MSS and meta.end - meta.payload <= mss * MAX_SEGMENTS:
                    return self._split(frame, meta, mss)
                self.unsplittable += 1
            self.oversize += 1
        if not self.fix_checksums or not _is_partial_fast(frame, meta):
            return None
        out = bytearray(frame)
        # The stored value is the pseudo-header sum (that is what "partial" means), so the segment's own
        # sum, stored field included, is the complete checksum's sum: no second pseudo-header sum and
        # no call to l4_checksum (2.4 -> 1.9 us per completed frame, bench/bench_pipeline.py's mix).
        csum = finish(ones_sum(memoryview(out)[meta.l4 : meta.end]))
        if csum == 0 and meta.proto == IPPROTO_UDP:
            csum = 0xFFFF
        _U16.pack_into(out, meta.l4 + (16 if meta.proto == IPPROTO_TCP else 6), csum)
        self.fixed += 1
        return [out]

    def _split(self, frame: memoryview, meta: PacketMeta, mss: int) -> list[memoryview]:
        out = split(frame, meta, mss)
        self.segmented += 1
        self.segments += len(out)
        return out

    def state(self) -> dict[str, int]:
        return {
            "segmented": self.segmented,
            "segments": self.segments,
            "checksums_fixed": self.fixed,
            "oversize": self.oversize,
            "unsplittable": self.unsplittable,
            "max_frame": self.max_frame,
        }


def _template(frame: memoryview, meta: PacketMeta) -> tuple[bytearray, int, int]:
    """The headers with every per-segment field zeroed, and the sums of their fixed parts:
    (headers, IPv4 header sum, TCP header sum + pseudo-header without its length)."""
    head = bytearray(frame[: meta.payload])
    l3, l4 = meta.l3, meta.l4
    ip_sum = 0
    if meta.version == 4:
        head[l3 + 2 : l3 + 6] = bytes(4)  # total length, identification
        head[l3 + 10 : l3 + 12] = bytes(2)
        ip_sum = ones_sum(memoryview(head)[l3:l4])
    head[l4 + 4 : l4 + 8] = bytes(4)  # sequence number
    head[l4 + 13] = 0
    head[l4 + 16 : l4 + 18] = bytes(2)
    tcp_sum = ones_sum(memoryview(head)[l4:]) + int.from_bytes(meta.src + meta.dst, "big") + meta.proto
    return head, ip_sum, tcp_sum


def split(frame: memoryview, meta: PacketMeta, mss: int) -> list[memoryview]:
    """Cut a TCP super-packet into segments of ``mss`` payload bytes, all in ONE new buffer.

    Each segment's checksums come from sums taken once over the zeroed header template plus
    the few fields that differ (lengths, IPv4 id, sequence, flags) and its payload's sum from
    ``_chunk_sums``: the payload is read twice (sums, copy), the headers once. The full-size
    segments are written as the rows of one numpy array (``_fill_rows``: the headers broadcast,
    the payload copied in one reshape, each per-segment field for all rows at once); only a
    shorter last segment goes through Python (``_fill_one``).
    Returns views into the buffer, in order; all but the last have the same length.
    """
    head, ip_sum, tcp_sum = _template(frame, meta)
    hl = meta.payload
    payload = frame[hl : meta.end]
    count = -(-len(payload) // mss)
    sums = _chunk_sums(payload, mss)
    buf = bytearray(count * hl + len(payload))
    view = memoryview(buf)
    flags = _flags(meta.tcp_flags, count)
    full, seg = len(payload) // mss, hl + mss
    fields = _Fields(meta, head, ip_sum % 0xFFFF, tcp_sum % 0xFFFF, flags, count, mss)
    if full:
        _fill_rows(buf, payload, full, sums, fields)
    out = [view[i * seg : (i + 1) * seg] for i in range(full)]
    if full < count:
        at = full * seg
        _fill_one(buf, payload[full * mss :], at, full, sums[full], fields)
        out.append(view[at:])
    return out


class _Fields(NamedTuple):
    """What varies per segment is computed from these (shared by both writers)."""

    meta: PacketMeta
    head: bytearray
    ip_sum: int
    tcp_sum: int
    flags: tuple[int, int, int]
    segments: int
    mss: int


def _bits(fields: _Fields, index: int) -> int:
    first, middle, last = fields.flags
    return first if index == 0 else last if index == fields.segments - 1 else middle


def _fill_rows(buf: bytearray, payload: memoryview, full: int, sums: list[int], f: _Fields) -> None:
    """Segments 0..full-1 (all ``mss`` payload bytes) as rows of a 2-D view of ``buf``: 21 -> 6 us
    for the headers and fields of 45 segments, against a Python loop per segment (measured with
    bench/bench_pipeline.py's harness on a 64 KB super-packet)."""
    meta, hl, mss = f.meta, f.meta.payload, f.mss
    l3, l4 = meta.l3, meta.l4
    rows = np.frombuffer(buf, dtype=np.uint8, count=full * (hl + mss)).reshape(full, hl + mss)
    rows[:, :hl] = np.frombuffer(f.head, dtype=np.uint8)
    rows[:, hl:] = np.frombuffer(payload, dtype=np.uint8, count=full * mss).reshape(full, mss)
    index = np.arange(full, dtype=np.int64)
    put = _words(buf, full, hl + mss) if (hl + mss) % 2 == 0 and l3 % 2 == 0 else _put_bytes(rows)
    if meta.version == 4:
        length = hl - l3 + mss
        ident = (meta.ident + index) & 0xFFFF
        put(l3 + 2, length)
        put(l3 + 4, ident)
        put(l3 + 10, _finish(f.ip_sum + length + ident))
    else:
        put(l3 + 4, hl - l3 - 40 + mss)
    seq = (meta.seq + index * mss) & 0xFFFFFFFF
    bits = np.full(full, f.flags[1], dtype=np.int64)
    bits[0] = _bits(f, 0)
    bits[full - 1] = _bits(f, full - 1)
    put(l4 + 4, seq >> 16)
    put(l4 + 6, seq & 0xFFFF)
    rows[:, l4 + 13] = bits
    row_sums = np.array(sums[:full], dtype=np.int64)  # each at most 0xFFFF (``_chunk_sums``)
    total = f.tcp_sum + hl - l4 + mss + (seq >> 16) + (seq & 0xFFFF) + bits + row_sums
    put(l4 + 16, _finish(total))


Put = Callable[[int, "np.ndarray | int"], None]


def _words(buf: bytearray, full: int, row: int) -> Put:
    """Writer of big-endian 16-bit fields at even offsets of every row: one assignment per field
    through a 16-bit view (rows, offsets and the network header start are even with Ethernet
    framing: 14 bytes, 4 per VLAN tag, IP and TCP headers in 4-byte units)."""
    words = np.frombuffer(buf, dtype=">u2", count=full * row // 2).reshape(full, row // 2)

    def put(column: int, values: np.ndarray | int) -> None:
        words[:, column // 2] = values
    return put


def _put_bytes(rows: np.ndarray) -> Put:
    """The same, one byte column at a time (odd row lengths: an odd ``max_frame``)."""
    def put(column: int, values: np.ndarray | int) -> None:
        rows[:, column] = np.right_shift(values, 8)
        rows[:, column + 1] = np.bitwise_and(values, 0xFF)
    return put


def _finish(total: np.ndarray) -> np.ndarray:
    """``finish`` for an array of sums."""
    folded = total % 0xFFFF
    return np.where(folded == 0, 0, 0xFFFF - folded)


def _fill_one(buf: bytearray, chunk: memoryview, at: int, index: int, chunk_sum: int, f: _Fields) -> None:
    """The last segment when it is shorter than the others."""
    meta, hl, n = f.meta, f.meta.payload, len(chunk)
    l3, l4 = meta.l3, meta.l4
    buf[at : at + hl] = f.head
    buf[at + hl : at + hl + n] = chunk
    if meta.version == 4:
        ident = (meta.ident + index) & 0xFFFF
        _HH.pack_into(buf, at + l3 + 2, hl - l3 + n, ident)
        _U16.pack_into(buf, at + l3 + 10, finish(f.ip_sum + hl - l3 + n + ident))
    else:
        _U16.pack_into(buf, at + l3 + 4, hl - l3 - 40 + n)
    seq, bits = (meta.seq + index * f.mss) & 0xFFFFFFFF, _bits(f, index)
    _U32.pack_into(buf, at + l4 + 4, seq)
    buf[at + l4 + 13] = bits
    total = f.tcp_sum + hl - l4 + n + (seq >> 16) + (seq & 0xFFFF) + bits + chunk_sum
    _U16.pack_into(buf, at + l4 + 16, finish(total))


def _chunk_sums(payload: memoryview, mss: int) -> list[int]:
    """Ones' complement sum of each ``mss``-byte chunk of ``payload`` (the last may be shorter),
    each congruent modulo 0xFFFF to the chunk's 16-bit big-endian words summed.

    The full chunks are summed by numpy in one pass (a 2-D view of the payload as 16-bit words,
    one row per chunk): 12 us for 45 chunks of 1448 bytes, where ``int.from_bytes`` and
    ``% 0xFFFF`` per chunk take 125 us (measured). An odd ``mss`` (never with standard headers)
    cannot be viewed as words per row: it takes the ``int.from_bytes`` path.
    """
    full = len(payload) // mss
    if mss & 1 or not full:
        shift = 8 if mss & 1 else 0  # an odd length is padded with a zero byte (RFC 1071)
        sums = [(int.from_bytes(payload[i * mss : (i + 1) * mss], "big") << shift) % 0xFFFF
                for i in range(full)]
    else:
        # Native-order words and a 32-bit accumulator (a chunk of at most 64 KB cannot overflow it),
        # then each sum folded and byte-swapped: the ones' complement sum of byte-swapped words is
        # the byte-swapped sum (RFC 1071 2(B)), so no byte swap per word (21 -> 12 us, measured).
        rows = np.frombuffer(payload, dtype="<u2", count=full * mss // 2).reshape(full, mss // 2)
        folded = rows.sum(axis=1, dtype=np.uint32)
        folded = (folded & 0xFFFF) + (folded >> 16)
        folded = (folded & 0xFFFF) + (folded >> 16)
        sums = (((folded & 0xFF) << 8) | (folded >> 8)).tolist()
    rest = payload[full * mss :]
    if rest:
        value = int.from_bytes(rest, "big")
        sums.append(value << 8 if len(rest) & 1 else value)
    return sums


def _flags(flags: int, count: int) -> tuple[int, int, int]:
    """TCP flags of the (first, middle, last) segments: FIN and PSH stay only on the last and CWR
    only on the first, as the kernel's GSO does."""
    if count == 1:
        return flags, flags, flags
    return flags & ~(TCP_FIN | TCP_PSH), flags & ~(TCP_FIN | TCP_PSH | TCP_CWR), flags & ~TCP_CWR
