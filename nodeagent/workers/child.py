"""A worker process: ``python -m nodeagent.workers.child --index I --count N --tunnel-fd F
--control-fd C --tap-fd T``, started by ``WorkerPool`` with the settings pickled on its stdin.

The three descriptors are inherited: ``F`` its member of the reuseport group (bound by the
supervisor, which keeps its own copy open, so the socket, its index in the group and the datagrams
queued in it survive this process), ``C`` the control channel (``channel``), ``T`` a stream of
capture records (``relay``). Nothing here listens on the network.

Order: read the settings; wait for ``start`` (the pod table); build the ``Worker`` and its
extensions; open the outputs; read the socket; say ``ready``; serve control messages and run the
outputs' tasks until ``stop``, SIGTERM/SIGINT or the end of the channel (the supervisor is gone);
then stop reading, flush and close the outputs, send the final snapshot (``stopped``) and exit 0.
An output task that raises ends the worker with exit code 1, after the same flush: the pool
restarts it. Logs go to the inherited stderr, each line marked with the worker's index.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pickle
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from nodeagent.capture import filter as capture_filter
from nodeagent.capture.session import Session as CaptureSession
from nodeagent.pods.index import PodIndex
from nodeagent.settings import Settings
from nodeagent.workers import relay
from nodeagent.workers.channel import Channel, ChannelClosed, Message, pod_from_json
from nodeagent.workers.worker import Worker, install_extensions, settle_heap

log = logging.getLogger("nodeagent.workers.child")  # not __main__ when run with -m

SEEN_INTERVAL = 0.1
"""Seconds between two checks for pods this worker sees for the first time (a pod another worker
has not seen yet is not live there for at most this long plus a message)."""

class Session:
    """The worker's side of the channel: applies the supervisor's messages to the ``Worker``."""

    def __init__(self, worker: Worker, channel: Channel, captures: asyncio.StreamWriter) -> None:
        self.worker, self.channel, self._captures = worker, channel, captures
        self._forwarders: dict[int, tuple[CaptureSession, asyncio.Task[None]]] = {}

    def capture(self, message: Message) -> None:
        """Open this worker's side of a capture and forward its records (``relay.forward``)."""
        flt = capture_filter.parse(parse_qsl(message["filter"], keep_blank_values=True))
        session = self.worker.open_capture(flt, int(message["queue_limit"]))
        task = asyncio.create_task(relay.forward(message["id"], session, self._captures),
                                   name=f"capture-{message['id']}")
        self._forwarders[message["id"]] = (session, task)
        self.channel.send({"op": "capturing", "id": message["id"]})

    def uncapture(self, capture: int) -> None:
        session, _task = self._forwarders.pop(capture, (None, None))
        if session is not None:
            session.close()  # its forwarder sends what is queued, then ends

    async def close(self) -> None:
        for session, _task in self._forwarders.values():
            session.close()
        await asyncio.gather(*(task for _, task in self._forwarders.values()), return_exceptions=True)
        self._forwarders.clear()

    async def serve(self) -> None:
        """Answer messages until ``stop`` (returns) or the end of the channel (ChannelClosed)."""
        while True:
            message = await self.channel.receive()
            if message.get("op") == "stop":
                return
            self.handle(message)
            await self.channel.drain()

    def handle(self, message: Message) -> None:
        op, worker = message.get("op"), self.worker
        if op == "status":
            self.channel.send({"id": message["id"], **self.report()})
        elif op == "pods":
            for ip in message.get("remove", ()):
                worker.pods.remove(ip)
            for pod in message.get("add", ()):
                worker.pods.add(pod_from_json(pod))
        elif op == "seen":
            elsewhere = worker.seen_elsewhere
            for key, when in message["times"].items():
                if elsewhere.get(key, -1.0) < when:
                    elsewhere[key] = when
        elif op == "forget":
            worker.forget(float(message["grace"]), asyncio.get_running_loop().time())
        elif op == "capture":
            self.capture(message)
        elif op == "uncapture":
            self.uncapture(message["id"])
        else:
            log.error("unknown control message %r", op)

    def report(self) -> dict[str, Any]:
        return {"status": self.worker.snapshot(), "last_seen": self.worker.last_seen(),
                "usage": self.worker.usage()}


