"""The collector facing hostile clients on loopback: forged HELLOs, sequence jumps, connection floods,
silent peers, lying batch headers, pod-name floods; no stream id in any /status.

The attacks are replayed with a hand-written client (``Raw``) speaking the protocol over real TLS,
beside a real agent (``TransportOutput``) whose packets must keep reaching the sink."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from nodeagent.adapters.transport_out import TransportOutput
from nodeagent.collector import web
from nodeagent.collector.bounds import Limits
from nodeagent.collector.server import Collector
from nodeagent.settings import TransportSettings
from nodeagent.tls import client_context
from nodeagent.transport import messages, records, streams
from nodeagent.transport.compression import StreamCompressor
from nodeagent.transport.records import Record
from tests.component.transport_kit import (
    FAST,
    Certs,
    RecordingSink,
    forward,
    frame,
    running_output,
    start_collector,
)
from tests.waiting import wait_for

VICTIM = bytes(range(16))
"""The victim agent's stream id, as an attacker would have read it from the old /status."""


class Raw:
    """A hand-made protocol client over TLS (or plain TCP with ``ctx=None``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.wire = reader, writer, messages.Reader()
        self.zstd = StreamCompressor()

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext | None, host: str = "127.0.0.1",
                      local: str | None = None) -> Raw:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=host if ctx else None,
            local_addr=(local, 0) if local else None)
        return cls(reader, writer)

    async def hello(self, stream: bytes) -> int:
        self.writer.write(messages.encode_hello(stream, "attacker"))
        (welcome,) = await self.messages()
        assert isinstance(welcome, messages.Welcome)
        return welcome.acked

    def batch(self, seq: int, recs: list[Record]) -> None:
        raw = records.encode_records(recs)
        self.writer.write(messages.encode_batch(seq, len(recs), len(raw), self.zstd.compress(raw)))

    async def messages(self, timeout: float = 5.0) -> list[messages.Message]:
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("closed by the collector")
            if out := self.wire.feed(data):
                return out

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the collector closed the connection."""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        return True

    def close(self) -> None:
        self.writer.close()


def injected(pod: str = "shop/client", n: int = 3) -> list[Record]:
    frames = [frame(9000 + i, 80) for i in range(n)]
    return [Record(time.time_ns(), len(f), pod, 5, 1, f) for f in frames]


@contextlib.asynccontextmanager
async def agent(port: int, ctx: ssl.SSLContext, stream: bytes = VICTIM,
                opts: TransportSettings = FAST) -> AsyncIterator[TransportOutput]:
    out = TransportOutput([("127.0.0.1", port)], ctx, opts, stream=stream, agent="victim")
    async with running_output(out, name="victim"):
        yield out


async def send(out: TransportOutput, count: int, base: int) -> None:
    loop = asyncio.get_running_loop()
    target = out.state()["delivered"] + count
    for i in range(count):
        out.offer(forward(frame(base + i, 80), loop.time()))
    await wait_for(lambda: out.state()["delivered"] == target, 10, f"{count} packets delivered")


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Certs, RecordingSink, Collector, int]]:
    certs = Certs(tmp_path)
    sink = RecordingSink()
    collector, port = await start_collector(certs, sink)
    try:
        yield certs, sink, collector, port
    finally:
        await collector.stop()


async def test_a_forged_hello_with_the_victims_stream_id_cannot_black_it_out(setup: Any) -> None:
    certs, sink, collector, port = setup
    async with agent(port, certs.agent_context()) as victim:
        await send(victim, 20, 100)
        evil = await Raw.connect(port, certs.agent_context(certs.issue_client("attacker.example")))
        # The attacker's HELLO names the victim's stream, but reaches its own (fresh) stream...
        assert await evil.hello(VICTIM) == 0
        evil.batch(streams.WINDOW, injected())          # ...and advancing it changes nothing for the victim
        (ack,) = await evil.messages()
        assert ack == messages.Ack(streams.WINDOW)
        evil.batch(2**64 - 1, injected())                # the reported attack: beyond the window
        assert await evil.closed()
        evil.close()
        await send(victim, 20, 200)                      # the victim's later batches still arrive
    victims = [r for r, a in zip(sink.records, sink.agents, strict=True) if a.startswith("agent.example")]
    attackers = [a for a in sink.agents if a.startswith("attacker.example")]
    assert len(victims) == 40 and len(attackers) == 3    # the injection is labelled with its sender
    state = collector.state()
    assert state["faults"] >= 1 and "more than" in state["last_fault"]


async def test_even_the_owner_of_a_stream_cannot_jump_past_the_window(setup: Any) -> None:
    """A stolen or shared agent certificate: the same key, so the window is what protects."""
    certs, sink, collector, port = setup
    async with agent(port, certs.agent_context()) as victim:
        await send(victim, 10, 300)
        evil = await Raw.connect(port, certs.agent_context())
        acked = await evil.hello(VICTIM)
        assert acked >= 1
        evil.batch(2**64 - 1, injected())
        assert await evil.closed()
        evil.close()
        await send(victim, 10, 400)
    assert len(sink.records) == 20
    assert "sequence" in collector.state()["last_fault"]


