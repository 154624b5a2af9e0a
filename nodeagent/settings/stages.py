"""Settings of the pipeline's stages: dedup and vantage, filter rules, encrypted-flow cutoff."""

from __future__ import annotations

import dataclasses
import ipaddress

from nodeagent.settings.base import (
    ConfigError,
    check,
)
from sidecar_lite.identity import is_ip


@dataclasses.dataclass(frozen=True)
class DedupSettings:
    """Vantage (one copy of each flow) and dedup (the rest), ``stages/{vantage,dedup}.py`` and
    docs/dedup.md. On by default; the time windows come from the measured gap between the two copies
    of one packet (``bench/bench_copygap.py``: kernel mode p99 about 0.05 ms, sniff mode p99 2-6 ms
    and at most 15 ms on a loaded 2-core machine)."""

    enabled: bool = True
    vantage: str = "client"
    """Which copy of a flow seen from two pods is kept: the client's side or the server's.
    Also the cross-node owner (the preferred end's node): every agent must use the same value."""
    window: float = 0.05
    """Seconds a forwarded copy is remembered for content dedup: over 3x the largest copy gap
    measured (sniff mode), far below TCP's 200 ms minimum RTO."""
    capacity: int = 262_144
    """Most dedup entries held at once (oldest evicted first, counted)."""
    flow_capacity: int = 262_144
    """Most flows whose vantage state is remembered (evictions counted)."""
    flow_idle: float = 300.0
    """Seconds after which an idle flow's vantage state is forgotten."""
    hold: float = 0.05
    """Most seconds a copy waits for the preferred vantage's copy of its flow before it is released
    (in order) and the flow decided for its own vantage: the same margin over the copy gap."""
    hold_flow_packets: int = 64
    hold_flow_bytes: int = 256 << 10
    """Most packets / bytes held per flow; past either the flow is decided for the held vantage now."""
    hold_bytes: int = 16 << 20
    """Most bytes held in all flows together; past it a new copy is not held (decided at once)."""
    live: float = 60.0
    """A pod whose tunnel delivered nothing for this many seconds is not live: no copy is held or
    dropped in its favour (a sidecar polls push-down every 10 s, which its tunnel mirrors)."""
    confirm: float = 1.0
    """Seconds after the owner vantage's last copy of a flow during which the other vantage's copies
    are dropped at once; later they wait (``hold``) for a fresh copy from the owner."""
    service_cidrs: tuple[str, ...] = ()
    """vantage=server: a client's copies are held for a local server's copy only toward these
    networks (the Service CIDRs); empty: toward any address that is not a known pod."""

    def __post_init__(self) -> None:
        check(self.vantage in ("client", "server"), "vantage",
               f"must be client or server, got {self.vantage!r}")
        check(0 < self.window <= 5, "window", "must be in (0, 5] seconds")
        check(self.capacity >= 1, "capacity", "must be >= 1")
        check(self.flow_capacity >= 1, "flow_capacity", "must be >= 1")
        check(self.flow_idle > 0, "flow_idle", "must be > 0 seconds")
        check(0 < self.hold <= 1, "hold", "must be in (0, 1] seconds")
        check(self.hold_flow_packets >= 1, "hold_flow_packets", "must be >= 1")
        check(self.hold_flow_bytes >= 65536, "hold_flow_bytes", "must be >= 65536 (one super-packet)")
        check(self.hold_bytes >= self.hold_flow_bytes, "hold_bytes", "must be >= hold_flow_bytes")
        check(self.live > 0, "live", "must be > 0 seconds")
        check(self.confirm > 0, "confirm", "must be > 0 seconds")
        for i, cidr in enumerate(self.service_cidrs):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"service_cidrs[{i}]", f"must be a CIDR, got {cidr!r}") from None