async def run(settings: Settings, index: int, count: int, fds: tuple[int, int, int]) -> int:
    tunnel = socket.socket(fileno=fds[0])
    channel = await Channel.open(socket.socket(fileno=fds[1]))
    _, captures = await asyncio.open_unix_connection(sock=socket.socket(fileno=fds[2]))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        start = await channel.receive()
    except ChannelClosed:
        return 0  # the supervisor went away before we started: nothing to flush
    worker = Worker(settings, PodIndex(pod_from_json(p) for p in start["pods"]), index=index, count=count)
    worker.seen_elsewhere.update(start.get("seen", {}))
    install_extensions(worker)
    settle_heap()
    session = Session(worker, channel, captures)
    for message in start.get("captures", []):
        session.capture(message)
    code = 0
    try:
        await worker.open()
        worker.start(loop, tunnel)
        channel.send({"op": "ready"})
        code = await _supervise(worker, session, stop)
    finally:
        worker.stop_receiving()
        await session.close()
        await worker.close()
        log.info("worker %d stopped: %s", index, worker.final_line())
        try:
            channel.send({"op": "stopped", **session.report()})
            await channel.drain()
        except ChannelClosed:
            pass
        channel.close()
        tunnel.close()
        captures.close()
    return code


async def report_seen(worker: Worker, channel: Channel) -> None:
    """Tell the supervisor, within ``SEEN_INTERVAL``, when a pod's tunnel is first seen here, and
    again every ``live / 8`` seconds while it keeps sending, so every worker holds it live
    (``Worker.last_seen_anywhere``) even if none of its flows came here."""
    reported: dict[str, float] = {}
    refresh = worker.settings.dedup.live / 8
    while True:
        await asyncio.sleep(SEEN_INTERVAL)
        news = {key: c.last_seen for key, c in worker.stats.pods.items()
                if c.last_seen is not None and c.last_seen > reported.get(key, -refresh) + refresh}
        if news:
            reported.update(news)
            channel.send({"op": "seen", "times": news})
        if len(reported) > 2 * len(worker.stats.pods) + 64:  # forgotten pods: keep this bounded
            reported = {k: t for k, t in reported.items() if k in worker.stats.pods}


async def _supervise(worker: Worker, session: Session, stop: asyncio.Event) -> int:
    """Run the outputs' tasks and the control session; 1 when an output task failed, else 0."""
    tasks: set[asyncio.Task[None]] = {asyncio.create_task(_root(factory), name=name)
                                      for name, factory in worker.tasks().items()}
    tasks.add(asyncio.create_task(report_seen(worker, session.channel), name="report-seen"))
    control = asyncio.create_task(session.serve(), name="control")
    stopper = asyncio.create_task(stop.wait(), name="signal")
    code = 0
    try:
        while True:
            done, _ = await asyncio.wait(tasks | {control, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if control in done or stopper in done:
                return code
            for task in done:
                tasks.discard(task)
                if not task.cancelled() and task.exception() is not None:
                    log.error("task %s failed; stopping", task.get_name(), exc_info=task.exception())
                    return 1
    finally:
        for pending in (*tasks, control, stopper):
            pending.cancel()
        await asyncio.gather(*tasks, control, stopper, return_exceptions=True)


async def _root(factory: Callable[[], Awaitable[None]]) -> None:
    await factory()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodeagent.workers.child")
    for name in ("--index", "--count", "--tunnel-fd", "--control-fd", "--tap-fd"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args(argv)
    settings: Settings = pickle.load(sys.stdin.buffer)  # from our own supervisor, over a private pipe
    logging.basicConfig(level=settings.log.level.upper(),
                        format=f"%(asctime)s %(levelname)s worker{args.index} %(name)s: %(message)s")
    return asyncio.run(run(settings, args.index, args.count, (args.tunnel_fd, args.control_fd, args.tap_fd)))


if __name__ == "__main__":
    raise SystemExit(main())
