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
classmethod (``listen: "0.0.0.0:14789"``, ``senders: ["10.0.0.5,5,default/web"]``).

Pure: no I/O except ``load_file``, which only reads the named file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

TUNNEL_PORT = 14789
"""Default UDP port for sidecar tunnels: not 4789 (Calico/Antrea VXLAN), 8472 (flannel/Cilium), 6081."""
STATUS_PORT = 9477
SENSOR_PORT = 4789
"""IANA VXLAN: the port Zeek, Suricata and Corelight sensors decapsulate by default."""


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


def _check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise ConfigError(field, problem)


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
        _check(default_port is not None, field, f"must be IP:PORT, got {text!r}")
        port = typing.cast(int, default_port)
    else:
        _check(port_text.isdigit(), field, f"has a bad port in {text!r}")
        port = int(port_text)
    _check(_is_ip(host), field, f"must be an IP address, got {host!r}")
    _check(0 <= port < 65536, field, f"port must be in 0..65535, got {port}")
    return host, port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_vni(value: object, ip: str, field: str) -> int:
    """A VNI: an int, decimal or ``0x`` text, or ``auto`` (low 24 bits of the pod's IPv4 address,
    the project-wide rule of ``sidecar_lite.identity.vni_for_address``)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            _check(ipaddress.ip_address(ip).version == 4, field, "auto needs an IPv4 pod address")
            return int(ipaddress.IPv4Address(ip)) & 0xFFFFFF
        try:
            value = int(text, 0)
        except ValueError:
            raise ConfigError(field, f"must be an integer, 0x.. or auto, got {value!r}") from None
    _check(isinstance(value, int) and not isinstance(value, bool), field,
           f"must be an integer, got {value!r}")
    vni = typing.cast(int, value)
    _check(0 <= vni < 1 << 24, field, f"must be in 0..16777215, got {vni}")
    return vni


def _split_pod(text: str, field: str) -> tuple[str, str]:
    namespace, slash, name = text.strip().partition("/")
    _check(bool(slash and namespace and name), field, f"must be NAMESPACE/NAME, got {text!r}")
    return namespace, name


@dataclasses.dataclass(frozen=True)
class ListenSettings:
    """Where the sidecars' tunnels arrive."""

    host: str = "0.0.0.0"
    port: int = TUNNEL_PORT
    rcvbuf: int = 32 << 20
    """SO_RCVBUF in bytes: absorbs bursts while the loop is busy (the kernel caps it at rmem_max
    unless the agent has CAP_NET_ADMIN, which SO_RCVBUFFORCE needs)."""
    batch: int = 256
    """Most datagrams drained per loop wake-up: amortises the wake-up, bounds loop latency."""
    recvmmsg: bool = True
    """Receive up to 32 datagrams per system call (Linux recvmmsg through ctypes)."""

    @classmethod
    def from_text(cls, text: str) -> ListenSettings:
        host, port = parse_hostport(text, TUNNEL_PORT, "")
        return cls(host=host, port=port)

    def __post_init__(self) -> None:
        _check(_is_ip(self.host), "host", f"must be an IP address, got {self.host!r}")
        _check(0 <= self.port < 65536, "port", "must be in 0..65535 (0: any free port)")
        _check(self.rcvbuf >= 65536, "rcvbuf", "must be >= 65536 bytes")
        _check(1 <= self.batch <= 4096, "batch", "must be in 1..4096")


@dataclasses.dataclass(frozen=True)
class SenderSettings:
    """A monitored pod on this node: its tunnel must come from ``ip`` with ``vni``."""

    ip: str
    vni: int | str
    namespace: str
    name: str
    ports: tuple[int, ...] = ()
    """Container selection: only traffic on these pod-side ports (``nodeagent.containerports``);
    empty: the whole pod. Text form: an optional 4th field ``PORT[+PORT...]``."""

    @classmethod
    def from_text(cls, text: str) -> SenderSettings:
        parts = text.split(",")
        _check(len(parts) in (3, 4), "", f"must be IP,VNI,NAMESPACE/NAME[,PORT[+PORT]], got {text!r}")
        namespace, name = _split_pod(parts[2], "")
        return cls(ip=parts[0].strip(), vni=parts[1].strip(), namespace=namespace, name=name,
                   ports=parse_ports(parts[3] if len(parts) == 4 else "", "ports"))

    def __post_init__(self) -> None:
        _check(_is_ip(self.ip), "ip", f"must be an IP address, got {self.ip!r}")
        # Canonical text: the receiver matches the socket's source string ("fd00::5") exactly.
        object.__setattr__(self, "ip", str(ipaddress.ip_address(self.ip)))
        object.__setattr__(self, "vni", parse_vni(self.vni, self.ip, "vni"))
        _check(bool(self.namespace), "namespace", "must not be empty")
        _check(bool(self.name), "name", "must not be empty")
        _check_ports(self.ports)


