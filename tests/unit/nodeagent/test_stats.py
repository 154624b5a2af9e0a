"""stats: totals and per-pod counters; received == forwarded + sum(drops) in every snapshot."""

from __future__ import annotations

import pytest

from nodeagent.stats import Stats
from nodeagent.verdict import Drop
from tests.books import assert_balanced


def test_counters_add_up_in_totals_and_per_pod():
    stats = Stats()
    web = stats.pod("default/web")
    stats.receive(web, 100, now=1.0)
    stats.forward(web, 100)
    stats.receive(web, 50, now=2.0)
    stats.drop(web, Drop.DUPLICATE, 50)
    snap = stats.snapshot()
    assert (snap["received"], snap["forwarded"], snap["drops"]["duplicate"]) == (2, 1, 1)
    assert snap["received_bytes"] == 150 and snap["drop_bytes"]["duplicate"] == 50
    assert snap["pods"]["default/web"]["received"] == 2
    assert web.last_seen == 2.0


def test_snapshot_lists_every_drop_reason_as_an_integer():
    snap = Stats().snapshot()
    assert set(snap["drops"]) == {reason.value for reason in Drop}
    assert all(type(n) is int for n in snap["drops"].values())
    assert_balanced(snap)
    assert snap["received"] == 0


def test_saved_bytes_accumulate_per_mechanism():
    stats = Stats()
    stats.save("dedup", 10)
    stats.save("dedup", 5)
    assert stats.snapshot()["saved_bytes"] == {"dedup": 15}


def test_pod_counters_are_created_once():
    stats = Stats()
    assert stats.pod("a/b") is stats.pod("a/b")


def test_snapshot_is_a_copy():
    stats = Stats()
    snap = stats.snapshot()
    snap["drops"]["malformed"] = 99
    assert stats.snapshot()["drops"]["malformed"] == 0


def test_the_books_check_fails_on_a_packet_that_is_not_accounted_for() -> None:
    stats = Stats()
    stats.forward(stats.pod("default/web"), 60)
    snap = stats.snapshot()
    snap["pods"]["default/web"]["received"] += 1  # one datagram with no outcome
    with pytest.raises(AssertionError):
        assert_balanced(snap)
