"""Wiring and supervision: builds every part from ``Settings``, runs root tasks, shuts down cleanly.

``Agent`` knows every part and does no packet work (kopf's ``running.py`` shape):

- built from ``Settings``: ``PodIndex`` (static senders and peers), ``Stats``, ``Pipeline``,
  ``Normalizer`` + ``Fanout`` over the outputs (pcap, VXLAN sensors), ``Receiver``;
- ``run()`` opens the outputs, binds the tunnel socket, starts the status server, then supervises
  the root tasks (each output's ``run`` and every task added with ``add_task``) until SIGTERM or
  SIGINT or until a root task fails. A root task that returns is simply done; one that raises
  stops the agent with exit code 1 (after the same clean shutdown).
- shutdown order: stop receiving first (no packet arrives half-handled; held packets are released
  to the outputs), cancel root tasks, flush
  then close every output, stop the status server. Exit code 0 after a signal.

Extension points for other parts (call them before ``run``; ``install(agent)`` functions are listed
in ``_install_extensions``):

- ``add_route(method, path, handler)``: an aiohttp route on the status server (``/v1/pushdown``);
- ``add_task(name, factory)``: a supervised root task (the Kubernetes pod watcher);
- ``add_output(output)``: an ``Output`` (batched transport), see ``adapters/outputs.py``;
- ``report_mode(pod_key, mode)``: the sidecar's mode, shown as ``pods[key].mode`` in ``/status``;
- ``add_status_hook(hook)`` / ``add_ready_check(check)``: a part's own ``/status`` fields, and a
  condition ``/readyz`` waits for (the pod table's first list);
- ``open_capture(filter, queue_limit) -> capture.session.Session``: a live copy of what is
  forwarded (``nodeagent/capture``); ``close_captures()`` ends every open one (their streams then
  write their final statistics);
- ``pods``, ``stats``, ``pipeline``, ``settings``: the shared objects, loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nodeagent.adapters.outputs import Fanout, Output
from nodeagent.adapters.pcap_out import PcapOutput
from nodeagent.adapters.receiver import DropLog, Receiver
from nodeagent.adapters.vxlan_out import VxlanOutput
from nodeagent.capture.filter import CaptureFilter
from nodeagent.capture.session import QUEUE_LIMIT, Session
from nodeagent.capture.tap import Tap
from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.settings import Settings
from nodeagent.stages import filters
from nodeagent.stages.cutoff import Cutoff
from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.vantage import Vantage
from nodeagent.stats import Stats
from nodeagent.web import metrics, status
from nodeagent.wire.normalize import Normalizer

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


def static_pods(settings: Settings) -> list[PodInfo]:
    """The pod table from the configuration: local senders and peers on other nodes."""
    pods = [PodInfo(ip=s.ip, vni=int(s.vni), namespace=s.namespace, name=s.name, ports=tuple(sorted(s.ports)),
                    ips=s.ips) for s in settings.senders]
    pods += [PodInfo(ip=p.ip, vni=0, namespace=p.namespace, name=p.name, local=False,
                     ports=tuple(sorted(p.ports)), ips=p.ips) for p in settings.peers]
    return pods


def build_pipeline(settings: Settings, pods: PodIndex, stats: Stats) -> Pipeline:
    """The one place the pipeline is constructed; BPF rules compile here (ConfigError if bad)."""
    d, c = settings.dedup, settings.cutoff
    vantage = Vantage(pods=pods, last_seen=stats.last_seen, prefer=d.vantage, capacity=d.flow_capacity,
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


def build_outputs(settings: Settings) -> list[Output]:
    outputs: list[Output] = []
    if settings.outputs.pcap.dir is not None:
        outputs.append(PcapOutput(settings.outputs.pcap))
    if settings.outputs.sensors:
        outputs.append(VxlanOutput(settings.outputs.sensors))
    return outputs


def _install_extensions(agent: Agent) -> None:
    """Other parts plug in here: one import and one ``install(agent)`` call each."""
    from nodeagent.web import pushdown_api

    pushdown_api.install(agent)
    from nodeagent.adapters import kube  # the Kubernetes pod table, when settings.kube is enabled

    kube.install(agent)
    from nodeagent.adapters import transport_out  # batched TLS output, when collectors are set

    transport_out.install(agent)
    from nodeagent.web import capture_api, page  # the status page; live capture when configured

    page.install(agent)
    capture_api.install(agent, lambda: kube.api_client(agent.settings.kube.kubeconfig))


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.pods = PodIndex(static_pods(settings))
        for pod in self.pods.all():
            if pod.local:
                self.stats.pod(pod.key)  # known senders show in /status before their first packet
        self.pipeline = build_pipeline(settings, self.pods, self.stats)
        norm = settings.normalize
        self.normalizer = Normalizer(max_frame=norm.max_frame, segment=norm.segment,
                                     fix_checksums=norm.fix_checksums)
        self.fanout = Fanout(build_outputs(settings), self.normalizer)
        self.receiver = Receiver(settings.listen, self.pipeline, self.fanout.offer,
                                 DropLog(settings.log.drop_interval), self.stats)
        self.modes: dict[str, str] = {}
        self.tap = Tap(self.pods, settings.capture.max_sessions, settings.capture.queue_bytes)
        """Joins the outputs with the first capture: an agent nobody captures from pays nothing."""
        self.capture_address: tuple[str, int] | None = None
        self.registry = metrics.make_registry(self.status)
        self.status_address: tuple[str, int] | None = None
        self._routes: list[status.Route] = []
        self._tasks: dict[str, TaskFactory] = {}
        self._status_hooks: list[Callable[[dict[str, Any]], None]] = []
        self._ready_checks: list[Callable[[], bool]] = []
        self._outputs_open = False
        self._started = time.monotonic()
        self._stop = asyncio.Event()

    # ---- extension points ----
    def add_route(self, method: str, path: str, handler: status.Handler) -> None:
        self._routes.append(status.Route(method, path, handler))

    def add_task(self, name: str, factory: TaskFactory) -> None:
        if name in self._tasks:
            raise ValueError(f"two root tasks named {name!r}")
        self._tasks[name] = factory

    def add_output(self, output: Output) -> None:
        self.fanout.add(output)

    def add_status_hook(self, hook: Callable[[dict[str, Any]], None]) -> None:
        """``hook(snapshot)`` adds its part to each ``/status`` answer (loop thread, synchronous)."""
        self._status_hooks.append(hook)

    def add_ready_check(self, check: Callable[[], bool]) -> None:
        """``/readyz`` also waits for ``check()`` (e.g. the pod table's first list)."""
        self._ready_checks.append(check)

    def report_mode(self, pod_key: str, mode: str) -> None:
        self.modes[pod_key] = mode
        self.stats.pod(pod_key)  # listed in /status with its mode even before its first packet

    def forget_departed(self, now: float, grace: float) -> list[str]:
        """Remove the per-pod state (counters, mode, hence metric series) of pods that left the pod
        table ``grace`` seconds ago; their counts stay in the totals (``Stats.sweep``)."""
        present = {pod.key for pod in self.pods.all() if pod.local}
        gone = self.stats.sweep(present, now, grace)
        for key in gone:
            self.modes.pop(key, None)
        return gone

    def open_capture(self, flt: CaptureFilter, queue_limit: int = QUEUE_LIMIT) -> Session:
        """A capture session of the forwarded packets ``flt`` selects (see ``nodeagent.capture``)."""
        if self.tap not in self.fanout.outputs:
            self.fanout.add(self.tap)
        return self.tap.open_session(flt, queue_limit)

    def close_captures(self) -> None:
        for session in self.tap.sessions:
            session.close()

    def stop(self) -> None:
        """Ask ``run`` to shut down (what SIGTERM does)."""
        self._stop.set()

    # ---- status ----
    def is_ready(self) -> bool:
        return (self.receiver.is_bound and self._outputs_open and self.status_address is not None
                and all(check() for check in self._ready_checks))

    def status(self) -> dict[str, Any]:
        snap = self.stats.snapshot()  # synchronous: the accounting invariant holds in this dict
        for key, mode in self.modes.items():
            if key in snap["pods"]:
                snap["pods"][key]["mode"] = mode
        for pod in self.pods.all():  # the container selection: what ``other_container`` drops
            if pod.ports and pod.key in snap["pods"]:
                snap["pods"][pod.key]["ports"] = list(pod.ports)
        address = self.receiver.address
        snap.update(
            listen=f"{address[0]}:{address[1]}" if address else None,
            uptime=round(time.monotonic() - self._started, 3),
            ready=self.is_ready(),
            outputs=self.fanout.state(),
            normalize=self.normalizer.state(),
            socket=self.receiver.socket_state(),
            malformed={"first": self.receiver.malformed.first, "last": self.receiver.malformed.last},
            senders=sum(1 for p in self.pods.all() if p.local),
            pipeline=self.pipeline.state(),
        )
        for hook in self._status_hooks:
            hook(snap)
        return snap

    # ---- lifecycle ----
    async def run(self, *, handle_signals: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        runner: web.AppRunner | None = None
        try:
            for output in self.fanout.outputs:
                await output.open()
            self._outputs_open = True
            self.receiver.start(loop)
            app = status.make_app(self, self.registry, self._routes)
            runner, self.status_address = await status.serve(app, self.settings.status.host,
                                                             self.settings.status.port)
            log.info("status on http://%s:%d/status", *self.status_address)
            return await self._supervise()
        finally:
            await self._shutdown(runner)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _supervise(self) -> int:
        factories: dict[str, TaskFactory] = {f"output:{o.name}": o.run for o in self.fanout.outputs}
        factories.update(self._tasks)
        tasks: set[asyncio.Task[None]] = {
            asyncio.create_task(_root(f), name=name) for name, f in factories.items()}
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        code = 0
        try:
            while not stopper.done():
                done, _ = await asyncio.wait(tasks | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopper}:
                    tasks.discard(task)
                    if not task.cancelled() and task.exception() is not None:
                        log.error("root task %s failed; stopping", task.get_name(),
                                  exc_info=task.exception())
                        code = 1
                        self._stop.set()
            log.info("stopping")
            return code
        finally:
            for pending in (*tasks, stopper):
                pending.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)

    async def _shutdown(self, runner: web.AppRunner | None) -> None:
        self.receiver.stop()
        for output in self.fanout.outputs:
            with _logged(f"flushing output {output.name}"):
                await output.flush()
            with _logged(f"closing output {output.name}"):
                await output.close()
        self._outputs_open = False
        if runner is not None:
            await runner.cleanup()
        self.status_address = None
        snap = self.stats.snapshot()
        drops = {reason: n for reason, n in snap["drops"].items() if n} or 0
        log.info("stopped: received %d = forwarded %d + drops %s + held %d", snap["received"],
                 snap["forwarded"], drops, snap["held"])


async def _root(factory: TaskFactory) -> None:
    await factory()


@contextlib.contextmanager
def _logged(what: str) -> Any:
    try:
        yield
    except Exception:  # the outermost boundary: one output's failure must not stop the others' flush
        log.exception("%s failed", what)


async def run(settings: Settings) -> int:
    agent = Agent(settings)
    _install_extensions(agent)
    return await agent.run()
