"""Wiring and supervision: the node's parts from ``Settings``, root tasks, a clean shutdown.

``Agent`` knows every part and does no packet work (kopf's ``running.py`` shape). The packet work
is one ``workers.Worker`` in this process (``Agent(settings)``, ``--workers 1``: receiver,
pipeline, outputs) or a ``workers.WorkerPool`` of N processes (``Agent(settings, workers=N)``,
see ``nodeagent/workers/__init__.py``). The Agent owns what is one per node either way: the pod
table (static senders and peers, or the Kubernetes watch), the status server (``/status``,
``/metrics``, ``/healthz``, ``/readyz`` and the routes of other parts), the modes sidecars report,
and the capture relay.

- ``run()`` starts the packet work (outputs opened, then the tunnel socket read), then the status
  server, then supervises the root tasks (each output's ``run`` or the pool's, and every task added
  with ``add_task``) until SIGTERM or SIGINT or until a root task fails. A root task that returns
  is simply done; one that raises stops the agent with exit code 1 (after the same clean shutdown).
- shutdown order: stop receiving first (no packet arrives half-handled; held packets are released
  to the outputs), cancel root tasks, flush then close every output (every worker's), stop the
  status server. Exit code 0 after a signal.

Extension points for other parts (call them before ``run``; ``install(agent)`` functions are listed
in ``_install_extensions``; parts that live in every worker are in ``workers.worker.install_extensions``):

- ``add_route(method, path, handler)``: an aiohttp route on the status server (``/v1/pushdown``);
- ``add_task(name, factory)``: a supervised root task (the Kubernetes pod watcher);
- ``add_output(output)``: an ``Output`` of the in-process worker (tests and tools; with a pool,
  outputs are built in each worker);
- ``report_mode(pod_key, mode)``: the sidecar's mode, shown as ``pods[key].mode`` in ``/status``;
- ``add_status_hook(hook)`` / ``add_ready_check(check)``: a part's own ``/status`` fields, and a
  condition ``/readyz`` waits for (the pod table's first list);
- ``last_seen()``: per pod, when its last datagram arrived (any worker);
- ``open_capture(filter, queue_limit) -> capture.session.Session``: a live copy of what is
  forwarded (``nodeagent/capture``), from the in-process worker's tap or relayed from every worker
  process (``workers.relay``); ``close_captures()`` ends every open one (their streams then write
  their final statistics);
- ``pods``, ``settings``: the node's objects, loop thread only; with one worker also ``stats``,
  ``pipeline``, ``normalizer``, ``fanout``, ``receiver`` (that worker's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nodeagent.adapters.outputs import Output
from nodeagent.capture.filter import CaptureFilter
from nodeagent.capture.session import QUEUE_LIMIT, Session
from nodeagent.pods.index import PodIndex
from nodeagent.settings import Settings
from nodeagent.stats import Counters
from nodeagent.web import metrics, status
from nodeagent.workers import cores
from nodeagent.workers.merge import table_entries
from nodeagent.workers.podtable import SharedPodIndex
from nodeagent.workers.pool import WorkerPool
from nodeagent.workers.worker import Worker, install_extensions, settle_heap, static_pods

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


def _install_extensions(agent: Agent) -> None:
    """Other parts plug in here: one import and one ``install(agent)`` call each."""
    from nodeagent.web import pushdown_api

    pushdown_api.install(agent)
    from nodeagent.adapters import kube  # the Kubernetes pod table, when settings.kube is enabled

    kube.install(agent)
    if agent.worker is not None:
        install_extensions(agent.worker)
    from nodeagent.web import capture_api, page  # the status page; live capture when configured

    page.install(agent)
    capture_api.install(agent, lambda: kube.api_client(agent.settings.kube.kubeconfig))


class Agent:
    def __init__(self, settings: Settings, workers: int = 1) -> None:
        self.settings = settings
        self.pods = PodIndex(static_pods(settings)) if workers == 1 else SharedPodIndex(static_pods(settings))
        self.worker: Worker | None = None
        self.pool: WorkerPool | None = None
        if workers == 1:
            self.worker = worker = Worker(settings, self.pods)
            self.stats, self.pipeline, self.normalizer = worker.stats, worker.pipeline, worker.normalizer
            self.fanout, self.receiver, self.tap = worker.fanout, worker.receiver, worker.tap
        else:
            self.pool = WorkerPool(settings, workers, self.pods)
        self.capture_address: tuple[str, int] | None = None
        self.modes: dict[str, str] = {}
        self._absent: dict[str, float] = {}
        """Pods with a reported mode that left the pod table, and since when (``forget_departed``)."""
        self.registry = metrics.make_registry(self.status)
        self.status_address: tuple[str, int] | None = None
        self._routes: list[status.Route] = []
        self._tasks: dict[str, TaskFactory] = {}
        self._status_hooks: list[Callable[[dict[str, Any]], None]] = []
        self._ready_checks: list[Callable[[], bool]] = []
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
        if self.worker is None:
            raise RuntimeError("with worker processes, outputs are built in each worker "
                               "(workers.worker.install_extensions)")
        self.worker.add_output(output)

    def add_status_hook(self, hook: Callable[[dict[str, Any]], None]) -> None:
        """``hook(snapshot)`` adds its part to each ``/status`` answer (loop thread, synchronous)."""
        self._status_hooks.append(hook)

    def add_ready_check(self, check: Callable[[], bool]) -> None:
        """``/readyz`` also waits for ``check()`` (e.g. the pod table's first list)."""
        self._ready_checks.append(check)

    def report_mode(self, pod_key: str, mode: str) -> None:
        self.modes[pod_key] = mode  # listed in /status with its mode even before its first packet

    def forget_departed(self, now: float, grace: float) -> list[str]:
        """Remove the per-pod state (counters, mode, hence metric series) of pods that left the pod
        table ``grace`` seconds ago; their counts stay in the totals (``Stats.sweep``). With worker
        processes, each worker sweeps its own counters (``forget``) by the pod table it was sent;
        the keys returned are the modes forgotten here."""
        present = {pod.key for pod in self.pods.all() if pod.local}
        if self.worker is not None:
            gone = self.worker.stats.sweep(present, now, grace)
        else:
            gone = []
            self._pool().forget(grace)
        for key in list(self.modes):
            if key in present:
                self._absent.pop(key, None)
            elif now - self._absent.setdefault(key, now) >= grace:
                del self._absent[key]
                gone.append(key)
        for key in gone:
            self.modes.pop(key, None)
        return sorted(set(gone))

    def open_capture(self, flt: CaptureFilter, queue_limit: int = QUEUE_LIMIT) -> Session:
        """A capture session of the forwarded packets ``flt`` selects (see ``nodeagent.capture``):
        the in-process worker's tap, or a session the pool feeds from every worker's tap."""
        if self.worker is not None:
            return self.worker.open_capture(flt, queue_limit)
        return self._pool().open_capture(flt, queue_limit)

    def close_captures(self) -> None:
        if self.worker is not None:
            self.worker.close_captures()
        elif self.pool is not None:
            self.pool.close_captures()

    def seen(self, pod_key: str) -> float | None:
        """When ``pod_key``'s tunnel last delivered a datagram (any worker; with worker processes,
        as of their last report, at most a second old), or None."""
        if self.worker is not None:
            return self.worker.stats.last_seen(pod_key)
        return self._pool().seen(pod_key)

    def last_seen(self) -> dict[str, float | None]:
        """Per pod, the loop time of its latest datagram in any worker (None: none yet)."""
        return self.worker.last_seen() if self.worker is not None else self._pool().last_seen()

    def stop(self) -> None:
        """Ask ``run`` to shut down (what SIGTERM does)."""
        if self.pool is not None:
            self.pool.stopping()
        self._stop.set()

    def _pool(self) -> WorkerPool:
        assert self.pool is not None
        return self.pool

    # ---- status ----
    def is_ready(self) -> bool:
        work = self.worker.is_ready() if self.worker is not None else self._pool().is_ready()
        return work and self.status_address is not None and all(check() for check in self._ready_checks)

    async def refresh(self) -> None:
        """Fetch the workers' counters now (the status server calls it before ``status``)."""
        if self.pool is not None:
            await self.pool.refresh()

    def status(self) -> dict[str, Any]:
        """The node's status: in one synchronous call here, and from snapshots each taken in one
        synchronous call in its worker, so ``received == forwarded + sum(drops)`` holds in it."""
        if self.worker is not None:
            snap, workers = self.worker.snapshot(), [self._own_worker()]
            address = self.worker.receiver.address
        else:
            pool = self._pool()
            snap, workers, address = pool.snapshot(), pool.workers_state(), pool.address
        pods = snap.setdefault("pods", {})
        for key, mode in self.modes.items():
            pods.setdefault(key, Counters().snapshot())["mode"] = mode
        for pod in self.pods.all():  # the container selection: what ``other_container`` drops
            if pod.ports and pod.key in pods:
                pods[pod.key]["ports"] = list(pod.ports)
        snap.update(
            listen=f"{address[0]}:{address[1]}" if address else None,
            uptime=round(time.monotonic() - self._started, 3),
            ready=self.is_ready(),
            senders=sum(1 for p in self.pods.all() if p.local),
            workers=workers,
        )
        for hook in self._status_hooks:
            hook(snap)
        return snap

    def _own_worker(self) -> dict[str, Any]:
        assert self.worker is not None
        snap, sock = self.worker.stats.total, self.worker.receiver.socket_state()
        return {"index": 0, "state": "running" if self.worker.is_ready() else "stopped", "restarts": 0,
                "received": snap.received, "forwarded": snap.forwarded, "dropped": sum(snap.drops.values()),
                "kernel_drops": sock.get("kernel_drops", 0), "rx_queue_bytes": sock.get("rx_queue_bytes", 0),
                "table_entries": table_entries({"pipeline": self.worker.pipeline.state()}),
                **self.worker.usage()}

    # ---- lifecycle ----
    async def run(self, *, handle_signals: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        runner: web.AppRunner | None = None
        try:
            await self._start_work(loop)
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

    async def _start_work(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.worker is not None:
            await self.worker.open()
            self.worker.start(loop)
        else:
            await self._pool().start()

    async def _supervise(self) -> int:
        factories: dict[str, TaskFactory] = (dict(self.worker.tasks()) if self.worker is not None
                                             else {"workers": self._pool().run})
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
        if self.worker is not None:
            self.worker.stop_receiving()
            await self.worker.close()
        elif self.pool is not None:
            await self.pool.stop()
        if runner is not None:
            await runner.cleanup()
        self.status_address = None
        snap = self.worker.snapshot() if self.worker is not None else self._pool().snapshot()
        drops = {reason: n for reason, n in snap["drops"].items() if n} or 0
        log.info("stopped: received %d = forwarded %d + drops %s + held %d", snap["received"],
                 snap["forwarded"], drops, snap["held"])


async def _root(factory: TaskFactory) -> None:
    await factory()


def worker_count(settings: Settings) -> int:
    """``workers.count``, with ``auto`` resolved to the CPUs this process may use."""
    count = settings.workers.count
    return cores.available() if count == "auto" else int(count)


async def run(settings: Settings) -> int:
    count = worker_count(settings)
    log.info("agent pid %d: %d worker%s", os.getpid(), count, "s" if count > 1 else "")
    agent = Agent(settings, workers=count)
    _install_extensions(agent)
    settle_heap()
    return await agent.run()
