"""The supervisor's side of N worker processes: spawn, restart, ask, merge, push the pod table.

``WorkerPool`` opens the tunnel's reuseport group (``steering.open_sockets``: socket i is worker
i's, in group order) and keeps every socket open for its whole life, so a worker's socket, its
index and its queued datagrams outlive the worker process. Each worker is a child process
(``workers.child``) with its socket, a control channel and a capture socketpair.

- Restart: a worker that exits while the pool runs is counted (``restarts``), logged, and started
  again after 0.5 s, doubling up to 30 s while it keeps dying (reset after a minute of life);
  meanwhile its flows queue in its socket and beyond ``listen.rcvbuf`` the kernel drops them
  (``socket.kernel_drops``). Its pipeline state (flow tables) starts empty. With
  ``workers.restart: false`` a dead worker stops the agent instead (exit 1).
- Counters: ``refresh()`` asks every running worker for its snapshot (``status`` on the channel),
  also once a second in ``run``; a worker that exits leaves its last snapshot behind (``retired``),
  added to the node's totals so they never go backwards; what a crashed worker counted after its
  last snapshot is lost with it (at most about a second). The socket's own counters are not
  retired: the socket lives on and keeps counting.
- Pod table: the supervisor's ``PodIndex`` is the node's (static senders, or the one Kubernetes
  watch); a change is sent to every worker as additions and removals in the loop turn after it
  (``SharedPodIndex``; also checked every 0.1 s), before any later message; a new worker gets the
  whole table in its ``start`` message before it reads its socket.
- Stop: every worker is asked to stop, flushes and sends its final snapshot; stragglers are killed
  after ``STOP_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
import socket
import subprocess
import sys
import time
from typing import Any

from nodeagent.adapters import steering
from nodeagent.capture.filter import CaptureFilter
from nodeagent.capture.session import Session
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.settings import Settings
from nodeagent.stats import Stats
from nodeagent.wire import Malformed
from nodeagent.workers import merge, relay
from nodeagent.workers.channel import Channel, ChannelClosed, Message, pod_changes, pod_to_json
from nodeagent.workers.merge import table_entries
from nodeagent.workers.podtable import SharedPodIndex
from nodeagent.workers.worker import Worker, install_extensions

log = logging.getLogger(__name__)

RESTART_MIN, RESTART_MAX = 0.5, 30.0
"""Seconds before a dead worker is started again, doubling while it keeps dying."""
STABLE = 60.0
"""Seconds of life after which a worker's restart delay starts again at ``RESTART_MIN``."""
STATUS_TIMEOUT = 2.0
"""Seconds a worker has to answer a status request (it answers between two socket drains)."""
STOP_TIMEOUT = 20.0
"""Seconds a worker has to flush its outputs and exit before it is killed."""
POLL = 1.0
"""Seconds between two background snapshots (what a crash can lose from the books)."""
POD_SYNC = 0.1
"""Seconds between two checks of the pod table for changes to push."""


@dataclasses.dataclass
class WorkerProcess:
    """One worker slot: its socket for the pool's life, and the current process if any."""

    index: int
    sock: socket.socket
    proc: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    tap: asyncio.Task[None] | None = None
    state: str = "starting"
    restarts: int = 0
    started: float = 0.0
    snapshot: dict[str, Any] | None = None
    retired: dict[str, Any] | None = None
    last_seen: dict[str, float | None] = dataclasses.field(default_factory=dict)
    usage: dict[str, Any] = dataclasses.field(default_factory=dict)
    cpu_retired: float = 0.0
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    replies: dict[int, asyncio.Future[Message]] = dataclasses.field(default_factory=dict)
    reader: asyncio.Task[None] | None = None

    def total(self) -> dict[str, Any] | None:
        """This slot's counters over every process it ran (the socket's only from the live one)."""
        total: dict[str, Any] | None = merge.merge([self.retired, self.snapshot])
        return total


