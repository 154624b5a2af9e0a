"""netinfo (capabilities), cli.choose_mode, label discovery's choice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sidecar_lite import cli, discovery, discovery_label, netinfo
from sidecar_lite.settings import parse


def test_cap_eff_bit_12_is_net_admin() -> None:
    assert netinfo.effective_capabilities("Name:\tx\nCapEff:\t0000000000001000\n") >> 12 & 1
    assert not netinfo.effective_capabilities("CapEff:\t00000000a80425fb\n") >> 12 & 1  # runtime default


@pytest.mark.parametrize(
    "requested, net_admin, mode",
    [
        ("auto", True, "kernel"),
        ("auto", False, "sniff"),
        ("sniff", True, "sniff"),
        ("kernel", False, "kernel"),
    ],
)
def test_choose_mode(requested: str, net_admin: bool, mode: str) -> None:
    assert cli.choose_mode(requested, net_admin) == mode


def test_loopback_has_an_ipv4_address() -> None:
    assert netinfo.interface_ipv4("lo") == "127.0.0.1"


def test_service_discovery_resolves_names_to_ipv4() -> None:
    assert discovery.resolve(parse(["--agent", "localhost:14789"], {})) == "127.0.0.1"
    assert discovery.resolve(parse(["--agent", "10.0.0.1"], {})) == "10.0.0.1"


def test_unresolvable_agent_is_a_discovery_error() -> None:
    with pytest.raises(discovery.DiscoveryError):
        discovery.resolve(parse(["--agent", "no-such-agent.invalid"], {}))


def _pod(name: str, phase: str, ip: str | None) -> SimpleNamespace:
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name), status=SimpleNamespace(phase=phase, pod_ip=ip)
    )


def test_label_discovery_picks_the_first_running_agent_by_name() -> None:
    s = parse([], {"SENSOR": "agent", "NODE_NAME": "n1", "POD_NAMESPACE": "ns"})
    pods = [_pod("b", "Running", "10.0.0.2"), _pod("a", "Pending", None), _pod("c", "Running", "10.0.0.3")]
    assert discovery_label.choose(pods, s) == "10.0.0.2"
    with pytest.raises(discovery_label.NoAgent, match="n1"):
        discovery_label.choose([_pod("a", "Pending", None)], s)


def test_every_is_due_once_per_interval() -> None:
    from sidecar_lite.runner import Every

    every = Every(10.0, first=5.0)
    assert [every.due(t) for t in (0.0, 5.0, 6.0, 14.9, 15.0, 15.1)] == [
        False,
        True,
        False,
        False,
        True,
        False,
    ]


def test_configuration_error_exits_2(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("PODMIRROR_AGENT", "SENSOR", "PODMIRROR_DISCOVERY"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main([]) == 2
    assert "agent" in caplog.text
