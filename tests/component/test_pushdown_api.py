"""``GET /v1/pushdown`` on a running agent: the program, its version, the recorded mode, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nodeagent.app import Agent
from nodeagent.settings import Settings
from nodeagent.web import pushdown_api
from sidecar_lite import cbpf
from tests import cbpf_reference
from tests.component.agent_kit import (
    KNOWN,
    get_status,
    http_get,
    make_settings,
    send_tunnel,
    sender,
    tunnel_port,
    udp_frame,
)
from tests.waiting import wait_for

RULES = {"rules": [{"action": "exclude", "ports": [53]}]}


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Agent]:
    """``agent_kit.running`` plus the push-down route (``app.run`` installs it via its extensions)."""
    agent = Agent(settings)
    pushdown_api.install(agent)
    task = asyncio.create_task(agent.run(handle_signals=False), name="agent-under-test")
    try:
        await wait_for(lambda: agent.is_ready() or task.done(), what="agent ready")
        if task.done():
            task.result()
        yield agent
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def fetch(agent, query: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    code, body = await asyncio.to_thread(http_get, agent.status_address, f"/v1/pushdown?{query}")
    return code, json.loads(body)


async def test_sidecar_gets_a_program_and_its_mode_is_recorded() -> None:
    settings = make_settings(senders=[f"{KNOWN},5,default/web"], filters=RULES)
    async with running(settings) as agent:
        code, body = await fetch(agent, f"ip={KNOWN}&vni=5&mode=kernel")
        assert code == 200 and set(body) == {"version", "bpf", "tunnel"}
        assert body["tunnel"] is False  # nothing received from the pod yet
        program = cbpf.parse(body["bpf"], cbpf.MAX_PUSHED_INSNS)  # the sidecar's intake
        dns = udp_frame(src=KNOWN, dst="10.96.0.10", dport=53)
        ntp = udp_frame(src=KNOWN, dst="10.96.0.10", dport=123)
        assert cbpf_reference.run(program, dns) == 0 and cbpf_reference.run(program, ntp) != 0
        again = await fetch(agent, f"ip={KNOWN}&vni=0x5&mode=kernel")
        assert again[1]["version"] == body["version"]
        status = await get_status(agent)
        assert status["pods"]["default/web"]["mode"] == "kernel"
        # The agent still enforces the rule for a sidecar that ignores the program.
        sock = sender(KNOWN)
        send_tunnel(sock, tunnel_port(agent), dns)
        await wait_for(lambda: agent.stats.total.received == 1, what="one datagram")
        sock.close()
        assert (await get_status(agent))["drops"]["filtered"] == 1
        # The readiness probe's question: no mode, nothing recorded, the tunnel now received.
        code, probe = await fetch(agent, f"ip={KNOWN}&vni=5&check=1")
        assert code == 200 and probe["tunnel"] is True
        assert (await get_status(agent))["pods"]["default/web"]["mode"] == "kernel"
        assert (await fetch(agent, f"ip={KNOWN}&vni=5"))[0] == 400  # a poll without a mode


async def test_no_rules_is_null_and_bad_queries_are_rejected() -> None:
    async with running(make_settings()) as agent:
        code, body = await fetch(agent, f"ip={KNOWN}&vni=5&mode=sniff")
        assert code == 200 and body["bpf"] is None
        assert (await fetch(agent, f"ip={KNOWN}&vni=6&mode=sniff"))[0] == 404
        assert (await fetch(agent, "ip=10.9.9.9&vni=5&mode=sniff"))[0] == 404
        assert (await fetch(agent, f"ip={KNOWN}&vni=5&mode=turbo"))[0] == 400
        assert (await fetch(agent, "ip=nope&vni=5&mode=kernel"))[0] == 400
