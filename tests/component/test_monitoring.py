"""deploy/monitoring: every metric the dashboard and the alerts use exists in a running agent's /metrics."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import yaml

from tests.component.agent_kit import http_get, make_settings, running
from tests.component.capture_kit import make_certs

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
FUNCTIONS = {"rate", "irate", "increase", "delta", "sum", "count", "topk", "absent", "vector", "by",
             "without", "or", "and", "unless", "on", "ignoring", "max", "min", "avg", "label_values", "bool"}
FROM_PROMETHEUS = {"up"}
"""Series Prometheus itself makes for every target."""


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label matchers,
    ranges and ``by (...)`` clauses, less functions and keywords."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {n for n in names if n not in FUNCTIONS and not n.startswith("$")}


def expressions() -> dict[str, str]:
    out = {}
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            out[f"alert {rule['alert']}"] = rule["expr"]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            out[f"panel {panel['title']} {target['refId']}"] = target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out[f"variable {var['name']}"] = re.sub(r"^label_values\((\w+),.*$", r"\1", var["query"])
    return out


def test_metric_name_parser() -> None:
    expr = 'sum by (reason) (rate(podmirror_x_total{a="b"}[5m])) or vector(0)'
    assert metric_names(expr) == {"podmirror_x_total"}
    assert metric_names("up{job=~\".*podmirror.*\"} == 0 or absent(podmirror_up)") == {"up", "podmirror_up"}


async def test_every_metric_of_the_dashboard_and_alerts_is_served(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    settings = make_settings(
        outputs={"pcap": {"dir": str(tmp_path / "pcap")}, "sensors": ["127.0.0.1:9"],
                 "transport": {"collectors": ["127.0.0.1:9"], "ca_file": certs.ca}},
        dedup={"enabled": True},
        capture={"listen": "127.0.0.1:0", "cert": certs.cert, "key": certs.key, "client_ca": certs.ca})
    async with running(settings, extensions=True) as agent:
        from nodeagent.capture.filter import CaptureFilter

        agent.open_capture(CaptureFilter()).close()  # the capture output's gauges exist after a first capture
        assert agent.status_address is not None
        code, body = await asyncio.to_thread(http_get, agent.status_address, "/metrics")
    assert code == 200
    served = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
    served |= {n + "_total" for n in served}  # counters are declared without their _total suffix
    used = expressions()
    assert len(used) >= 10
    missing = {where: sorted(metric_names(expr) - served - FROM_PROMETHEUS) for where, expr in used.items()}
    assert {k: v for k, v in missing.items() if v} == {}
    alerts = {k.split()[1] for k in used if k.startswith("alert")}
    assert alerts == {"PodmirrorAgentDown", "PodmirrorSocketDrops", "PodmirrorSensorDown",
                      "PodmirrorSilentPods", "PodmirrorQueueDrops"}
