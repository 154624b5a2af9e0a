"""A running agent with a container selection on a static sender: the agent drops the other
containers' traffic, the push-down program carries the same restriction, /metrics shows it, and
the flow tables' sizes and evictions."""

from __future__ import annotations

import asyncio
import functools

from prometheus_client.parser import text_string_to_metric_families

from sidecar_lite import cbpf
from tests import cbpf_reference
from tests.books import assert_balanced
from tests.component.agent_kit import (
    KNOWN,
    POD_IP,
    get_status,
    http_get,
    make_settings,
    send_tunnel,
    sender,
    tcp_frame,
    tunnel_port,
    udp_frame,
)
from tests.component.test_pushdown_api import fetch, running
from tests.waiting import wait_for

PEER = "10.0.0.9"


def tcp_from_pod(sport: int, seq: int) -> bytes:
    """A pure ACK: dedup keeps its digest (a segment with payload would be one byte range)."""
    return tcp_frame(b"", src=KNOWN, dst=PEER, sport=sport, dport=40000, seq=seq, flags="A")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_selected_ports_at_the_agent_in_the_push_down_and_in_metrics() -> None:
    # A second sender on the node: with one monitored pod no copy can have a twin and the vantage
    # stage spares content dedup its bookkeeping; here its table and evictions are what is shown.
    settings = make_settings(senders=[f"{KNOWN}+{POD_IP},5,default/web,8080", "10.0.0.6,6,default/db"],
                             dedup={"enabled": True, "capacity": 4, "window": 5})
    async with running(settings) as agent:
        code, body = await fetch(agent, f"ip={KNOWN}&vni=5&mode=sniff")
        assert code == 200 and body["bpf"] is not None
        match = functools.partial(cbpf_reference.run, cbpf.parse(body["bpf"], cbpf.MAX_PUSHED_INSNS))
        assert match(tcp_from_pod(8080, 1)) and not match(tcp_from_pod(9090, 1))

        sock = sender(KNOWN)
        port = tunnel_port(agent)
        # Ten distinct packets through a dedup table of 4 (a 5 s window: none expires): 6 evictions.
        for seq in range(10):
            send_tunnel(sock, port, tcp_from_pod(8080, seq))
        send_tunnel(sock, port, tcp_from_pod(9090, 99))
        send_tunnel(sock, port, udp_frame(src=PEER, dst=KNOWN, dport=53))
        await wait_for(lambda: agent.stats.total.received == 12, what="twelve datagrams")
        sock.close()

        status = await get_status(agent)
        assert_balanced(status)
        assert status["forwarded"] == 10 and status["drops"]["other_container"] == 2
        assert status["pipeline"]["dedup"] == {"entries": 4, "evictions": 6}

        code, text = await asyncio.to_thread(http_get, agent.status_address, "/metrics")
        assert code == 200
        values = samples(text)
        assert values[("podmirror_packets_dropped_total", (("reason", "other_container"),))] == 2
        assert values[("podmirror_dedup_evictions_total", ())] == 6
        assert values[("podmirror_dedup_entries", ())] == 4
        assert ("podmirror_vantage_entries", ()) in values
        assert ("podmirror_vantage_evictions_total", ()) in values
        assert status["pods"]["default/web"]["drops"]["other_container"] == 2
        assert status["pods"]["default/web"]["ports"] == [8080]
