"""VXLAN output across two sensors: flow affinity, outer source ports, hold-down and return."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import defaultdict

import pytest

from nodeagent.adapters import vxlan_out
from nodeagent.adapters.vxlan_out import HOLDDOWN_MIN, VxlanOutput
from nodeagent.settings import SensorSettings
from nodeagent.wire import vxlan
from tests.component.transport_kit import flow_key, forward, frame
from tests.waiting import wait_for

FLOWS = [(31000 + i, 80, i % 3 == 0) for i in range(120)]


def sensor_socket(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.setblocking(False)
    return s


def drain(sock: socket.socket) -> list[tuple[bytes, int]]:
    out = []
    while True:
        try:
            data, addr = sock.recvfrom(70000)
        except BlockingIOError:
            return out
        out.append((bytes(vxlan.decode(data).inner), addr[1]))


def one_round(out: VxlanOutput, now: float) -> None:
    for sport, dport, udp in FLOWS:
        for reply in (False, True):
            out.offer(forward(frame(sport, dport, reply=reply, udp=udp), now))


async def test_each_flow_goes_to_one_sensor_from_one_source_port_and_moves_only_while_down() -> None:
    a, b = sensor_socket(), sensor_socket()
    port_b = b.getsockname()[1]
    out = VxlanOutput([SensorSettings("127.0.0.1", a.getsockname()[1]), SensorSettings("127.0.0.1", port_b)])
    await out.open()
    try:
        one_round(out, 0.0)
        where: dict[tuple, set[str]] = defaultdict(set)  # type: ignore[type-arg]
        ports: dict[tuple, set[int]] = defaultdict(set)  # type: ignore[type-arg]
        for name, sock in (("a", a), ("b", b)):
            for inner, sport in drain(sock):
                where[flow_key(inner)].add(name)
                ports[flow_key(inner)].add(sport)
        assert len(where) == len(FLOWS)
        assert all(len(s) == 1 for s in where.values())           # both directions at one sensor
        assert all(len(p) == 1 for p in ports.values())           # ... from one outer source port
        assert len({p for ps in ports.values() for p in ps}) > 4   # flows spread over the port pool
        first = {k: next(iter(v)) for k, v in where.items()}
        assert 0.25 < sum(v == "b" for v in first.values()) / len(FLOWS) < 0.75

        b.close()                                                   # sensor b is gone: ICMP refused
        for _ in range(3):
            one_round(out, 1.0)
        assert out.state()["sensors"][1]["state"] == "down"
        drain(a)
        one_round(out, 1.5)
        moved = {flow_key(inner) for inner, _ in drain(a)}
        assert moved == set(first)                                  # everything at a while b is down

        b = sensor_socket(port_b)                                   # b is back
        one_round(out, 1.0 + HOLDDOWN_MIN + 0.1)                    # hold-down over: b takes traffic
        back = {flow_key(inner) for inner, _ in drain(b)}
        assert back == {k for k, v in first.items() if v == "b"}    # exactly its own flows return
        assert out.state()["sensors"][1]["state"] == "up"
    finally:
        await out.close()
        a.close()
        b.close()


async def test_a_configured_tcp_probe_decides_sensor_health(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vxlan_out, "PROBE_INTERVAL", 0.05)
    a, b = sensor_socket(), sensor_socket()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        probe_port = probe.getsockname()[1]          # nothing listens yet: b is down
    out = VxlanOutput([SensorSettings("127.0.0.1", a.getsockname()[1]),
                       SensorSettings("127.0.0.1", b.getsockname()[1], probe_port=probe_port)])
    await out.open()
    task = asyncio.create_task(out.run(), name="probe")
    listener: socket.socket | None = None
    try:
        await wait_for(lambda: not out.sensors[1].up, 5, "b marked down by its probe")
        loop = asyncio.get_running_loop()
        one_round(out, loop.time())
        assert drain(b) == [] and len(drain(a)) == 2 * len(FLOWS)   # everything at a
        listener = socket.create_server(("127.0.0.1", probe_port))
        await wait_for(lambda: out.sensors[1].up, 5, "b back once its probe port answers")
        one_round(out, loop.time())
        assert drain(b)                                              # b takes its flows again
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if listener is not None:
            listener.close()
        await out.close()
        a.close()
        b.close()