async def test_an_agent_resumes_within_the_window_after_evicting_more_than_it(tmp_path: Path) -> None:
    """The outbox renumbers what it holds (never delivered) so the collector accepts it."""
    from nodeagent.transport import outbox

    box = outbox.Outbox(max_bytes=10)
    box.next_seq = 3 * streams.WINDOW       # as if 3 windows of batches had been evicted
    box.push(b"x", 1)
    box.on_welcome(5)
    item = box.next_batch()
    assert item is not None and item.seq == 5 + streams.WINDOW and box.next_seq == item.seq + 1
    s = streams.Streams()
    s.hello(b"k")
    s.accept(b"k", 5)
    assert s.accept(b"k", item.seq) == (True, streams.WINDOW - 1)


async def test_connection_caps_refuse_before_the_handshake(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    collector, port = await start_collector(certs, RecordingSink(),
                                            limits=Limits(max_connections=3, max_connections_per_peer=2))
    held: list[Raw] = []
    try:
        for _ in range(2):
            held.append(await Raw.connect(port, None, local="127.0.0.1"))   # plain TCP, silent
        await wait_for(lambda: collector.state()["connections"] == 2, 5, "2 admitted")
        third = await Raw.connect(port, None, local="127.0.0.1")             # a 3rd from 127.0.0.1
        assert await third.closed(2)
        held.append(await Raw.connect(port, None, local="127.0.0.2"))
        await wait_for(lambda: collector.state()["connections"] == 3, 5, "3 admitted")
        fourth = await Raw.connect(port, None, local="127.0.0.3")            # a 4th in total
        assert await fourth.closed(2)
        state = collector.state()
        assert state["refused"] == {"max_connections": 1, "max_connections_per_peer": 1}
        assert state["connections"] == 3
        third.close()
        fourth.close()
    finally:
        for raw in held:
            raw.close()
        await collector.stop()


async def test_silent_peers_are_closed_by_the_handshake_and_idle_timeouts(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    limits = Limits(handshake_timeout=0.5, idle_timeout=0.8)
    collector, port = await start_collector(certs, RecordingSink(), limits=limits)
    try:
        tcp = await Raw.connect(port, None)                         # no ClientHello at all
        tls = await Raw.connect(port, certs.agent_context())        # TLS, then no HELLO
        idle = await Raw.connect(port, certs.agent_context())
        await idle.hello(bytes(16))                                 # HELLO, then nothing
        started = time.monotonic()
        assert await tcp.closed() and await tls.closed() and await idle.closed()
        assert time.monotonic() - started < 3
        assert collector.state()["timeouts"] == {"handshake": 2, "idle": 1}
        for raw in (tcp, tls, idle):
            raw.close()
        # A live agent with nothing to send PINGs and stays connected.
        opts = TransportSettings(max_delay=0.01, keepalive=0.2, backoff_initial=0.05)
        async with agent(port, certs.agent_context(), opts=opts) as out:
            link = next(iter(out.links.values()))
            await wait_for(lambda: link.status == "up", 5, "connected")
            await asyncio.sleep(2.0)                                # 2.5 idle timeouts
            assert link.status == "up" and link.reconnects == 0 and link.pings >= 5
        assert collector.state()["timeouts"]["idle"] == 1
    finally:
        await collector.stop()


@pytest.mark.parametrize("count, raw_len, reason", [
    (335_000, 673, "records, not in"),                # the reported 673 bytes -> 335k records
    (0, 100, "records, not in"),
    (10, 10 * records.RECORD_HEADER, "cannot hold"),  # 2 bytes short of 10 empty records
    (1, records.MAX_RAW + 1, "cannot hold"),
])
async def test_lying_batch_headers_are_refused_before_decompression(setup: Any, count: int, raw_len: int,
                                                                   reason: str) -> None:
    certs, sink, collector, port = setup
    bomb = zstandard.ZstdCompressor().compress(bytes(335_000 * records.RECORD_HEADER))
    evil = await Raw.connect(port, certs.agent_context())
    await evil.hello(bytes(16))
    evil.writer.write(messages.encode_batch(1, count, raw_len, bomb))
    assert await evil.closed()
    evil.close()
    assert reason in collector.state()["last_fault"] and sink.records == []


async def test_the_pod_table_and_its_metrics_are_bounded(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    collector, port = await start_collector(certs, RecordingSink(), limits=Limits(max_pods=10))
    try:
        evil = await Raw.connect(port, certs.agent_context())
        await evil.hello(bytes(16))
        for seq in range(1, 11):
            evil.batch(seq, [r._replace(pod=f"ns/pod-{seq}-{i}") for i, r in enumerate(injected(n=10))])
            await evil.messages()
        evil.close()
        state = collector.state()
        assert len(state["pods"]) == 10 and state["pods_forgotten"] == 90
        assert sum(state["pods"].values()) + state["pods_overflow"] == state["packets"] == 100
        registry = web.make_app(collector)[web.REGISTRY_KEY]
        series = [s for m in registry.collect() if m.name == "podmirror_collector_pod_packets"
                  for s in m.samples]
        assert len(series) == 10
        assert registry.get_sample_value("podmirror_collector_pods_overflow_packets_total") == 90
    finally:
        await collector.stop()


async def test_no_status_shows_a_stream_id(setup: Any) -> None:
    certs, sink, collector, port = setup
    async with agent(port, certs.agent_context()) as out:
        await send(out, 5, 500)
        agent_text = json.dumps(out.state())
        collector_text = json.dumps(collector.state())
    for text in (agent_text, collector_text):
        assert VICTIM.hex() not in text and VICTIM.hex()[:16] not in text
    (name,) = collector.state()["agents"]
    assert name.startswith("agent.example sha256:")


async def test_without_client_authentication_agents_are_named_unauthenticated(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    sink = RecordingSink()
    collector, port = await start_collector(certs, sink, client_ca=None)
    try:
        async with agent(port, client_context(certs.ca_file)) as out:
            await send(out, 3, 600)
        assert set(sink.agents) == {"victim (unauthenticated)"}
        assert collector.state()["client_auth"] is False
    finally:
        await collector.stop()


def _run(*args: str) -> tuple[int, str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "nodeagent", *args], capture_output=True, text=True,
                          timeout=60)
    return done.returncode, done.stderr


@pytest.mark.parametrize("extra, field", [
    ([], "--client-ca is required"),
    (["--client-ca", "CA", "--insecure-no-client-auth"], "exclude each other"),
    (["--client-ca", "/nonexistent/ca.pem"], "--client-ca cannot be read"),
    (["--client-ca", "KEY"], "--client-ca cannot be loaded"),
    (["--client-ca", "CA", "--max-connections", "0"], "--max-connections must be >= 1"),
])
def test_nodeagent_collect_bad_security_configuration_exits_2_naming_the_flag(
        tmp_path: Path, extra: list[str], field: str) -> None:
    certs = Certs(tmp_path)
    extra = [{"CA": certs.ca_file, "KEY": certs.key_file}.get(a, a) for a in extra]
    code, err = _run("collect", "--cert", certs.cert_file, "--key", certs.key_file,
                     "--pcap-dir", str(tmp_path / "pcap"), *extra)
    assert code == 2 and field in err, err


@pytest.mark.parametrize("extra, field", [
    (["--collector-cert", "CERT"], "outputs.transport.cert_file and key_file must be given together"),
    (["--collector-cert", "/nonexistent.pem", "--collector-key", "KEY"],
     "outputs.transport.cert_file cannot be read"),
    (["--collector-cert", "CA", "--collector-key", "KEY"],
     "outputs.transport.cert_file and key_file cannot be loaded"),
])
def test_nodeagent_run_bad_client_certificate_exits_2_naming_the_field(
        tmp_path: Path, extra: list[str], field: str) -> None:
    certs = Certs(tmp_path)
    extra = [{"CA": certs.ca_file, "KEY": certs.client_key, "CERT": certs.client_cert}.get(a, a)
             for a in extra]
    code, err = _run("run", "--listen", "127.0.0.1:0", "--status", "127.0.0.1:0", "--collector", "127.0.0.1",
                     "--collector-ca", certs.ca_file, *extra)
    assert code == 2 and field in err, err


async def test_the_agents_status_and_metrics_show_no_stream_id_and_no_credential(setup: Any) -> None:
    """The whole agent, as ``nodeagent run`` wires it: /status and /metrics name neither its stream
    id nor its certificate, key or CA files."""
    from tests.component.agent_kit import http_get, make_settings
    from tests.component.test_transport_agent import running as agent_running

    certs, sink, collector, port = setup
    transport = {"collectors": [f"127.0.0.1:{port}"], "ca_file": certs.ca_file,
                 "cert_file": certs.client_cert, "key_file": certs.client_key}
    async with agent_running(make_settings(outputs={"transport": transport})) as agent:
        (output,) = [o for o in agent.fanout.outputs if o.name == "transport"]
        stream = output._stream.hex()       # noqa: SLF001 (the secret the test looks for)
        await wait_for(lambda: collector.state()["connections"] == 1, 10, "the agent connected")
        assert agent.status_address is not None
        texts = []
        for path in ("/status", "/metrics"):
            code, text = await asyncio.to_thread(http_get, agent.status_address, path)
            assert code == 200
            texts.append(text)
    for text in texts:
        for secret in (stream, stream[:16], certs.ca_file, certs.client_cert, certs.client_key):
            assert secret not in text
