"""Two collectors: every flow entirely at one of them; losing one moves only its flows, and back."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

from nodeagent.adapters.transport_out import TransportOutput
from nodeagent.settings import TransportSettings
from tests.component.transport_kit import (
    Certs,
    RecordingSink,
    flow_key,
    forward,
    frame,
    start_collector,
    stop_output,
)
from tests.waiting import wait_for

OPTS = TransportSettings(max_delay=0.01, backoff_initial=0.05, backoff_max=0.3, connect_timeout=2.0)
FLOWS = [(30000 + i, 80 + i % 3, i % 4 == 0) for i in range(200)]   # (sport, dport, udp)


def one_round(out: TransportOutput, now: float, tag: bytes) -> int:
    n = 0
    for sport, dport, udp in FLOWS:
        for reply in (False, True, False, True):
            out.offer(forward(frame(sport, dport, reply=reply, udp=udp, payload=tag * 50), now))
            n += 1
    return n


def owners(sinks: dict[str, RecordingSink], tag: bytes) -> dict[tuple, set[str]]:  # type: ignore[type-arg]
    where: dict[tuple, set[str]] = defaultdict(set)  # type: ignore[type-arg]
    for name, sink in sinks.items():
        for r in sink.records:
            if r.frame.endswith(tag * 50):
                where[flow_key(r.frame)].add(name)
    return where


async def test_every_flow_lands_entirely_at_one_collector_and_moves_only_with_its_collector(
        tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    sinks = {"a": RecordingSink(), "b": RecordingSink()}
    ca, pa = await start_collector(certs, sinks["a"])
    cb, pb = await start_collector(certs, sinks["b"])
    collectors = {"a": ca, "b": cb}
    out = TransportOutput([("127.0.0.1", pa), ("127.0.0.1", pb)], certs.agent_context(), OPTS)
    name_of = {f"127.0.0.1:{pa}": "a", f"127.0.0.1:{pb}": "b"}
    runner = asyncio.create_task(out.run(), name="transport")
    loop = asyncio.get_running_loop()
    try:
        sent = one_round(out, loop.time(), b"1")
        await wait_for(lambda: out.state()["delivered"] == sent, 10, "round 1 delivered")
        first = owners(sinks, b"1")
        assert len(first) == len(FLOWS)
        assert all(len(where) == 1 for where in first.values())     # both directions, one collector
        at_b = {k for k, where in first.items() if where == {"b"}}
        assert 0.3 < len(at_b) / len(FLOWS) < 0.7                       # both collectors share the load

        await collectors["b"].stop()                                     # collector b goes away
        link_b = out.links[f"127.0.0.1:{pb}"]
        await wait_for(lambda: link_b.status == "down", 10, "collector b marked down")
        sent += one_round(out, loop.time(), b"2")
        await wait_for(lambda: len(owners(sinks, b"2")) == len(FLOWS), 10, "round 2 at collector a")
        second = owners(sinks, b"2")
        assert all(where == {"a"} for where in second.values())
        # nothing that was at a moved (it stayed at a); only b's flows moved

        collectors["b"], _ = await start_collector(certs, sinks["b"], port=pb)   # b comes back
        await wait_for(lambda: link_b.status == "up", 15, "collector b reconnected")
        one_round(out, loop.time(), b"3")
        await wait_for(lambda: len(owners(sinks, b"3")) == len(FLOWS), 10, "round 3 delivered")
        third = owners(sinks, b"3")
        assert third == first                                            # b's flows came back to b
        assert set(name_of.values()) == {"a", "b"}
    finally:
        await stop_output(out, runner)
        for c in collectors.values():
            await c.stop()
