"""One zstd stream per connection: the agent compresses batches, the collector decompresses them.

Each BATCH carries the batch's records compressed and flushed as a block (``StreamCompressor``),
so a batch can refer to the bytes of earlier batches on the same connection: repeated headers and
payloads across 20 ms batches compress away, where per-batch frames could not. The collector
decompresses every BATCH in order, duplicates included, to stay in step (``StreamDecompressor``).
The agent keeps batches *uncompressed* until acknowledged (``outbox``) and compresses them when it
(re)sends them, so a new connection starts a new stream and a retransmission needs nothing from
the broken one.
"""

from __future__ import annotations

import zstandard

from nodeagent.transport.messages import BatchMsg
from nodeagent.transport.records import MAX_RAW, Record, decode_records
from nodeagent.wire.errors import Malformed

MAX_WINDOW = 1 << 23
"""Largest zstd window a peer may make the decompressor allocate: 8 MiB, what level 19 (the
highest ``transport.level``) uses (``ZstdCompressionParameters.from_level(19).window_log`` = 23)."""


class StreamCompressor:
    """The agent's side of one connection's zstd stream: ``compress(raw)`` -> one BATCH payload."""

    def __init__(self, level: int = 3) -> None:
        self._c = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, raw: bytes) -> bytes:
        return self._c.compress(raw) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


class StreamDecompressor:
    """The collector's side: BATCH payloads in connection order -> records.

    Bounded: the payload is fed in ``_CHUNK``-byte pieces and decompression stops as soon as the
    output exceeds the announced ``raw_len`` (at most ``MAX_RAW``), so a zstd bomb costs at most
    ``raw_len`` plus what one chunk can expand to (zstd's worst case is ~ 128 KiB per 3 bytes:
    ~ 43 MiB per KiB), never unbounded memory; the window a frame may ask for is ``MAX_WINDOW``.
    """

    _CHUNK = 1024

    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).decompressobj()

    def decompress(self, msg: BatchMsg) -> bytes:
        if msg.raw_len > MAX_RAW:
            raise Malformed("batch: too large")
        parts, total = [], 0
        payload = memoryview(msg.payload)
        try:
            for i in range(0, len(payload), self._CHUNK):
                part = self._d.decompress(payload[i:i + self._CHUNK])
                total += len(part)
                if total > msg.raw_len:
                    raise Malformed("batch: decompresses beyond its announced length")
                parts.append(part)
        except zstandard.ZstdError as exc:
            raise Malformed(f"batch: zstd: {exc}") from None
        if total != msg.raw_len:
            raise Malformed("batch: length mismatch after decompression")
        return b"".join(parts)

    def unpack(self, msg: BatchMsg) -> list[Record]:
        return decode_records(self.decompress(msg), msg.packets)
