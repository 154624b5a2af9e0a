"""Batched transport over TLS on loopback: delivery, accounting, certificates (trustme)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme

from nodeagent.adapters.transport_out import TransportOutput
from nodeagent.settings import TransportSettings
from nodeagent.tls import client_context
from tests.books import output_balances
from tests.component.transport_kit import (
    CLIENT,
    FAST,
    Certs,
    RecordingSink,
    forward,
    frame,
    running_output,
    start_collector,
)
from tests.waiting import wait_for


async def test_batches_reach_the_collector_in_order_with_identity(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    sink = RecordingSink()
    collector, port = await start_collector(certs, sink)
    loop = asyncio.get_running_loop()
    frames = [frame(40000 + i % 20, 80, reply=bool(i % 2), payload=bytes([i % 256]) * 200)
              for i in range(600)]
    try:
        out = TransportOutput([("127.0.0.1", port)], certs.agent_context(), FAST)
        async with running_output(out):
            for raw in frames:
                out.offer(forward(raw, loop.time()))
            await wait_for(lambda: out.state()["delivered"] == len(frames), 10, "all packets acknowledged")
            state = out.state()
            assert output_balances(state) and state["dropped"] == {"queue_full": 0, "shutdown": 0}
            assert state["collectors"][f"127.0.0.1:{port}"]["state"] == "up"
        assert [r.frame for r in sink.records] == frames                  # order kept, nothing lost
        assert {r.pod for r in sink.records} == {"shop/client", "shop/server"}
        first = sink.records[0]
        assert first.vni == CLIENT.vni and first.direction == 1 and first.wire_len == len(frames[0])
        assert abs(first.ts_ns / 1e9 - __import__("time").time()) < 60
        cs = collector.state()
        assert cs["packets"] == len(frames) and cs["duplicate_batches"] == 0
        assert cs["wire_bytes"] < cs["raw_bytes"]                          # zstd did something
    finally:
        await collector.stop()


async def test_a_collector_with_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    other = trustme.CA()
    other_file = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_file))
    sink = RecordingSink()
    collector, port = await start_collector(certs, sink)
    loop = asyncio.get_running_loop()
    try:
        out = TransportOutput([("127.0.0.1", port)], client_context(str(other_file)), FAST)
        async with running_output(out):
            for i in range(50):
                out.offer(forward(frame(1000 + i, 80), loop.time()))
            link = out.links[f"127.0.0.1:{port}"]
            await wait_for(lambda: link.reconnects >= 2, 10, "repeated refused connections")
            assert link.status == "down"
            assert "CERTIFICATE_VERIFY_FAILED" in link.last_error
            assert output_balances(out.state()) and out.state()["delivered"] == 0
        assert sink.records == []
        assert out.state()["dropped"]["shutdown"] == 50                    # every packet accounted
    finally:
        await collector.stop()


async def test_the_certificate_must_name_the_collector(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    sink = RecordingSink()
    collector, port = await start_collector(certs, sink)
    try:
        opts = TransportSettings(max_delay=0.01, backoff_initial=0.05, backoff_max=0.2,
                                server_name="collector.elsewhere.example")
        out = TransportOutput([("127.0.0.1", port)], certs.agent_context(), opts)
        async with running_output(out):
            link = out.links[f"127.0.0.1:{port}"]
            await wait_for(lambda: link.reconnects >= 1, 10, "a refused connection")
            assert "CERTIFICATE_VERIFY_FAILED" in link.last_error or "match" in link.last_error
    finally:
        await collector.stop()


@pytest.mark.parametrize("with_cert", [True, False])
async def test_a_collector_requiring_client_certificates(tmp_path: Path, with_cert: bool) -> None:
    certs = Certs(tmp_path)
    sink = RecordingSink()
    collector, port = await start_collector(certs, sink, client_ca=certs.ca_file)
    loop = asyncio.get_running_loop()
    ctx = certs.agent_context() if with_cert else client_context(certs.ca_file)
    try:
        out = TransportOutput([("127.0.0.1", port)], ctx, FAST)
        async with running_output(out):
            for i in range(10):
                out.offer(forward(frame(2000 + i, 80), loop.time()))
            if with_cert:
                await wait_for(lambda: out.state()["delivered"] == 10, 10, "delivery with a client cert")
            else:
                link = out.links[f"127.0.0.1:{port}"]
                await wait_for(lambda: link.reconnects >= 2, 10, "refusals without a client cert")
                assert out.state()["delivered"] == 0 and sink.records == []
    finally:
        await collector.stop()


async def test_flush_waits_for_acknowledgements_and_close_counts_the_rest(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    sink = RecordingSink()
    collector, port = await start_collector(certs, sink)
    loop = asyncio.get_running_loop()
    try:
        # The longest max_delay allowed: flush closes the batch first.
        opts = TransportSettings(max_delay=1.0, backoff_initial=0.05)
        out = TransportOutput([("127.0.0.1", port)], certs.agent_context(), opts)
        async with running_output(out):
            for i in range(25):
                out.offer(forward(frame(3000 + i, 80), loop.time()))
            assert out.state()["open_packets"] == 25
            await out.flush()
            assert out.state()["delivered"] == 25 and len(sink.records) == 25
    finally:
        await collector.stop()
