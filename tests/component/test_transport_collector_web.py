"""The collector's /status and /metrics (per-app registry, read at scrape time)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nodeagent.adapters.transport_out import TransportOutput
from nodeagent.collector import web
from nodeagent.settings import TransportSettings
from tests.component.transport_kit import Certs, RecordingSink, forward, frame, start_collector, stop_output
from tests.waiting import wait_for


async def test_status_and_metrics_count_what_was_delivered(tmp_path: Path, aiohttp_client: Any) -> None:
    certs = Certs(tmp_path)
    collector, port = await start_collector(certs, RecordingSink())
    app = web.make_app(collector)
    client = await aiohttp_client(app)
    out = TransportOutput([("127.0.0.1", port)], certs.agent_context(),
                          TransportSettings(max_delay=0.01))
    runner = asyncio.create_task(out.run(), name="transport")
    loop = asyncio.get_running_loop()
    try:
        for i in range(40):
            out.offer(forward(frame(7000 + i, 80, reply=bool(i % 2)), loop.time()))
        await wait_for(lambda: out.state()["delivered"] == 40, 10, "delivery")
        resp = await client.get("/status")
        status = await resp.json()
        assert status["packets"] == 40 and status["connections"] == 1
        assert status["pods"] == {"shop/client": 20, "shop/server": 20}
        (agent,) = status["agents"].values()
        assert agent["packets"] == 40 and agent["last_seq"] >= 1
        assert 0 <= status["delay_seconds"]["p50"] <= status["delay_seconds"]["p99"] < 5
        registry = app[web.REGISTRY_KEY]
        assert registry.get_sample_value("podmirror_collector_packets_total") == 40
        assert registry.get_sample_value("podmirror_collector_pod_packets_total",
                                         {"namespace": "shop", "pod": "client"}) == 20
        text = await (await client.get("/metrics")).text()
        assert "podmirror_collector_delay_seconds" in text
        state = out.state()
        assert state["collectors_up"] == 1 and state["dropped"]["queue_full"] == 0
    finally:
        await stop_output(out, runner)
        await collector.stop()
