"""Shared pieces of the transport tests: certificates, packets, an in-process or child collector."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trustme
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from nodeagent.adapters.transport_out import TransportOutput
from nodeagent.collector.bounds import Limits
from nodeagent.collector.server import Collector
from nodeagent.pods.index import PodInfo
from nodeagent.settings import TransportSettings
from nodeagent.tls import client_context, server_context
from nodeagent.transport.records import Record
from nodeagent.verdict import Direction, Forward
from nodeagent.wire import headers

FAST = TransportSettings(max_delay=0.01, backoff_initial=0.05, backoff_max=0.2, connect_timeout=2.0)
"""A transport output that gives up and retries quickly: the component tests' timing."""

CLIENT = PodInfo(ip="10.0.0.5", vni=5, namespace="shop", name="client")
SERVER = PodInfo(ip="10.0.0.9", vni=9, namespace="shop", name="server")


async def stop_output(out: TransportOutput, task: asyncio.Task[None]) -> None:
    """Close a transport output and end its ``run()`` task, whatever the task made of the close."""
    await out.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def running_output(out: TransportOutput, name: str = "transport") -> AsyncIterator[TransportOutput]:
    """``out.run()`` in a task for the block's duration; closed and ended afterwards."""
    task = asyncio.create_task(out.run(), name=name)
    try:
        yield out
    finally:
        await stop_output(out, task)


class Certs:
    """A CA (trustme), the collector's serving certificate, and one agent client certificate
    (``agent.example``); ``issue_client`` makes more agents."""

    def __init__(self, tmp: Path, ca: trustme.CA | None = None) -> None:
        self.tmp = tmp
        self.ca = ca or trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = str(tmp / "ca.pem")
        self.cert_file = str(tmp / "server.pem")
        self.key_file = str(tmp / "server.key")
        self.ca.cert_pem.write_to_path(self.ca_file)
        cert.cert_chain_pems[0].write_to_path(self.cert_file)
        cert.private_key_pem.write_to_path(self.key_file)
        client = self.ca.issue_cert("agent.example")
        self.client_cert = str(tmp / "client.pem")
        self.client_key = str(tmp / "client.key")
        client.cert_chain_pems[0].write_to_path(self.client_cert)
        client.private_key_pem.write_to_path(self.client_key)

    def issue_client(self, name: str) -> tuple[str, str]:
        """Another agent's certificate and key files (common name ``name``)."""
        cert = self.ca.issue_cert(name)
        paths = str(self.tmp / f"{name}.pem"), str(self.tmp / f"{name}.key")
        cert.cert_chain_pems[0].write_to_path(paths[0])
        cert.private_key_pem.write_to_path(paths[1])
        return paths

    def agent_context(self, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
        """The agent's TLS context: the collector verified, the agent's certificate presented."""
        cert_file, key_file = cert or (self.client_cert, self.client_key)
        return client_context(self.ca_file, cert_file, key_file)


def frame(sport: int, dport: int, reply: bool = False, payload: bytes = b"x" * 100,
          udp: bool = False) -> bytes:
    a, b = CLIENT.ip, SERVER.ip
    l4: Any = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport, seq=7)
    if reply:
        a, b = b, a
        l4 = UDP(sport=dport, dport=sport) if udp else TCP(sport=dport, dport=sport, seq=9)
    return bytes(Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:09") / IP(src=a, dst=b) / l4 / payload)


def forward(raw: bytes, now: float) -> Forward:
    meta = headers.decode(raw)
    pod, direction = (CLIENT, Direction.EGRESS) if meta.src == CLIENT.addr else (SERVER, Direction.EGRESS)
    return Forward(memoryview(raw), meta, pod.vni, pod, direction, len(raw), now)


def flow_key(raw: bytes) -> tuple[Any, ...]:
    m = headers.decode(raw)
    return (m.proto, *sorted([(m.src, m.sport), (m.dst, m.dport)]))


class RecordingSink:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.agents: list[str] = []
        """The agent each record was delivered for (the collector's name for it)."""

    def deliver(self, records: Sequence[Record], agent: str) -> None:
        self.records.extend(records)
        self.agents.extend(agent for _ in records)

    def close(self) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {"kind": "recording", "packets": len(self.records)}


MUTUAL = "mutual"


async def start_collector(certs: Certs, sink: Any, client_ca: str | None = MUTUAL, port: int = 0,
                          limits: Limits | None = None) -> tuple[Collector, int]:
    """An in-process collector on loopback; by default it requires the agents' certificates, as
    ``nodeagent collect`` does (``client_ca=None``: client authentication off)."""
    ca = certs.ca_file if client_ca == MUTUAL else client_ca
    collector = Collector([sink], server_context(certs.cert_file, certs.key_file, ca), limits)
    _, port = await collector.start("127.0.0.1", port)
    return collector, port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChildCollector:
    """``python -m nodeagent.collector`` as a child process (so it can be killed for real)."""

    def __init__(self, certs: Certs, port: int, pcap_dir: Path, extra: Sequence[str] = ()) -> None:
        self.cmd = [sys.executable, "-m", "nodeagent.collector", "--cert", certs.cert_file,
                    "--key", certs.key_file, "--client-ca", certs.ca_file,
                    "--listen", f"127.0.0.1:{port}", "--status", "",
                    "--pcap-dir", str(pcap_dir), *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()   # "listening HOST:PORT" once bound
        if not line.startswith(b"listening") or time.monotonic() > deadline:
            self.stop()
            raise AssertionError(f"collector did not start: {line!r}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def pcapng_packets(path: Path) -> list[tuple[int, bytes]]:
    """(interface id, frame) of every Enhanced Packet Block; a truncated tail (killed writer) ends it."""
    import struct

    data = path.read_bytes()
    out, offset = [], 0
    while offset + 12 <= len(data):
        kind, total = struct.unpack_from("<II", data, offset)
        if total < 12 or offset + total > len(data):
            break
        if kind == 6:
            iface, _hi, _lo, cap, _orig = struct.unpack_from("<IIIII", data, offset + 8)
            out.append((iface, data[offset + 28:offset + 28 + cap]))
        offset += total
    return out
