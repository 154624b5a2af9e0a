"""The collector's ``/status`` (JSON), ``/healthz`` and ``/metrics`` (per-app prometheus registry).

Read-only: handlers and the metrics collector read ``Collector.state()`` at request or scrape time.
Bounded: one pod series per pod the collector still counts by name (``Limits.max_pods``); the
packets of pods it forgot are in ``podmirror_collector_pods_overflow_packets_total``. Nothing here
names a stream id or a credential (an agent is named by its certificate).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

from nodeagent.collector.server import Collector

COLLECTOR_KEY = web.AppKey("collector", Collector)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


class _Metrics(PromCollector):
    def __init__(self, collector: Collector) -> None:
        self._c = collector

    def collect(self) -> Iterator[Metric]:
        s = self._c.stats
        for name, value, doc in (
            ("batches", s.batches, "Batches delivered to the sinks"),
            ("duplicate_batches", s.duplicate_batches, "Retransmitted batches acknowledged again"),
            ("lost_batches", s.lost_batches, "Batches the agents dropped before sending (sequence gaps)"),
            ("packets", s.packets, "Packets delivered to the sinks"),
            ("wire_bytes", s.wire_bytes, "Compressed batch bytes received"),
            ("raw_bytes", s.raw_bytes, "Uncompressed batch bytes received"),
            ("faults", s.faults, "Agent connections closed by an error"),
            ("pods_overflow_packets", s.pods.overflow, "Packets of pods no longer counted by name"),
        ):
            yield CounterMetricFamily(f"podmirror_collector_{name}", doc, value=value)
        for name, counts, doc in (
            ("refused_connections", s.refused, "Connections closed at once by a connection cap"),
            ("timeouts", s.timeouts, "Connections closed by the handshake or idle timeout"),
        ):
            family = CounterMetricFamily(f"podmirror_collector_{name}", doc, labels=["reason"])
            for reason, n in counts.items():
                family.add_metric([reason], n)
            yield family
        pods = CounterMetricFamily("podmirror_collector_pod_packets", "Packets delivered per pod",
                                   labels=["namespace", "pod"])
        for key, n in s.pods.counts.items():
            ns, _, name = key.partition("/")
            pods.add_metric([ns, name], n)
        yield pods
        yield GaugeMetricFamily("podmirror_collector_connections", "Open agent connections",
                                value=s.connections)
        delay = GaugeMetricFamily("podmirror_collector_delay_seconds",
                                  "Capture-to-delivery delay of recent packets", labels=["quantile"])
        for q, v in s.delay_quantiles().items():
            if v is not None:
                delay.add_metric([q], v)
        yield delay


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[COLLECTOR_KEY].state())


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


def make_app(collector: Collector) -> web.Application:
    app = web.Application()
    registry = CollectorRegistry()
    registry.register(_Metrics(collector))
    app[COLLECTOR_KEY] = collector
    app[REGISTRY_KEY] = registry
    app.router.add_get("/status", _status)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app
