"""Prometheus exposition: a custom collector that reads the agent's status at scrape time.

client_python's model: one ``CollectorRegistry`` per agent (no global default registry, so tests
and several agents in one process never share metrics), and a ``Collector`` whose ``collect``
builds metric families from the same ``status()`` dict that ``/status`` serves, so the two views
cannot disagree. Names follow Prometheus conventions: ``podmirror_`` prefix, ``_total`` counters,
``_bytes`` units, labels for reason, namespace/pod and output. The pipeline's drops are
``podmirror_packets_dropped_total{reason=}`` (``verdict.Drop``), the outputs' are
``podmirror_output_packets_dropped_total{output=, reason=}`` (``verdict.OutputDrop``, from each
output's ``state()["dropped"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class AgentCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield from _totals(status)
        yield from _pods(status.get("pods", {}))
        yield from _outputs(status.get("outputs", {}))
        yield from _output_drops(status.get("outputs", {}))
        yield from _misc(status)
        yield from _health(status)
        yield from _tables(status.get("pipeline", {}))
        yield from _workers(status.get("workers", []))


def make_registry(status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(status))
    return registry


def _counter(name: str, doc: str, value: int | float, labels: dict[str, str] | None = None) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _totals(s: dict[str, Any]) -> Iterator[Metric]:
    yield _counter("podmirror_packets_received_total", "Tunnel datagrams received.", s["received"])
    yield _counter(
        "podmirror_bytes_received_total", "Bytes of tunnel datagrams received.", s["received_bytes"]
    )
    yield _counter("podmirror_packets_forwarded_total", "Datagrams handed to the outputs.", s["forwarded"])
    held = GaugeMetricFamily("podmirror_packets_held", "Datagrams held now for the other vantage's copy.")
    held.add_metric([], s.get("held", 0))
    yield held
    yield _counter("podmirror_bytes_forwarded_total", "Bytes handed to the outputs.", s["forwarded_bytes"])
    drops = CounterMetricFamily(
        "podmirror_packets_dropped_total", "Datagrams dropped, by reason.", labels=["reason"]
    )
    drop_bytes = CounterMetricFamily(
        "podmirror_bytes_dropped_total", "Bytes dropped, by reason.", labels=["reason"]
    )
    for reason, count in s["drops"].items():
        drops.add_metric([reason], count)
        drop_bytes.add_metric([reason], s.get("drop_bytes", {}).get(reason, 0))
    yield drops
    yield drop_bytes
    saved = CounterMetricFamily(
        "podmirror_saved_bytes_total", "Bytes not sent, by mechanism.", labels=["mechanism"]
    )
    for mechanism, count in s.get("saved_bytes", {}).items():
        saved.add_metric([mechanism], count)
    yield saved


def _pods(pods: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    labels = ["namespace", "pod"]
    families = {
        key: CounterMetricFamily(f"podmirror_pod_{key}_total", doc, labels=labels)
        for key, doc in (
            ("packets_received", "Datagrams received from the pod's tunnel."),
            ("bytes_received", "Bytes received from the pod's tunnel."),
            ("packets_forwarded", "Datagrams of the pod handed to the outputs."),
            ("bytes_forwarded", "Bytes of the pod handed to the outputs."),
        )
    }
    dropped = CounterMetricFamily(
        "podmirror_pod_packets_dropped_total", "Datagrams of the pod dropped.", labels=[*labels, "reason"]
    )
    for key, c in pods.items():
        namespace, _, name = key.partition("/")
        values = [namespace, name or key]
        families["packets_received"].add_metric(values, c["received"])
        families["bytes_received"].add_metric(values, c["received_bytes"])
        families["packets_forwarded"].add_metric(values, c["forwarded"])
        families["bytes_forwarded"].add_metric(values, c["forwarded_bytes"])
        for reason, count in c["drops"].items():
            if count:
                dropped.add_metric([*values, reason], count)
    yield from families.values()
    yield dropped


def _outputs(outputs: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """Every integer at the top level of an output's state becomes ``podmirror_output_<key>``."""
    families: dict[str, GaugeMetricFamily] = {}
    for name, state in outputs.items():
        for key, value in state.items():
            if isinstance(value, int) and not isinstance(value, bool):
                family = families.get(key)
                if family is None:
                    family = families[key] = GaugeMetricFamily(
                        f"podmirror_output_{key}", f"Output state field {key!r}.", labels=["output"]
                    )
                family.add_metric([name], value)
    yield from families.values()