class WorkerPool:
    def __init__(self, settings: Settings, count: int, pods: PodIndex) -> None:
        self.settings, self.count, self.pods = settings, count, pods
        if isinstance(pods, SharedPodIndex):
            pods.on_change = self._sync_pods
        self.captures = relay.Captures(settings.capture.max_sessions, settings.capture.queue_bytes)
        self.workers: list[WorkerProcess] = []
        self.address: tuple[str, int] | None = None
        self._table: dict[str, PodInfo] = {}
        self._table_version = -1
        self._next_id = 0
        self.seen_times: dict[str, float] = {}
        """Per pod, the latest time any worker received its tunnel (``child.report_seen``)."""
        self._stopping = False
        self.started = False

    # ---- lifecycle ----
    async def start(self) -> None:
        """Bind the group, start every worker, wait until all read their sockets."""
        # What each worker builds from the settings is built here once, and dropped, so that a bad
        # setting stops the agent with its field named (ConfigError, exit 2), not a worker's crash.
        install_extensions(Worker(self.settings, PodIndex(self.pods.all()), count=self.count))
        socks = steering.open_sockets(self.settings.listen, self.count)
        self.address = socks[0].getsockname()[:2]
        self.workers = [WorkerProcess(i, sock) for i, sock in enumerate(socks)]
        self._table, self._table_version = {p.ip: p for p in self.pods.all()}, self.pods.version
        try:
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
        except BaseException:
            await self.stop()
            raise
        self.started = True
        log.info("%d workers receiving tunnels on %s:%d (reuseport group, flow steering)",
                 self.count, *self.address)

    async def run(self) -> None:
        """Root task: keep every worker alive, poll snapshots, push pod table changes."""
        keepers = [asyncio.create_task(self._keep(w), name=f"worker{w.index}") for w in self.workers]
        poller = asyncio.create_task(self._poll(), name="worker-poll")
        try:
            done, _ = await asyncio.wait([*keepers, poller], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a keeper that gave up raises here and stops the agent
        finally:
            for task in (*keepers, poller):
                task.cancel()
            await asyncio.gather(*keepers, poller, return_exceptions=True)

    def stopping(self) -> None:
        """The agent is shutting down: a worker that exits from now on is not restarted (on a
        SIGTERM to the whole process group, the workers stop on their own, maybe first)."""
        self._stopping = True

    async def stop(self) -> None:
        """Stop every worker (flush, final snapshot), then close the sockets."""
        self._stopping = True
        for w in self.workers:
            if w.channel is not None:
                with contextlib.suppress(ChannelClosed):
                    w.channel.send({"op": "stop"})
        await asyncio.gather(*(self._reap(w) for w in self.workers))
        for w in self.workers:
            w.sock.close()

    # ---- one worker ----
    async def _spawn(self, w: WorkerProcess) -> None:
        ctl_parent, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        tap_parent, tap_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (w.sock.fileno(), ctl_child.fileno(), tap_child.fileno())
        try:
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nodeagent.workers.child", "--index", str(w.index),
                "--count", str(self.count), "--tunnel-fd", str(fds[0]), "--control-fd", str(fds[1]),
                "--tap-fd", str(fds[2]), stdin=subprocess.PIPE, pass_fds=fds)
        finally:
            ctl_child.close()
            tap_child.close()
        assert w.proc.stdin is not None
        w.proc.stdin.write(pickle.dumps(self.settings))
        w.proc.stdin.close()
        w.channel = await Channel.open(ctl_parent)
        w.state, w.started, w.ready = "starting", time.monotonic(), asyncio.Event()
        w.snapshot, w.usage = None, {"pid": w.proc.pid}
        w.tap = asyncio.create_task(self._read_captures(tap_parent), name=f"worker{w.index}-capture")
        w.channel.send({"op": "start", "pods": [pod_to_json(p) for p in self._table.values()],
                        "captures": [self.captures.message(i) for i in self.captures.sessions],
                        "seen": self.seen_times})
        w.reader = asyncio.create_task(self._listen(w), name=f"worker{w.index}-channel")
        exited = asyncio.create_task(w.proc.wait())
        ready = asyncio.create_task(w.ready.wait())
        try:
            await asyncio.wait({exited, ready}, timeout=self.settings.workers.start_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            ready.cancel()
        if not w.ready.is_set():
            code = w.proc.returncode
            if code is None:  # hung while starting: end it, so that its slot can start again
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
            raise RuntimeError(f"worker {w.index} did not start "
                               f"({'exit code ' + str(code) if code is not None else 'timed out'})")
        w.state = "running"

    async def _listen(self, w: WorkerProcess) -> None:
        """The worker's messages: ``ready``, replies to requests, ``stopped``; ends at EOF."""
        assert w.channel is not None
        try:
            while True:
                message = await w.channel.receive()
                op = message.get("op")
                if op == "ready":
                    w.ready.set()
                elif op == "capturing":
                    self.captures.serving(message["id"], w.index)
                elif op == "seen":
                    self._relay_seen(w, message["times"])
                elif op == "stopped" or "id" in message:
                    self._absorb(w, message)
                    future = w.replies.pop(message.get("id", -1), None)
                    if future is not None and not future.done():
                        future.set_result(message)
        except ChannelClosed:
            pass
        finally:
            for future in w.replies.values():
                future.cancel()
            w.replies.clear()

    def _absorb(self, w: WorkerProcess, message: Message) -> None:
        w.snapshot = message.get("status", w.snapshot)
        w.last_seen = message.get("last_seen", w.last_seen)
        w.usage = message.get("usage", w.usage)

    async def _keep(self, w: WorkerProcess) -> None:
        """Wait for the worker to exit; restart it (with backoff) unless the pool is stopping."""
        delay = RESTART_MIN
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            await self._collect(w)
            if self._stopping:
                return
            lived = time.monotonic() - w.started
            if not self.settings.workers.restart:
                raise RuntimeError(f"worker {w.index} exited with code {code}")
            delay = RESTART_MIN if lived > STABLE else delay
            w.state, w.restarts = "restarting", w.restarts + 1
            log.error("worker %d (pid %d) exited with code %s after %.1fs; restarting in %.1fs",
                      w.index, w.proc.pid, code, lived, delay)
            await asyncio.sleep(delay)
            delay = min(RESTART_MAX, delay * 2)
            try:
                await self._spawn(w)
            except (RuntimeError, OSError) as exc:
                log.error("worker %d: %s", w.index, exc)

    def _retire(self, w: WorkerProcess) -> None:
        """The process is gone: fold its last snapshot into the slot's retired counters."""
        if w.tap is not None:
            w.tap.cancel()
            w.tap = None
        if w.channel is not None:
            w.channel.close()
            w.channel = None
        if w.snapshot is not None:
            final = dict(w.snapshot)
            final.pop("socket", None)  # the socket lives on: its counters stay the live ones'
            w.retired = merge.merge([w.retired, final])
        w.cpu_retired += float(w.usage.get("cpu_seconds", 0.0))
        w.snapshot, w.usage, w.state = None, {}, "stopped" if self._stopping else "dead"

    async def _reap(self, w: WorkerProcess) -> None:
        if w.proc is None or w.proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(w.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.error("worker %d did not stop within %.0fs: killed", w.index, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
            await w.proc.wait()
        await self._collect(w)

    async def _collect(self, w: WorkerProcess) -> None:
        """After the exit: read what the worker sent last (its ``stopped`` snapshot), then retire it."""
        if w.reader is not None:
            await asyncio.gather(w.reader, return_exceptions=True)
            w.reader = None
        if w.channel is not None or w.tap is not None:
            self._retire(w)

    # ---- asking the workers ----
    async def refresh(self) -> None:
        """Ask every running worker for its snapshot now (at most ``STATUS_TIMEOUT`` seconds)."""
        asks = [self._ask(w, {"op": "status"}) for w in self.workers if w.state == "running"]
        if asks:
            await asyncio.gather(*asks, return_exceptions=True)

    async def _ask(self, w: WorkerProcess, message: Message) -> Message:
        if w.channel is None:
            raise ChannelClosed("no channel")
        self._next_id += 1
        request = self._next_id
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        w.replies[request] = future
        w.channel.send({**message, "id": request})
        try:
            return await asyncio.wait_for(future, STATUS_TIMEOUT)
        finally:
            w.replies.pop(request, None)

    async def _poll(self) -> None:
        next_poll = 0.0
        while True:
            await asyncio.sleep(POD_SYNC)
            self._sync_pods()
            for capture in self.captures.prune():  # readers that went away
                self._broadcast({"op": "uncapture", "id": capture})
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL
                await self.refresh()

    def _sync_pods(self) -> None:
        if self.pods.version == self._table_version:
            return
        after = {p.ip: p for p in self.pods.all()}
        message = pod_changes(self._table, after)
        self._table, self._table_version = after, self.pods.version
        self._broadcast(message)

    def _relay_seen(self, source: WorkerProcess, times: dict[str, float]) -> None:
        """A worker saw pods' tunnels: every other worker must hold them live too."""
        news = {k: t for k, t in times.items() if self.seen_times.get(k, -1.0) < t}
        if not news:
            return
        self.seen_times.update(news)
        for w in self.workers:
            if w is not source and w.channel is not None:
                with contextlib.suppress(ChannelClosed):
                    w.channel.send({"op": "seen", "times": news})
        if len(self.seen_times) > 2 * len(self._table) + 64:  # pods gone from the table: bounded
            self.seen_times = {k: t for k, t in self.seen_times.items()
                               if k in {p.key for p in self._table.values()}}

    def forget(self, grace: float) -> None:
        """Each worker forgets the counters of pods gone from its pod table for ``grace`` seconds."""
        self._broadcast({"op": "forget", "grace": grace})

    def _broadcast(self, message: Message) -> None:
        for w in self.workers:
            if w.channel is not None:
                with contextlib.suppress(ChannelClosed):
                    w.channel.send(message)

    # ---- capture relay ----
    def open_capture(self, flt: CaptureFilter, queue_limit: int) -> Session:
        """The reader's session, fed by every worker's tap (``relay``)."""
        session = self.captures.open(flt, queue_limit)
        self._broadcast(self.captures.message(session.ident))
        return session

    def close_captures(self) -> None:
        self.captures.close_all()

    async def _read_captures(self, sock: socket.socket) -> None:
        """A worker's capture stream (``relay.frame``s) into the readers' sessions, until EOF."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            while True:
                size, capture, kind = relay.FRAME.unpack(await reader.readexactly(relay.FRAME.size))
                self.captures.receive(capture, kind, await reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError, Malformed, ValueError):
            pass
        finally:
            writer.close()

    # ---- what /status shows ----
    def is_ready(self) -> bool:
        return self.started and not self._stopping

    def snapshot(self) -> dict[str, Any]:
        """The node's counters: every slot's, summed (see ``merge``); zeros before any report."""
        totals = [t for t in (w.total() for w in self.workers) if t is not None]
        merged: dict[str, Any] = merge.merge([Stats().snapshot(), *totals])
        if self.captures.opened:  # what the readers got, not the workers' own sessions summed
            merged.setdefault("outputs", {})["capture"] = self.captures.state()
        return merged

    def workers_state(self) -> list[dict[str, Any]]:
        out = []
        for w in self.workers:
            total = w.total() or {}
            sock = (w.snapshot or {}).get("socket", {})
            out.append({
                "index": w.index, "pid": w.usage.get("pid"), "state": w.state, "restarts": w.restarts,
                "received": total.get("received", 0), "forwarded": total.get("forwarded", 0),
                "dropped": sum((total.get("drops") or {}).values()),
                "kernel_drops": sock.get("kernel_drops", 0), "rx_queue_bytes": sock.get("rx_queue_bytes", 0),
                "cpu_seconds": round(w.cpu_retired + float(w.usage.get("cpu_seconds", 0.0)), 3),
                "rss_bytes": w.usage.get("rss_bytes", 0),
                "table_entries": table_entries(w.snapshot or {}),
            })
        return out

    def seen(self, key: str) -> float | None:
        """The latest time any worker saw ``key``'s tunnel (their ``seen`` messages and reports)."""
        times = [t for w in self.workers if (t := w.last_seen.get(key)) is not None]
        if (relayed := self.seen_times.get(key)) is not None:
            times.append(relayed)
        return max(times) if times else None

    def last_seen(self) -> dict[str, float | None]:
        """Per pod, the latest datagram time any worker saw (None: none yet)."""
        out: dict[str, float | None] = {}
        for w in self.workers:
            for key, seen in w.last_seen.items():
                before = out.get(key)
                out[key] = seen if before is None or (seen is not None and seen > before) else before
        return out
