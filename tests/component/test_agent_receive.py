"""The agent on loopback: tunnels from a known and an unknown sender, /status, /metrics, /readyz."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.books import assert_balanced, balances
from tests.component.agent_kit import (
    KNOWN,
    POD_IP,
    UNKNOWN,
    get_status,
    http_get,
    make_settings,
    running,
    send_tunnel,
    sender,
    tcp_frame,
    tunnel_port,
)
from tests.waiting import wait_for


@pytest.mark.parametrize("recvmmsg", [True, False], ids=["recvmmsg", "recvfrom_into"])
async def test_known_sender_is_forwarded_and_everything_else_is_a_counted_drop(recvmmsg):
    async with running(make_settings(listen={"recvmmsg": recvmmsg})) as agent:
        port = tunnel_port(agent)
        good, stranger = sender(KNOWN), sender(UNKNOWN)
        send_tunnel(good, port, tcp_frame(), vni=5, count=20)
        send_tunnel(good, port, tcp_frame(), vni=6, count=3)  # right address, wrong VNI
        good.sendto(b"\x08\x00\x00\x00\x00\x00\x05\x00" + b"\x00" * 10, ("127.0.0.1", port))  # truncated
        send_tunnel(stranger, port, tcp_frame(), vni=5, count=7)  # not a known pod
        await wait_for(lambda: agent.stats.total.received == 31, what="31 datagrams")
        status = await get_status(agent)
    assert_balanced(status)
    assert status["received"] == 31 and status["forwarded"] == 20
    assert status["drops"]["wrong_vni"] == 3 and status["drops"]["malformed"] == 1
    assert status["drops"]["unknown_sender"] == 7
    web = status["pods"]["default/web"]
    assert web["received"] == 24 and web["forwarded"] == 20
    assert balances(web)
    assert status["malformed"]["first"].startswith(f"{KNOWN}: vxlan: shorter")
    assert status["listen"] == f"127.0.0.1:{port}" and status["senders"] == 1
    assert isinstance(status["socket"]["kernel_drops"], int)
    good.close()
    stranger.close()


async def test_status_invariant_holds_while_traffic_flows():
    async with running(make_settings()) as agent:
        port = tunnel_port(agent)
        good, stranger = sender(KNOWN), sender(UNKNOWN)
        for _ in range(10):
            send_tunnel(good, port, tcp_frame(), count=50)
            send_tunnel(stranger, port, tcp_frame(), count=10)
            status = await get_status(agent)  # served between two loop iterations of the receiver
            assert_balanced(status)
        await wait_for(lambda: agent.stats.total.received == 600, what="600 datagrams")
        assert_balanced(await get_status(agent))
        good.close()
        stranger.close()


async def test_known_senders_are_listed_before_their_first_packet_and_mode_is_shown():
    settings = make_settings(senders=[f"{KNOWN}+{POD_IP},5,default/web", "10.0.0.6,6,default/db"])
    async with running(settings) as agent:
        agent.report_mode("default/db", "sniff")
        status = await get_status(agent)
    assert status["pods"]["default/db"]["received"] == 0
    assert status["pods"]["default/db"]["mode"] == "sniff"
    assert "mode" not in status["pods"]["default/web"]


async def test_metrics_expose_totals_drops_and_pods():
    async with running(make_settings()) as agent:
        port = tunnel_port(agent)
        good, stranger = sender(KNOWN), sender(UNKNOWN)
        send_tunnel(good, port, tcp_frame(), count=4)
        send_tunnel(stranger, port, tcp_frame(), count=2)
        await wait_for(lambda: agent.stats.total.received == 6)
        code, text = await asyncio.to_thread(http_get, agent.status_address, "/metrics")
        good.close()
        stranger.close()
    assert code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("podmirror_packets_received_total", ())] == 6
    assert samples[("podmirror_packets_forwarded_total", ())] == 4
    assert samples[("podmirror_packets_dropped_total", (("reason", "unknown_sender"),))] == 2
    assert samples[("podmirror_pod_packets_received_total", (("namespace", "default"), ("pod", "web")))] == 4
    assert ("podmirror_socket_kernel_drops_total", ()) in samples
    # each agent has its own registry: a scrape here never includes another agent's or the global one
    assert not any(name.startswith("python_") or name.startswith("process_") for name, _ in samples)


async def test_health_and_readiness():
    async with running(make_settings()) as agent:
        address = agent.status_address
        assert await asyncio.to_thread(http_get, address, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(http_get, address, "/readyz") == (200, "ready\n")
        agent.receiver.stop()  # as during shutdown: no longer receiving
        code, _ = await asyncio.to_thread(http_get, address, "/readyz")
        assert code == 503


async def test_ipv6_listener_accepts_an_ipv6_sender():
    settings = make_settings(listen="[::1]:0", senders=["::1+10.0.0.5,9,default/v6"])
    async with running(settings) as agent:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        from nodeagent.wire import vxlan

        sock.sendto(vxlan.encode(9, tcp_frame()), ("::1", tunnel_port(agent)))
        await wait_for(lambda: agent.stats.total.forwarded == 1, what="IPv6 datagram forwarded")
        status = await get_status(agent)
        sock.close()
    assert status["pods"]["default/v6"]["forwarded"] == 1
    assert json.dumps(status)  # JSON-able


async def test_64k_datagram_arrives_whole():
    async with running(make_settings(normalize={"segment": False, "fix_checksums": False})) as agent:
        big = tcp_frame(b"x" * 65000)
        good = sender(KNOWN)
        send_tunnel(good, tunnel_port(agent), big)
        await wait_for(lambda: agent.stats.total.forwarded == 1, what="a 64 KB datagram")
        assert agent.stats.total.forwarded_bytes == len(big) + 8
        good.close()


@pytest.mark.parametrize("recvmmsg", [True, False], ids=["recvmmsg", "recvfrom_into"])
async def test_dual_stack_listener_matches_ipv4_senders(recvmmsg):
    async with running(make_settings(listen={"host": "::", "port": 0, "recvmmsg": recvmmsg})) as agent:
        good = sender(KNOWN)
        send_tunnel(good, tunnel_port(agent), tcp_frame(), count=3)
        await wait_for(lambda: agent.stats.total.received == 3, what="3 datagrams")
        good.close()
    assert agent.stats.total.forwarded == 3


async def test_a_full_batch_of_datagrams_of_every_size_is_received_intact():
    """More datagrams than one recvmmsg call takes, of varying sizes: each arrives whole, in order."""
    sizes = [60 + (i * 997) % 9000 for i in range(100)]
    seen: list[bytes] = []
    async with running(make_settings()) as agent:
        offer = agent.fanout.offer
        agent.receiver._offer = lambda fwd: (seen.append(bytes(fwd.frame)), offer(fwd))  # type: ignore[assignment]
        good = sender(KNOWN)
        frames = [tcp_frame(bytes([i]) * (size - 54), sport=1000 + i) for i, size in enumerate(sizes)]
        for frame in frames:
            send_tunnel(good, tunnel_port(agent), frame)
        await wait_for(lambda: agent.stats.total.received == 100, what="100 datagrams")
        good.close()
    assert seen == frames


async def test_kernel_socket_drops_are_reported_when_the_loop_falls_behind():
    """A small receive buffer and a loop that is busy: the kernel drops, /status and /metrics say so."""
    async with running(make_settings(listen={"rcvbuf": 65536})) as agent:
        good = sender(KNOWN)
        # The loop does not run while this coroutine sends, so the socket queue overflows.
        send_tunnel(good, tunnel_port(agent), tcp_frame(), count=3000)
        await wait_for(
            lambda: agent.stats.total.received + agent.status()["socket"]["kernel_drops"] == 3000,
            what="every datagram received or dropped by the kernel",
        )
        status = await get_status(agent)
        code, text = await asyncio.to_thread(http_get, agent.status_address, "/metrics")
        good.close()
    assert status["socket"]["kernel_drops"] > 0
    assert_balanced(status)
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert code == 200 and samples["podmirror_socket_kernel_drops_total"] == status["socket"]["kernel_drops"]


async def test_a_drop_reason_is_logged_once_then_rate_limited(caplog):
    caplog.set_level("WARNING", logger="nodeagent.adapters.receiver")
    async with running(make_settings()) as agent:
        stranger = sender(UNKNOWN)
        send_tunnel(stranger, tunnel_port(agent), tcp_frame(), count=100)
        await wait_for(lambda: agent.stats.total.received == 100)
        stranger.close()
    lines = [r.getMessage() for r in caplog.records if "dropped a datagram" in r.getMessage()]
    assert lines == [f"dropped a datagram from {UNKNOWN}: unknown_sender"]
