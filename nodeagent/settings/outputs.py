"""Settings of where kept packets go: pcap files, VXLAN sensors, batched transport to collectors, and
the normalization (re-segmentation, checksums) applied before any output."""

from __future__ import annotations

import dataclasses

from nodeagent.settings.base import (
    COLLECTOR_PORT,
    SENSOR_PORT,
    Endpoint,
    check,
    parse_vni,
)


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
        check(self.max_bytes > 0, "max_bytes", "must be > 0")
        check(self.max_seconds > 0, "max_seconds", "must be > 0")
        check(self.max_total_bytes >= self.max_bytes, "max_total_bytes", "must be >= max_bytes")
        check(self.precision in ("ns", "us"), "precision", f"must be ns or us, got {self.precision!r}")
        check(64 <= self.snaplen <= 262144, "snaplen", "must be in 64..262144")
        check(self.buffer_bytes > 0, "buffer_bytes", "must be > 0")
        check(bool(self.prefix) and "/" not in self.prefix, "prefix", "must be a plain file name prefix")


@dataclasses.dataclass(frozen=True)
class SensorSettings(Endpoint):
    """A remote sensor that decapsulates VXLAN (Zeek, Suricata, Corelight)."""

    DEFAULT_PORT = SENSOR_PORT
    host: str
    port: int = SENSOR_PORT
    vni: int | str | None = None
    """VNI to send with; None keeps each sender's VNI."""
    probe_port: int | None = None
    """TCP port probed every 2 s to decide the sensor's health; without it, ICMP
    unreachable errors on sends mark the sensor down for a growing hold-down."""
    gso: bool = False
    """Send a GSO super-packet's segments with UDP GSO (``adapters/vxlan_out.py``: several times
    less CPU for bulk TCP). Only for a sensor reached through a NIC that segments (hardware or
    the kernel's software GSO before the driver): a virtual path (veth to a sensor on the same
    node) hands the unsegmented super-datagram to the sensor's sniffer."""

    def __post_init__(self) -> None:
        self.check_endpoint()
        if self.vni is not None:
            object.__setattr__(self, "vni", parse_vni(self.vni, "0.0.0.0", "vni"))
        if self.probe_port is not None:
            check(0 < self.probe_port < 65536, "probe_port", "must be in 1..65535")
        check(isinstance(self.gso, bool), "gso", "must be true or false")


@dataclasses.dataclass(frozen=True)
class CollectorEndpointSettings(Endpoint):
    """A collector the batched transport sends to (``IP[:PORT]``)."""

    DEFAULT_PORT = COLLECTOR_PORT
    host: str
    port: int = COLLECTOR_PORT

    def __post_init__(self) -> None:
        self.check_endpoint()


@dataclasses.dataclass(frozen=True)
class TransportSettings:
    """Batched, zstd-compressed output over TLS to collectors (docs/transport.md). Off unless ``collectors``
    is set. Each flow goes to one collector (symmetric hash, consistent ring)."""

    collectors: tuple[CollectorEndpointSettings, ...] = ()
    ca_file: str | None = None
    """CA bundle that signs the collectors' certificates (None: the system store). The server is
    always verified."""
    cert_file: str | None = None
    key_file: str | None = None
    """The agent's client certificate and key (``--collector-cert``/``--collector-key``): collectors
    require one by default (mutual TLS) and bind the agent's streams to it. Give each node its own
    certificate: agents sharing one can interfere with each other's streams."""
    server_name: str | None = None
    """Name the collectors' certificates must carry (default: each collector's address)."""
    batch_bytes: int = 256 << 10
    """A batch closes at this many frame bytes (at most 4 MiB: a collector refuses batches above
    ``transport.records.MAX_RAW``)."""
    max_delay: float = 0.02
    """Seconds a packet may wait in an open batch: bounds the latency (required: <= 50 ms)."""
    queue_bytes: int = 32 << 20
    """Batch bytes (uncompressed: batches are compressed as they are sent, in each connection's
    stream) kept per collector until acknowledged; beyond it the oldest batches go (``queue_full``)."""
    level: int = 3
    """zstd level (1..19); 3 is zstd's default speed/ratio point."""
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    """Reconnect delay bounds in seconds (exponential, jittered)."""
    connect_timeout: float = 5.0
    ack_timeout: float = 15.0
    """Seconds without an acknowledgement, batches in flight, before the connection is dropped."""
    flush_timeout: float = 3.0
    """Seconds SIGTERM waits for the collectors to acknowledge what is queued."""
    keepalive: float = 20.0
    """Seconds without sending before a PING: below the collectors' idle timeout (90 s)."""

    def __post_init__(self) -> None:
        check(1024 <= self.batch_bytes <= 4 << 20, "batch_bytes", "must be in 1024..4194304")
        check(0 < self.max_delay <= 1.0, "max_delay", "must be in (0, 1] seconds")
        check(self.queue_bytes >= self.batch_bytes, "queue_bytes", "must be >= batch_bytes")
        check(1 <= self.level <= 19, "level", "must be in 1..19")
        check(0 < self.backoff_initial <= self.backoff_max, "backoff_initial",
               "must be > 0 and <= backoff_max")
        for name in ("connect_timeout", "ack_timeout", "flush_timeout", "keepalive"):
            check(getattr(self, name) > 0, name, "must be > 0")
        check((self.cert_file is None) == (self.key_file is None), "cert_file",
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
    """TCP frames longer than this (GSO super-packets) are re-segmented; 1514 = Ethernet MTU 1500.
    At least 590 (IPv4's minimum MTU 576 + 14): segments carry at least ``normalize.MIN_MSS``
    (536) payload bytes, so a smaller value could never split anything."""
    segment: bool = True
    fix_checksums: bool = True
    """Complete partial L4 checksums (Zeek drops packets whose checksum does not verify)."""

    def __post_init__(self) -> None:
        check(590 <= self.max_frame <= 65535, "max_frame", "must be in 590..65535")
