"""Settings of what the agent listens to and knows: the tunnel socket, the pod table (static senders
and peers, or Kubernetes), the status endpoint and logging."""

from __future__ import annotations

import dataclasses
import ipaddress

from nodeagent.settings.base import (
    PUSHDOWN_PORT,
    STATUS_PORT,
    TUNNEL_PORT,
    ConfigError,
    Endpoint,
    check,
    check_ports,
    parse_ports,
    parse_vni,
    split_pod,
)
from sidecar_lite.identity import is_ip


@dataclasses.dataclass(frozen=True)
class ListenSettings(Endpoint):
    """Where the sidecars' tunnels arrive."""

    DEFAULT_PORT, LISTENS = TUNNEL_PORT, True
    host: str = "0.0.0.0"
    port: int = TUNNEL_PORT
    rcvbuf: int = 32 << 20
    """SO_RCVBUF in bytes: absorbs bursts while the loop is busy (the kernel caps it at rmem_max
    unless the agent has CAP_NET_ADMIN, which SO_RCVBUFFORCE needs)."""
    batch: int = 256
    """Most datagrams drained per loop wake-up: amortises the wake-up, bounds loop latency."""
    recvmmsg: bool = True
    """Receive up to 32 datagrams per system call (Linux recvmmsg through ctypes)."""

    def __post_init__(self) -> None:
        self.check_endpoint()
        check(self.rcvbuf >= 65536, "rcvbuf", "must be >= 65536 bytes")
        check(1 <= self.batch <= 4096, "batch", "must be in 1..4096")


@dataclasses.dataclass(frozen=True)
class SenderSettings:
    """A monitored pod on this node: its tunnel must come from one of its addresses with ``vni``.

    Text form ``IP[+IP...],VNI,NAMESPACE/NAME[,PORT[+PORT...]]`` (``10.0.1.2+fd00:1::2,258,default/web``):
    every address of the pod (a dual-stack pod has two), the first one its tunnel's usual source."""

    ip: str
    """The pod's first address; ``"A+B"`` is accepted and split into ``ip`` and ``ips``."""
    vni: int | str
    namespace: str
    name: str
    ports: tuple[int, ...] = ()
    """Container selection: only traffic on these pod-side ports (``nodeagent.stages.containers``);
    empty: the whole pod. Text form: an optional 4th field ``PORT[+PORT...]``."""
    ips: tuple[str, ...] = ()
    """The pod's other addresses (dual-stack): every stage knows the pod by all of them."""

    @classmethod
    def from_text(cls, text: str) -> SenderSettings:
        parts = text.split(",")
        check(len(parts) in (3, 4), "",
              f"must be IP[+IP...],VNI,NAMESPACE/NAME[,PORT[+PORT...]], got {text!r}")
        namespace, name = split_pod(parts[2], "")
        return cls(ip=parts[0].strip(), vni=parts[1].strip(), namespace=namespace, name=name,
                   ports=parse_ports(parts[3] if len(parts) == 4 else "", "ports"))

    def __post_init__(self) -> None:
        ip, ips = split_addresses(self.ip, self.ips)
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "ips", ips)
        # ``auto``: the low 24 bits of the pod's IPv4 address, whichever position it is listed in.
        v4 = next((a for a in (ip, *ips) if ipaddress.ip_address(a).version == 4), ip)
        object.__setattr__(self, "vni", parse_vni(self.vni, v4, "vni"))
        check(bool(self.namespace), "namespace", "must not be empty")
        check(bool(self.name), "name", "must not be empty")
        check_ports(self.ports)

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.ip, *self.ips)


@dataclasses.dataclass(frozen=True)
class PeerSettings:
    """A monitored pod on another node (cross-node ownership, docs/dedup.md):
    ``IP[+IP...],NAMESPACE/NAME[,PORTS]``.

    The operator vouches that its node's agent receives its tunnel (the Kubernetes pod table
    checks the injected sidecar's readiness instead, ``pods.kube``)."""

    ip: str
    namespace: str
    name: str
    ports: tuple[int, ...] = ()
    """The peer's container selection, as its own node's agent has it (optional 3rd field
    ``PORT[+PORT...]``): flows it does not forward are this node's to keep."""
    ips: tuple[str, ...] = ()

    @classmethod
    def from_text(cls, text: str) -> PeerSettings:
        parts = text.split(",")
        check(len(parts) in (2, 3), "", f"must be IP[+IP...],NAMESPACE/NAME[,PORT[+PORT...]], got {text!r}")
        namespace, name = split_pod(parts[1], "")
        return cls(ip=parts[0].strip(), namespace=namespace, name=name,
                   ports=parse_ports(parts[2] if len(parts) == 3 else "", "ports"))

    def __post_init__(self) -> None:
        ip, ips = split_addresses(self.ip, self.ips)
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "ips", ips)
        check(bool(self.namespace), "namespace", "must not be empty")
        check(bool(self.name), "name", "must not be empty")
        check_ports(self.ports)

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.ip, *self.ips)


