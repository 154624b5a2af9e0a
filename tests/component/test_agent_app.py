"""app.Agent: extension points (routes, tasks, outputs) and supervision (a failing root task stops it)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from nodeagent.app import Agent
from nodeagent.verdict import Forward
from tests.component.agent_kit import (
    KNOWN,
    http_get,
    make_settings,
    running,
    send_tunnel,
    sender,
    tcp_frame,
    tunnel_port,
)
from tests.waiting import wait_for


class RecordingOutput:
    """An Output that copies what it is offered and records its lifecycle."""

    def __init__(self, name: str = "recording") -> None:
        self.name = name
        self.frames: list[bytes] = []
        self.events: list[str] = []

    async def open(self) -> None:
        self.events.append("open")

    async def run(self) -> None:
        self.events.append("run")

    def offer(self, fwd: Forward) -> None:
        self.frames.append(bytes(fwd.frame))  # the view is only valid during offer

    async def flush(self) -> None:
        self.events.append("flush")

    async def close(self) -> None:
        self.events.append("close")

    def state(self) -> dict[str, Any]:
        return {"packets": len(self.frames)}


async def test_added_route_task_and_output_are_served_run_and_fed():
    agent = Agent(make_settings())
    output = RecordingOutput()
    ticks: list[int] = []

    async def hello(_request: web.Request) -> web.Response:
        return web.json_response({"hello": agent.stats.total.received})

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0.01)

    agent.add_route("GET", "/v1/hello", hello)
    agent.add_task("ticker", ticker)
    agent.add_output(output)
    task = asyncio.create_task(agent.run(handle_signals=False))
    await wait_for(agent.is_ready, what="ready")
    good = sender(KNOWN)
    frame = tcp_frame(b"for the extension")
    send_tunnel(good, tunnel_port(agent), frame, count=3)
    await wait_for(lambda: len(output.frames) == 3, what="3 frames at the added output")
    code, body = await asyncio.to_thread(http_get, agent.status_address, "/v1/hello")
    await wait_for(lambda: len(ticks) >= 2, what="the added task to run")
    status = agent.status()
    agent.stop()
    assert await task == 0
    good.close()
    assert code == 200 and json.loads(body) == {"hello": 3}
    assert output.frames == [frame] * 3
    assert output.events == ["open", "run", "flush", "close"]
    assert status["outputs"]["recording"] == {"packets": 3, "dropped": {"internal_error": 0}}


async def test_a_failing_root_task_stops_the_agent_with_exit_code_1_after_flushing():
    agent = Agent(make_settings())
    output = RecordingOutput()
    agent.add_output(output)

    async def broken() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("watch lost")

    agent.add_task("broken", broken)
    assert await asyncio.wait_for(agent.run(handle_signals=False), 10) == 1
    assert output.events[-2:] == ["flush", "close"]
    assert not agent.receiver.is_bound and not agent.is_ready()


async def test_an_output_that_raises_is_counted_and_the_others_still_get_the_packet():
    class Broken(RecordingOutput):
        def offer(self, fwd: Forward) -> None:
            raise ValueError("bug")

    agent_settings = make_settings()
    async with running(agent_settings) as agent:
        good_output, broken_output = RecordingOutput("good"), Broken("broken")
        agent.fanout.add(broken_output)
        agent.fanout.add(good_output)
        good = sender(KNOWN)
        send_tunnel(good, tunnel_port(agent), tcp_frame(), count=4)
        await wait_for(lambda: len(good_output.frames) == 4)
        good.close()
        assert agent.fanout.state()["broken"]["dropped"]["internal_error"] == 4
        assert agent.fanout.state()["good"]["dropped"]["internal_error"] == 0


async def test_reported_mode_appears_for_a_pod_without_traffic():
    async with running(make_settings()) as agent:
        agent.report_mode("default/late", "kernel")
        status = agent.status()
    assert status["pods"]["default/late"]["mode"] == "kernel"
    assert status["pods"]["default/late"]["received"] == 0


async def test_status_server_port_in_use_fails_startup_and_cleans_up():
    async with running(make_settings()) as first:
        host, port = first.status_address
        second = Agent(make_settings(status={"host": host, "port": port}))
        try:
            await second.run(handle_signals=False)
        except OSError:
            pass
        else:
            raise AssertionError("the second agent started on a taken status port")
        assert not second.receiver.is_bound  # the tunnel socket was closed again
