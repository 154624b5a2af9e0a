"""Framing: messages, records, zstd, outbox (agent) and streams (collector) resume logic."""

from __future__ import annotations

import os

import pytest

from nodeagent import framing
from nodeagent.batcher import Record
from nodeagent.wire import Malformed

STREAM = bytes(range(16))


def records(n: int = 5) -> list[Record]:
    return [Record(1_700_000_000_000_000_000 + i, 1514, f"ns/pod{i % 2}", 0xABCDEF, 1 + i % 2,
                   bytes([i]) * (60 + i)) for i in range(n)]


def test_messages_round_trip_through_the_reader_in_any_chunking() -> None:
    stream = (framing.encode_hello(STREAM, "agent-1") + framing.encode_welcome(7)
              + framing.encode_batch(8, 2, 100, b"zz") + framing.encode_ack(8))
    for step in (1, 3, 1000):
        r = framing.Reader()
        out = []
        for i in range(0, len(stream), step):
            out += r.feed(stream[i:i + step])
        assert out == [framing.Hello(STREAM, "agent-1"), framing.Welcome(7),
                       framing.BatchMsg(8, 2, 100, b"zz"), framing.Ack(8)]


@pytest.mark.parametrize("data,reason", [
    (b"\x09\x00\x00\x00\x00", "unknown message type"),
    (b"\x04\x00\x00\x00\x03abc", "bad length"),
    (b"\x01\x00\x00\x00\x15" + b"HTTP" + b"\x01" + bytes(16), "not a podmirror"),
    (b"\x03\xff\xff\xff\xff", "exceeds the limit"),
    (b"\x03\x00\x00\x00\x02ab", "truncated header"),
])
def test_bad_messages_are_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        framing.Reader().feed(data)


def test_records_round_trip_through_zstd() -> None:
    codec = framing.Codec()
    recs = records(50)
    payload, raw_len = codec.pack(recs)
    assert len(payload) < raw_len
    assert framing.Codec().unpack(framing.BatchMsg(1, 50, raw_len, payload)) == recs


def test_corrupt_or_lying_batches_are_malformed() -> None:
    codec = framing.Codec()
    payload, raw_len = codec.pack(records(3))
    with pytest.raises(Malformed, match="count"):
        codec.unpack(framing.BatchMsg(1, 4, raw_len, payload))
    with pytest.raises(Malformed):
        codec.unpack(framing.BatchMsg(1, 3, raw_len, os.urandom(len(payload))))
    with pytest.raises(Malformed):
        codec.unpack(framing.BatchMsg(1, 3, raw_len - 1, payload))
    raw = framing.encode_records(records(3))
    with pytest.raises(Malformed):
        framing.decode_records(raw[:-5])


def test_outbox_retransmits_exactly_the_unacknowledged_batches_after_a_break() -> None:
    box = framing.Outbox(max_bytes=10**6)
    for _ in range(4):
        box.push(b"p", 10, 1)
    sent = [box.next_message() for _ in range(4)]
    assert box.next_message() is None
    assert box.on_ack(1) == 10                       # batch 1 delivered
    # connection breaks; the collector had also delivered batch 2 but its ACK was lost
    assert box.on_welcome(2) == 10
    again = [box.next_message(), box.next_message()]
    assert again == sent[2:] and box.next_message() is None
    assert box.on_ack(4) == 20 and len(box) == 0 and box.packets == 0


def test_outbox_drops_oldest_batches_beyond_its_bound_and_counts_their_packets() -> None:
    one = len(framing.encode_batch(1, 1, 1, b"x" * 100))
    box = framing.Outbox(max_bytes=3 * one)
    evicted = sum(box.push(b"x" * 100, 7, 1) for _ in range(5))
    assert evicted == 14 and len(box) == 3 and box.nbytes <= 3 * one
    first = box.next_message()
    assert first is not None and framing.Reader().feed(first)[0].seq == 3   # type: ignore[union-attr]


def test_eviction_keeps_the_send_position_on_the_same_batch() -> None:
    one = len(framing.encode_batch(1, 1, 1, b"x"))
    box = framing.Outbox(max_bytes=2 * one)
    box.push(b"x", 1, 1)
    box.next_message()                               # batch 1 in flight
    box.push(b"x", 1, 1)
    box.push(b"x", 1, 1)                             # evicts batch 1
    msg = box.next_message()
    assert msg is not None and framing.Reader().feed(msg)[0].seq == 2   # type: ignore[union-attr]


def test_an_ack_for_a_batch_never_sent_is_malformed() -> None:
    box = framing.Outbox(max_bytes=100)
    with pytest.raises(Malformed):
        box.on_ack(1)


def test_drain_returns_every_packet_still_held() -> None:
    box = framing.Outbox(max_bytes=10**6)
    box.push(b"a", 3, 1)
    box.push(b"b", 4, 1)
    assert box.drain() == 7 and len(box) == 0


def test_collector_delivers_each_sequence_once_and_reports_gaps() -> None:
    s = framing.Streams()
    assert s.hello(STREAM) == 0
    assert s.accept(STREAM, 1) == (True, 0)
    assert s.accept(STREAM, 1) == (False, 0)         # retransmission after a lost ack
    assert s.accept(STREAM, 4) == (True, 2)          # the agent dropped 2 and 3
    assert s.hello(STREAM) == 4
    state = s.get(STREAM)
    assert state is not None and state.lost == 2


def test_a_stream_new_to_the_collector_resumes_without_a_false_gap() -> None:
    s = framing.Streams()
    assert s.accept(STREAM, 50) == (True, 0)


def test_streams_are_bounded() -> None:
    s = framing.Streams(capacity=2)
    for i in range(3):
        s.hello(bytes([i]) * 16)
    assert s.get(bytes(16)) is None and s.get(bytes([2]) * 16) is not None
