"""DedupWindow: another vantage's copy is a duplicate; a retransmission is not; memory is bounded."""

from __future__ import annotations

from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.flowtable import FlowTable

A, B = b"\x0a\x00\x00\x05", b"\x0a\x00\x00\x09"


def test_other_vantage_copy_is_a_duplicate() -> None:
    window = DedupWindow(window=0.05, capacity=100)
    assert not window.check_and_add(1, A, now=0.0)
    assert window.check_and_add(1, B, now=0.001)


def test_retransmission_from_the_same_vantage_is_not_a_duplicate_however_soon() -> None:
    window = DedupWindow(window=0.05, capacity=100)
    assert not window.check_and_add(1, A, now=0.0)
    assert not window.check_and_add(1, A, now=0.0)
    assert not window.check_and_add(1, A, now=0.04)
    assert window.check_and_add(1, B, now=0.08)  # refreshed by the retransmission at 0.04


def test_window_expiry_forgets_digests() -> None:
    window = DedupWindow(window=0.05, capacity=100)
    assert not window.check_and_add(1, A, now=0.0)
    assert not window.check_and_add(1, B, now=0.051)
    assert len(window) == 1


def test_capacity_evicts_oldest_first_and_counts_it() -> None:
    window = DedupWindow(window=10, capacity=3)
    for digest in range(5):
        window.check_and_add(digest, A, now=digest * 0.001)
    assert len(window) == 3 and window.evictions == 2
    assert not window.check_and_add(0, B, now=0.01)  # evicted: the late copy is forwarded
    assert window.check_and_add(4, B, now=0.01)


def test_flow_table_expires_in_order_and_refreshes_on_put() -> None:
    table: FlowTable[int] = FlowTable(capacity=10, idle=1.0)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=0.5)
    table.put("a", 3, now=0.9)
    assert table.get("b", now=1.4) == 2
    assert table.get("b", now=1.6) is None
    assert table.get("a", now=1.6) == 3
    assert table.evictions == 0
