"""Target ``transport``: the byte stream an agent (or anyone who passed the collector's TLS) sends
the collector: framing (``messages.Reader``, fed in chunks of a size the first byte chooses), each
BATCH's zstd block (one ``StreamDecompressor`` per connection, as the collector) and records
(``decode_records``), the stream window (``streams.Streams``). Target ``records``: a raw batch
body (the first two bytes choose the announced count) through ``decode_records``.

Checks: only ``Malformed`` escapes; a BATCH that decodes holds exactly the records it announced,
at most ``MAX_RECORDS``, decompressed from at most ``MAX_RAW`` bytes; the reader never buffers
more than ``MAX_MESSAGE`` plus one chunk; an accepted sequence is never more than ``WINDOW`` above
the last; every record round-trips through ``encode_records``.
"""

from __future__ import annotations

from tests.fuzz import harness

with harness.instrumented():
    from nodeagent.transport import compression, messages, records, streams
    from nodeagent.wire import Malformed


CHUNKS = (1, 7, 64, 1000, 4096, 65536)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    step = CHUNKS[data[0] % len(CHUNKS)]
    reader, zstd, table = messages.Reader(), compression.StreamDecompressor(), streams.Streams(capacity=4)
    stream = b""
    try:
        for start in range(1, len(data), step):
            for msg in reader.feed(data[start:start + step]):
                if isinstance(msg, messages.Hello):
                    stream = msg.stream
                    table.hello(stream)
                elif isinstance(msg, messages.BatchMsg):
                    _batch(msg, zstd, table, stream)
            assert len(reader._buf) <= messages.MAX_MESSAGE + step + 5
    except Malformed:
        return


def test_records(data: bytes) -> None:
    count = int.from_bytes(data[:2], "big") % records.MAX_RECORDS + 1
    try:
        out = records.decode_records(data[2:], count)
    except Malformed:
        return
    assert len(out) == count
    assert records.decode_records(records.encode_records(out), count) == out


def _batch(msg: messages.BatchMsg, zstd: compression.StreamDecompressor, table: streams.Streams,
           stream: bytes) -> None:
    assert 0 < msg.packets <= records.MAX_RECORDS and msg.raw_len <= records.MAX_RAW
    out = zstd.unpack(msg)
    assert len(out) == msg.packets
    last = (table.get(stream) or streams.StreamState(0, 0)).last
    fresh, _ = table.accept(stream, msg.seq)
    if fresh:
        assert msg.seq - last <= streams.WINDOW


if __name__ == "__main__":
    harness.main(test_one_input)
