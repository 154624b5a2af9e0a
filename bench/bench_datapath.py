"""The sidecar's side of the data path: what mirroring costs the pod and the node.

Run as root: ``.venv/bin/python bench/bench_datapath.py`` (about 1-2 minutes; prints one table).

Setup (a lab node, namespaces ``pmbench-<random>-``): pod ``client`` is mirrored, pod ``server``
is not; the agent's namespace drops the tunnel at its interface's ingress (nftables netdev hook)
instead of running the node agent, so the figures are the sidecar's and the kernel's alone (the
agent's receive rate is ``bench/bench_agent.py``'s job; its coverage is the last section).
Node-side veths have MTU 1600 and the sidecar raises its route MTU to 1600 (no tunnel fragments).

For each of: no mirroring, kernel mode, sniff mode, it measures
- bulk TCP throughput (iperf3, unlimited, 2 s) and 64-byte UDP packets per second received
  (iperf3 -u -l 64 -b 0, 2 s), in 3 interleaved rounds, and their ratio to no mirroring;
- at a fixed offered load (TCP 300 Mbit/s for 3 s, then 64-byte UDP at 20,000 packets/s for
  3 s), the sidecar process's CPU seconds (utime + stime from /proc) and its RSS;
and, in kernel mode, the sidecar's CPU seconds at two TCP loads (200 Mbit/s and unlimited):
flat means no Python runs per packet. A last section replaces the drop with ``nodeagent run``
(pcap output) and reports, for bulk TCP at 200 Mbit/s, 1 Gbit/s and unlimited, the share of the
datagrams the pod's VXLAN device sent that the agent received (the rest are socket drops).
Timings on a shared 2-core machine are noisy: compare columns of one run, not runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodeagent.lab import podmirror  # noqa: E402
from nodeagent.lab.netns import LabError  # noqa: E402
from nodeagent.lab.topology import TUNNEL_PORT, Lab, Pod  # noqa: E402
from nodeagent.lab.workload import Workload  # noqa: E402

SECONDS = 3.0
"""Length of each fixed-load and coverage run."""
SAMPLE_SECONDS = 2.0
ROUNDS = 3
"""Throughput samples per mode, interleaved (none, kernel, sniff, none, ...): the machine is shared
and its speed drifts, so ratios are taken within a round and their median reported."""
FIXED_TCP = "300M"
FIXED_UDP_PPS = 20_000
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK     # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def throughput(work: Workload, client: Pod, server: Pod) -> dict[str, float]:
    tcp = work.iperf(client, server, seconds=SAMPLE_SECONDS)
    udp = work.iperf(client, server, seconds=SAMPLE_SECONDS, udp_len=64)
    return {"tcp_gbps": tcp["bps"] / 1e9, "udp_kpps": (udp["packets"] - udp["lost"]) / SAMPLE_SECONDS / 1e3}


def sample(lab: Lab, work: Workload, client: Pod, server: Pod, mode: str, out: Path) -> dict[str, float]:
    """One throughput sample of the pod with no mirroring or with a sidecar in ``mode``."""
    if mode == "none":
        return throughput(work, client, server)
    sidecar = podmirror.start_sidecar(lab, client, out, mode=mode, extra=["--tunnel-mtu", "1600"])
    try:
        wait_tunnel(lab, client, sidecar)
        return throughput(work, client, server)
    finally:
        lab.ns.stop(sidecar, timeout=10)


def fixed_load(work: Workload, client: Pod, server: Pod, pid: int) -> float:
    """CPU seconds the sidecar spends while the pod sends the fixed offered load."""
    before = cpu_seconds(pid)
    work.iperf(client, server, seconds=SECONDS, bitrate=FIXED_TCP)
    work.iperf(client, server, seconds=SECONDS, udp_len=64, bitrate=str(FIXED_UDP_PPS * 64 * 8))
    return cpu_seconds(pid) - before


def tcp_cpu(work: Workload, client: Pod, server: Pod, pid: int, rate: str | None) -> tuple[float, float]:
    before = cpu_seconds(pid)
    bps = work.iperf(client, server, seconds=SECONDS, bitrate=rate)["bps"]
    return cpu_seconds(pid) - before, bps / 1e9


def measure_mode(lab: Lab, work: Workload, client: Pod, server: Pod, mode: str, out: Path) -> dict[str, Any]:
    sidecar = podmirror.start_sidecar(lab, client, out, mode=mode, extra=["--tunnel-mtu", "1600"])
    try:
        wait_tunnel(lab, client, sidecar)
        row: dict[str, Any] = {}
        row["cpu_fixed"] = fixed_load(work, client, server, sidecar.pid)
        row["rss"] = rss_mib(sidecar.pid)
        if mode == "kernel":
            row["cpu_low"] = tcp_cpu(work, client, server, sidecar.pid, "200M")
            row["cpu_high"] = tcp_cpu(work, client, server, sidecar.pid, None)
        return row
    except (LabError, OSError) as exc:
        return {"error": f"{exc}"[:200] + f" (log: {out / f'sidecar-{client.name}.log'})"}
    finally:
        lab.ns.stop(sidecar, timeout=10)


def wait_tunnel(lab: Lab, client: Pod, sidecar: Any, timeout: float = 15.0) -> None:
    """Mirroring works when the agent's namespace sees tunnel datagrams after a probe from the pod."""
    agent = client.node.agent
    assert agent is not None
    deadline = time.monotonic() + timeout
    start = lab.counters(agent.ns, "eth0")["rx_packets"]
    while lab.counters(agent.ns, "eth0")["rx_packets"] - start < 2:
        if sidecar.poll() is not None:
            raise LabError(f"sidecar exited with {sidecar.returncode}")
        if time.monotonic() > deadline:
            raise LabError("no tunnel traffic from the sidecar")
        podmirror.probe(lab, client)
        time.sleep(0.2)


