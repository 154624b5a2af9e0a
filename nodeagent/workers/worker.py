"""One worker: a tunnel socket's datagrams through the whole pipeline to the outputs, in one process.

``Worker`` owns the per-packet objects (``Stats``, ``Pipeline``, ``Normalizer``, ``Fanout`` over the
outputs, ``Receiver``) and knows nothing of HTTP, Kubernetes or other workers: ``app.Agent`` runs one
in its own process (``--workers 1``), or a ``WorkerPool`` runs N, each in a child process
(``workers.child``), each reading its own member of the reuseport group.

Lifecycle: ``open()`` the outputs, ``start(loop, sock)`` the receiver, run ``tasks()`` (each output's
background work) under the caller's supervision, ``stop_receiving()``, then ``close()`` (flush, then
close every output; a failing output is logged and does not stop the others' flush).

Outputs per worker: VXLAN sensors and collectors get their own sockets and connections in every
worker; both choose the destination by the symmetric flow hash, and a flow stays on one worker, so
a flow keeps its sensor, its outer source port and its packet order. pcap files are per worker
(``<prefix>-w<index>-...``) and each worker keeps ``max_total_bytes / count`` of the directory, so
the directory's bound holds for all of them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import resource
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from nodeagent.adapters.droplog import DropLog
from nodeagent.adapters.outputs import Fanout, Output
from nodeagent.adapters.pcap_out import PcapOutput
from nodeagent.adapters.receiver import Receiver
from nodeagent.adapters.vxlan_out import VxlanOutput
from nodeagent.capture.filter import CaptureFilter
from nodeagent.capture.session import QUEUE_LIMIT, Session
from nodeagent.capture.tap import Tap
from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.settings import PcapSettings, Settings
from nodeagent.stages import filters
from nodeagent.stages.cutoff import Cutoff
from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.vantage import Vantage
from nodeagent.stats import Stats
from nodeagent.wire.normalize import Normalizer

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


GC_THRESHOLD = 10_000
"""Allocations between young-generation collections (CPython's default: 700)."""


def settle_heap() -> None:
    """A worker process's garbage-collector policy, once everything long-lived is built: move what
    exists to the permanent generation (``gc.freeze``: imports, settings, the Kubernetes client)
    and collect the young generation every ``GC_THRESHOLD`` allocations instead of 700.

    Why: the per-packet objects die by reference count (the pipeline makes no cycles), so the
    collector's passes are overhead, and its full passes walk every table entry. Measured with
    ``bench/bench_pipeline.py``'s default pipeline (A/B in one minute, best of 5): 11.4 -> 9.1 us
    per datagram (freeze alone: 9.3, threshold alone: 9.2). Cycles are still collected, less often.
    Called by the process entry points (``app.run``, ``workers.child``), never by library code:
    a test process keeps CPython's defaults."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def static_pods(settings: Settings) -> list[PodInfo]:
    """The pod table from the configuration: local senders and peers on other nodes."""
    pods = [PodInfo(ip=s.ip, vni=int(s.vni), namespace=s.namespace, name=s.name, ports=tuple(sorted(s.ports)),
                    ips=s.ips) for s in settings.senders]
    pods += [PodInfo(ip=p.ip, vni=0, namespace=p.namespace, name=p.name, local=False,
                     ports=tuple(sorted(p.ports)), ips=p.ips) for p in settings.peers]
    return pods


def build_pipeline(settings: Settings, pods: PodIndex, stats: Stats,
                   last_seen: Callable[[str], float | None] | None = None) -> Pipeline:
    """The one place the pipeline is constructed; BPF rules compile here (ConfigError if bad).
    ``last_seen``: the pods' liveness (default: this process's counters, ``stats.last_seen``)."""
    d, c = settings.dedup, settings.cutoff
    vantage = Vantage(pods=pods, last_seen=last_seen or stats.last_seen, prefer=d.vantage,
                      capacity=d.flow_capacity,
                      idle=d.flow_idle, hold=d.hold, hold_flow_packets=d.hold_flow_packets,
                      hold_flow_bytes=d.hold_flow_bytes, hold_bytes=d.hold_bytes, live=d.live,
                      confirm=d.confirm, service_cidrs=d.service_cidrs)
    return Pipeline(
        pods=pods, stats=stats,
        vantage=vantage if d.enabled else None,
        filters=filters.compile(settings.filters),
        dedup=DedupWindow(window=d.window, capacity=d.capacity) if d.enabled else None,
        cutoff=(Cutoff(budget=c.budget, after=c.after, capacity=c.capacity, idle=c.idle)
                if c.enabled else None),
    )


def install_extensions(worker: Worker) -> None:
    """Parts that live in every worker: one import and one ``install(worker)`` call each."""
    from nodeagent.adapters import transport_out  # batched TLS output, when collectors are set

    transport_out.install(worker)


def pcap_share(pcap: PcapSettings, index: int, count: int) -> PcapSettings:
    """Worker ``index``'s part of the pcap directory: its own file prefix and a 1/count share of
    the total size (one worker: the settings unchanged)."""
    if count == 1:
        return pcap
    total = max(1, pcap.max_total_bytes // count)
    return dataclasses.replace(pcap, prefix=f"{pcap.prefix}-w{index}", max_total_bytes=total,
                               max_bytes=min(pcap.max_bytes, total))


def build_outputs(settings: Settings, index: int = 0, count: int = 1) -> list[Output]:
    outputs: list[Output] = []
    if settings.outputs.pcap.dir is not None:
        outputs.append(PcapOutput(pcap_share(settings.outputs.pcap, index, count)))
    if settings.outputs.sensors:
        outputs.append(VxlanOutput(settings.outputs.sensors))
    return outputs


class Worker:
    """Receiver -> pipeline -> normalizer -> outputs for one socket (see the module docstring)."""

    def __init__(self, settings: Settings, pods: PodIndex, *, index: int = 0, count: int = 1) -> None:
        self.settings = settings
        self.index, self.count = index, count
        self.pods = pods
        self.stats = Stats()
        for pod in pods.all():
            if pod.local:
                self.stats.pod(pod.key)  # known senders show in /status before their first packet
        self.seen_elsewhere: dict[str, float] = {}
        """When other workers last received each pod's tunnel (``SeenRelay``): a pod is live for
        the vantage stage if any worker saw it (liveness is the node's, ``docs/dedup.md``)."""
        self.pipeline = build_pipeline(settings, pods, self.stats, self.last_seen_anywhere)
        norm = settings.normalize
        self.normalizer = Normalizer(max_frame=norm.max_frame, segment=norm.segment,
                                     fix_checksums=norm.fix_checksums)
        self.fanout = Fanout(build_outputs(settings, index, count), self.normalizer)
        self.receiver = Receiver(settings.listen, self.pipeline, self.fanout.offer,
                                 DropLog(settings.log.drop_interval), self.stats)
        self.outputs_open = False
        self.tap = Tap(pods, settings.capture.max_sessions, settings.capture.queue_bytes)
        """Joins the outputs with the first capture: a worker nobody captures from pays nothing."""

    def add_output(self, output: Output) -> None:
        self.fanout.add(output)

    async def open(self) -> None:
        for output in self.fanout.outputs:
            await output.open()
        self.outputs_open = True

    def start(self, loop: asyncio.AbstractEventLoop, sock: socket.socket | None = None) -> None:
        self.receiver.start(loop, sock)

    def tasks(self) -> dict[str, TaskFactory]:
        return {f"output:{o.name}": o.run for o in self.fanout.outputs}

    def stop_receiving(self) -> None:
        self.receiver.stop()

    async def close(self) -> None:
        """Flush, then close every output (each failure logged, the others still flushed)."""
        for output in self.fanout.outputs:
            with _logged(f"flushing output {output.name}"):
                await output.flush()
            with _logged(f"closing output {output.name}"):
                await output.close()
        self.outputs_open = False

    def open_capture(self, flt: CaptureFilter, queue_limit: int = QUEUE_LIMIT) -> Session:
        """A capture session of what this worker forwards (``nodeagent.capture``)."""
        if self.tap not in self.fanout.outputs:
            self.fanout.add(self.tap)
        return self.tap.open_session(flt, queue_limit)

    def close_captures(self) -> None:
        for session in self.tap.sessions:
            session.close()

    def is_ready(self) -> bool:
        return self.receiver.is_bound and self.outputs_open

    def snapshot(self) -> dict[str, Any]:
        """This worker's part of ``/status`` (counters, outputs, socket, tables), taken in one
        synchronous call so that ``received == forwarded + sum(drops)`` holds in it."""
        snap = self.stats.snapshot()
        snap.update(
            outputs=self.fanout.state(),
            normalize=self.normalizer.state(),
            socket=self.receiver.socket_state(),
            malformed={"first": self.receiver.malformed.first, "last": self.receiver.malformed.last},
            pipeline=self.pipeline.state(),
        )
        return snap

    def last_seen_anywhere(self, key: str) -> float | None:
        """The latest of this worker's and the others' last datagram from ``key``'s tunnel."""
        here, there = self.stats.last_seen(key), self.seen_elsewhere.get(key)
        if here is None or (there is not None and there > here):
            return there
        return here

    def last_seen(self) -> dict[str, float | None]:
        """Per pod, the loop time of its last datagram (the Kubernetes watcher's silence check)."""
        return {key: counters.last_seen for key, counters in self.stats.pods.items()}

    def usage(self) -> dict[str, Any]:
        """This process: pid, CPU seconds (all threads, user + system) and resident memory."""
        return process_usage()

    def final_line(self) -> str:
        snap = self.stats.snapshot()
        drops = {reason: n for reason, n in snap["drops"].items() if n} or 0
        return (f"received {snap['received']} = forwarded {snap['forwarded']} + drops {drops} "
                f"+ held {snap['held']}")

    def forget(self, grace: float, now: float) -> list[str]:
        """Forget the counters of pods gone from this worker's pod table for ``grace`` seconds."""
        present = {p.key for p in self.pods.all() if p.local}
        for key in [k for k in self.seen_elsewhere if k not in present]:
            del self.seen_elsewhere[key]
        return self.stats.sweep(present, now, grace)


def process_usage() -> dict[str, Any]:
    """pid, CPU seconds (all threads, user + system) and resident bytes of the calling process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = 0
    return {"pid": os.getpid(), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3), "rss_bytes": rss}


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    try:
        yield
    except Exception:  # the outermost boundary: one output's failure must not stop the others' flush
        log.exception("%s failed", what)