@dataclasses.dataclass(frozen=True)
class RuleSettings:
    """One filter rule (``nodeagent/filters.py``): every condition given must match (AND)."""

    action: str = "include"
    """include or exclude."""
    name: str = ""
    """Shown in errors and logs; defaults to ``rules[i]``."""
    direction: str | None = None
    """in (into the pod) or out (out of the pod)."""
    namespace: str | None = None
    pod: str | None = None
    labels: dict[str, str] | None = None
    """The monitored pod's namespace, name and labels (all given labels must be equal)."""
    peer: tuple[str, ...] = ()
    """The other end's address in any of these CIDRs."""
    peer_namespace: str | None = None
    peer_labels: dict[str, str] | None = None
    """The other end is a known monitored pod in this namespace / with these labels."""
    protocol: str | int | None = None
    """tcp, udp, icmp (v4 or v6), sctp, or an IP protocol number."""
    ports: tuple[int | str, ...] = ()
    """Either transport port is one of these (80, or a range \"8000-8100\"); TCP, UDP, SCTP."""
    bpf: str | None = None
    """A tcpdump expression over the Ethernet frame, compiled once at startup."""
    snaplen: int | None = None
    """include only: cut matching frames to this many bytes (the record keeps its length)."""

    def __post_init__(self) -> None:
        check(self.action in ("include", "exclude"), "action",
               f"must be include or exclude, got {self.action!r}")
        check(self.direction in (None, "in", "out"), "direction",
               f"must be in or out, got {self.direction!r}")
        for field in ("labels", "peer_labels"):
            value = getattr(self, field)
            check(value is None or (isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())),
                field, "must map label names to string values")
        for i, cidr in enumerate(self.peer):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"peer[{i}]", f"must be a CIDR, got {cidr!r}") from None
        if self.snaplen is not None:
            check(self.action == "include", "snaplen", "only applies to include rules")
            check(14 <= self.snaplen <= 262144, "snaplen", "must be in 14..262144")


@dataclasses.dataclass(frozen=True)
class FilterSettings:
    """Ordered include/exclude rules, first match wins, then ``default``; presets go first."""

    rules: tuple[RuleSettings, ...] = ()
    default: str = "include"
    presets: tuple[str, ...] = ()
    """drop-health-probes: exclude traffic between a pod and ``node_ip`` (kubelet probes)."""
    node_ip: str | None = None
    """This node's address (downward API NODE_IP); the drop-health-probes preset needs it."""
    pushdown: bool = True
    """Serve the pushable rules to sidecars at /v1/pushdown (the agent enforces them anyway)."""

    def __post_init__(self) -> None:
        check(self.default in ("include", "exclude"), "default", "must be include or exclude")
        for i, preset in enumerate(self.presets):
            check(preset == "drop-health-probes", f"presets[{i}]", f"unknown preset {preset!r}")
        if "drop-health-probes" in self.presets:
            check(self.node_ip is not None, "node_ip", "is required by the drop-health-probes preset")
        check(self.node_ip is None or is_ip(self.node_ip), "node_ip",
               f"must be an IP, got {self.node_ip!r}")


@dataclasses.dataclass(frozen=True)
class CutoffSettings:
    """Encrypted flows (TLS, SSH, QUIC on any port): handshake and first bytes, then less."""

    enabled: bool = True
    budget: int = 16384
    """Payload bytes per direction forwarded whole: a TLS handshake with its certificate chain
    (usually 3-8 KB) and an SSH key exchange fit, so sensors keep SNI, certificates, JA3/JA4."""
    after: str = "headers"
    """headers (payload cut, every header kept) or drop (nothing but SYN/FIN/RST)."""
    capacity: int = 65536
    idle: float = 300.0

    def __post_init__(self) -> None:
        check(self.budget >= 0, "budget", "must be >= 0 bytes")
        check(self.after in ("headers", "drop"), "after", f"must be headers or drop, got {self.after!r}")
        check(self.capacity >= 1, "capacity", "must be >= 1")
        check(self.idle > 0, "idle", "must be > 0 seconds")
