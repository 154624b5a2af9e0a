"""Shared by every settings group: ``ConfigError``, default ports, field parsers, and the converter
that builds a group from a parsed mapping by its type hints (so a new group needs no parsing code)."""

from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
from collections.abc import Mapping
from typing import Any

from sidecar_lite.identity import is_ip

TUNNEL_PORT = 14789
"""Default UDP port for sidecar tunnels: not 4789 (Calico/Antrea VXLAN), 8472 (flannel/Cilium), 6081."""
STATUS_PORT = 9477
"""``/status``, ``/metrics``, ``/healthz``, ``/readyz``: for the node (probes) and Prometheus."""
PUSHDOWN_PORT = 9476
"""``/v1/pushdown``: for the monitored pods' sidecars, each answered only about itself."""
SENSOR_PORT = 4789
"""IANA VXLAN: the port Zeek, Suricata and Corelight sensors decapsulate by default."""
COLLECTOR_PORT = 14790
"""Default TCP port of ``nodeagent collect`` (the batched transport's collector)."""


class ConfigError(ValueError):
    """A configuration value is wrong. ``field`` is its dotted path (``outputs.pcap.max_bytes``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem

    def within(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` prepended to the field path."""
        if not prefix:
            return self
        if not self.field:
            return ConfigError(prefix, self.problem)
        sep = "" if self.field.startswith("[") else "."
        return ConfigError(f"{prefix}{sep}{self.field}", self.problem)


def check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise ConfigError(field, problem)


class Endpoint:
    """For a settings group that is an ``IP[:PORT]`` (fields ``host`` and ``port``): the one-string
    shorthand ``from_text`` with the group's ``DEFAULT_PORT``, and the checks of both fields."""

    DEFAULT_PORT: typing.ClassVar[int]
    LISTENS: typing.ClassVar[bool] = False
    """Port 0 ("any free port") is allowed only where the agent listens."""
    host: str
    port: int

    @classmethod
    def from_text(cls, text: str) -> typing.Self:
        host, port = parse_hostport(text, cls.DEFAULT_PORT, "")
        return cls(host=host, port=port)  # type: ignore[call-arg]  # the dataclass's own __init__

    def check_endpoint(self) -> None:
        check(is_ip(self.host), "host", f"must be an IP address, got {self.host!r}")
        if self.LISTENS:
            check(0 <= self.port < 65536, "port", "must be in 0..65535 (0: any free port)")
        else:
            check(0 < self.port < 65536, "port", "must be in 1..65535")


def parse_hostport(text: str, default_port: int | None, field: str) -> tuple[str, int]:
    """``IP:PORT``, ``[IPv6]:PORT``, bare ``IP`` (when ``default_port`` is given) -> (ip, port)."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not port_text:
        check(default_port is not None, field, f"must be IP:PORT, got {text!r}")
        port = typing.cast(int, default_port)
    else:
        check(port_text.isdigit(), field, f"has a bad port in {text!r}")
        port = int(port_text)
    check(is_ip(host), field, f"must be an IP address, got {host!r}")
    check(0 <= port < 65536, field, f"port must be in 0..65535, got {port}")
    return host, port


def parse_vni(value: object, ip: str, field: str) -> int:
    """A VNI: an int, decimal or ``0x`` text, or ``auto`` (low 24 bits of the pod's IPv4 address,
    the project-wide rule of ``sidecar_lite.identity.vni_for_address``)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            check(ipaddress.ip_address(ip).version == 4, field, "auto needs an IPv4 pod address")
            return int(ipaddress.IPv4Address(ip)) & 0xFFFFFF
        try:
            value = int(text, 0)
        except ValueError:
            raise ConfigError(field, f"must be an integer, 0x.. or auto, got {value!r}") from None
    check(isinstance(value, int) and not isinstance(value, bool), field,
           f"must be an integer, got {value!r}")
    vni = typing.cast(int, value)
    check(0 <= vni < 1 << 24, field, f"must be in 0..16777215, got {vni}")
    return vni


def split_pod(text: str, field: str) -> tuple[str, str]:
    namespace, slash, name = text.strip().partition("/")
    check(bool(slash and namespace and name), field, f"must be NAMESPACE/NAME, got {text!r}")
    return namespace, name


def parse_ports(text: str, field: str) -> tuple[int, ...]:
    """``"8080+9090"`` -> ``(8080, 9090)``; empty text -> ``()``."""
    items = [item.strip() for item in text.split("+")] if text.strip() else []
    check(all(item.isdigit() for item in items), field, f"must be PORT[+PORT...], got {text!r}")
    return tuple(int(item) for item in items)


def check_ports(ports: tuple[int, ...]) -> None:
    check(all(isinstance(p, int) and 0 < p < 65536 for p in ports), "ports",
           f"must be ports in 1..65535, got {list(ports)!r}")


def convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _convert_group(hint, value, path)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, str | Mapping) or not isinstance(value, list | tuple):
            value = [value]
        return tuple(convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return _convert_union(hint, value, path)
    return _convert_scalar(hint, value, path)


def _convert_group(cls: type, value: Any, path: str) -> Any:
    try:
        if isinstance(value, str) and hasattr(cls, "from_text"):
            return cls.from_text(value)
        check(isinstance(value, Mapping), "", f"must be a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {}
        for key, item in value.items():
            check(key in names, str(key), "is not a known field")
            kwargs[key] = convert(hints[key], item, f"{path}.{key}".lstrip("."))
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        check(not missing, missing[0] if missing else "", "is required")
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.field.startswith(path) and path:
            raise
        raise exc.within(path) from None


def _convert_union(hint: Any, value: Any, path: str) -> Any:
    args = typing.get_args(hint)
    if value is None:
        check(type(None) in args, path, "must not be null")
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return convert(arg, value, path)
        except ConfigError as exc:
            errors.append(exc)
    raise errors[0]


def _convert_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        check(isinstance(value, bool), path, f"must be true or false, got {value!r}")
    elif hint is int:
        check(isinstance(value, int) and not isinstance(value, bool), path,
               f"must be an integer, got {value!r}")
    elif hint is float:
        check(isinstance(value, int | float) and not isinstance(value, bool), path,
               f"must be a number, got {value!r}")
        value = float(value)
    elif hint is str:
        check(isinstance(value, str), path, f"must be a string, got {value!r}")
    return value