def parse_ports(text: str, field: str) -> tuple[int, ...]:
    """``"8080+9090"`` -> ``(8080, 9090)``; empty text -> ``()``."""
    items = [item.strip() for item in text.split("+")] if text.strip() else []
    _check(all(item.isdigit() for item in items), field, f"must be PORT[+PORT...], got {text!r}")
    return tuple(int(item) for item in items)


def _check_ports(ports: tuple[int, ...]) -> None:
    _check(all(isinstance(p, int) and 0 < p < 65536 for p in ports), "ports",
           f"must be ports in 1..65535, got {list(ports)!r}")


@dataclasses.dataclass(frozen=True)
class PeerSettings:
    """A monitored pod on another node (issue 3: cross-node dedup ownership)."""

    ip: str
    namespace: str
    name: str
    ports: tuple[int, ...] = ()
    """The peer's container selection, as its own node's agent has it (optional 3rd field
    ``PORT[+PORT...]``): flows it does not forward are this node's to keep."""

    @classmethod
    def from_text(cls, text: str) -> PeerSettings:
        parts = text.split(",")
        _check(len(parts) in (2, 3), "", f"must be IP,NAMESPACE/NAME[,PORT[+PORT]], got {text!r}")
        namespace, name = _split_pod(parts[1], "")
        return cls(ip=parts[0].strip(), namespace=namespace, name=name,
                   ports=parse_ports(parts[2] if len(parts) == 3 else "", "ports"))

    def __post_init__(self) -> None:
        _check(_is_ip(self.ip), "ip", f"must be an IP address, got {self.ip!r}")
        object.__setattr__(self, "ip", str(ipaddress.ip_address(self.ip)))
        _check(bool(self.namespace), "namespace", "must not be empty")
        _check(bool(self.name), "name", "must not be empty")
        _check_ports(self.ports)


@dataclasses.dataclass(frozen=True)
class PcapSettings:
    """Rotating pcap files. Off unless ``dir`` is set."""

    dir: str | None = None
    max_bytes: int = 64 << 20
    """Rotate a file when it reaches this size (bytes)."""
    max_seconds: float = 300.0
    """Rotate a file this many seconds after it was opened."""
    max_total_bytes: int = 1 << 30
    """Bound on all files together; the oldest are deleted first."""
    precision: str = "ns"
    """Timestamp precision: ``ns`` (magic 0xa1b23c4d) or ``us`` (0xa1b2c3d4, the oldest readers)."""
    snaplen: int = 262144
    prefix: str = "podmirror"
    buffer_bytes: int = 1 << 20
    """Bytes gathered in memory before one write() (writes are off the per-packet path)."""

    def __post_init__(self) -> None:
        _check(self.max_bytes > 0, "max_bytes", "must be > 0")
        _check(self.max_seconds > 0, "max_seconds", "must be > 0")
        _check(self.max_total_bytes >= self.max_bytes, "max_total_bytes", "must be >= max_bytes")
        _check(self.precision in ("ns", "us"), "precision", f"must be ns or us, got {self.precision!r}")
        _check(64 <= self.snaplen <= 262144, "snaplen", "must be in 64..262144")
        _check(self.buffer_bytes > 0, "buffer_bytes", "must be > 0")
        _check(bool(self.prefix) and "/" not in self.prefix, "prefix", "must be a plain file name prefix")


