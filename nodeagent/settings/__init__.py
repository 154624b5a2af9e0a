"""The node agent's configuration: frozen dataclass groups, validated once, errors that name the field.

Model (kopf's ``OperatorSettings``, aioquic's ``QuicConfiguration``): ``Settings`` is a tree of
frozen groups (``listen``, ``senders``, ``peers``, ``outputs``, ``normalize``, ``status``,
``dedup``...). Each group validates itself in ``__post_init__`` and raises ``ConfigError`` naming
its own field; ``load`` prefixes the path, so a user reads ``outputs.pcap.max_bytes must be > 0``.

Sources, lowest precedence first: the dataclass defaults, a YAML or JSON file (YAML is a superset
of JSON, one parser), then command-line overrides (``cli.py`` turns flags into a mapping merged over
the file). No module reads the environment or a global settings object: ``app.py`` hands each group
to the part that needs it.

Adding a group: write a frozen dataclass with defaults and a ``__post_init__`` check, and add one
field to ``Settings``. ``load`` converts mappings, lists and scalars by the type hints, so a new
group needs no parsing code. A group may accept a one-string shorthand through a ``from_text``
classmethod (``listen: "0.0.0.0:14789"``, ``senders: ["10.0.0.5+fd00::5,5,default/web"]``).

Pure: no I/O except ``load_file``, which only reads the named file.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from nodeagent.settings.base import (
    COLLECTOR_PORT,
    PUSHDOWN_PORT,
    SENSOR_PORT,
    STATUS_PORT,
    TUNNEL_PORT,
    ConfigError,
    check,
    convert,
    parse_hostport,
    parse_ports,
    parse_vni,
)
from nodeagent.settings.capture import CAPTURE_PORT, CaptureSettings
from nodeagent.settings.inputs import (
    KubeSettings,
    ListenSettings,
    LogSettings,
    PeerSettings,
    PushdownSettings,
    SenderSettings,
    StatusSettings,
    WorkersSettings,
)
from nodeagent.settings.outputs import (
    CollectorEndpointSettings,
    NormalizeSettings,
    OutputsSettings,
    PcapSettings,
    SensorSettings,
    TransportSettings,
)
from nodeagent.settings.stages import (
    CutoffSettings,
    DedupSettings,
    FilterSettings,
    RuleSettings,
)

__all__ = [
    "CAPTURE_PORT",
    "CaptureSettings",
    "COLLECTOR_PORT",
    "CollectorEndpointSettings",
    "ConfigError",
    "CutoffSettings",
    "DedupSettings",
    "FilterSettings",
    "KubeSettings",
    "ListenSettings",
    "LogSettings",
    "NormalizeSettings",
    "OutputsSettings",
    "PcapSettings",
    "PUSHDOWN_PORT",
    "PeerSettings",
    "PushdownSettings",
    "RuleSettings",
    "SENSOR_PORT",
    "STATUS_PORT",
    "SenderSettings",
    "SensorSettings",
    "Settings",
    "StatusSettings",
    "TUNNEL_PORT",
    "TransportSettings",
    "WorkersSettings",
    "convert",
    "load",
    "load_file",
    "merge",
    "parse_hostport",
    "parse_ports",
    "parse_vni",
]


@dataclasses.dataclass(frozen=True)
class Settings:
    listen: ListenSettings = ListenSettings()
    senders: tuple[SenderSettings, ...] = ()
    peers: tuple[PeerSettings, ...] = ()
    outputs: OutputsSettings = OutputsSettings()
    normalize: NormalizeSettings = NormalizeSettings()
    status: StatusSettings = StatusSettings()
    pushdown: PushdownSettings = PushdownSettings()
    dedup: DedupSettings = DedupSettings()
    filters: FilterSettings = FilterSettings()
    cutoff: CutoffSettings = CutoffSettings()
    log: LogSettings = LogSettings()
    kube: KubeSettings = KubeSettings()
    capture: CaptureSettings = CaptureSettings()
    workers: WorkersSettings = WorkersSettings()

    _unique: ClassVar[tuple[str, ...]] = ("senders", "peers")

    def __post_init__(self) -> None:
        check(not self.capture.kube_auth or self.kube.enabled, "capture.kube_auth",
              "needs the pod table from Kubernetes (kube.node_name)")
        seen: set[str] = set()
        for group in self._unique:
            for i, pod in enumerate(getattr(self, group)):
                for ip in pod.addresses:
                    check(ip not in seen, f"{group}[{i}].ip", f"{ip} is listed twice")
                    seen.add(ip)


def load(data: Mapping[str, Any] | None) -> Settings:
    """Build ``Settings`` from a parsed config mapping. Raises ``ConfigError`` naming the field."""
    return typing.cast(Settings, convert(Settings, data or {}, ""))


def load_file(path: str, overrides: Mapping[str, Any] | None = None,
              base: Mapping[str, Any] | None = None) -> Settings:
    """Read YAML or JSON from ``path``, merge it over ``base`` and ``overrides`` over it, validate."""
    import yaml  # local: settings stays importable without parsing anything

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError("--config", f"cannot be read: {exc.strerror} ({path})") from None
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"is not valid YAML/JSON: {exc}") from None
    if data is None:
        data = {}
    check(isinstance(data, Mapping), "--config", "must hold a mapping at the top level")
    return load(merge(merge(base or {}, data), overrides or {}))


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; lists and scalars in ``over`` replace those in ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
