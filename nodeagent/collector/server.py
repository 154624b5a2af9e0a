"""The collector's TLS server: one ``_Session`` per agent connection, shared ``Streams`` and sinks.

Per connection: the first message must be HELLO; the collector answers WELCOME with the highest
sequence it delivered for that stream. Each BATCH is delivered to every sink if its sequence is
new for the stream, then acknowledged (cumulative ACK = the stream's highest delivered sequence);
a repeated sequence is acknowledged without delivery. Any protocol fault closes the connection and
is counted; the agent reconnects and resumes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any

from nodeagent.collector.sinks import Sink
from nodeagent.transport import compression, messages, streams
from nodeagent.wire import Malformed

log = logging.getLogger(__name__)

_FAULTS = (OSError, ssl.SSLError, asyncio.TimeoutError, Malformed, ConnectionError, EOFError)


def server_context(cert_file: str, key_file: str, client_ca: str | None = None) -> ssl.SSLContext:
    """TLS server context; with ``client_ca`` every agent must present a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class CollectorStats:
    def __init__(self, delays: int = 100_000) -> None:
        self.connections = self.connections_total = self.faults = 0
        self.batches = self.duplicate_batches = self.lost_batches = 0
        self.packets = self.wire_bytes = self.raw_bytes = 0
        self.pods: dict[str, int] = collections.defaultdict(int)
        self.agents: dict[str, dict[str, Any]] = {}
        self.last_fault = ""
        self.delays: collections.deque[float] = collections.deque(maxlen=delays)
        """Recent capture-to-delivery delays in seconds (the agent's and our wall clocks)."""

    def delay_quantiles(self) -> dict[str, float | None]:
        values = sorted(self.delays)
        if not values:
            return {"p50": None, "p99": None, "max": None}
        def pick(q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))]

        return {"p50": pick(0.50), "p99": pick(0.99), "max": values[-1]}


class Collector:
    def __init__(self, sinks: Sequence[Sink], ctx: ssl.SSLContext) -> None:
        self.sinks = list(sinks)
        self.ctx = ctx
        self.stats = CollectorStats()
        self.streams = streams.Streams()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self.ctx,
                                                  ssl_handshake_timeout=10)
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def stop(self) -> None:
        """Stop listening, close every agent connection (Python 3.11's ``Server.close`` leaves
        accepted connections open), close the sinks."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        for sink in self.sinks:
            sink.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        stats.connections += 1
        stats.connections_total += 1
        self._writers.add(writer)
        try:
            await _Session(self, reader, writer).serve()
        except _FAULTS as exc:
            stats.faults += 1
            stats.last_fault = f"{type(exc).__name__}: {exc}"[:200]
            log.info("agent connection closed: %s", stats.last_fault)
        finally:
            stats.connections -= 1
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(*_FAULTS):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def deliver(self, stream: bytes, agent: str, msg: messages.BatchMsg,
                zstd: compression.StreamDecompressor) -> int:
        """Deliver one batch if new; returns the cumulative sequence to acknowledge."""
        stats = self.stats
        stats.wire_bytes += len(msg.payload)
        records = zstd.unpack(msg)        # always: the connection's stream must stay in step
        fresh, gap = self.streams.accept(stream, msg.seq)
        if fresh:
            for sink in self.sinks:
                sink.deliver(records, agent)
            stats.batches += 1
            stats.lost_batches += gap
            stats.packets += len(records)
            stats.raw_bytes += msg.raw_len
            now_ns = time.time_ns()
            stats.delays.extend((now_ns - r.ts_ns) / 1e9 for r in records)
            for r in records:
                stats.pods[r.pod] += 1
            info = stats.agents.get(stream.hex())
            if info is None:
                info = stats.agents[stream.hex()] = {"name": agent, "packets": 0}
                while len(stats.agents) > self.streams.capacity:   # bounded like ``Streams``
                    del stats.agents[next(iter(stats.agents))]
            info["packets"] += len(records)
        else:
            stats.duplicate_batches += 1
        state = self.streams.get(stream)
        return state.last if state else msg.seq

    def state(self) -> dict[str, Any]:
        s = self.stats
        agents = {}
        for sid, info in s.agents.items():
            st = self.streams.get(bytes.fromhex(sid))
            agents[sid] = {**info, "last_seq": st.last if st else None,
                           "lost_batches": st.lost if st else None}
        return {
            "connections": s.connections, "connections_total": s.connections_total, "faults": s.faults,
            "last_fault": s.last_fault, "batches": s.batches, "duplicate_batches": s.duplicate_batches,
            "lost_batches": s.lost_batches, "packets": s.packets, "wire_bytes": s.wire_bytes,
            "raw_bytes": s.raw_bytes, "pods": dict(s.pods), "agents": agents,
            "delay_seconds": s.delay_quantiles(), "sinks": [sink.state() for sink in self.sinks],
        }


class _Session:
    def __init__(self, owner: Collector, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._owner, self._reader, self._writer = owner, reader, writer
        self._wire = messages.Reader()
        self._zstd = compression.StreamDecompressor()

    async def serve(self) -> None:
        stream: bytes | None = None
        agent = ""
        while True:
            data = await self._reader.read(1 << 20)
            if not data:
                return
            for msg in self._wire.feed(data):
                if stream is None:
                    if not isinstance(msg, messages.Hello):
                        raise Malformed("expected HELLO first")
                    stream, agent = msg.stream, msg.name
                    self._writer.write(messages.encode_welcome(self._owner.streams.hello(stream)))
                elif isinstance(msg, messages.BatchMsg):
                    acked = self._owner.deliver(stream, agent, msg, self._zstd)
                    self._writer.write(messages.encode_ack(acked))
                else:
                    raise Malformed(f"unexpected {type(msg).__name__}")
            await self._writer.drain()