def _output_drops(outputs: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """Each output's ``dropped`` {reason: packets} as one counter family, labelled output and reason."""
    family = CounterMetricFamily("podmirror_output_packets_dropped",
                                 "Forwarded packets an output could not deliver, by reason.",
                                 labels=["output", "reason"])
    for name, state in outputs.items():
        for reason, count in state.get("dropped", {}).items():
            family.add_metric([name, str(reason)], count)
    yield family


def _health(s: dict[str, Any]) -> Iterator[Metric]:
    """Gauges for alerts: each VXLAN sensor's health, the monitored pods whose sidecar is silent
    (0 without a Kubernetes pod table), the agent's readiness."""
    sensors = GaugeMetricFamily("podmirror_sensor_up", "1 while the output considers the sensor reachable.",
                                labels=["output", "sensor"])
    for name, state in s.get("outputs", {}).items():
        for sensor in state.get("sensors", []) if isinstance(state, dict) else []:
            up = 1 if sensor.get("state") == "up" else 0
            sensors.add_metric([name, str(sensor.get("address", ""))], up)
    yield sensors
    silent = GaugeMetricFamily("podmirror_silent_pods",
                               "Monitored pods of this node whose sidecar sends nothing.")
    silent.add_metric([], len(s.get("silent") or []))
    yield silent
    ready = GaugeMetricFamily("podmirror_ready", "1 when the agent is ready (/readyz).")
    ready.add_metric([], 1 if s.get("ready") else 0)
    yield ready


def _misc(s: dict[str, Any]) -> Iterator[Metric]:
    kernel = s.get("socket", {})
    yield _counter(
        "podmirror_socket_kernel_drops_total",
        "Datagrams the kernel dropped on the tunnel socket (receive buffer full).",
        kernel.get("kernel_drops", 0),
    )
    uptime = GaugeMetricFamily("podmirror_uptime_seconds", "Seconds since the agent started.")
    uptime.add_metric([], s.get("uptime", 0.0))
    yield uptime
    for key, value in s.get("normalize", {}).items():
        if key != "max_frame":
            yield _counter(f"podmirror_normalize_{key}_total", f"Normalization: {key}.", value)


def _tables(tables: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """``Pipeline.state()``: per table (dedup, vantage, cutoff) ``podmirror_<table>_evictions_total``
    (entries pushed out while still live: lost state, not packet drops) and ``podmirror_<table>_entries``."""
    for table, state in tables.items():
        if "evictions" in state:
            yield _counter(f"podmirror_{table}_evictions_total",
                           f"Entries the {table} table evicted while still live (capacity reached).",
                           state["evictions"])
        if "entries" in state:
            entries = GaugeMetricFamily(f"podmirror_{table}_entries", f"Entries in the {table} table.")
            entries.add_metric([], state["entries"])
            yield entries


WORKER_COUNTERS = (
    ("received", "podmirror_worker_packets_received_total", "Tunnel datagrams the worker received."),
    ("forwarded", "podmirror_worker_packets_forwarded_total", "Datagrams the worker handed to its outputs."),
    ("dropped", "podmirror_worker_packets_dropped_total", "Datagrams the worker dropped (all reasons)."),
    ("kernel_drops", "podmirror_worker_socket_kernel_drops_total",
     "Datagrams the kernel dropped on the worker's socket (receive buffer full)."),
    ("restarts", "podmirror_worker_restarts_total", "Times the worker process was started again."),
    ("cpu_seconds", "podmirror_worker_cpu_seconds_total", "CPU seconds of the worker's process."),
)
WORKER_GAUGES = (
    ("rss_bytes", "podmirror_worker_resident_memory_bytes", "Resident memory of the worker's process."),
    ("rx_queue_bytes", "podmirror_worker_socket_queue_bytes", "Bytes waiting in the worker's socket."),
    ("table_entries", "podmirror_worker_table_entries", "Entries in the worker's pipeline tables."),
)


def _workers(workers: list[dict[str, Any]]) -> Iterator[Metric]:
    """Per worker (label ``worker``): its share of the node's counters, its socket and its process.
    The node-wide families above are the sums over workers."""
    for key, name, doc in WORKER_COUNTERS:
        family = CounterMetricFamily(name, doc, labels=["worker"])
        for w in workers:
            family.add_metric([str(w["index"])], w.get(key) or 0)
        yield family
    for key, name, doc in WORKER_GAUGES:
        gauge = GaugeMetricFamily(name, doc, labels=["worker"])
        for w in workers:
            gauge.add_metric([str(w["index"])], w.get(key) or 0)
        yield gauge
    up = GaugeMetricFamily("podmirror_worker_up", "1 while the worker process runs.", labels=["worker"])
    for w in workers:
        up.add_metric([str(w["index"])], 1 if w.get("state") == "running" else 0)
    yield up
