"""A collector killed under traffic: bounded agent memory, every packet accounted, resume by itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from nodeagent.adapters.transport_out import TransportOutput
from nodeagent.settings import TransportSettings
from tests.books import output_balances
from tests.component.transport_kit import (
    Certs,
    ChildCollector,
    forward,
    frame,
    free_port,
    pcapng_packets,
    stop_output,
)
from tests.waiting import wait_for

QUEUE = 256 * 1024


async def _traffic(out: TransportOutput, stop: asyncio.Event, peaks: dict[str, int]) -> None:
    """About 2,000 packets/s of 300-byte incompressible payloads over 40 flows."""
    loop = asyncio.get_running_loop()
    link = next(iter(out.links.values()))
    i = 0
    while not stop.is_set():
        for _ in range(20):
            out.offer(forward(frame(20000 + i % 40, 443, reply=bool(i % 3 == 0), payload=os.urandom(300)),
                              loop.time()))
            i += 1
        peaks["outbox"] = max(peaks["outbox"], link.outbox.nbytes)
        assert output_balances(out.state())
        await asyncio.sleep(0.01)


async def _kill_and_resume(tmp_path: Path, down_seconds: float) -> None:
    certs = Certs(tmp_path)
    port = free_port()
    child = ChildCollector(certs, port, tmp_path / "pcap")
    opts = TransportSettings(max_delay=0.01, queue_bytes=QUEUE, backoff_initial=0.1, backoff_max=1.0,
                            connect_timeout=2.0)
    out = TransportOutput([("127.0.0.1", port)], certs.agent_context(), opts)
    link = out.links[f"127.0.0.1:{port}"]
    stop, peaks = asyncio.Event(), {"outbox": 0}
    runner = asyncio.create_task(out.run(), name="transport")
    traffic: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(child.start)
        traffic = asyncio.create_task(_traffic(out, stop, peaks), name="traffic")
        await wait_for(lambda: out.state()["delivered"] > 500, 15, "first deliveries")
        child.kill()
        await wait_for(lambda: link.status == "down", 10, "the link to notice the collector is gone")
        await asyncio.sleep(down_seconds)          # the outage itself: traffic keeps coming
        before = out.state()
        assert before["dropped"]["queue_full"] > 0                 # the stated policy kicked in
        await asyncio.to_thread(child.start)
        await wait_for(lambda: out.state()["delivered"] > before["delivered"] + 500, 20,
                       "delivery to resume by itself")
        stop.set()
        await traffic
        await wait_for(lambda: out.state()["queued_packets"] == 0 and out.state()["open_packets"] == 0,
                       15, "the backlog to drain")
        final = out.state()
        assert output_balances(final) and final["dropped"]["shutdown"] == 0
        assert final["offered"] == final["delivered"] + final["dropped"]["queue_full"]
        assert link.reconnects >= 1 and link.status == "up"
        # Bounded memory: the outbox never held more than its bound plus one batch.
        assert peaks["outbox"] <= QUEUE + opts.batch_bytes
    finally:
        stop.set()
        if traffic is not None:
            with contextlib.suppress(BaseException):
                await traffic
        await stop_output(out, runner)
        await asyncio.to_thread(child.stop)
    # The two collector lives wrote at least every acknowledged packet; duplicates are bounded by
    # what was in flight when the first one died (at-least-once across collector restarts).
    written = sum(len(pcapng_packets(p)) for p in (tmp_path / "pcap").glob("*.pcapng"))
    print(f"outage {down_seconds} s: offered {final['offered']} delivered {final['delivered']} "
          f"dropped {final['dropped']} written {written} peak outbox {peaks['outbox']} B "
          f"reconnects {link.reconnects}")
    assert final["delivered"] <= written <= final["delivered"] + QUEUE // 300


async def test_a_collector_killed_for_five_seconds_under_traffic(tmp_path: Path) -> None:
    await _kill_and_resume(tmp_path, 5.0)


@pytest.mark.slow
async def test_a_collector_killed_for_thirty_seconds_under_traffic(tmp_path: Path) -> None:
    await _kill_and_resume(tmp_path, 30.0)
