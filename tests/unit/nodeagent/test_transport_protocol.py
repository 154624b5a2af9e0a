"""The transport protocol: messages, records, zstd, outbox (agent) and streams (collector) resume logic."""

from __future__ import annotations

import os

import pytest

from nodeagent.transport import compression, messages, outbox, records, streams
from nodeagent.transport.records import Record
from nodeagent.wire import Malformed

STREAM = bytes(range(16))


def sample_records(n: int = 5) -> list[Record]:
    return [Record(1_700_000_000_000_000_000 + i, 1514, f"ns/pod{i % 2}", 0xABCDEF, 1 + i % 2,
                   bytes([i]) * (60 + i)) for i in range(n)]


def test_messages_round_trip_through_the_reader_in_any_chunking() -> None:
    stream = (messages.encode_hello(STREAM, "agent-1") + messages.encode_welcome(7)
              + messages.encode_batch(8, 2, 100, b"zz") + messages.encode_ack(8))
    for step in (1, 3, 1000):
        r = messages.Reader()
        out = []
        for i in range(0, len(stream), step):
            out += r.feed(stream[i:i + step])
        assert out == [messages.Hello(STREAM, "agent-1"), messages.Welcome(7),
                       messages.BatchMsg(8, 2, 100, b"zz"), messages.Ack(8)]


@pytest.mark.parametrize("data,reason", [
    (b"\x09\x00\x00\x00\x00", "unknown message type"),
    (b"\x04\x00\x00\x00\x03abc", "bad length"),
    (b"\x01\x00\x00\x00\x15" + b"HTTP" + b"\x01" + bytes(16), "not a podmirror"),
    (b"\x03\xff\xff\xff\xff", "exceeds the limit"),
    (b"\x03\x00\x00\x00\x02ab", "truncated header"),
])
def test_bad_messages_are_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        messages.Reader().feed(data)


def batch_msg(seq: int, recs: list[Record], zstd: compression.StreamCompressor) -> messages.BatchMsg:
    raw = records.encode_records(recs)
    return messages.BatchMsg(seq, len(recs), len(raw), zstd.compress(raw))


def test_records_round_trip_through_one_zstd_stream_per_connection() -> None:
    tx, rx = compression.StreamCompressor(), compression.StreamDecompressor()
    first, second = sample_records(50), sample_records(50)
    m1, m2 = batch_msg(1, first, tx), batch_msg(2, second, tx)
    assert len(m2.payload) < len(m1.payload) / 3      # the second batch refers to the first
    assert rx.unpack(m1) == first and rx.unpack(m2) == second


def test_a_new_connection_starts_a_new_stream() -> None:
    m2 = batch_msg(2, sample_records(5), compression.StreamCompressor())
    assert compression.StreamDecompressor().unpack(m2) == sample_records(5)


def test_corrupt_or_lying_batches_are_malformed() -> None:
    good = batch_msg(1, sample_records(3), compression.StreamCompressor())
    with pytest.raises(Malformed, match="count"):
        compression.StreamDecompressor().unpack(good._replace(packets=4))
    with pytest.raises(Malformed):
        compression.StreamDecompressor().unpack(good._replace(payload=os.urandom(len(good.payload))))
    with pytest.raises(Malformed):
        compression.StreamDecompressor().unpack(good._replace(raw_len=good.raw_len - 1))
    with pytest.raises(Malformed):
        records.decode_records(records.encode_records(sample_records(3))[:-5], 3)


def test_a_zstd_bomb_stops_at_the_announced_length() -> None:
    bomb = compression.StreamCompressor().compress(bytes(50_000_000))
    assert len(bomb) < 10_000
    with pytest.raises(Malformed, match="beyond"):
        compression.StreamDecompressor().unpack(messages.BatchMsg(1, 1, 1000, bomb))


def test_outbox_retransmits_exactly_the_unacknowledged_batches_after_a_break() -> None:
    box = outbox.Outbox(max_bytes=10**6)
    for i in range(4):
        box.push(bytes([i]), 10)
    sent = [box.next_batch() for _ in range(4)]
    assert box.next_batch() is None
    assert box.on_ack(1) == 10                       # batch 1 delivered
    # connection breaks; the collector had also delivered batch 2 but its ACK was lost
    assert box.on_welcome(2) == 10
    again = [box.next_batch(), box.next_batch()]
    assert again == sent[2:] and box.next_batch() is None
    assert box.on_ack(4) == 20 and len(box) == 0 and box.packets == 0


def test_outbox_drops_oldest_batches_beyond_its_bound_and_counts_their_packets() -> None:
    box = outbox.Outbox(max_bytes=300)
    evicted = sum(box.push(b"x" * 100, 7) for _ in range(5))
    assert evicted == 14 and len(box) == 3 and box.nbytes == 300
    first = box.next_batch()
    assert first is not None and first.seq == 3


def test_eviction_keeps_the_send_position_on_the_same_batch() -> None:
    box = outbox.Outbox(max_bytes=2)
    box.push(b"x", 1)
    box.next_batch()                                 # batch 1 in flight
    box.push(b"x", 1)
    box.push(b"x", 1)                                # evicts batch 1
    item = box.next_batch()
    assert item is not None and item.seq == 2


def test_an_ack_for_a_batch_never_sent_is_malformed() -> None:
    box = outbox.Outbox(max_bytes=100)
    with pytest.raises(Malformed):
        box.on_ack(1)


def test_drain_returns_every_packet_still_held() -> None:
    box = outbox.Outbox(max_bytes=10**6)
    box.push(b"a", 3)
    box.push(b"b", 4)
    assert box.drain() == 7 and len(box) == 0


def test_collector_delivers_each_sequence_once_and_reports_gaps() -> None:
    s = streams.Streams()
    assert s.hello(STREAM) == 0
    assert s.accept(STREAM, 1) == (True, 0)
    assert s.accept(STREAM, 1) == (False, 0)         # retransmission after a lost ack
    assert s.accept(STREAM, 4) == (True, 2)          # the agent dropped 2 and 3
    assert s.hello(STREAM) == 4
    state = s.get(STREAM)
    assert state is not None and state.lost == 2


def test_a_stream_new_to_the_collector_resumes_without_a_false_gap() -> None:
    s = streams.Streams()
    assert s.accept(STREAM, 50) == (True, 0)


def test_streams_are_bounded() -> None:
    s = streams.Streams(capacity=2)
    for i in range(3):
        s.hello(bytes([i]) * 16)
    assert s.get(bytes(16)) is None and s.get(bytes([2]) * 16) is not None


def test_a_pod_name_that_is_not_utf8_is_malformed() -> None:
    """Found by the fuzzer: a replaced name re-encoded longer than its one-byte length allows."""
    body = bytearray(records.encode_records([Record(1, 60, "ab", 7, 0, bytes(60))]))
    assert records.decode_records(bytes(body), 1)[0].pod == "ab"
    body[3:5] = b"\x9c\x9c"  # the name's two bytes (after the pod count and the name's length)
    with pytest.raises(Malformed, match="UTF-8"):
        records.decode_records(bytes(body), 1)
