"""The collector's TLS server: one ``_Session`` per agent connection, shared ``Streams`` and sinks.

Per connection: the first message must be HELLO; the collector answers WELCOME with the highest
sequence it delivered for that stream. Each BATCH is delivered to every sink if its sequence is
new for the stream, then acknowledged (cumulative ACK = the stream's highest delivered sequence);
a repeated sequence is acknowledged without delivery. Any protocol fault closes the connection and
is counted; the agent reconnects and resumes.

Whoever can reach the port may be hostile (docs/threat-model.md), so every resource is bounded
before it is spent (``Limits``):

- connections: at most ``max_connections`` open, ``max_connections_per_peer`` per source address,
  counted *before* the TLS handshake (the server accepts plain TCP and upgrades it itself, so a
  flood of half-open handshakes is capped too); refused ones are closed at once and counted;
- time: the TLS handshake and the HELLO within ``handshake_timeout``; then at least one complete
  message per ``idle_timeout`` (an idle agent sends PING), or the connection is closed;
- identity: with client authentication (the default, ``nodeagent collect --client-ca``) a stream is
  keyed by the SHA-256 of the agent's certificate *and* the stream id, so a HELLO naming another
  agent's stream id reaches a different stream and cannot hold back that agent's batches;
  the sequence window (``streams.WINDOW``) bounds what even the owner can skip;
- size: BATCH headers are checked before decompression (``messages``), decompression stops at the
  announced length, records are decoded against the announced count (``records``);
- tables: streams and agents (``Streams.capacity``), pods (``max_pods``, least recently seen
  forgotten, their packets kept in ``pods_overflow``), so Prometheus label sets stay bounded.

``state()`` (the ``/status`` body) names agents by their certificate, never by stream id.
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

from nodeagent.collector.bounds import UNAUTHENTICATED, Limits, PodCounts, peer_identity
from nodeagent.collector.sinks import Sink
from nodeagent.transport import compression, messages, streams
from nodeagent.wire import Malformed

log = logging.getLogger(__name__)

_FAULTS = (OSError, ssl.SSLError, asyncio.TimeoutError, Malformed, ConnectionError, EOFError)




class CollectorStats:
    def __init__(self, max_pods: int, delays: int = 100_000) -> None:
        self.connections = self.connections_total = self.faults = 0
        self.batches = self.duplicate_batches = self.lost_batches = 0
        self.packets = self.wire_bytes = self.raw_bytes = 0
        self.refused: dict[str, int] = {"max_connections": 0, "max_connections_per_peer": 0}
        self.timeouts: dict[str, int] = {"handshake": 0, "idle": 0}
        self.pods = PodCounts(max_pods)
        self.agents: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
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


class _Timeout(Exception):
    """A connection that did not finish its handshake or went idle (``kind``)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"{kind} timeout")
        self.kind = kind


