"""The books the tests keep: every packet accounted for, written once.

The agent's identity (``nodeagent/__init__.py``): every datagram received ends as one outcome,
forwarded or dropped under one reason, or is held (waiting for the other vantage's copy of its
flow) until then, in total and per pod, at every read of ``/status`` or ``Stats.snapshot()``:
``received == forwarded + sum(drops) + held``. ``received`` is counted on its own (by the receiver
in total, at the pipeline's entry per pod, whose sum is ``pipeline_received``), so the identity can
break. ``balances`` writes it once.

A transport output's books (``adapters/transport_out.py``): every packet offered is delivered,
dropped by reason, queued, or in the open batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def balances(counts: Mapping[str, Any]) -> bool:
    """``received == forwarded + sum(drops) + held`` for one set of counters (the totals or one pod's)."""
    outcomes = counts["forwarded"] + sum(counts["drops"].values()) + counts["held"]
    return bool(counts["received"] == outcomes)


def assert_balanced(status: Mapping[str, Any]) -> None:
    """The identity for the totals and for every pod of a ``/status`` or ``Stats.snapshot()``, and
    the receiver's count equal to the pipeline's (no datagram lost between the two)."""
    assert balances(status), {k: status[k] for k in ("received", "forwarded", "drops", "held")}
    assert status["received"] == status["pipeline_received"], "read but never entered the pipeline"
    unbalanced = [key for key, pod in status.get("pods", {}).items() if not balances(pod)]
    assert not unbalanced, {key: status["pods"][key] for key in unbalanced}


def output_balances(state: Mapping[str, Any]) -> bool:
    """``offered == delivered + sum(dropped) + queued + open`` for a transport output or one link."""
    held = state["queued_packets"] + state["open_packets"]
    return bool(state["offered"] == state["delivered"] + sum(state["dropped"].values()) + held)
