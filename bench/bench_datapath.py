"""What mirroring costs the pod and the node: kernel mode and sniff mode, the node agent receiving.

Run as root: ``.venv/bin/python bench/bench_datapath.py [--rounds 3]`` (about 2-3 minutes;
namespaces ``pmdp-*``). A lab node: pod ``client`` (mirrored), pod ``server`` (not), node veths at
MTU 1600 and the sidecar's ``--tunnel-mtu 1600`` (no tunnel fragments), and ``nodeagent run``
(its defaults, pcap output) receiving the tunnel, so every figure includes a real receiver.

For each of: no mirroring, kernel mode, sniff mode, in ``--rounds`` interleaved rounds:

- **the pod's throughput**: iperf3 client -> server, bulk TCP (2 s, unlimited) and 64-byte UDP
  (2 s, unlimited, packets received), each as the median ratio to no mirroring in the same round;
- **the node's CPU at a fixed offered load** (TCP at 1 Gbit/s for 3 s, then 64-byte UDP at 20,000
  packets/s for 3 s, the same in every mode): the machine's CPU seconds by kind from
  ``/proc/stat`` (``softirq``: where the kernel pays for tc mirred, VXLAN encapsulation and the
  tunnel's delivery; ``system``; ``user``), the sidecar's and the agent's process CPU, and the
  difference to no mirroring: what mirroring costs where it is paid. ``/proc/stat`` is the whole
  machine's: other load on it shows as noise, hence the interleaved rounds and medians;
- the sidecar's resident memory, and the share of the tunnel's datagrams the agent received.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nodeagent.lab import measure, podmirror  # noqa: E402
from nodeagent.lab.topology import Lab, Pod  # noqa: E402
from nodeagent.lab.workload import Workload  # noqa: E402

MODES = ("none", "kernel", "sniff")
SAMPLE = 2.0
FIXED = 3.0
FIXED_TCP, FIXED_UDP_PPS = "1G", 20_000


def fixed_load(lab: Lab, work: Workload, agent: podmirror.Agent, client: Pod, server: Pod,
               sidecar: Any) -> dict[str, float]:
    """Machine CPU by kind, sidecar and agent CPU, during the fixed offered load."""
    agent.wait_quiet(timeout=60.0)  # the throughput runs' flood may still sit in the agent's socket
    agent_pids = [agent.proc.pid, *_descendants(agent.proc.pid)]
    m0, a0 = measure.machine(), sum(measure.cpu_seconds(p) for p in agent_pids)
    s0 = measure.cpu_seconds(sidecar.pid) if sidecar else 0.0
    sent0, rx0 = lab.tunnel_tx_packets(client), agent.status()["received"]
    tcp = work.iperf(client, server, seconds=FIXED, bitrate=FIXED_TCP)
    udp = work.iperf(client, server, seconds=FIXED, udp_len=64, bitrate=str(FIXED_UDP_PPS * 64 * 8))
    st = agent.wait_quiet(timeout=30.0)
    m = measure.machine() - m0
    sent1 = lab.tunnel_tx_packets(client)
    coverage = (st["received"] - rx0) / (sent1 - sent0) if sent0 is not None and sent1 else float("nan")
    return {"softirq": m.softirq, "system": m.system, "user": m.user, "busy": m.busy,
            "sidecar": (measure.cpu_seconds(sidecar.pid) - s0) if sidecar else 0.0,
            "agent": sum(measure.cpu_seconds(p) for p in agent_pids) - a0,
            "rss": measure.rss_bytes(sidecar.pid) / 2**20 if sidecar else 0.0,
            "coverage": coverage,
            "fixed_tcp_gbps": tcp["bps"] / 1e9, "fixed_udp_pps": udp["pps"]}


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = measure.children(todo.pop())
        out += kids
        todo += kids
    return out


def throughput(work: Workload, client: Pod, server: Pod) -> dict[str, float]:
    tcp = work.iperf(client, server, seconds=SAMPLE)
    udp = work.iperf(client, server, seconds=SAMPLE, udp_len=64)
    return {"tcp_gbps": tcp["bps"] / 1e9, "udp_kpps": (udp["packets"] - udp["lost"]) / SAMPLE / 1e3}


def one_mode(lab: Lab, work: Workload, agent: podmirror.Agent, client: Pod, server: Pod, out: Path,
             mode: str) -> dict[str, float]:
    sidecar = None
    if mode != "none":
        sidecar = podmirror.start_sidecar(lab, client, out, mode=mode, extra=["--tunnel-mtu", "1600"])
        podmirror.wait_mirroring(lab, agent, client, sidecar)
        agent.wait_quiet(timeout=30.0)
    try:
        row = throughput(work, client, server)
        row.update(fixed_load(lab, work, agent, client, server, sidecar))
        return row
    finally:
        if sidecar is not None:
            lab.ns.stop(sidecar, timeout=15)


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(samples: dict[str, list[dict[str, float]]]) -> None:
    none = samples["none"]
    print(f"\n{'':<46}" + "".join(f"{m:>12}" for m in MODES))

    def line(label: str, key: str, spec: str, ratio: bool = False, delta: bool = False) -> None:
        cells = []
        for mode in MODES:
            rows = samples[mode]
            if ratio:
                value = statistics.median(r[key] / b[key] for r, b in zip(rows, none, strict=True))
            elif delta:
                value = statistics.median(r[key] - b[key] for r, b in zip(rows, none, strict=True))
            else:
                value = median(rows, key)
            cells.append(format(value, spec))
        print(f"{label:<46}" + "".join(f"{c:>12}" for c in cells))

    line("bulk TCP Gbit/s (median)", "tcp_gbps", ".2f")
    line("  ratio to no mirroring", "tcp_gbps", ".2f", ratio=True)
    line("64-byte UDP kpps received (median)", "udp_kpps", ".1f")
    line("  ratio to no mirroring", "udp_kpps", ".2f", ratio=True)
    print(f"fixed load: TCP {FIXED_TCP}bit/s {FIXED:.0f} s + UDP 64 B {FIXED_UDP_PPS:,}/s {FIXED:.0f} s, "
          "CPU seconds (machine-wide from /proc/stat, minus no mirroring's)")
    line("  machine softirq, more than no mirroring", "softirq", "+.2f", delta=True)
    line("  machine system, more than no mirroring", "system", "+.2f", delta=True)
    line("  machine busy (all kinds), more than none", "busy", "+.2f", delta=True)
    line("  sidecar process CPU", "sidecar", ".2f")
    line("  agent processes CPU", "agent", ".2f")
    line("  sidecar RSS MiB", "rss", ".1f")
    line("  tunnel datagrams the agent received (share)", "coverage", ".2f")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_datapath: needs root (network namespaces)", file=sys.stderr)
        return 2
    out = Path(tempfile.mkdtemp(prefix="pmdp-"))
    lab = Lab("pmdp", workdir=out)
    try:
        node = lab.add_node()
        client, server = lab.add_pod(node, "client"), lab.add_pod(node, "server")
        lab.add_agent(node)
        work = Workload(lab, out)
        work.start_servers(server)
        agent = podmirror.start_agent(lab, node, out, pods=[client], pcap_dir=out / "pcap")
        samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for n in range(args.rounds):
            for mode in MODES:
                print(f"  round {n + 1}/{args.rounds}: {mode} ...", flush=True)
                samples[mode].append(one_mode(lab, work, agent, client, server, out, mode))
                time.sleep(0.5)
        agent.stop()
    finally:
        lab.close()
    report(samples)
    print(f"(logs in {out}; kernel {os.uname().release}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
