"""web/metrics: the outputs' drops become one counter family labelled output and reason."""

from __future__ import annotations

from typing import Any

from nodeagent.stats import Stats
from nodeagent.verdict import OutputDrop
from nodeagent.web.metrics import make_registry


def _status(outputs: dict[str, Any]) -> dict[str, Any]:
    return {**Stats().snapshot(), "outputs": outputs}


def test_each_outputs_dropped_reasons_are_labelled_counters() -> None:
    outputs = {"pcap": {"packets": 7, "dropped": {OutputDrop.QUEUE_FULL: 3, OutputDrop.WRITE_ERROR: 0}},
               "vxlan": {"packets": 5, "dropped": {"unreachable": 2}}}
    registry = make_registry(lambda: _status(outputs))
    sample = registry.get_sample_value
    assert sample("podmirror_output_packets_dropped_total", {"output": "pcap", "reason": "queue_full"}) == 3
    assert sample("podmirror_output_packets_dropped_total", {"output": "pcap", "reason": "write_error"}) == 0
    assert sample("podmirror_output_packets_dropped_total", {"output": "vxlan", "reason": "unreachable"}) == 2
    assert sample("podmirror_output_packets", {"output": "pcap"}) == 7


def test_the_pipelines_drops_list_no_output_reason() -> None:
    registry = make_registry(lambda: _status({}))
    reasons = {s.labels["reason"] for m in registry.collect() if m.name == "podmirror_packets_dropped"
               for s in m.samples}
    assert reasons and not reasons & {r.value for r in OutputDrop if r is not OutputDrop.INTERNAL_ERROR}