class Collector:
    def __init__(self, sinks: Sequence[Sink], ctx: ssl.SSLContext, limits: Limits | None = None) -> None:
        self.sinks = list(sinks)
        self.ctx = ctx
        self.limits = limits or Limits()
        self.stats = CollectorStats(self.limits.max_pods)
        self.streams = streams.Streams()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._raw: set[asyncio.BaseTransport] = set()
        """Admitted connections (TLS handshakes included): what the caps count."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_peer: collections.Counter[str] = collections.Counter()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        # Plain TCP: each connection is admitted by the caps first, then upgraded to TLS (``_Gate``).
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Gate(self), host, port)
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def stop(self) -> None:
        """Stop listening, close every agent connection (Python 3.11's ``Server.close`` leaves
        accepted connections open), close the sinks."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for raw in list(self._raw):
            raw.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        for sink in self.sinks:
            sink.close()

    def _admit(self, peer: str) -> str | None:
        """None to admit a new connection from ``peer``, else the name of the cap it hits."""
        if len(self._raw) >= self.limits.max_connections:
            return "max_connections"
        if self._per_peer[peer] >= self.limits.max_connections_per_peer:
            return "max_connections_per_peer"
        return None

    def accepted(self, raw: asyncio.Transport) -> None:
        """A new TCP connection (``_Gate``): refused at once beyond a cap, else served by a task."""
        peername = raw.get_extra_info("peername")
        peer = str(peername[0]) if peername else "?"
        refused = self._admit(peer)
        if refused is not None:
            self.stats.refused[refused] += 1
            raw.abort()
            return
        self._raw.add(raw)
        self._per_peer[peer] += 1
        task = asyncio.get_running_loop().create_task(self._connection(raw, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, raw: asyncio.Transport, peer: str) -> None:
        stats = self.stats
        stats.connections += 1
        stats.connections_total += 1
        writer: asyncio.StreamWriter | None = None
        try:
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            transport = await self._tls(raw, protocol)
            if transport is None:      # the peer left right after its handshake: nothing to serve
                return
            protocol.connection_made(transport)
            writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())
            self._writers.add(writer)
            await _Session(self, reader, writer).serve()
        except _Timeout as exc:
            stats.timeouts[exc.kind] += 1
            self._fault(exc)
        except _FAULTS as exc:
            self._fault(exc)
        finally:
            stats.connections -= 1
            self._raw.discard(raw)
            self._per_peer[peer] -= 1
            if not self._per_peer[peer]:
                del self._per_peer[peer]
            if writer is None:
                raw.abort()
            else:
                self._writers.discard(writer)
                writer.close()
                with contextlib.suppress(*_FAULTS):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _tls(self, raw: asyncio.Transport, protocol: asyncio.Protocol) -> asyncio.Transport | None:
        """Upgrade ``raw`` to TLS within ``handshake_timeout``. Called in the connection task's first
        step, before the transport ever reads: the ClientHello cannot reach the plain protocol."""
        timeout = self.limits.handshake_timeout
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout + 1):   # asyncio's own handshake timeout first
                return await loop.start_tls(raw, protocol, self.ctx, server_side=True,
                                            ssl_handshake_timeout=timeout)
        except (TimeoutError, ConnectionAbortedError) as exc:
            if isinstance(exc, TimeoutError) or "handshake" in str(exc):
                raise _Timeout("handshake") from None
            raise

    def _fault(self, exc: BaseException) -> None:
        self.stats.faults += 1
        self.stats.last_fault = f"{type(exc).__name__}: {exc}"[:200]
        log.info("agent connection closed: %s", self.stats.last_fault)

    def deliver(self, key: bytes, identity: str, msg: messages.BatchMsg,
                zstd: compression.StreamDecompressor) -> int:
        """Deliver one batch if new; returns the cumulative sequence to acknowledge."""
        stats = self.stats
        stats.wire_bytes += len(msg.payload)
        records = zstd.unpack(msg)        # always: the connection's stream must stay in step
        fresh, gap = self.streams.accept(key, msg.seq)
        info = self._agent(identity)
        if fresh:
            for sink in self.sinks:
                sink.deliver(records, identity)
            stats.batches += 1
            stats.lost_batches += gap
            stats.packets += len(records)
            stats.raw_bytes += msg.raw_len
            now_ns = time.time_ns()
            stats.delays.extend((now_ns - r.ts_ns) / 1e9 for r in records)
            per_pod = collections.Counter(r.pod for r in records)
            for pod, n in per_pod.items():
                stats.pods.add(pod, n)
            info["packets"] += len(records)
            info["batches"] += 1
            info["lost_batches"] += gap
            info["last_seq"] = msg.seq
        else:
            stats.duplicate_batches += 1
        state = self.streams.get(key)
        return state.last if state else msg.seq

    def _agent(self, identity: str) -> dict[str, Any]:
        """Per-identity counters, bounded like ``Streams`` (the least recently active forgotten)."""
        agents = self.stats.agents
        info = agents.get(identity)
        if info is None:
            info = agents[identity] = {"packets": 0, "batches": 0, "lost_batches": 0, "last_seq": 0,
                                       "streams": 0, "name": ""}
            while len(agents) > self.streams.capacity:
                agents.popitem(last=False)
        agents.move_to_end(identity)
        return info

    def hello(self, key: bytes, identity: str, name: str) -> int:
        info = self._agent(identity)
        info["streams"] += 1
        info["name"] = name[:64]
        return self.streams.hello(key)

    def state(self) -> dict[str, Any]:
        s = self.stats
        return {
            "connections": s.connections, "connections_total": s.connections_total, "faults": s.faults,
            "last_fault": s.last_fault, "refused": dict(s.refused), "timeouts": dict(s.timeouts),
            "batches": s.batches, "duplicate_batches": s.duplicate_batches,
            "lost_batches": s.lost_batches, "packets": s.packets, "wire_bytes": s.wire_bytes,
            "raw_bytes": s.raw_bytes, "pods": dict(s.pods.counts), "pods_overflow": s.pods.overflow,
            "pods_forgotten": s.pods.forgotten, "agents": {k: dict(v) for k, v in s.agents.items()},
            "streams": len(self.streams), "client_auth": self.ctx.verify_mode == ssl.CERT_REQUIRED,
            "delay_seconds": s.delay_quantiles(), "sinks": [sink.state() for sink in self.sinks],
        }


class _Gate(asyncio.Protocol):
    """The plain TCP side of a new connection: hands it to the collector's caps. It never reads:
    ``loop.start_tls`` takes the transport over before reading starts (``Collector._tls``)."""

    def __init__(self, owner: Collector) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._owner.accepted(transport)


class _Session:
    def __init__(self, owner: Collector, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._owner, self._reader, self._writer = owner, reader, writer
        self._wire = messages.Reader()
        self._zstd = compression.StreamDecompressor()
        self._key, self._cert_name = peer_identity(writer.get_extra_info("ssl_object"))
        self._identity = ""
        """How ``/status`` and the sinks name the agent: its certificate, else its HELLO name."""

    async def serve(self) -> None:
        limits = self._owner.limits
        loop = asyncio.get_running_loop()
        key: bytes | None = None
        deadline, kind = loop.time() + limits.handshake_timeout, "handshake"   # for the HELLO
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self._reader.read(1 << 20)
            except TimeoutError:
                raise _Timeout(kind) from None
            if not data:
                return
            msgs = self._wire.feed(data)
            if msgs:
                deadline, kind = loop.time() + limits.idle_timeout, "idle"
            for msg in msgs:
                key = self._handle(key, msg)
            try:
                async with asyncio.timeout(limits.idle_timeout):   # an agent that reads no ACK
                    await self._writer.drain()
            except TimeoutError:
                raise _Timeout("idle") from None

    def _handle(self, key: bytes | None, msg: messages.Message) -> bytes:
        owner = self._owner
        if key is None:
            if not isinstance(msg, messages.Hello):
                raise Malformed("expected HELLO first")
            key = self._key + msg.stream       # the stream as this certificate's, never another's
            self._identity = self._cert_name or f"{msg.name[:64]}{UNAUTHENTICATED}"
            self._writer.write(messages.encode_welcome(owner.hello(key, self._identity, msg.name)))
        elif isinstance(msg, messages.BatchMsg):
            acked = owner.deliver(key, self._identity, msg, self._zstd)
            self._writer.write(messages.encode_ack(acked))
        elif not isinstance(msg, messages.Ping):
            raise Malformed(f"unexpected {type(msg).__name__}")
        return key
