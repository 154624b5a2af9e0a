"""The worker pool on loopback: N worker processes under the agent, steered by the kernel.

Two monitored pods (tunnels from 127.0.0.1 and 127.0.0.2, the pods' own addresses inside the
packets too) talk directly and through a ClusterIP (the client's copy shows the VIP and port 80,
the server's copy the pod and port 8080), so every flow arrives as four copies from two sidecars.
The pool must put every copy of a flow on one worker (read back from the per-worker pcap files),
sum the workers in one ``/status`` and ``/metrics``, relay forwarded packets to a capture
subscriber, push pod table changes, restart a killed worker without losing its books, and exit 0
with everything flushed on SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from nodeagent.app import Agent
from nodeagent.capture.filter import CaptureFilter
from nodeagent.pods.index import PodInfo
from nodeagent.wire import headers, pcap, vxlan
from tests.books import assert_balanced
from tests.component.agent_kit import get_status, http_get, make_settings
from tests.waiting import poll, wait_for

CLIENT, SERVER, LATE, VIP = "127.0.0.1", "127.0.0.2", "127.0.0.3", "10.96.0.10"
VNI = {CLIENT: 1, SERVER: 2, LATE: 3}
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
ROOT = Path(__file__).resolve().parents[2]


def pool_settings(tmp_path: Path, **groups: Any) -> Any:
    """The defaults a user gets (dedup, cutoff on), two senders, pcap output in ``tmp_path``."""
    return make_settings(senders=[f"{CLIENT},auto,default/client", f"{SERVER},auto,default/server"],
                         dedup={"enabled": True}, cutoff={"enabled": True},
                         outputs={"pcap": {"dir": str(tmp_path)}}, **groups)


def flow_copies(cport: int, payload: bytes) -> list[tuple[str, bytes]]:
    """One request and its answer as both sidecars mirror them (the client's copy before DNAT)."""
    def frame(src: str, dst: str, sport: int, dport: int) -> bytes:
        tcp = TCP(sport=sport, dport=dport, flags="PA")
        return bytes(Ether(**MACS) / IP(src=src, dst=dst) / tcp / payload)
    return [(CLIENT, frame(CLIENT, VIP, cport, 80)), (CLIENT, frame(VIP, CLIENT, 80, cport)),
            (SERVER, frame(CLIENT, SERVER, cport, 8080)), (SERVER, frame(SERVER, CLIENT, 8080, cport))]


class Sidecars:
    """One UDP socket per pod address, sending VXLAN like that pod's sidecar."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.socks: dict[str, socket.socket] = {}
        self.sent = 0

    def send(self, source: str, frame: bytes) -> None:
        if source not in self.socks:
            self.socks[source] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.socks[source].bind((source, 0))
        self.socks[source].sendto(vxlan.encode(VNI[source], frame), ("127.0.0.1", self.port))
        self.sent += 1

    def flows(self, ports: range, payload: bytes = b"GET / HTTP/1.1\r\n\r\n") -> None:
        for cport in ports:
            for source, frame in flow_copies(cport, payload):
                self.send(source, frame)

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()


def client_ports_by_file(directory: Path) -> dict[int, set[str]]:
    """Client port (the higher port) -> the pcap files that hold a packet of that flow."""
    seen: dict[int, set[str]] = collections.defaultdict(set)
    for path in directory.glob("*.pcap"):
        for record in pcap.read(path.read_bytes())[1]:
            meta = headers.decode(record.data)
            if meta.proto == 6:
                seen[max(meta.sport, meta.dport)].add(path.name.split("-")[1])
    return seen


async def running_pool(settings: Any, workers: int = 2) -> tuple[Agent, asyncio.Task[int]]:
    agent = Agent(settings, workers=workers)
    task = asyncio.create_task(agent.run(handle_signals=False), name="pool-under-test")
    await wait_for(lambda: agent.is_ready() or task.done(), timeout=60, what="pool ready")
    if task.done():
        task.result()
    return agent, task


async def stop_pool(agent: Agent, task: asyncio.Task[int]) -> None:
    agent.stop()
    assert await asyncio.wait_for(task, 60) == 0


async def test_every_copy_of_a_flow_on_one_worker_and_one_status_for_the_node(tmp_path: Path) -> None:
    agent, task = await running_pool(pool_settings(tmp_path))
    assert agent.pool is not None and agent.pool.address is not None
    sidecars = Sidecars(agent.pool.address[1])
    capture = agent.open_capture(CaptureFilter(pods=("default/client",)), 10_000)
    pool = agent.pool
    await wait_for(lambda: pool.captures.workers.get(capture.ident) == {0, 1}, what="both workers capturing")
    try:
        sidecars.flows(range(40000, 40400, 2))
        ping = bytes(Ether(**MACS) / IP(src=CLIENT, dst=SERVER) / ICMP(id=9))
        for _ in range(5):
            sidecars.send(CLIENT, ping)
        await _wait_received(agent, sidecars.sent)
        await wait_for(lambda: len(pool.seen_times) == 2, what="both pods' liveness at the supervisor")
        seen = dict(pool.seen_times)
        status = await get_status(agent)
        _, metrics = await asyncio.to_thread(http_get, agent.status_address, "/metrics")
        records: list = []
        while len(records) < status["pods"]["default/client"]["forwarded"]:
            records += await asyncio.wait_for(capture.batch(), 10)
    finally:
        capture.close()
        sidecars.close()
        await stop_pool(agent, task)
    workers = status["workers"]
    assert status["received"] == sidecars.sent
    assert_balanced(status)
    assert [w["index"] for w in workers] == [0, 1] and all(w["state"] == "running" for w in workers)
    assert sum(w["received"] for w in workers) == status["received"]
    assert min(w["received"] for w in workers) > 0.25 * sidecars.sent, "the flows spread over both"
    assert status["pods"]["default/client"]["received"] + status["pods"]["default/server"]["received"] == 805
    assert 'podmirror_worker_packets_received_total{worker="1"}' in metrics
    assert f"podmirror_packets_received_total {float(sidecars.sent)}" in metrics
    assert {r.pod for r in records} == {"default/client"} and capture.total_dropped == 0
    split = {port: files for port, files in client_ports_by_file(tmp_path).items() if len(files) > 1}
    assert split == {}, "copies of one flow written by two workers"
    assert {f.name.split("-")[1] for f in tmp_path.glob("*.pcap")} == {"w0", "w1"}
    assert set(seen) == {"default/client", "default/server"}, "liveness relayed between the workers"


async def test_pod_table_changes_reach_every_worker(tmp_path: Path) -> None:
    agent, task = await running_pool(pool_settings(tmp_path))
    assert agent.pool is not None and agent.pool.address is not None
    sidecars = Sidecars(agent.pool.address[1])
    try:
        late = [bytes(Ether(**MACS) / IP(src=LATE, dst="10.0.0.9") / TCP(sport=p, dport=80)) for p in
                range(41000, 41100)]
        for frame in late:
            sidecars.send(LATE, frame)
        await _wait_received(agent, len(late))
        assert (await get_status(agent))["drops"]["unknown_sender"] == len(late)
        agent.pods.add(PodInfo(LATE, VNI[LATE], "default", "late"))
        await wait_for(lambda: agent.pool is not None and agent.pool._table_version == agent.pods.version,
                       what="the change pushed")
        for frame in late:
            sidecars.send(LATE, frame)
        await _wait_received(agent, 2 * len(late))
        status = await get_status(agent)
    finally:
        sidecars.close()
        await stop_pool(agent, task)
    assert status["pods"]["default/late"]["forwarded"] == len(late)
    assert all(w["forwarded"] > 0 for w in status["workers"]), "both workers know the new pod"


async def test_a_killed_worker_is_restarted_and_its_counts_stay_in_the_totals(tmp_path: Path) -> None:
    agent, task = await running_pool(pool_settings(tmp_path))
    assert agent.pool is not None and agent.pool.address is not None
    sidecars = Sidecars(agent.pool.address[1])
    try:
        sidecars.flows(range(42000, 42200, 2))
        await _wait_received(agent, sidecars.sent)
        before = await get_status(agent)
        victim = before["workers"][1]
        os.kill(victim["pid"], signal.SIGKILL)
        await wait_for(lambda: agent.pool is not None and agent.pool.workers[1].restarts == 1
                       and agent.pool.workers[1].state == "running", timeout=60, what="worker 1 restarted")
        sidecars.flows(range(43000, 43200, 2))
        await _wait_received(agent, sidecars.sent)
        after = await get_status(agent)
    finally:
        sidecars.close()
        await stop_pool(agent, task)
    assert after["workers"][1]["restarts"] == 1 and after["workers"][1]["pid"] != victim["pid"]
    assert after["received"] == sidecars.sent
    assert_balanced(after)
    assert after["workers"][1]["received"] > victim["received"] > 0


async def _wait_received(agent: Agent, count: int, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (status := await get_status(agent))["received"] < count:
        assert asyncio.get_running_loop().time() < deadline, f"{status['received']} of {count} received"
        await asyncio.sleep(0.05)


def test_sigterm_flushes_every_worker_and_exits_0(tmp_path: Path) -> None:
    for count in ("1", "2"):
        out = tmp_path / count
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "run", "--workers", count, "--listen", "127.0.0.1:0",
             "--status", "127.0.0.1:0", "--sender", f"{CLIENT},auto,default/client", "--sender",
             f"{SERVER},auto,default/server", "--pcap-dir", str(out)],
            cwd=ROOT, text=True, stderr=subprocess.PIPE)
        try:
            port, address = _startup(proc, int(count))
            sidecars = Sidecars(port)
            sidecars.flows(range(44000, 44100))
            sent = sidecars.sent
            _poll_status(address, lambda s, sent=sent: s["received"] == sent)
            forwarded = _status(address)["forwarded"]
            proc.send_signal(signal.SIGTERM)  # at once: the records are still in the workers' buffers
            assert proc.wait(timeout=60) == 0
            sidecars.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            log = proc.stderr.read()
            proc.stderr.close()
        records = [r for f in out.glob("*.pcap") for r in pcap.read(f.read_bytes())[1]]
        assert len(records) == forwarded > 0, log
        assert f"stopped: received {sidecars.sent} = forwarded {forwarded}" in log


def _startup(proc: subprocess.Popen[str], workers: int) -> tuple[int, tuple[str, int]]:
    import re
    import time

    assert proc.stderr is not None
    port = status = None
    deadline = time.monotonic() + 60
    while status is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if m := re.search(r"receiving tunnels on 127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
        if m := re.search(r"status on http://127\.0\.0\.1:(\d+)/status", line):
            status = ("127.0.0.1", int(m.group(1)))
    assert port is not None and status is not None, "the agent did not start"
    return port, status


def _status(address: tuple[str, int]) -> dict[str, Any]:
    import json

    code, body = http_get(address, "/status")
    assert code == 200
    return json.loads(body)  # type: ignore[no-any-return]


def _poll_status(address: tuple[str, int], predicate: Any, timeout: float = 30.0) -> None:
    poll(lambda: predicate(_status(address)), timeout, what="the agent's counters")
