from __future__ import annotations

import pytest

from sidecar_lite.settings import ConfigError, parse, split_host_port


def test_contract_flags() -> None:
    s = parse(["--agent", "10.0.0.1:15000", "--vni", "0x10", "--interface", "net1", "--mode", "sniff"], {})
    assert (s.agent_host, s.agent_port, s.vni, s.interface, s.mode) == (
        "10.0.0.1",
        15000,
        16,
        "net1",
        "sniff",
    )
    assert s.discovery == "service" and s.rules_url is None


def test_defaults() -> None:
    s = parse(["--agent", "agent.podmirror.svc"], {})
    assert (s.agent_port, s.vni, s.interface, s.mode) == (14789, None, "eth0", "auto")
    assert (s.rules_interval, s.verify_interval) == (10.0, 3.0)


def test_podmirror_environment() -> None:
    env = {
        "PODMIRROR_AGENT": "10.0.0.1:1234",
        "PODMIRROR_VNI": "77",
        "PODMIRROR_INTERFACE": "eth1",
        "PODMIRROR_MODE": "kernel",
        "PODMIRROR_RULES_URL": "http://10.0.0.1:9477/v1/pushdown",
        "POD_IP": "10.1.0.5",
        "POD_NAME": "web",
        "POD_NAMESPACE": "shop",
        "NODE_NAME": "n1",
        "NODE_IP": "192.168.1.2",
    }
    s = parse([], env)
    assert (s.agent_host, s.agent_port, s.vni, s.interface, s.mode) == (
        "10.0.0.1",
        1234,
        77,
        "eth1",
        "kernel",
    )
    assert s.rules_url == "http://10.0.0.1:9477/v1/pushdown"
    assert (s.pod.ip, s.pod.name, s.pod.namespace, s.pod.node_name, s.pod.node_ip) == (
        "10.1.0.5",
        "web",
        "shop",
        "n1",
        "192.168.1.2",
    )


def test_flags_override_environment() -> None:
    s = parse(
        ["--vni", "5", "--mode", "sniff"],
        {"PODMIRROR_AGENT": "10.0.0.1", "PODMIRROR_VNI": "6", "PODMIRROR_MODE": "kernel"},
    )
    assert (s.vni, s.mode) == (5, "sniff")


def test_seed_names_work_and_vni_is_hex() -> None:
    s = parse([], {"SENSOR": "10.0.0.9", "VNI": "1f", "INTERFACE": "eth0"})
    assert (s.agent_host, s.agent_port, s.vni, s.discovery) == ("10.0.0.9", 14789, 0x1F, "service")


def test_podmirror_names_win_over_seed_names() -> None:
    s = parse(
        [],
        {
            "SENSOR": "10.0.0.9",
            "VNI": "10",
            "PODMIRROR_VNI": "10",
            "PODMIRROR_AGENT": "10.0.0.1",
            "INTERFACE": "x",
            "PODMIRROR_INTERFACE": "eth2",
        },
    )
    assert (s.agent_host, s.vni, s.interface) == ("10.0.0.1", 10, "eth2")


def test_sensor_label_value_selects_label_discovery() -> None:
    s = parse([], {"SENSOR": "podmirror-agent", "POD_NAMESPACE": "shop", "NODE_NAME": "n1"})
    assert (s.discovery, s.label_value, s.label_key, s.agent_host, s.agent_namespace) == (
        "label",
        "podmirror-agent",
        "run",
        None,
        "shop",
    )


def test_node_ip_discovery_uses_the_downward_api_address() -> None:
    s = parse([], {"PODMIRROR_DISCOVERY": "node-ip", "NODE_IP": "192.168.1.2", "PODMIRROR_AGENT": ":15000"})
    assert (s.agent_host, s.agent_port) == ("192.168.1.2", 15000)


def test_vni_auto() -> None:
    assert parse(["--agent", "10.0.0.1", "--vni", "auto"], {}).vni is None


@pytest.mark.parametrize(
    "argv, env, field",
    [
        ([], {}, "agent"),
        (["--agent", "10.0.0.1:http"], {}, "port"),
        (["--agent", "10.0.0.1:70000"], {}, "port"),
        (["--agent", "10.0.0.1", "--vni", "99999999"], {}, "vni"),
        (["--agent", "10.0.0.1"], {"PODMIRROR_MODE": "turbo"}, "mode"),
        ([], {"PODMIRROR_DISCOVERY": "node-ip"}, "NODE_IP"),
        ([], {"PODMIRROR_DISCOVERY": "label"}, "SENSOR"),
        (["--agent", "10.0.0.1", "--tunnel-mtu", "100"], {}, "tunnel-mtu"),
        (["--agent", "[fd00::1]:14789"], {}, "IPv4"),
        (["--agent", "10.0.0.1", "--rules-interval", "0"], {}, "rules-interval"),
        (["--agent", "10.0.0.1"], {"PODMIRROR_RULES_INTERVAL": "soon"}, "PODMIRROR_RULES_INTERVAL"),
        (["--agent", "10.0.0.1", "--interface", "a-very-long-interface-name"], {}, "interface"),
    ],
)
def test_errors_name_the_field(argv: list[str], env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse(argv, env)


@pytest.mark.parametrize(
    "text, expected",
    [("h:1", ("h", 1)), ("h", ("h", 14789)), (":2", (None, 2)), ("[fd00::1]:3", ("fd00::1", 3))],
)
def test_split_host_port(text: str, expected: tuple[str | None, int]) -> None:
    assert split_host_port(text, "agent") == expected
