"""Held packets on a running agent: the receiver's timer releases them when no packet arrives, in
order, through the outputs; SIGTERM's shutdown releases what is still held; the books count them."""

from __future__ import annotations

import asyncio

from nodeagent.app import Agent
from nodeagent.settings import Settings
from tests.books import assert_balanced
from tests.component.agent_kit import (
    KNOWN,
    POD_IP,
    make_settings,
    send_tunnel,
    sender,
    tcp_frame,
    tunnel_port,
)
from tests.component.test_agent_app import RecordingOutput
from tests.waiting import wait_for

EXTERNAL = "93.184.216.34"
SERVER = "10.0.0.6"
"""A second monitored pod (never sends): the client's copies toward a non-pod may be its DNAT'd
connection, so with prefer=server they wait for it."""


def settings(hold: float) -> Settings:
    return make_settings(senders=[f"{KNOWN}+{POD_IP},5,default/web", f"{SERVER},6,default/db"],
                         dedup={"enabled": True, "vantage": "server", "hold": hold})


async def test_the_timer_releases_held_packets_in_order_when_no_packet_arrives() -> None:
    agent = Agent(settings(0.2))
    output = RecordingOutput()
    agent.add_output(output)
    task = asyncio.create_task(agent.run(handle_signals=False), name="agent-under-test")
    try:
        await wait_for(agent.is_ready, what="agent ready")
        frames = [tcp_frame(b"", src=POD_IP, dst=EXTERNAL, sport=40000, dport=443, seq=7, flags="S"),
                  tcp_frame(b"hello", src=POD_IP, dst=EXTERNAL, sport=40000, dport=443, seq=8, flags="PA")]
        sock = sender(KNOWN)
        for frame in frames:
            send_tunnel(sock, tunnel_port(agent), frame)
        sock.close()
        await wait_for(lambda: agent.stats.snapshot()["held"] == 2, what="two packets held")
        snap = agent.stats.snapshot()
        assert output.frames == [] and snap["received"] == 2
        assert_balanced(snap)
        await wait_for(lambda: len(output.frames) == 2, timeout=3, what="the timer's release")
        assert output.frames == frames
        snap = agent.stats.snapshot()
        assert snap["held"] == 0 and snap["forwarded"] == 2
        assert_balanced(snap)
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_shutdown_releases_what_is_still_held_before_the_outputs_flush() -> None:
    agent = Agent(settings(1.0))
    output = RecordingOutput()
    agent.add_output(output)
    task = asyncio.create_task(agent.run(handle_signals=False), name="agent-under-test")
    await wait_for(agent.is_ready, what="agent ready")
    frame = tcp_frame(b"", src=POD_IP, dst=EXTERNAL, sport=40001, dport=443, seq=9, flags="S")
    sock = sender(KNOWN)
    send_tunnel(sock, tunnel_port(agent), frame)
    sock.close()
    await wait_for(lambda: agent.stats.snapshot()["held"] == 1, what="one packet held")
    agent.stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert output.frames == [frame] and output.events[-2:] == ["flush", "close"]
    snap = agent.stats.snapshot()
    assert snap["held"] == 0 and snap["forwarded"] == 1
    assert_balanced(snap)