@dataclasses.dataclass(frozen=True)
class SensorSettings:
    """A remote sensor that decapsulates VXLAN (Zeek, Suricata, Corelight)."""

    host: str
    port: int = SENSOR_PORT
    vni: int | str | None = None
    """VNI to send with; None keeps each sender's VNI."""
    probe_port: int | None = None
    """TCP port probed every 2 s to decide the sensor's health (issue 5); without it, ICMP
    unreachable errors on sends mark the sensor down for a growing hold-down."""
    gso: bool = False
    """Send a GSO super-packet's segments with UDP GSO (``adapters/vxlan_out.py``: several times
    less CPU for bulk TCP). Only for a sensor reached through a NIC that segments (hardware or
    the kernel's software GSO before the driver): a virtual path (veth to a sensor on the same
    node) hands the unsegmented super-datagram to the sensor's sniffer."""

    @classmethod
    def from_text(cls, text: str) -> SensorSettings:
        host, port = parse_hostport(text, SENSOR_PORT, "")
        return cls(host=host, port=port)

    def __post_init__(self) -> None:
        _check(_is_ip(self.host), "host", f"must be an IP address, got {self.host!r}")
        _check(0 < self.port < 65536, "port", "must be in 1..65535")
        if self.vni is not None:
            object.__setattr__(self, "vni", parse_vni(self.vni, "0.0.0.0", "vni"))
        if self.probe_port is not None:
            _check(0 < self.probe_port < 65536, "probe_port", "must be in 1..65535")
        _check(isinstance(self.gso, bool), "gso", "must be true or false")


COLLECTOR_PORT = 14790
"""Default TCP port of ``nodeagent collect`` (the batched transport's collector)."""


@dataclasses.dataclass(frozen=True)
class CollectorEndpointSettings:
    """A collector the batched transport sends to (``IP[:PORT]``)."""

    host: str
    port: int = COLLECTOR_PORT

    @classmethod
    def from_text(cls, text: str) -> CollectorEndpointSettings:
        host, port = parse_hostport(text, COLLECTOR_PORT, "")
        return cls(host=host, port=port)

    def __post_init__(self) -> None:
        _check(_is_ip(self.host), "host", f"must be an IP address, got {self.host!r}")
        _check(0 < self.port < 65536, "port", "must be in 1..65535")


@dataclasses.dataclass(frozen=True)
class TransportSettings:
    """Batched, zstd-compressed output over TLS to collectors (issue 5). Off unless ``collectors``
    is set. Each flow goes to one collector (symmetric hash, consistent ring)."""

    collectors: tuple[CollectorEndpointSettings, ...] = ()
    ca_file: str | None = None
    """CA bundle that signs the collectors' certificates (None: the system store). The server is
    always verified."""
    cert_file: str | None = None
    key_file: str | None = None
    """Optional client certificate and key, for collectors that require one."""
    server_name: str | None = None
    """Name the collectors' certificates must carry (default: each collector's address)."""
    batch_bytes: int = 256 << 10
    """A batch closes at this many frame bytes."""
    max_delay: float = 0.02
    """Seconds a packet may wait in an open batch: bounds the latency (issue 5: <= 50 ms)."""
    queue_bytes: int = 32 << 20
    """Compressed bytes kept per collector until acknowledged; the oldest batches go beyond it."""
    level: int = 3
    """zstd level (1..19)."""
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    """Reconnect delay bounds in seconds (exponential, jittered)."""
    connect_timeout: float = 5.0
    ack_timeout: float = 15.0
    """Seconds without an acknowledgement, batches in flight, before the connection is dropped."""
    flush_timeout: float = 3.0
    """Seconds SIGTERM waits for the collectors to acknowledge what is queued."""

    def __post_init__(self) -> None:
        _check(self.batch_bytes >= 1024, "batch_bytes", "must be >= 1024")
        _check(0 < self.max_delay <= 1.0, "max_delay", "must be in (0, 1] seconds")
        _check(self.queue_bytes >= self.batch_bytes, "queue_bytes", "must be >= batch_bytes")
        _check(1 <= self.level <= 19, "level", "must be in 1..19")
        _check(0 < self.backoff_initial <= self.backoff_max, "backoff_initial",
               "must be > 0 and <= backoff_max")
        for name in ("connect_timeout", "ack_timeout", "flush_timeout"):
            _check(getattr(self, name) > 0, name, "must be > 0")
        _check((self.cert_file is None) == (self.key_file is None), "cert_file",
               "and key_file must be given together")


