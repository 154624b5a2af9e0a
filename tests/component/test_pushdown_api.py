"""``GET /v1/pushdown`` on a running agent: the program, its version, the recorded mode, errors;
its own listener, and a pod answered only about itself (the request's source address)."""

from __future__ import annotations

import asyncio
import http.client
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
    UNKNOWN,
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


def _get(address: tuple[str, int], path: str, source: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*address, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


async def pushdown_address(agent: Agent) -> tuple[str, int]:
    host, _, port = (await get_status(agent))["pushdown"]["listen"].rpartition(":")
    return host, int(port)


async def fetch(agent: Agent, query: str, source: str = KNOWN) -> tuple[int, dict]:  # type: ignore[type-arg]
    """GET push-down from ``source`` (the pod's own address unless a test says otherwise)."""
    address = await pushdown_address(agent)
    code, body = await asyncio.to_thread(_get, address, f"/v1/pushdown?{query}", source)
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
        assert (await fetch(agent, f"ip={UNKNOWN}&vni=5&mode=sniff", source=UNKNOWN))[0] == 404
        assert (await fetch(agent, f"ip={KNOWN}&vni=5&mode=turbo"))[0] == 400
        assert (await fetch(agent, "ip=nope&vni=5&mode=kernel"))[0] == 400


async def test_a_pod_is_answered_only_about_itself() -> None:
    """From another address: 403 whether the asked address is a pod or not (no oracle), no mode
    recorded; the pod itself is answered. Every refusal is counted."""
    settings = make_settings(senders=[f"{KNOWN},5,default/web", "10.0.0.7,7,default/db"], filters=RULES)
    async with running(settings) as agent:
        assert (await fetch(agent, f"ip={KNOWN}&vni=5&mode=kernel", source=UNKNOWN))[0] == 403
        assert (await fetch(agent, "ip=10.0.0.7&vni=7&mode=sniff"))[0] == 403      # another pod
        assert (await fetch(agent, "ip=10.9.9.9&vni=9&mode=sniff"))[0] == 403      # no pod at all
        status = await get_status(agent)
        assert "mode" not in status["pods"]["default/web"] and "mode" not in status["pods"]["default/db"]
        assert (await fetch(agent, f"ip={KNOWN}&vni=5&mode=sniff"))[0] == 200
        status = await get_status(agent)
        assert status["pods"]["default/web"]["mode"] == "sniff"
        assert status["pushdown"]["refused"]["not_the_pod"] == 3 and status["pushdown"]["answered"] == 1


async def test_push_down_and_status_are_two_listeners() -> None:
    """Pods reach push-down; /status and /metrics are on the status listener only (deploy/'s
    NetworkPolicy opens the first to every pod, the second to the node and Prometheus)."""
    async with running(make_settings()) as agent:
        pushdown = await pushdown_address(agent)
        assert pushdown != agent.status_address
        for path in ("/status", "/metrics"):
            assert (await asyncio.to_thread(_get, pushdown, path, KNOWN))[0] == 404
        status_code, _ = await asyncio.to_thread(http_get, agent.status_address, f"/v1/pushdown?ip={KNOWN}")
        assert status_code == 404


def test_ipv4_mapped_sources_count_as_their_ipv4_address() -> None:
    assert pushdown_api.source_address("::ffff:10.0.0.5") == "10.0.0.5"
    assert pushdown_api.source_address("fd00::5") == "fd00::5"
    assert pushdown_api.source_address(None) is None
