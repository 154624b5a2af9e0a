"""Sidecar settings: command line and environment -> one frozen ``Settings``, validated once.

Precedence, highest first: command-line flag, ``PODMIRROR_*`` variable, the variable of the
reference sidecar this one replaces (``INTERFACE``, ``VNI`` read as hex as it does, ``SENSOR``;
docs/datapath.md "The reference sidecar"), default.

Discovery of the agent (``PODMIRROR_DISCOVERY`` / ``--discovery``):

- ``service`` (default): ``--agent``/``PODMIRROR_AGENT`` HOST:PORT, HOST may be a DNS name such as a
  Service with ``internalTrafficPolicy: Local``; the reference sidecar's ``SENSOR=<IP>`` also works.
- ``node-ip``: the node's address from the downward API (``NODE_IP``), agent on hostNetwork; the
  port comes from ``PODMIRROR_AGENT`` when given (``:PORT`` alone is fine), else 14789.
- ``label``: the reference sidecar's ``SENSOR=<label value>``: the agent pod on this node whose label
  ``PODMIRROR_LABEL_KEY`` (default ``run``, as it used) has that value, listed in
  ``PODMIRROR_AGENT_NAMESPACE`` (default: the pod's namespace). Chosen implicitly when ``SENSOR`` is
  set to something that is not an IP address and no agent address is given.

Pure: ``parse(argv, env)`` reads nothing else. Errors are ``ConfigError`` naming the field.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence

from sidecar_lite import identity
from sidecar_lite.vxlan import DEFAULT_PORT

MODES = ("auto", "kernel", "sniff")
SNIFF_IO = ("ring", "socket")
DISCOVERY = ("service", "node-ip", "label")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class PodIdentity:
    """Who we are, from the downward API (all optional outside Kubernetes)."""

    ip: str | None = None
    name: str | None = None
    namespace: str | None = None
    node_name: str | None = None
    node_ip: str | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    agent_host: str | None
    """Agent address or DNS name; None with label discovery (found at start-up)."""
    agent_port: int = DEFAULT_PORT
    vni: int | None = None
    """None means auto: ``identity.vni_for_address`` of the interface's IPv4 address."""
    interface: str = "eth0"
    mode: str = "auto"
    discovery: str = "service"
    label_value: str | None = None
    label_key: str = "run"
    agent_namespace: str | None = None
    kubeconfig: str | None = None
    """Label mode outside a cluster only (``KUBECONFIG``); in a pod the service account is used."""
    rules_url: str | None = None
    """Push-down endpoint (``http://HOST:9476/v1/pushdown``, the agent's push-down port);
    ``{agent_host}`` is substituted."""
    rules_interval: float = 10.0
    """Seconds between push-down polls: rules change rarely, a poll is one small HTTP request."""
    verify_interval: float = 3.0
    """Seconds between kernel-state checks: how long a deleted filter may stay missing."""
    stats_interval: float = 60.0
    """Seconds between counter log lines (sniff: capture/send counters; kernel: tunnel device)."""
    tunnel_mtu: int | None = None
    """If set, a locked route MTU to the agent (needs the node side of the veth raised too)."""
    sniff_io: str = "ring"
    """Sniff mode's reading and sending: ``ring`` (TPACKET_V3 + sendmmsg) or ``socket``."""
    pod: PodIdentity = PodIdentity()
    check_tunnel: bool = False
    """Do not mirror: ask the agent once whether it receives this pod's tunnel (exit 0 if so): the
    injected container's readiness probe."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.discovery not in DISCOVERY:
            raise ConfigError(f"discovery must be one of {', '.join(DISCOVERY)}, not {self.discovery!r}")
        if not 0 < self.agent_port < 65536:
            raise ConfigError(f"agent port {self.agent_port} is out of range 1..65535")
        if self.agent_host is None and self.discovery != "label":
            raise ConfigError("agent: set --agent HOST:PORT or PODMIRROR_AGENT (or SENSOR)")
        if self.agent_host and ":" in self.agent_host:
            raise ConfigError("agent: the tunnel is IPv4 (its exclusion filter matches IPv4), not IPv6")
        if self.discovery == "label" and not self.label_value:
            raise ConfigError("label discovery needs SENSOR=<label value>")
        if self.sniff_io not in SNIFF_IO:
            raise ConfigError(f"sniff-io must be one of {', '.join(SNIFF_IO)}, not {self.sniff_io!r}")
        if self.tunnel_mtu is not None and not 1280 <= self.tunnel_mtu <= 65535:
            raise ConfigError("tunnel-mtu must be in 1280..65535")
        for name in ("rules_interval", "verify_interval", "stats_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0 seconds")
        if not self.interface or len(self.interface) > 15:
            raise ConfigError(f"interface name {self.interface!r} is invalid")


def split_host_port(text: str, field: str) -> tuple[str | None, int]:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``[v6]:PORT`` -> (host or None, port)."""
    value = text.strip()
    host, port = value, ""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"{field}: port {port!r} is not a number") from exc
    return (host or None), number


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sidecar-lite", description="Mirror this pod's traffic to its agent.")
    p.add_argument("--agent", help="agent HOST:PORT (env PODMIRROR_AGENT or SENSOR)")
    p.add_argument("--vni", help="decimal, 0x.. or auto (env PODMIRROR_VNI, or VNI in hex)")
    p.add_argument("--interface", help="mirrored interface (env PODMIRROR_INTERFACE or INTERFACE)")
    p.add_argument("--mode", choices=MODES, help="auto|kernel|sniff (env PODMIRROR_MODE)")
    p.add_argument("--discovery", choices=DISCOVERY, help="env PODMIRROR_DISCOVERY")
    p.add_argument("--rules-url", help="push-down URL (env PODMIRROR_RULES_URL); absent: no polling")
    p.add_argument("--rules-interval", type=float, help="seconds between polls (default 10)")
    p.add_argument("--verify-interval", type=float, help="seconds between kernel checks (default 3)")
    p.add_argument("--stats-interval", type=float, help="seconds between counter logs (default 60)")
    p.add_argument("--tunnel-mtu", type=int, help="locked route MTU to the agent (default: kernel fragments)")
    p.add_argument("--sniff-io", choices=SNIFF_IO,
                   help="sniff mode: ring (TPACKET_V3 + sendmmsg, default) or socket "
                        "(env PODMIRROR_SNIFF_IO)")
    p.add_argument("--check-tunnel", action="store_true",
                   help="readiness probe: exit 0 when the agent receives this pod's tunnel, else 1")
    return p


