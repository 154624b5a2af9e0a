"""stats: totals and per-pod counters; received (counted on its own) == forwarded + drops + held."""

from __future__ import annotations

import pytest

from nodeagent.stats import Stats
from nodeagent.verdict import Drop
from tests.books import assert_balanced


def test_counters_add_up_in_totals_and_per_pod():
    stats = Stats()
    web = stats.pod("default/web")
    stats.read(100)
    stats.receive(web, 100, now=1.0)
    stats.forward(web, 100)
    stats.read(50)
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


def test_held_packets_are_in_the_books_until_their_outcome():
    stats = Stats()
    web = stats.pod("default/web")
    stats.read(10)
    stats.receive(web, 10, now=1.0)
    stats.hold(web, 10)
    snap = stats.snapshot()
    assert (snap["held"], snap["pods"]["default/web"]["held"], snap["held_bytes"]) == (1, 1, 10)
    assert snap["received"] == snap["forwarded"] + sum(snap["drops"].values()) + snap["held"]
    stats.unhold(web, 10)
    stats.forward(web, 10)
    snap = stats.snapshot()
    assert snap["held"] == 0 and snap["forwarded"] == 1


def test_forgetting_a_pod_keeps_the_totals_and_refuses_while_it_holds_packets():
    stats = Stats()
    gone = stats.pod("default/gone")
    stats.read(10)
    stats.receive(gone, 10, now=1.0)
    stats.hold(gone, 10)
    assert not stats.forget("default/gone")
    stats.unhold(gone, 10)
    stats.drop(gone, Drop.OTHER_VANTAGE, 10)
    assert stats.forget("default/gone") and not stats.forget("default/gone")
    snap = stats.snapshot()
    assert "default/gone" not in snap["pods"] and stats.last_seen("default/gone") is None
    assert snap["received"] == snap["pipeline_received"] == 1 and snap["drops"]["other_vantage"] == 1


def test_the_books_check_fails_on_a_packet_that_is_not_accounted_for() -> None:
    stats = Stats()
    stats.forward(stats.pod("default/web"), 60)
    snap = stats.snapshot()
    snap["pods"]["default/web"]["received"] += 1  # one datagram with no outcome
    with pytest.raises(AssertionError):
        assert_balanced(snap)
