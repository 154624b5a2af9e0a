"""Records: the forwarded packets a batch carries, and their uncompressed encoding.

A batch body (before zstd): ``npods:u16`` then ``len:u8 key`` per pod ("ns/name"), then per
record ``ts_ns:u64 wire_len:u32 cap_len:u32 direction:u8 pod:u16 vni:u32`` and ``cap_len`` bytes
of frame. The per-batch pod table keeps identity cheap without a connection-wide state.

Bounded: a batch carries at most ``MAX_RECORDS`` records in at most ``MAX_RAW`` bytes (the
batcher closes batches well below both); ``decode_records`` is told how many records to expect and
stops at the first byte that does not fit, so a crafted body costs at most its own size.

Errors: a body that does not decode raises ``wire.Malformed``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from nodeagent.wire.errors import Malformed

RECORD_OVERHEAD = 32
"""Bytes counted per record besides its frame (the fixed header below), so that many tiny packets
still close a batch by size (``batcher``)."""
MAX_RECORDS = 8192
"""Most records in one batch (``batcher.Batcher``'s default ``max_records``)."""
MAX_RAW = 8 * 1024 * 1024
"""Most bytes of one uncompressed batch: ``transport.batch_bytes`` (at most 4 MiB) plus the record
that crossed it (64 KiB) plus a pod table (at most 8192 keys of 256 bytes)."""
_REC = struct.Struct("!QIIBHI")
RECORD_HEADER = _REC.size
"""23 bytes before each record's frame."""
_U16 = struct.Struct("!H")


class Record(NamedTuple):
    """One forwarded packet, as the batched transport carries it."""

    ts_ns: int
    """Capture time, nanoseconds since the Unix epoch."""
    wire_len: int
    """Original length of the frame (pcap orig_len); ``len(frame)`` may be shorter if sliced."""
    pod: str
    """``namespace/name`` of the sender pod."""
    vni: int
    direction: int
    """``verdict.Direction`` value: 0 unknown, 1 egress, 2 ingress."""
    frame: bytes


def encode_records(records: Iterable[Record]) -> bytes:
    """Records -> the uncompressed batch body."""
    pods: dict[str, int] = {}
    parts: list[bytes] = []
    pack = _REC.pack
    for r in records:
        idx = pods.setdefault(r.pod, len(pods))
        parts.append(pack(r.ts_ns, r.wire_len, len(r.frame), r.direction, idx, r.vni))
        parts.append(r.frame)
    table = [_U16.pack(len(pods))]
    for key in pods:
        raw = key.encode()[:255]
        table.append(bytes((len(raw),)) + raw)
    return b"".join(table + parts)


def decode_records(raw: bytes, count: int) -> list[Record]:
    """The ``count`` records of a batch body; Malformed unless the body holds exactly that many.

    Checked per record: the frame fits the body, the pod index names a pod of the table, the
    direction is a ``Direction`` value, the VNI fits 24 bits, the frame is not longer than its
    original length. The pod table may not name more pods than there are records.
    """
    view = memoryview(raw)
    try:
        (npods,) = _U16.unpack_from(view)
        if npods > count:
            raise Malformed(f"batch: {npods} pods for {count} records")
        offset, keys = _U16.size, []
        for _ in range(npods):
            n = view[offset]
            # Strict: a name that is not UTF-8 is refused, not replaced (a replaced name re-encodes
            # longer than its one-byte length allows; found by tests/fuzz's records target).
            keys.append(bytes(view[offset + 1:offset + 1 + n]).decode())
            offset += 1 + n
        out: list[Record] = []
        while offset < len(view):
            if len(out) == count:
                raise Malformed(f"batch: more than the {count} records announced")
            ts, wire_len, cap, direction, idx, vni = _REC.unpack_from(view, offset)
            offset += _REC.size
            if offset + cap > len(view) or idx >= len(keys):
                raise Malformed("batch: record overruns the batch or names no pod")
            if direction > 2 or vni >> 24 or cap > wire_len:
                raise Malformed("batch: record with a bad direction, VNI or length")
            out.append(Record(ts, wire_len, keys[idx], vni, direction, bytes(view[offset:offset + cap])))
            offset += cap
    except (struct.error, IndexError) as exc:
        raise Malformed(f"batch: truncated ({exc})") from None
    except UnicodeDecodeError:
        raise Malformed("batch: a pod name that is not UTF-8") from None
    if len(out) != count:
        raise Malformed("batch: record count mismatch")
    return out