def parse(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Build Settings from ``argv`` (without the program name) and ``env``."""
    args = _parser().parse_args(list(argv))
    sensor = env.get("SENSOR", "").strip()
    agent_text = args.agent or env.get("PODMIRROR_AGENT", "").strip()
    discovery = args.discovery or env.get("PODMIRROR_DISCOVERY", "").strip()
    if not discovery:
        discovery = "label" if sensor and not agent_text and not identity.is_ip(sensor) else "service"
    host, port = _agent(discovery, agent_text, sensor, env)
    pod = PodIdentity(*(env.get(k) or None for k in ("POD_IP", "POD_NAME", "POD_NAMESPACE",
                                                        "NODE_NAME", "NODE_IP")))
    return Settings(
        agent_host=host,
        agent_port=port,
        vni=_vni(args.vni, env),
        interface=args.interface or env.get("PODMIRROR_INTERFACE") or env.get("INTERFACE") or "eth0",
        mode=args.mode or env.get("PODMIRROR_MODE") or "auto",
        discovery=discovery,
        label_value=sensor if discovery == "label" else None,
        label_key=env.get("PODMIRROR_LABEL_KEY") or "run",
        agent_namespace=env.get("PODMIRROR_AGENT_NAMESPACE") or pod.namespace,
        kubeconfig=env.get("KUBECONFIG") or None,
        rules_url=args.rules_url or env.get("PODMIRROR_RULES_URL") or None,
        rules_interval=_float(args.rules_interval, env, "PODMIRROR_RULES_INTERVAL", 10.0),
        verify_interval=_float(args.verify_interval, env, "PODMIRROR_VERIFY_INTERVAL", 3.0),
        stats_interval=_float(args.stats_interval, env, "PODMIRROR_STATS_INTERVAL", 60.0),
        tunnel_mtu=args.tunnel_mtu if args.tunnel_mtu is not None else _int_env(env, "PODMIRROR_TUNNEL_MTU"),
        sniff_io=args.sniff_io or env.get("PODMIRROR_SNIFF_IO") or "ring",
        pod=pod,
        check_tunnel=args.check_tunnel,
    )


def _agent(discovery: str, agent_text: str, sensor: str, env: Mapping[str, str]) -> tuple[str | None, int]:
    host, port = split_host_port(agent_text, "agent") if agent_text else (None, DEFAULT_PORT)
    if discovery == "node-ip":
        node_ip = env.get("NODE_IP", "").strip()
        if not node_ip:
            raise ConfigError("node-ip discovery needs NODE_IP (downward API status.hostIP)")
        return node_ip, port
    if discovery == "label":
        return None, port
    if host is None and sensor:
        host, port = split_host_port(sensor, "SENSOR")
    return host, port


def _vni(flag: str | None, env: Mapping[str, str]) -> int | None:
    try:
        if flag is not None:
            return identity.parse_vni(flag)
        if env.get("PODMIRROR_VNI"):
            return identity.parse_vni(env["PODMIRROR_VNI"])
        if env.get("VNI"):
            return identity.parse_vni(env["VNI"], hex_default=True)
    except ValueError as exc:
        raise ConfigError(f"vni: {exc}") from exc
    return None


def _float(flag: float | None, env: Mapping[str, str], name: str, default: float) -> float:
    if flag is not None:
        return flag
    try:
        return float(env[name]) if env.get(name) else default
    except ValueError as exc:
        raise ConfigError(f"{name}: {env[name]!r} is not a number") from exc


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    try:
        return int(env[name]) if env.get(name) else None
    except ValueError as exc:
        raise ConfigError(f"{name}: {env[name]!r} is not an integer") from exc