def split_addresses(ip: str, ips: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """``"A+B"`` plus ``ips`` -> (A, (B, *ips)) as canonical text; each must be an IP, none twice.

    Canonical text: the receiver matches the socket's source string ("fd00::5") exactly."""
    items = [item.strip() for item in str(ip).split("+")] + [str(item).strip() for item in ips]
    out: list[str] = []
    for i, item in enumerate(items):
        field = "ip" if i == 0 else f"ips[{i - 1}]"
        check(is_ip(item), field, f"must be an IP address, got {item!r}")
        canonical = str(ipaddress.ip_address(item))
        check(canonical not in out, field, f"{canonical} is listed twice")
        out.append(canonical)
    return out[0], tuple(out[1:])


@dataclasses.dataclass(frozen=True)
class StatusSettings(Endpoint):
    DEFAULT_PORT, LISTENS = STATUS_PORT, True
    host: str = "0.0.0.0"
    port: int = STATUS_PORT

    def __post_init__(self) -> None:
        self.check_endpoint()


@dataclasses.dataclass(frozen=True)
class PushdownSettings(Endpoint):
    """Where sidecars fetch their push-down program (``GET /v1/pushdown``, ``web/pushdown_api.py``):
    a listener of its own, so a NetworkPolicy can open it to every pod while ``status`` (``/status``,
    ``/metrics``) stays reachable only by the node and Prometheus. Each pod is answered only about
    itself (the request's source address)."""

    DEFAULT_PORT, LISTENS = PUSHDOWN_PORT, True
    host: str = "0.0.0.0"
    port: int = PUSHDOWN_PORT

    def __post_init__(self) -> None:
        self.check_endpoint()


@dataclasses.dataclass(frozen=True)
class KubeSettings:
    """The pod table from the Kubernetes API (``adapters/kube.py``); off while ``node_name``
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
    forget_after: float = 300.0
    """Seconds after a pod left the pod table before its counters, mode and metric series are
    removed (its counts stay in the totals): per-pod state follows the pods, whatever the churn."""

    @property
    def enabled(self) -> bool:
        return bool(self.node_name)

    def __post_init__(self) -> None:
        check(self.silent_after > 0, "silent_after", "must be > 0 seconds")
        check(self.forget_after > 0, "forget_after", "must be > 0 seconds")
        check(10 <= self.watch_timeout <= 3600, "watch_timeout", "must be in 10..3600 seconds")


@dataclasses.dataclass(frozen=True)
class WorkersSettings:
    """Processes that receive and process tunnels (``nodeagent.workers``): the kernel steers every
    copy of a flow to one of them."""

    count: int | str = "auto"
    """``auto``: one per CPU the agent may use (CPU affinity and cgroup quota); or 1..1024. One
    worker runs in the agent's own process."""
    restart: bool = True
    """Restart a worker that died, after 0.5 s doubling to 30 s if it keeps dying (its socket stays
    open meanwhile and queues its flows' datagrams up to ``listen.rcvbuf``)."""
    start_timeout: float = 60.0
    """Seconds a worker process may take to start (import, open its outputs) before startup fails."""

    @classmethod
    def from_text(cls, text: str) -> WorkersSettings:
        return cls(count=text.strip() if text.strip() == "auto" else _int(text, "count"))

    def __post_init__(self) -> None:
        count = self.count
        if isinstance(count, str):
            count = "auto" if count.strip() == "auto" else _int(count, "count")
            object.__setattr__(self, "count", count)
        check(count == "auto" or 1 <= int(count) <= 1024, "count", "must be auto or in 1..1024")
        check(self.start_timeout > 0, "start_timeout", "must be > 0 seconds")


def _int(text: str, field: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(field, f"must be auto or an integer, got {text!r}") from None


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    drop_interval: float = 10.0
    """Seconds between two log lines about the same drop reason (the first is logged at once)."""

    def __post_init__(self) -> None:
        check(self.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "level", "must be a log level")
        check(self.drop_interval >= 0, "drop_interval", "must be >= 0")