AGENT_LOADS = ("200M", "1G", None)
"""Bulk TCP rates (None: unlimited) for the end-to-end coverage rows with the real node agent."""


def agent_coverage(lab: Lab, work: Workload, client: Pod, server: Pod, out: Path) -> list[dict[str, Any]]:
    """Kernel-mode sidecar + ``nodeagent run`` (pcap output): share of mirrored datagrams the agent got."""
    agent = podmirror.start_agent(lab, client.node, out, pcap_dir=out / "pcap", pods=[client])
    sidecar = podmirror.start_sidecar(lab, client, out, mode="kernel", extra=["--tunnel-mtu", "1600"])
    rows = []
    try:
        podmirror.wait_mirroring(lab, agent, client, sidecar)
        for rate in AGENT_LOADS:
            sent0, st0 = lab.tunnel_tx_packets(client) or 0, agent.status()
            bps = work.iperf(client, server, seconds=SECONDS, bitrate=rate)["bps"]
            st = settled(agent)
            sent = (lab.tunnel_tx_packets(client) or 0) - sent0
            rows.append({"rate": rate or "unlimited", "gbps": bps / 1e9, "sent": sent,
                         "received": st["received"] - st0["received"],
                         "kernel_drops": st["socket"]["kernel_drops"] - st0["socket"]["kernel_drops"]})
    finally:
        lab.ns.stop(sidecar, timeout=10)
        agent.stop()
        shutil.rmtree(out / "pcap", ignore_errors=True)
    return rows


def settled(agent: podmirror.Agent, timeout: float = 30.0) -> dict[str, Any]:
    """The agent's status once its counters stop moving (its socket queue drained)."""
    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        st = agent.status()
        if st["received"] == last:
            return st
        last = st["received"]
        time.sleep(0.3)
    return agent.status()


def drop_tunnel(lab: Lab, ns: str, on: bool) -> None:
    """Drop the tunnel at the agent namespace's ingress (nftables netdev hook, before the IP stack):
    a receiver that costs nothing, so the figures are the sidecar's and the kernel's, not a
    user-space sink's competing for the same two cores."""
    rules = ("table netdev pmbench {\n chain tunnel {\n  type filter hook ingress device eth0 priority 0;\n"
             f"  udp dport {TUNNEL_PORT} drop\n }}\n}}\n" if on else "delete table netdev pmbench\n")
    lab.ns.exec(ns, ["nft", "-f", "-"], input=rules)


def build(out: Path) -> tuple[Lab, Workload, Pod, Pod]:
    lab = Lab("pmbench", workdir=out)
    node = lab.add_node()
    client, server = lab.add_pod(node, "client"), lab.add_pod(node, "server")
    lab.add_agent(node)
    work = Workload(lab, out)
    work.start_servers(server)
    return lab, work, client, server