@dataclasses.dataclass(frozen=True)
class OutputsSettings:
    pcap: PcapSettings = PcapSettings()
    sensors: tuple[SensorSettings, ...] = ()
    """VXLAN sensors; each flow goes to one of them (symmetric hash, consistent ring)."""
    transport: TransportSettings = TransportSettings()


@dataclasses.dataclass(frozen=True)
class NormalizeSettings:
    """What the agent does to frames before any output (see ``wire/normalize.py``)."""

    max_frame: int = 1514
    """TCP frames longer than this (GSO super-packets) are re-segmented; 1514 = Ethernet MTU 1500."""
    segment: bool = True
    fix_checksums: bool = True
    """Complete partial L4 checksums (Zeek drops packets whose checksum does not verify)."""

    def __post_init__(self) -> None:
        _check(128 <= self.max_frame <= 65535, "max_frame", "must be in 128..65535")


@dataclasses.dataclass(frozen=True)
class StatusSettings:
    host: str = "0.0.0.0"
    port: int = STATUS_PORT

    @classmethod
    def from_text(cls, text: str) -> StatusSettings:
        host, port = parse_hostport(text, STATUS_PORT, "")
        return cls(host=host, port=port)

    def __post_init__(self) -> None:
        _check(_is_ip(self.host), "host", f"must be an IP address, got {self.host!r}")
        _check(0 <= self.port < 65536, "port", "must be in 0..65535 (0: any free port)")


