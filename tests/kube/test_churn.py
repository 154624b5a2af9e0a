"""Per-pod state follows the pod table: 10,000 pods churned through the watcher leave the agent's
resident memory and its Prometheus series flat.

The agent runs as its own process (``nodeagent run --node-name --kubeconfig``, so its RSS is its
own) against the fake API over HTTP. In waves of 500, pods of this node are created (each with the
injected sidecar container, an address on loopback 127.1.x.y so the test can send its tunnel), each
one's tunnel delivers a datagram and its sidecar polls push-down (counters and a mode per pod), then
the pods are deleted. ``kube.forget_after`` is short here (0.3 s), so each wave's state must be
gone before the next; the totals keep every datagram.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nodeagent.wire import vxlan
from tests.fakes.kubeapi import pod
from tests.kube.test_agent_kube import kubeconfig

pytestmark = [pytest.mark.kube, pytest.mark.slow]
MON = {"podmirror.io/monitored": "true"}
WAVES, WAVE = 20, 500
ROOT = Path(__file__).resolve().parents[2]


def address(n: int) -> str:
    return f"127.1.{n >> 8}.{n & 0xFF}"


def frame(src: str) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst="10.0.0.1")
                 / UDP(sport=5000, dport=53) / b"q")


def sidecars(first: int, count: int, pushdown: tuple[str, int], tunnel: int) -> None:
    """Each pod's tunnel delivers one datagram and its sidecar polls push-down, from its own address."""
    for n in range(first, first + count):
        ip = address(n)
        vni = (1 << 16) | n
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((ip, 0))
            sock.sendto(vxlan.encode(vni, frame(ip)), ("127.0.0.1", tunnel))
        conn = http.client.HTTPConnection(*pushdown, timeout=5, source_address=(ip, 0))
        try:
            conn.request("GET", f"/v1/pushdown?ip={ip}&vni={vni}&mode=kernel")
            assert conn.getresponse().status == 200
        finally:
            conn.close()


def get(status: tuple[str, int], path: str) -> str:
    conn = http.client.HTTPConnection(*status, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def addresses(log: Path, proc: subprocess.Popen[bytes]) -> tuple[int, tuple[str, int], tuple[str, int]]:
    """The tunnel port, the status address and the push-down address, from the agent's log."""
    import re

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text(errors="replace") if log.exists() else ""
        tunnel = re.search(r"receiving tunnels on 127\.0\.0\.1:(\d+)", text)
        status = re.search(r"status on http://127\.0\.0\.1:(\d+)/status", text)
        pushdown = re.search(r"push-down on http://127\.0\.0\.1:(\d+)/v1/pushdown", text)
        if tunnel and status and pushdown:
            return (int(tunnel.group(1)), ("127.0.0.1", int(status.group(1))),
                    ("127.0.0.1", int(pushdown.group(1))))
        time.sleep(0.05)
    raise AssertionError(f"the agent did not start: {log.read_text(errors='replace')[-2000:]}")


async def test_ten_thousand_pods_churned_through_the_watcher_leave_rss_and_series_flat(
        fake_api: Any, tmp_path: Path) -> None:
    fake, client = fake_api
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({
        "listen": "127.0.0.1:0", "status": "127.0.0.1:0", "pushdown": "127.0.0.1:0",
        "log": {"level": "WARNING"},
        # Flow state is bounded by its own capacity and idle time (tested in the unit tier); short
        # here so that what remains is per-pod state.
        "dedup": {"flow_idle": 1.0}, "cutoff": {"idle": 1.0},
        "kube": {"node_name": "node-a", "kubeconfig": kubeconfig(str(tmp_path / "kubeconfig"),
                                                                 client.configuration.host),
                 "forget_after": 0.3}}))
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nodeagent", "run", "--config", str(config),
                                 "--log-level", "INFO"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        tunnel, status_at, pushdown_at = await asyncio.to_thread(addresses, log, proc)

        async def status() -> dict[str, Any]:
            return json.loads(await asyncio.to_thread(get, status_at, "/status"))  # type: ignore[no-any-return]

        rss, series = [], []
        last: dict[str, Any] = {}

        async def listed() -> bool:
            last.update(await status())
            return bool(last.get("kube", {}).get("local") == WAVE)

        async def forgotten() -> bool:
            last.update(await status())
            return bool(last["kube"]["local"] == 0 and not set(last["pods"]) - {"-"})

        for wave in range(WAVES):
            first = wave * WAVE
            for n in range(first, first + WAVE):
                fake.create(pod(f"p{n}", ip=address(n), labels=MON))
            await eventually_async(listed, 30)
            await asyncio.to_thread(sidecars, first, WAVE, pushdown_at, tunnel)
            await eventually_async(listed, 10)
            assert sum(1 for p in last["pods"].values() if p.get("mode") == "kernel") == WAVE
            for n in range(first, first + WAVE):
                fake.delete("default", f"p{n}")
            fake.compact()  # the fake's history is the test process's memory, not the agent's
            await eventually_async(forgotten, 30)
            metrics = await asyncio.to_thread(get, status_at, "/metrics")
            series.append(sum(1 for line in metrics.splitlines() if line.startswith("podmirror_pod_")))
            rss.append(rss_kib(proc.pid))
        final = await status()
    finally:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 15) == 0
    # Every datagram stays counted in the totals after its pod's counters were forgotten.
    assert final["received"] == final["pipeline_received"] == WAVES * WAVE
    assert final["received"] == final["forwarded"] + sum(final["drops"].values()) + final["held"]
    assert series == [series[0]] * WAVES and series[0] <= 8  # none per pod once they are gone
    # Flat: after a few waves of warm-up (allocator arenas, caches), 10,000 pods leave no trace.
    growth = rss[-1] - rss[3]
    print(f"agent RSS per wave (KiB): {rss}; growth after wave 4: {growth} KiB")
    assert growth < 4096, f"{rss}"


async def eventually_async(check: Any, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)
