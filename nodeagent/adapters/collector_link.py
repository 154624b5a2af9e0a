"""One collector's link: its open batch, its outbox (until acknowledged) and its connection.

The loop side (``add``, ``ship``, ``flush``, ``drop_all``) never awaits: it appends to the batch,
encodes a closed batch into the outbox (evicting the oldest beyond ``queue_bytes``, counted as
``queue_full``) and writes what the TLS transport can take (``WRITE_HIGH``). The connection task
(``run``) alone connects, says HELLO, resumes after WELCOME, reads ACKs, sends PINGs when idle,
and reconnects with backoff; ``docs/transport.md`` describes the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

from nodeagent.settings import TransportSettings
from nodeagent.transport import compression, messages, outbox, records
from nodeagent.transport.backoff import Backoff
from nodeagent.transport.batcher import Batch, Batcher
from nodeagent.transport.records import Record
from nodeagent.verdict import OutputDrop
from nodeagent.wire import Malformed

log = logging.getLogger(__name__)

QUEUE_FULL, SHUTDOWN = OutputDrop.QUEUE_FULL, OutputDrop.SHUTDOWN
"""The outputs' drop vocabulary (``verdict.OutputDrop``): the two reasons a link can emit."""
WRITE_HIGH = 4 << 20
"""Bytes buffered in the TLS transport before the sender waits for the socket (flow control)."""
FAULTS = (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.IncompleteReadError, Malformed,
          ConnectionError, EOFError)
"""What ends a session (the link reconnects); anything else is a bug and ends the task."""


class CollectorLink:
    """One collector: its open batch, its outbox and its connection task."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, opts: TransportSettings,
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
            except FAULTS as exc:
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
            with contextlib.suppress(*FAULTS):
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
