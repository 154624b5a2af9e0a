"""Batcher: size, count and delay triggers under a fake clock."""

from __future__ import annotations

import pytest

from nodeagent.transport.batcher import Batcher
from nodeagent.transport.records import RECORD_OVERHEAD, Record


def rec(n: int = 100, pod: str = "ns/a") -> Record:
    return Record(1, n, pod, 5, 1, b"x" * n)


def test_a_batch_closes_when_it_reaches_max_bytes() -> None:
    b = Batcher(max_bytes=3 * (100 + RECORD_OVERHEAD), max_delay=1.0)
    assert b.add(rec(), 0.0) is None
    assert b.add(rec(), 0.0) is None
    batch = b.add(rec(), 0.0)
    assert batch is not None and len(batch.records) == 3
    assert b.pending == 0 and b.deadline is None


def test_a_batch_closes_at_max_records() -> None:
    b = Batcher(max_bytes=10**9, max_delay=1.0, max_records=2)
    assert b.add(rec(1), 0.0) is None
    batch = b.add(rec(1), 0.0)
    assert batch is not None and len(batch.records) == 2


def test_a_batch_is_due_max_delay_after_its_first_record() -> None:
    b = Batcher(max_bytes=10**9, max_delay=0.05)
    assert b.due(10.0) is None                       # nothing open
    b.add(rec(), 10.0)
    b.add(rec(), 10.04)
    assert b.deadline == pytest.approx(10.05)
    assert b.due(10.049) is None
    batch = b.due(10.05)
    assert batch is not None and len(batch.records) == 2 and batch.opened == 10.0
    assert b.due(11.0) is None


def test_flush_returns_the_open_batch_once() -> None:
    b = Batcher()
    b.add(rec(), 0.0)
    first = b.flush()
    assert first is not None and len(first.records) == 1
    assert b.flush() is None


def test_records_keep_their_order_and_land_in_exactly_one_batch() -> None:
    b = Batcher(max_bytes=5 * (10 + RECORD_OVERHEAD), max_delay=0.01)
    seen: list[int] = []
    for i in range(23):
        batch = b.add(Record(i, 10, "p/q", 1, 0, b"y" * 10), i * 0.001)
        if batch:
            seen += [r.ts_ns for r in batch.records]
    last = b.flush()
    assert last is not None
    seen += [r.ts_ns for r in last.records]
    assert seen == list(range(23))


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        Batcher(max_delay=0)
