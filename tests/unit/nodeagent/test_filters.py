"""Filter rules: each condition, first match wins, default, preset, snap length, bad BPF."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.settings import ConfigError, load
from nodeagent.stages import filters
from nodeagent.verdict import Direction
from tests.unit.nodeagent.pipeline_packets import (
    CLIENT,
    CLIENT_IP,
    NODE_IP,
    SERVER,
    SERVER_IP,
    eth,
    meta,
    tcp,
    udp,
)
from tests.unit.nodeagent.pipeline_packets import UDP as UDPLayer
from tests.unit.nodeagent.pipeline_packets import IPv6 as IPv6Layer


def compile_rules(rules: list[dict[str, Any]], **extra: Any) -> filters.FilterSet:
    return filters.compile(load({"filters": {"rules": rules, **extra}}).filters)


def decide(fs: filters.FilterSet, frame: bytes, pod=CLIENT, peer=SERVER) -> int:  # type: ignore[no-untyped-def]
    m = meta(frame)
    direction = Direction.EGRESS if m.src == pod.addr else Direction.INGRESS if m.dst == pod.addr \
        else Direction.UNKNOWN
    return fs.decide(frame, m, pod, peer, direction)


OUT_HTTP = bytes(tcp(CLIENT_IP, SERVER_IP, dport=80))
IN_HTTP = bytes(tcp(SERVER_IP, CLIENT_IP, sport=80, dport=40000))
OUT_DNS = bytes(udp(CLIENT_IP, "10.96.0.10", dport=53))
PROBE = bytes(tcp(NODE_IP, CLIENT_IP, sport=51000, dport=8080))

MATRIX = [
    ({"direction": "out"}, [OUT_HTTP, OUT_DNS], [IN_HTTP, PROBE]),
    ({"direction": "in"}, [IN_HTTP, PROBE], [OUT_HTTP, OUT_DNS]),
    ({"protocol": "udp"}, [OUT_DNS], [OUT_HTTP, IN_HTTP]),
    ({"protocol": 6}, [OUT_HTTP, IN_HTTP], [OUT_DNS]),
    ({"ports": [80]}, [OUT_HTTP, IN_HTTP], [OUT_DNS, PROBE]),
    ({"ports": ["8000-8100"]}, [PROBE], [OUT_HTTP]),
    ({"peer": ["10.96.0.0/12"]}, [OUT_DNS], [OUT_HTTP, PROBE]),
    ({"peer": ["10.0.0.9/32"]}, [OUT_HTTP, IN_HTTP], [OUT_DNS]),
    ({"namespace": "shop"}, [OUT_HTTP, OUT_DNS], []),
    ({"namespace": "other"}, [], [OUT_HTTP]),
    ({"pod": "client", "labels": {"app": "client"}}, [OUT_HTTP], []),
    ({"labels": {"app": "nope"}}, [], [OUT_HTTP]),
    ({"peer_labels": {"tier": "db"}}, [OUT_HTTP, IN_HTTP], [OUT_DNS]),
    ({"peer_namespace": "elsewhere"}, [], [OUT_HTTP]),
    ({"bpf": "tcp dst port 80"}, [OUT_HTTP], [IN_HTTP, OUT_DNS]),
    ({"direction": "out", "protocol": "tcp", "ports": [80]}, [OUT_HTTP], [IN_HTTP, OUT_DNS]),
]


@pytest.mark.parametrize("rule,matched,unmatched", MATRIX)
def test_rule_matrix(rule: dict[str, Any], matched: list[bytes], unmatched: list[bytes]) -> None:
    fs = compile_rules([{"action": "exclude", **rule}])
    for frame in matched:
        assert decide(fs, frame, peer=SERVER if SERVER.addr in frame else None) == filters.EXCLUDE
    for frame in unmatched:
        assert decide(fs, frame, peer=SERVER if SERVER.addr in frame else None) == filters.INCLUDE


def test_first_match_wins_then_default() -> None:
    fs = compile_rules([{"action": "include", "ports": [53], "snaplen": 96},
                        {"action": "exclude", "protocol": "udp"}], default="exclude")
    assert decide(fs, OUT_DNS) == 96
    assert decide(fs, bytes(udp(CLIENT_IP, SERVER_IP, dport=123))) == filters.EXCLUDE
    assert decide(fs, OUT_HTTP) == filters.EXCLUDE  # default


def test_health_probe_preset_drops_traffic_with_the_node_address() -> None:
    fs = compile_rules([], presets=["drop-health-probes"], node_ip=NODE_IP)
    assert decide(fs, PROBE, peer=None) == filters.EXCLUDE
    assert decide(fs, bytes(tcp(CLIENT_IP, NODE_IP, sport=8080, dport=51000)), peer=None) == filters.EXCLUDE
    assert decide(fs, OUT_HTTP) == filters.INCLUDE


def test_health_probe_preset_needs_the_node_address() -> None:
    with pytest.raises(ConfigError, match="node_ip"):
        load({"filters": {"presets": ["drop-health-probes"]}})


def test_bad_bpf_stops_startup_naming_the_rule() -> None:
    with pytest.raises(ConfigError) as err:
        compile_rules([{"action": "include", "ports": [80]}, {"name": "no-ssh", "bpf": "tcp prot 22"}])
    assert err.value.field == "filters.rules[1].bpf" and "no-ssh" in str(err.value)


def test_bad_protocol_and_ports_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\]\.protocol"):
        compile_rules([{"protocol": "tcpp"}])
    with pytest.raises(ConfigError, match=r"rules\[0\]\.ports"):
        compile_rules([{"ports": ["90-80"]}])


def test_rules_match_ipv6_frames() -> None:
    pod = type(CLIENT)("fd00::5", 5, "shop", "v6")
    frame = bytes(eth() / IPv6Layer(src="fd00::5", dst="fd00:1::9") / UDPLayer(sport=1, dport=53) / b"q")
    fs = compile_rules([{"action": "exclude", "peer": ["fd00:1::/64"], "direction": "out", "ports": [53]}])
    assert decide(fs, frame, pod=pod, peer=None) == filters.EXCLUDE
    assert decide(fs, frame, pod=SERVER, peer=None) == filters.INCLUDE  # not that pod's own address
