"""Batched output to collectors: zstd batches over TLS, flow affinity, bounded memory.

Model: one ``CollectorLink`` per collector, each with its own ``Batcher`` (open batch), ``outbox.Outbox``
(closed batches until acknowledged, bounded in bytes) and connection task. ``offer`` picks the link
by the symmetric flow hash on a consistent ring (``transport.affinity``), so both directions of a connection
reach one collector and a collector that goes down moves only its own flows, which come back when
it reconnects. ``offer`` never blocks and never awaits: it copies the frame, appends to the batch
and, when the batch closes, encodes it and pushes it to the outbox (evicting the oldest batches
when the outbox is full). The connection task alone touches the socket; it compresses each batch
as it sends it, in the connection's zstd stream (see ``transport.compression``).

Accounting, per link and in total, at every instant:
``offered == delivered + sum(dropped.values()) + queued_packets + open_packets``
where ``delivered`` counts packets in batches the collector acknowledged, ``dropped`` counts by
reason (``queue_full``: evicted oldest-first while the collector was slow or down; ``shutdown``:
still unacknowledged when the output closed), ``queued_packets`` is in the outbox and
``open_packets`` in the open batch. A batch evicted after it was sent may still have reached the
collector: it is counted dropped here (the agent cannot know), never twice.

TLS: the server is always verified (CA file or system store, host name checked against
``server_name`` or the collector's host); the agent presents its client certificate when
configured (``--collector-cert``/``--collector-key``), which collectors require by default and to
which they bind the agent's streams. The stream id is never shown (``/status`` has no
``stream``): the collector keys streams by certificate, and the id stays the agent's own.
Reconnects back off exponentially with jitter (``Backoff``). A connection with nothing to send
for ``keepalive`` seconds sends a PING, so the collector's idle timeout only closes dead ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

from nodeagent.adapters.collector_link import QUEUE_FULL, SHUTDOWN, CollectorLink
from nodeagent.settings import ConfigError, TransportSettings
from nodeagent.tls import client_context
from nodeagent.transport import affinity
from nodeagent.transport.records import Record
from nodeagent.verdict import Forward

log = logging.getLogger(__name__)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again while any is still running:
    Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives as its inner await
    completes (CPython gh-86296, fixed in 3.12), and a link task would then reconnect forever."""
    pending = [task for task in tasks if not task.done()]
    while pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
        pending = [task for task in pending if not task.done()]
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.debug("link task ended with %r", task.exception())


class TransportOutput:
    """The ``Output`` for collectors. ``run()`` is its root task (one connection task per link)."""

    def __init__(self, collectors: Sequence[tuple[str, int]], ctx: ssl.SSLContext,
                 opts: TransportSettings | None = None, *, agent: str = "nodeagent",
                 stream: bytes | None = None, rng: random.Random | None = None,
                 name: str = "transport") -> None:
        if not collectors:
            raise ValueError("transport output needs at least one collector")
        self.name = name
        self._opts = opts or TransportSettings()
        self._stream = stream or os.urandom(16)
        self._rng = rng or random.Random()
        self._links = {
            f"{h}:{p}": CollectorLink(h, p, ctx, self._opts, self._stream, agent, self._health_changed)
            for h, p in collectors
        }
        self._ring = affinity.Ring(self._links)
        self._epoch = time.time() - time.monotonic()
        """Wall clock minus the loop clock (asyncio's default loop clock is time.monotonic)."""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def links(self) -> dict[str, CollectorLink]:
        return self._links

    def _health_changed(self) -> None:
        self._ring.set_down(n for n, link in self._links.items() if link.status == "down")

    def offer(self, fwd: Forward) -> None:
        frame = fwd.frame
        link = self._links[self._ring.lookup(affinity.flow_hash(fwd.meta, frame))]
        ts_ns = int((fwd.now + self._epoch) * 1e9)
        link.add(Record(ts_ns, fwd.wire_len, fwd.pod.key, fwd.vni, int(fwd.direction), bytes(frame)),
                 fwd.now)

    def ship(self) -> None:
        """Close every open batch now (it goes to its outbox)."""
        for link in self._links.values():
            link.flush()

    async def open(self) -> None:
        return None   # connections are made by run(), in the background, with backoff

    def _start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(link.run(self._rng), name=f"transport {name}")
                for name, link in self._links.items()]

    async def run(self) -> None:
        self._tasks = self._start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await _cancel(self._tasks)

    async def flush(self) -> None:
        """Ship open batches and wait (at most ``flush_timeout`` seconds) for the collectors' ACKs.

        The agent may already have cancelled ``run`` (its shutdown stops root tasks before it
        flushes outputs): then the connections are started again just for the flush."""
        if self._tasks and not all(task.done() for task in self._tasks):
            await self.drain(self._opts.flush_timeout)
            return
        temporary = self._start()
        try:
            await self.drain(self._opts.flush_timeout)
        finally:
            await _cancel(temporary)

    async def drain(self, timeout: float) -> bool:
        """Ship open batches; wait until every batch is acknowledged or ``timeout`` seconds passed."""
        self.ship()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(len(link.outbox) for link in self._links.values()) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return not any(len(link.outbox) for link in self._links.values())

    async def close(self) -> None:
        """Count whatever is still unacknowledged as dropped (``shutdown``); stop the tasks."""
        for link in self._links.values():
            link.drop_all()
        await _cancel(self._tasks)

    def state(self) -> dict[str, Any]:
        links = {name: link.state() for name, link in self._links.items()}
        total = {k: sum(s[k] for s in links.values())
                 for k in ("offered", "delivered", "queued_packets", "open_packets", "bytes_sent")}
        dropped = {r: sum(s["dropped"][r] for s in links.values()) for r in (QUEUE_FULL, SHUTDOWN)}
        up = sum(1 for s in links.values() if s["state"] == "up")
        return {"kind": "transport", **total, "collectors_up": up, "dropped": dropped, "collectors": links}


def from_settings(ts: TransportSettings, agent: str = "nodeagent") -> TransportOutput:
    ctx = loaded_context(ts)
    return TransportOutput([(c.host, c.port) for c in ts.collectors], ctx, ts, agent=agent)


def loaded_context(ts: TransportSettings) -> ssl.SSLContext:
    """``client_context`` from the settings; a file that cannot be loaded is a ``ConfigError``
    naming its field (the agent exits 2 before it receives anything)."""
    prefix = "outputs.transport"
    for field, path in (("ca_file", ts.ca_file), ("cert_file", ts.cert_file), ("key_file", ts.key_file)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"{prefix}.{field}", f"cannot be read: {exc.strerror} ({path})") from None
    try:
        ctx = client_context(ts.ca_file)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{prefix}.ca_file", f"cannot be loaded: {exc}") from None
    if ts.cert_file:
        try:
            ctx.load_cert_chain(ts.cert_file, ts.key_file)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{prefix}.cert_file", f"and key_file cannot be loaded: {exc}") from None
    return ctx


def install(agent: Any) -> None:
    """``app._install_extensions`` hook: add the output when collectors are configured."""
    ts = agent.settings.outputs.transport
    if ts.collectors:
        agent.add_output(from_settings(ts, agent=socket.gethostname()))
