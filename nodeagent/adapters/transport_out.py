"""Batched output to collectors: zstd batches over TLS, flow affinity, bounded memory.

Model: one ``_Link`` per collector, each with its own ``Batcher`` (open batch), ``outbox.Outbox``
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
import contextlib
import dataclasses
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from nodeagent.settings import ConfigError, TransportSettings
from nodeagent.transport import affinity, compression, messages, outbox, records
from nodeagent.transport.batcher import Batch, Batcher
from nodeagent.transport.records import Record
from nodeagent.verdict import Forward, OutputDrop
from nodeagent.wire import Malformed

log = logging.getLogger(__name__)

QUEUE_FULL, SHUTDOWN = OutputDrop.QUEUE_FULL, OutputDrop.SHUTDOWN
"""The outputs' drop vocabulary (``verdict.OutputDrop``): the two reasons this output can emit."""
WRITE_HIGH = 4 << 20
"""Bytes buffered in the TLS transport before the sender waits for the socket (flow control)."""
_FAULTS = (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.IncompleteReadError, Malformed,
           ConnectionError, EOFError)


@dataclasses.dataclass(frozen=True)
class TransportOptions:
    """Tuning of the batched transport (the ``transport`` settings group maps onto this)."""

    batch_bytes: int = 256 * 1024
    """A batch closes at this many bytes of frames (plus per-record overhead)."""
    max_delay: float = 0.02
    """Seconds a packet may wait in an open batch: bounds latency (required: <= 50 ms)."""
    queue_bytes: int = 32 * 1024 * 1024
    """Uncompressed batch bytes kept per collector until acknowledged; beyond it the oldest go."""
    level: int = 3
    """zstd level: 3 measured as the best bytes-per-CPU on mirrored traffic (bench_remote)."""
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    """Reconnect delay bounds, seconds (exponential, jittered)."""
    connect_timeout: float = 5.0
    ack_timeout: float = 15.0
    """Seconds without an acknowledgement while batches are in flight before reconnecting."""
    keepalive: float = 20.0
    """Seconds without sending anything before a PING (the collector's idle timeout is 90 s)."""
    server_name: str | None = None
    """Host name expected in the collector's certificate (default: the collector's host)."""


def client_context(ca_file: str | None, cert_file: str | None = None,
                   key_file: str | None = None) -> ssl.SSLContext:
    """TLS client context: server verification always on; optional client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class Backoff:
    """Exponential backoff with "equal jitter": delay in [base/2, base], base doubling to max."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self.initial, self.maximum, self._rng = initial, maximum, rng
        self._base = initial

    def next(self) -> float:
        base, self._base = self._base, min(self._base * 2, self.maximum)
        return base / 2 + self._rng.random() * base / 2

    def reset(self) -> None:
        self._base = self.initial