def fmt(row: dict[str, Any], key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


MODES = ("none", "kernel", "sniff")


def line(label: str, cells: list[str], width: int = 11) -> None:
    print(f"{label:44}" + "".join(f"{c:>{width}}" for c in cells))


def summarize(samples: dict[str, list[dict[str, float]]], key: str) -> tuple[list[str], list[str]]:
    """Per mode: 'median (min-max)' of ``key``, and the median of the per-round ratios to no mirror."""
    cells, ratios = [], []
    for mode in MODES:
        values = [s[key] for s in samples[mode] if key in s]
        if not values:
            cells.append("-")
            ratios.append("-")
            continue
        cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        paired = [s[key] / b[key] for s, b in zip(samples[mode], samples["none"], strict=True) if key in s]
        ratios.append(f"{statistics.median(paired):.2f}")
    return cells, ratios


def report(samples: dict[str, list[dict[str, float]]], rows: dict[str, dict[str, Any]]) -> None:
    line("", ["no mirror", "kernel", "sniff"], width=18)
    for label, key in (("bulk TCP Gbit/s", "tcp_gbps"), ("64-byte UDP kpps received", "udp_kpps")):
        cells, ratios = summarize(samples, key)
        line(f"{label}, median (min-max)", cells, width=18)
        line(f"  ratio to no mirror (median of {ROUNDS})", ratios, width=18)
    load = f"sidecar CPU s ({FIXED_TCP}bit TCP, {FIXED_UDP_PPS // 1000}k pps UDP)"
    line(load, ["-"] + [fmt(rows[m], "cpu_fixed", ".3f") for m in MODES[1:]], width=18)
    line("sidecar RSS (MiB)", ["-"] + [fmt(rows[m], "rss", ".1f") for m in MODES[1:]], width=18)
    print(f"(throughput samples: {SAMPLE_SECONDS:.0f} s each, {ROUNDS} rounds; "
          f"fixed load: {SECONDS:.0f} s each)")
    k = rows["kernel"]
    if "cpu_low" in k:
        (lo_cpu, lo_bps), (hi_cpu, hi_bps) = k["cpu_low"], k["cpu_high"]
        print(f"kernel-mode sidecar CPU, {SECONDS:.0f} s of TCP: {lo_cpu:.3f} s at {lo_bps:.2f} Gbit/s, "
              f"{hi_cpu:.3f} s at {hi_bps:.2f} Gbit/s")
    for mode, row in rows.items():
        if "error" in row:
            print(f"{mode}: FAILED: {row['error']}")


def report_coverage(rows: list[dict[str, Any]]) -> None:
    print("\nwith nodeagent run (pcap output), kernel-mode sidecar, bulk TCP for "
          f"{SECONDS:.0f} s: mirrored datagrams that reached the agent")
    line("offered TCP rate", [r["rate"] for r in rows])
    line("pod throughput (Gbit/s)", [f"{r['gbps']:.2f}" for r in rows])
    line("datagrams sent by the pod's VXLAN device", [str(r["sent"]) for r in rows])
    line("received by the agent", [str(r["received"]) for r in rows])
    line("  share", [f"{r['received'] / r['sent']:.2f}" if r["sent"] else "-" for r in rows])
    line("agent socket kernel drops", [str(r["kernel_drops"]) for r in rows])


def main() -> int:
    if os.geteuid() != 0:
        print("bench_datapath: needs root (network namespaces)", file=sys.stderr)
        return 2
    out = Path(tempfile.mkdtemp(prefix="pmbench-"))
    lab, work, client, server = build(out)
    try:
        agent_ns = client.node.agent.ns  # type: ignore[union-attr]
        drop_tunnel(lab, agent_ns, True)
        samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for round_ in range(ROUNDS):
            print(f"bench: throughput round {round_ + 1}/{ROUNDS} ...", flush=True)
            for mode in MODES:
                samples[mode].append(sample(lab, work, client, server, mode, out))
        rows: dict[str, dict[str, Any]] = {"none": {}}
        for mode in MODES[1:]:
            print(f"bench: {mode} mode costs ...", flush=True)
            rows[mode] = measure_mode(lab, work, client, server, mode, out)
        drop_tunnel(lab, agent_ns, False)
        print("bench: kernel mode with the node agent ...", flush=True)
        coverage = agent_coverage(lab, work, client, server, out)
        report(samples, rows)
        report_coverage(coverage)
    finally:
        lab.close()
    print(f"(logs in {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
