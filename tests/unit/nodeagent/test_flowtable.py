"""``FlowTable``'s amortised expiry answers exactly as eager expiry did: the same values, the same
evictions, the same live count, on random operation sequences (the reference below is the eager
table the stages used before: an expiry pass from the oldest end on every call)."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Hashable

import pytest

from nodeagent.stages.flowtable import FlowTable


class EagerTable:
    def __init__(self, *, capacity: int, idle: float) -> None:
        self.capacity, self.idle, self.evictions = capacity, idle, 0
        self.entries: OrderedDict[Hashable, tuple[int, float]] = OrderedDict()

    def expire(self, now: float) -> None:
        while self.entries:
            key = next(iter(self.entries))
            if self.entries[key][1] >= now - self.idle:
                return
            del self.entries[key]

    def get(self, key: Hashable, now: float) -> int | None:
        self.expire(now)
        entry = self.entries.get(key)
        return None if entry is None else entry[0]

    def refresh(self, key: Hashable, now: float) -> int | None:
        value = self.get(key, now)
        if value is not None:
            self.entries.move_to_end(key)
            self.entries[key] = (value, now)
        return value

    def put(self, key: Hashable, value: int, now: float) -> None:
        if key in self.entries:
            self.entries.move_to_end(key)
        elif len(self.entries) >= self.capacity:
            self.entries.popitem(last=False)
            self.evictions += 1
        self.entries[key] = (value, now)


@pytest.mark.parametrize("seed", range(8))
def test_amortised_expiry_answers_as_eager_expiry(seed: int) -> None:
    rng = random.Random(seed)
    capacity, idle = rng.choice((3, 16, 200)), rng.choice((0.05, 1.0))
    lazy: FlowTable[int] = FlowTable(capacity=capacity, idle=idle)
    eager = EagerTable(capacity=capacity, idle=idle)
    now = 0.0
    for step in range(20_000):
        now += rng.choice((0.0, 0.0, idle / 50, idle / 7, idle * 1.5 if step % 997 == 0 else 0.0))
        key = rng.randrange(300)
        op = rng.random()
        if op < 0.4:  # the stages' pattern: a lookup, then a put at the same time when absent
            got = lazy.refresh(key, now)
            assert got == eager.refresh(key, now)
            if got is None:
                lazy.put(key, step, now)
                eager.put(key, step, now)
        elif op < 0.7:
            got = lazy.get(key, now)
            assert got == eager.get(key, now)
            if got is None:
                lazy.put(key, step, now)
                eager.put(key, step, now)
        else:
            assert lazy.get(key, now) == eager.get(key, now)
        assert lazy.evictions == eager.evictions
        if step % 101 == 0:
            lazy.expire(now)
            eager.expire(now)
            assert len(lazy) == len(eager.entries)
    assert lazy.evictions == eager.evictions


def test_memory_stays_bounded_by_capacity_and_sweeps_expired_entries() -> None:
    table: FlowTable[int] = FlowTable(capacity=100, idle=1.0)
    for i in range(10_000):
        table.put(i, i, i * 0.001)
        assert len(table._entries) <= 100
    assert table.evictions == 10_000 - 100
    table = FlowTable(capacity=100_000, idle=1.0)
    for i in range(100_000):
        table.get(i, i * 0.001)
        table.put(i, i, i * 0.001)
        # Entries seen within idle (1 s: 1,001 puts) plus at most the slack (idle / 8) of expired ones.
        assert len(table._entries) <= 1001 + 126
    assert len(table) == 1001 and table.evictions == 0
