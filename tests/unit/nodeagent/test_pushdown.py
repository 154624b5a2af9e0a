"""Push-down: the pod's program mirrors every frame the agent would forward, exactly when it can."""

from __future__ import annotations

from typing import Any

from nodeagent.settings import load
from nodeagent.stages import filters, pushdown
from nodeagent.verdict import Direction
from sidecar_lite import cbpf
from tests import cbpf_reference
from tests.unit.nodeagent.pipeline_packets import (
    CLIENT,
    CLIENT_IP,
    NODE_IP,
    SERVER,
    SERVER_IP,
    VIP,
    eth,
    meta,
    tcp,
    udp,
)
from tests.unit.nodeagent.pipeline_packets import ICMP as ICMPLayer
from tests.unit.nodeagent.pipeline_packets import IP as IPLayer


def compile_rules(rules: list[dict[str, Any]], **extra: Any) -> filters.FilterSet:
    return filters.compile(load({"filters": {"rules": rules, **extra}}).filters)


def frames() -> list[bytes]:
    out = []
    for peer in (SERVER_IP, VIP, NODE_IP, "192.168.7.7"):
        for sport, dport in ((40000, 80), (40001, 53), (40002, 8443), (22, 40003)):
            out.append(bytes(tcp(CLIENT_IP, peer, sport=sport, dport=dport, payload=b"x")))
            out.append(bytes(tcp(peer, CLIENT_IP, sport=dport, dport=sport)))
            out.append(bytes(udp(CLIENT_IP, peer, sport=sport, dport=dport)))
        out.append(bytes(eth() / IPLayer(src=peer, dst=CLIENT_IP) / ICMPLayer()))
    return out


def agent_keeps(fs: filters.FilterSet, frame: bytes) -> bool:
    m = meta(frame)
    direction = Direction.EGRESS if m.src == CLIENT.addr else Direction.INGRESS
    peer = SERVER if SERVER.addr in (m.src, m.dst) else None
    return fs.decide(frame, m, CLIENT, peer, direction) != filters.EXCLUDE


def sidecar_mirrors(plan: pushdown.PushdownPlan, frame: bytes) -> bool:
    return plan.program is None or cbpf_reference.run(plan.program, frame) != 0


RULESETS: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
    ([{"action": "exclude", "ports": [53]}], {}),
    ([{"action": "exclude", "direction": "in", "protocol": "icmp"},
      {"action": "include", "peer": ["10.96.0.0/12"]},
      {"action": "exclude", "protocol": "udp"}], {}),
    ([{"action": "include", "direction": "out", "ports": ["8000-9000", 80]}], {"default": "exclude"}),
    ([{"action": "exclude", "bpf": "tcp[tcpflags] & tcp-push != 0"}], {"presets": ["drop-health-probes"],
                                                                       "node_ip": NODE_IP}),
    ([{"action": "exclude", "namespace": "shop", "ports": [22]},
      {"action": "exclude", "namespace": "x"}], {}),
]


def test_pushable_rules_give_exactly_the_agents_decisions() -> None:
    for rules, extra in RULESETS:
        fs = compile_rules(rules, **extra)
        plan = pushdown.plan(fs, CLIENT)
        assert plan.program is not None
        for frame in frames():
            assert sidecar_mirrors(plan, frame) == agent_keeps(fs, frame), (rules, meta(frame))


def test_peer_pod_rules_are_not_pushed_and_stay_sound() -> None:
    fs = compile_rules([{"action": "exclude", "peer_labels": {"tier": "db"}},
                        {"action": "exclude", "ports": [53]},
                        {"action": "include", "peer_namespace": "shop"},
                        {"action": "exclude", "protocol": "tcp"}])
    plan = pushdown.plan(fs, CLIENT)
    assert plan.expression is not None and "53" in plan.expression and "proto 6" not in plan.expression
    for frame in frames():
        if agent_keeps(fs, frame):
            assert sidecar_mirrors(plan, frame)
    assert not sidecar_mirrors(plan, bytes(udp(CLIENT_IP, VIP, dport=53)))


def test_nothing_pushable_is_null_and_exclude_all_is_a_reject_program() -> None:
    assert pushdown.plan(compile_rules([]), CLIENT).as_json()["bpf"] is None
    assert pushdown.plan(compile_rules([{"action": "exclude", "namespace": "other"}]), CLIENT).program is None
    plan = pushdown.plan(compile_rules([], default="exclude"), CLIENT)
    assert plan.program == cbpf.REJECT_ALL


def test_version_is_stable_and_changes_with_the_rules() -> None:
    rules = [{"action": "exclude", "ports": [53]}]
    a = pushdown.plan(compile_rules(rules), CLIENT)
    b = pushdown.plan(compile_rules(rules), CLIENT)
    c = pushdown.plan(compile_rules([{"action": "exclude", "ports": [54]}]), CLIENT)
    assert a.version == b.version != c.version
    assert a.as_json() == {"version": a.version, "bpf": [list(i) for i in a.program or ()]}
    assert all(0 <= k <= 0xFFFFFFFF for _, _, _, k in a.program or ())