class _Link:
    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, opts: TransportOptions,
                 stream: bytes, agent: str, on_health: Callable[[], None]) -> None:
        self.host, self.port, self.name = host, port, f"{host}:{port}"
        self._ctx, self._opts, self._stream, self._agent = ctx, opts, stream, agent
        self._on_health = on_health
        self.batcher = Batcher(max_bytes=opts.batch_bytes, max_delay=opts.max_delay)
        self.outbox = outbox.Outbox(opts.queue_bytes)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._out: tuple[asyncio.StreamWriter, compression.StreamCompressor] | None = None
        """The live connection's writer and zstd stream (None while down)."""
        self._timer: asyncio.TimerHandle | None = None
        self.status = "connecting"
        self.offered = self.delivered = self.batches = self.bytes_sent = self.raw_bytes = 0
        self.reconnects = self.pings = 0
        self.dropped = {QUEUE_FULL: 0, SHUTDOWN: 0}
        self.last_error = ""
        self._last_progress = 0.0
        self._last_write = 0.0

    # ---- loop side, never awaits ------------------------------------------------------------
    def add(self, record: Record, now: float) -> None:
        self.offered += 1
        batch = self.batcher.add(record, now)
        if batch is not None:
            self.ship(batch)
        elif self._timer is None:
            deadline = self.batcher.deadline
            assert deadline is not None
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        batch = self.batcher.due(loop.time())
        if batch is not None:
            self.ship(batch)
        elif self.batcher.deadline is not None:  # clock skew between fwd.now and loop.time()
            self._timer = loop.call_at(self.batcher.deadline, self._on_timer)

    def ship(self, batch: Batch) -> None:
        raw = records.encode_records(batch.records)
        self.raw_bytes += len(raw)
        self.dropped[QUEUE_FULL] += self.outbox.push(raw, len(batch.records))
        # Straight to the socket when the connection is up: waiting for the sender task's next
        # loop turn cost up to one receive burst (~100 ms at 9k packets/s of GSO segments).
        self._write_ready()
        self._wake.set()

    def _write_ready(self) -> None:
        """Compress and write unsent batches while the TLS transport buffers <= WRITE_HIGH."""
        if self._out is None:
            return
        writer, zstd = self._out
        transport = writer.transport
        if transport.is_closing():
            return
        if len(self.outbox) == self.outbox.unsent:    # nothing in flight: the ACK clock starts
            self._last_progress = asyncio.get_running_loop().time()
        while transport.get_write_buffer_size() <= WRITE_HIGH:
            item = self.outbox.next_batch()
            if item is None:
                return
            msg = messages.encode_batch(item.seq, item.packets, len(item.raw), zstd.compress(item.raw))
            writer.write(msg)
            self._last_write = asyncio.get_running_loop().time()
            self.batches += 1
            self.bytes_sent += len(msg)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self.batcher.flush()
        if batch is not None:
            self.ship(batch)

    def drop_all(self) -> None:
        self.flush()
        self.dropped[SHUTDOWN] += self.outbox.drain()

    def state(self) -> dict[str, Any]:
        return {
            "state": self.status, "offered": self.offered, "delivered": self.delivered,
            "dropped": dict(self.dropped), "queued_packets": self.outbox.packets,
            "queued_batches": len(self.outbox), "queued_bytes": self.outbox.nbytes,
            "unsent_batches": self.outbox.unsent,
            "open_packets": self.batcher.pending, "batches_sent": self.batches,
            "bytes_sent": self.bytes_sent, "raw_bytes": self.raw_bytes, "acked_seq": self.outbox.acked,
            "reconnects": self.reconnects, "pings": self.pings, "last_error": self.last_error,
        }

    # ---- connection task ---------------------------------------------------------------------
    async def run(self, rng: random.Random) -> None:
        # One connection per link at a time: a flush-time runner and ``run`` may overlap briefly.
        async with self._lock:
            await self._connect_forever(rng)

    async def _connect_forever(self, rng: random.Random) -> None:
        backoff = Backoff(self._opts.backoff_initial, self._opts.backoff_max, rng)
        while True:
            try:
                await self._session(backoff)
            except _FAULTS as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            except asyncio.CancelledError:
                self.status = "stopped"
                self.outbox.restart()   # whatever was in flight is resent by the next session
                raise
            if self.status != "down":
                log.warning("collector %s down: %s", self.name, self.last_error)
            self.status = "down"
            self._on_health()
            self.outbox.restart()
            await asyncio.sleep(backoff.next())
            self.reconnects += 1

    async def _session(self, backoff: Backoff) -> None:
        opts = self._opts
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            self.host, self.port, ssl=self._ctx, server_hostname=opts.server_name or self.host,
        ), opts.connect_timeout)
        acks: asyncio.Task[None] | None = None
        try:
            writer.write(messages.encode_hello(self._stream, self._agent))
            wire = messages.Reader()
            welcome = await asyncio.wait_for(self._first(reader, wire), opts.connect_timeout)
            self.delivered += self.outbox.on_welcome(welcome.acked)
            self.status, self.last_error = "up", ""
            self._on_health()
            backoff.reset()
            log.info("collector %s up, resuming after batch %d", self.name, welcome.acked)
            acks = asyncio.create_task(self._read_acks(reader, wire), name=f"acks {self.name}")
            acks.add_done_callback(lambda _t: self._wake.set())
            await self._send(writer, acks)
        finally:
            writer.close()              # first, synchronously: nothing below may skip it
            if acks is not None:
                acks.cancel()
                # asyncio.wait, not ``await acks``: suppressing CancelledError here would also
                # swallow a cancellation of this task itself, and the link would never stop.
                await asyncio.wait({acks})
                if not acks.cancelled():
                    acks.exception()    # retrieved: the session already ended on its own fault
            with contextlib.suppress(*_FAULTS):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _first(self, reader: asyncio.StreamReader, wire: messages.Reader) -> messages.Welcome:
        while True:
            data = await reader.read(65536)
            if not data:
                raise EOFError("collector closed before WELCOME")
            msgs = wire.feed(data)
            if msgs:
                if not isinstance(msgs[0], messages.Welcome) or len(msgs) > 1:
                    raise Malformed("expected a single WELCOME")
                return msgs[0]

    async def _read_acks(self, reader: asyncio.StreamReader, wire: messages.Reader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(65536)
            if not data:
                raise EOFError("collector closed the connection")
            for msg in wire.feed(data):
                if not isinstance(msg, messages.Ack):
                    raise Malformed("expected ACK")
                self.delivered += self.outbox.on_ack(msg.seq)
                self._last_progress = loop.time()

    async def _send(self, writer: asyncio.StreamWriter, acks: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        self._last_progress = self._last_write = loop.time()
        timeout = self._opts.ack_timeout
        self._out = (writer, compression.StreamCompressor(self._opts.level))   # one stream per connection
        try:
            while not acks.done():
                if self.outbox.unsent == 0:
                    self._wake.clear()
                    if len(self.outbox) and loop.time() - self._last_progress > timeout:
                        raise TimeoutError(f"no acknowledgement for {timeout} s")
                    if loop.time() - self._last_write >= self._opts.keepalive:
                        writer.write(messages.encode_ping())
                        self._last_write = loop.time()
                        self.pings += 1
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), min(1.0, self._opts.keepalive))
                    continue
                self._write_ready()   # the backlog after a reconnect, or what ship() left over
                if writer.transport.get_write_buffer_size() > WRITE_HIGH:
                    await asyncio.wait_for(writer.drain(), timeout)
                else:
                    await asyncio.sleep(0)      # let the ACK reader and the receiver run
        finally:
            self._out = None
        acks.result()   # raises the reader's fault


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
                 opts: TransportOptions | None = None, *, agent: str = "nodeagent",
                 stream: bytes | None = None, rng: random.Random | None = None,
                 name: str = "transport", flush_timeout: float = 3.0) -> None:
        if not collectors:
            raise ValueError("transport output needs at least one collector")
        self.name = name
        self.flush_timeout = flush_timeout
        self._opts = opts or TransportOptions()
        self._stream = stream or os.urandom(16)
        self._rng = rng or random.Random()
        self._links = {
            f"{h}:{p}": _Link(h, p, ctx, self._opts, self._stream, agent, self._health_changed)
            for h, p in collectors
        }
        self._ring = affinity.Ring(self._links)
        self._epoch = time.time() - time.monotonic()
        """Wall clock minus the loop clock (asyncio's default loop clock is time.monotonic)."""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def links(self) -> dict[str, _Link]:
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
        """Ship open batches and wait (at most ``flush_timeout``) for the collectors' ACKs.

        The agent may already have cancelled ``run`` (its shutdown stops root tasks before it
        flushes outputs): then the connections are started again just for the flush."""
        if self._tasks and not all(task.done() for task in self._tasks):
            await self.drain(self.flush_timeout)
            return
        temporary = self._start()
        try:
            await self.drain(self.flush_timeout)
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
    opts = TransportOptions(
        batch_bytes=ts.batch_bytes, max_delay=ts.max_delay, queue_bytes=ts.queue_bytes, level=ts.level,
        backoff_initial=ts.backoff_initial, backoff_max=ts.backoff_max,
        connect_timeout=ts.connect_timeout, ack_timeout=ts.ack_timeout, keepalive=ts.keepalive,
        server_name=ts.server_name,
    )
    ctx = loaded_context(ts)
    return TransportOutput([(c.host, c.port) for c in ts.collectors], ctx, opts, agent=agent,
                           flush_timeout=ts.flush_timeout)


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