@dataclasses.dataclass(frozen=True)
class DedupSettings:
    """Issue 3's dedup (``nodeagent/dedup.py``, ``vantage.py``): on by default, flags or file."""

    enabled: bool = True
    vantage: str = "client"
    """Which copy of a flow seen from two local pods is kept: the client's side or the server's.
    Also the cross-node owner (the preferred end's node): every agent must use the same value."""
    window: float = 0.05
    """Seconds a packet digest is remembered: the gap between two sidecars' copies is us to a few
    ms; 50 ms leaves a margin and stays far below TCP's 200 ms minimum RTO (see dedup.py)."""
    capacity: int = 262_144
    """Most digests held at once (oldest evicted first, counted): 17 s of 15k packets/s windows."""
    flow_capacity: int = 262_144
    """Most flows whose client end is remembered (vantage rule)."""
    flow_idle: float = 300.0
    """Seconds after which an idle flow's client end is forgotten."""

    def __post_init__(self) -> None:
        _check(self.vantage in ("client", "server"), "vantage",
               f"must be client or server, got {self.vantage!r}")
        _check(0 < self.window <= 5, "window", "must be in (0, 5] seconds")
        _check(self.capacity >= 1, "capacity", "must be >= 1")
        _check(self.flow_capacity >= 1, "flow_capacity", "must be >= 1")
        _check(self.flow_idle > 0, "flow_idle", "must be > 0 seconds")


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
        _check(self.action in ("include", "exclude"), "action",
               f"must be include or exclude, got {self.action!r}")
        _check(self.direction in (None, "in", "out"), "direction",
               f"must be in or out, got {self.direction!r}")
        for field in ("labels", "peer_labels"):
            value = getattr(self, field)
            _check(value is None or (isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())),
                field, "must map label names to string values")
        for i, cidr in enumerate(self.peer):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"peer[{i}]", f"must be a CIDR, got {cidr!r}") from None
        if self.snaplen is not None:
            _check(self.action == "include", "snaplen", "only applies to include rules")
            _check(14 <= self.snaplen <= 262144, "snaplen", "must be in 14..262144")


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
        _check(self.default in ("include", "exclude"), "default", "must be include or exclude")
        for i, preset in enumerate(self.presets):
            _check(preset == "drop-health-probes", f"presets[{i}]", f"unknown preset {preset!r}")
        if "drop-health-probes" in self.presets:
            _check(self.node_ip is not None, "node_ip", "is required by the drop-health-probes preset")
        _check(self.node_ip is None or _is_ip(self.node_ip), "node_ip",
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
        _check(self.budget >= 0, "budget", "must be >= 0 bytes")
        _check(self.after in ("headers", "drop"), "after", f"must be headers or drop, got {self.after!r}")
        _check(self.capacity >= 1, "capacity", "must be >= 1")
        _check(self.idle > 0, "idle", "must be > 0 seconds")


@dataclasses.dataclass(frozen=True)
class KubeSettings:
    """The pod table from the Kubernetes API (issue 4, ``adapters/kube.py``); off while ``node_name``
    is empty. In a cluster the DaemonSet passes ``--node-name=$(NODE_NAME)`` (downward API)."""

    node_name: str = ""
    """This node's name: the watch of local senders selects ``spec.nodeName=<node_name>``."""
    kubeconfig: str | None = None
    """A kubeconfig file; None: the in-cluster service account."""
    label_selector: str = "podmirror.io/monitored=true"
    """Selects the monitored pods of the whole cluster (peers): never every pod."""
    silent_after: float = 60.0
    """Seconds without a datagram before a selected local pod is listed as ``silent`` in /status."""
    watch_timeout: int = 300
    """Seconds a watch request stays open (server-side timeoutSeconds) before it is resumed."""

    @property
    def enabled(self) -> bool:
        return bool(self.node_name)

    def __post_init__(self) -> None:
        _check(self.silent_after > 0, "silent_after", "must be > 0 seconds")
        _check(10 <= self.watch_timeout <= 3600, "watch_timeout", "must be in 10..3600 seconds")


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    drop_interval: float = 10.0
    """Seconds between two log lines about the same drop reason (the first is logged at once)."""

    def __post_init__(self) -> None:
        _check(self.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "level", "must be a log level")
        _check(self.drop_interval >= 0, "drop_interval", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class Settings:
    listen: ListenSettings = ListenSettings()
    senders: tuple[SenderSettings, ...] = ()
    peers: tuple[PeerSettings, ...] = ()
    outputs: OutputsSettings = OutputsSettings()
    normalize: NormalizeSettings = NormalizeSettings()
    status: StatusSettings = StatusSettings()
    dedup: DedupSettings = DedupSettings()
    filters: FilterSettings = FilterSettings()
    cutoff: CutoffSettings = CutoffSettings()
    log: LogSettings = LogSettings()
    kube: KubeSettings = KubeSettings()

    _unique: ClassVar[tuple[str, ...]] = ("senders", "peers")

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for group in self._unique:
            for i, pod in enumerate(getattr(self, group)):
                _check(pod.ip not in seen, f"{group}[{i}].ip", f"{pod.ip} is listed twice")
                seen.add(pod.ip)


def load(data: Mapping[str, Any] | None) -> Settings:
    """Build ``Settings`` from a parsed config mapping. Raises ``ConfigError`` naming the field."""
    return typing.cast(Settings, _convert(Settings, data or {}, ""))


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
    _check(isinstance(data, Mapping), "--config", "must hold a mapping at the top level")
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


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _convert_group(hint, value, path)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, str | Mapping) or not isinstance(value, list | tuple):
            value = [value]
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return _convert_union(hint, value, path)
    return _convert_scalar(hint, value, path)


def _convert_group(cls: type, value: Any, path: str) -> Any:
    try:
        if isinstance(value, str) and hasattr(cls, "from_text"):
            return cls.from_text(value)
        _check(isinstance(value, Mapping), "", f"must be a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {}
        for key, item in value.items():
            _check(key in names, str(key), "is not a known field")
            kwargs[key] = _convert(hints[key], item, f"{path}.{key}".lstrip("."))
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        _check(not missing, missing[0] if missing else "", "is required")
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.field.startswith(path) and path:
            raise
        raise exc.within(path) from None


def _convert_union(hint: Any, value: Any, path: str) -> Any:
    args = typing.get_args(hint)
    if value is None:
        _check(type(None) in args, path, "must not be null")
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(arg, value, path)
        except ConfigError as exc:
            errors.append(exc)
    raise errors[0]


def _convert_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        _check(isinstance(value, bool), path, f"must be true or false, got {value!r}")
    elif hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), path,
               f"must be an integer, got {value!r}")
    elif hint is float:
        _check(isinstance(value, int | float) and not isinstance(value, bool), path,
               f"must be a number, got {value!r}")
        value = float(value)
    elif hint is str:
        _check(isinstance(value, str), path, f"must be a string, got {value!r}")
    return value
