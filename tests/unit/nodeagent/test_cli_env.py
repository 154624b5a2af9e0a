"""``nodeagent run``: the downward API's NODE_IP becomes ``filters.node_ip`` (under the file and flags)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent import cli
from nodeagent.settings import ConfigError
from nodeagent.stages import filters

PRESET = "filters: {presets: [drop-health-probes]}\n"


def settings(argv: list[str], environ: dict[str, str]):  # type: ignore[no-untyped-def]
    return cli.load_run_settings(cli.build_parser().parse_args(["run", *argv]), environ)


def test_node_ip_from_the_environment_enables_the_health_probe_preset(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(PRESET)
    loaded = settings(["--config", str(config)], {"NODE_IP": "192.168.5.4"})
    assert loaded.filters.node_ip == "192.168.5.4"
    assert filters.compile(loaded.filters).rules[0].spec.peer == ("192.168.5.4/32",)


def test_the_config_file_overrides_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("filters: {node_ip: 192.168.9.9}\n")
    assert settings(["--config", str(config)], {"NODE_IP": "192.168.5.4"}).filters.node_ip == "192.168.9.9"


def test_without_a_file_and_without_node_ip_nothing_is_set() -> None:
    assert settings([], {"NODE_IP": " 10.9.0.1 "}).filters.node_ip == "10.9.0.1"
    assert settings([], {}).filters.node_ip is None


def test_the_preset_without_node_ip_and_a_bad_node_ip_name_the_field(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(PRESET)
    with pytest.raises(ConfigError, match="filters.node_ip is required"):
        settings(["--config", str(config)], {})
    with pytest.raises(ConfigError, match="filters.node_ip must be an IP"):
        settings([], {"NODE_IP": "node-a"})
