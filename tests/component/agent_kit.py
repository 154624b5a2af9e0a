"""Helpers for the node agent's component tests: a running agent on loopback, packets, polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from nodeagent import app
from nodeagent import settings as settings_mod
from nodeagent.app import Agent
from nodeagent.settings import Settings
from nodeagent.wire import headers, normalize, vxlan
from tests.waiting import wait_for

MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
KNOWN, UNKNOWN = "127.0.0.1", "127.0.0.2"
"""Tunnel sources: the known sender and an address no sender has (both loopback)."""
POD_IP = "10.0.0.5"
"""The known sender's address inside its frames: the pod is declared with both (``127.0.0.1+10.0.0.5``,
its tunnel comes from loopback), so its frames are its own, not foreign."""


def make_settings(tmp_path: Any = None, **groups: Any) -> Settings:
    base: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "status": {"host": "127.0.0.1", "port": 0},
        "pushdown": {"host": "127.0.0.1", "port": 0},
        "senders": [f"{KNOWN}+{POD_IP},5,default/web"],
        "dedup": {"enabled": False},
        "cutoff": {"enabled": False},
        "log": {"drop_interval": 60},
    }
    return settings_mod.load(settings_mod.merge(base, groups))


@contextlib.asynccontextmanager
async def running(settings: Settings, *, extensions: bool = False) -> AsyncIterator[Agent]:
    """An agent running in this loop (no signal handlers); stopped and checked for exit 0 after.
    ``extensions``: also install what ``nodeagent run`` installs (push-down, page, capture...)."""
    agent = Agent(settings)
    if extensions:
        app._install_extensions(agent)
    task = asyncio.create_task(agent.run(handle_signals=False), name="agent-under-test")
    try:
        await wait_for(lambda: agent.is_ready() or task.done(), what="agent ready")
        if task.done():
            task.result()  # raises the startup error
        yield agent
    finally:
        agent.stop()
        code = await asyncio.wait_for(task, 10)
        assert code == 0


def tunnel_port(agent: Agent) -> int:
    assert agent.receiver.address is not None
    return agent.receiver.address[1]


def sender(source: str = KNOWN) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    return sock


def tcp_frame(
    payload: bytes = b"hello",
    src: str = "10.0.0.5",
    dst: str = "10.0.0.9",
    sport: int = 40000,
    dport: int = 80,
    seq: int = 1,
    flags: str = "PA",
) -> bytes:
    return bytes(
        Ether(src=MAC1, dst=MAC2)
        / IP(src=src, dst=dst)
        / TCP(sport=sport, dport=dport, seq=seq, flags=flags)
        / payload
    )


def udp_frame(payload: bytes = b"q", src: str = "10.0.0.5", dst: str = "10.0.0.9", dport: int = 53) -> bytes:
    return bytes(Ether(src=MAC1, dst=MAC2) / IP(src=src, dst=dst) / UDP(sport=5000, dport=dport) / payload)


def with_partial_checksum(frame: bytes) -> bytes:
    """The frame as tc mirred copies locally generated TCP/UDP: checksum = pseudo-header sum."""
    meta = headers.decode(frame)
    out = bytearray(frame)
    partial = normalize.pseudo_sum(meta, meta.end - meta.l4) or 0xFFFF
    struct.pack_into("!H", out, normalize.checksum_offset(meta), partial)
    return bytes(out)


def send_tunnel(sock: socket.socket, port: int, frame: bytes, vni: int = 5, count: int = 1) -> None:
    datagram = vxlan.encode(vni, frame)
    for _ in range(count):
        sock.sendto(datagram, ("127.0.0.1", port))


def http_get(address: tuple[str, int], path: str) -> tuple[int, str]:
    """Blocking GET (call through ``asyncio.to_thread`` from a test running the agent in-process)."""
    try:
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get_status(agent: Agent) -> dict[str, Any]:
    assert agent.status_address is not None
    code, body = await asyncio.to_thread(http_get, agent.status_address, "/status")
    assert code == 200
    return json.loads(body)



