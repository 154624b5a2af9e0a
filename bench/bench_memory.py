"""The agent's memory with a million flows: resident memory per worker, tables bounded or filled.

A generator process offers 1,000,000 distinct TCP flows between two monitored pods on loopback
(one data packet each, from the client's vantage: the vantage table keeps the flow's client, the
cutoff table the flow, the dedup window the packet's digest) at ``--rate`` datagrams/s to
``nodeagent run --workers N``. Printed per worker, before and after: resident memory (the
worker's ``/proc/<pid>/statm``, as ``/status`` reports it under ``workers``) and the entries in its
pipeline tables, for two configurations:

- the defaults (``dedup.flow_capacity`` 262,144, ``cutoff.capacity`` 65,536, ``dedup.capacity``
  262,144): the tables stop at their capacity, evicting the oldest, so memory stays bounded
  whatever the number of flows;
- capacities raised to 1,048,576: the memory a million flows really take.

Run: ``.venv/bin/python bench/bench_memory.py [--workers 1,2] [--rate 100000]`` (no root).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nodeagent.adapters import mmsg  # noqa: E402
from nodeagent.lab import loadgen  # noqa: E402
from nodeagent.lab.loopback import LoopbackAgent  # noqa: E402
from nodeagent.wire import vxlan  # noqa: E402

CLIENT, SERVER = "127.0.0.10", "127.0.0.11"
FLOWS = 1_000_000
RAISED = {"dedup": {"flow_capacity": 1 << 20}, "cutoff": {"capacity": 1 << 20}}


def datagrams(flows: int) -> list[bytes]:
    """One client -> server data packet per flow: distinct (client port, server port) pairs."""
    template = bytearray(vxlan.encode(10, loadgen.frame(socket.inet_aton(CLIENT), socket.inet_aton(SERVER),
                                                         40000, 8080, 1, 80, b"GET / HTTP/1.1\r\n", True, 1)))
    ports = struct.Struct("!HH")
    out = []
    for i in range(flows):
        ports.pack_into(template, 8 + 34, 32768 + i % 28000, 1000 + i // 28000)
        out.append(bytes(template))
    return out


def _generate(data: list[bytes], port: int, rate: float, conn: Any) -> None:
    batch = mmsg.SendBatch(data)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((CLIENT, 0))
    sock.connect(("127.0.0.1", port))
    start, sent = time.monotonic(), 0
    while sent < batch.count:
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent += max(1, batch.send(sock.fileno(), sent, min(64, batch.count - sent)))
    conn.send(sent)


def run(workers: int, config: dict[str, Any], data: list[bytes], rate: float, tmp: Path) -> dict[str, Any]:
    path = tmp / "agent.json"
    path.write_text(json.dumps({"senders": [f"{CLIENT},auto,bench/client", f"{SERVER},auto,bench/server"],
                                **config}))
    agent = LoopbackAgent(["--config", str(path), "--workers", str(workers)])
    try:
        before = agent.status()
        parent, child = mp.get_context("fork").Pipe()
        gen = mp.get_context("fork").Process(target=_generate, args=(data, agent.target[1], rate, child))
        gen.start()
        gen.join()
        if not parent.poll():
            raise RuntimeError(f"the generator failed (exit code {gen.exitcode})")
        sent = parent.recv()
        after, last = agent.status(), -1
        while after["received"] != last:  # until the workers have read everything queued
            last = after["received"]
            time.sleep(0.5)
            after = agent.status()
        return {"sent": sent, "before": before, "after": after}
    finally:
        agent.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rate", type=float, default=100_000.0)
    parser.add_argument("--flows", type=int, default=FLOWS)
    args = parser.parse_args()
    data = datagrams(args.flows)
    print(f"{args.flows:,} flows offered at {args.rate:,.0f} datagrams/s")
    print(f"{'tables':<10}{'workers':>8}{'worker':>7}{'received':>10}{'table entries':>15}"
          f"{'RSS before MiB':>16}{'RSS after MiB':>15}{'evictions':>11}")
    for label, config in (("defaults", {}), ("1M", RAISED)):
        for workers in (int(n) for n in args.workers.split(",")):
            with tempfile.TemporaryDirectory(prefix="pmbm-") as tmp:
                r = run(workers, config, data, args.rate, Path(tmp))
            evictions = sum(t.get("evictions", 0) for t in r["after"]["pipeline"].values())
            for before, after in zip(r["before"]["workers"], r["after"]["workers"], strict=True):
                print(f"{label:<10}{workers:>8}{after['index']:>7}{after['received']:>10,}"
                      f"{after['table_entries']:>15,}{before['rss_bytes'] / 2**20:>16.1f}"
                      f"{after['rss_bytes'] / 2**20:>15.1f}{evictions:>11,}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
