"""Sidecar cost: pod throughput with and without mirroring, and the sidecar's own CPU and RSS.

One run (root; namespaces ``pmsc-bench-*``, removed at the end): a pod namespace and a node
namespace joined by a veth (MTU 1500 both sides), iperf3 server and the "agent" in the node. The
agent is a bound UDP socket that never reads (a sink: no ICMP errors, no Python on the receiving
side competing for the 2 cores), so the figures are the sidecar's and the kernel's alone.

Printed, side by side:

1. pod iperf3 bulk TCP (Gbit/s) and 64-byte UDP (received packets/s) with mirroring in: kernel
   mode (default: tunnel packets IP-fragmented by the kernel), kernel mode with ``--tunnel-mtu
   1600`` and the node side of the veth at MTU 1600 (no fragments), sniff mode; each as the median
   ratio to a no-mirroring run made just before it (interleaved pairs: the machine is noisy);
2. the sidecar process's CPU seconds and RSS at fixed offered loads (UDP 64 B at 5k and 40k pps
   for a few seconds), kernel vs sniff: kernel-mode CPU must not grow with the load;
3. IP fragments the node had to reassemble per mirrored datagram (the MTU cost).

Run: ``sudo .venv/bin/python bench/bench_sidecar.py`` (about 100 s; ``--seconds``, ``--reps``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from nodeagent.lab import netns  # noqa: E402
from tests.waiting import poll  # noqa: E402

POD_IP, NODE_IP, PORT = "10.78.0.2", "10.78.0.1", 14789
SERVER_IP = "10.78.0.3"
"""iperf3 listens on another node address than the agent's: with --tunnel-mtu the pod's own traffic to
the agent's address uses the raised route MTU, which no real workload talks to."""
SINK = (
    "import socket, sys, signal; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.bind((sys.argv[1], int(sys.argv[2]))); print('ready', flush=True); signal.pause()"
)


def build(lab: netns.Namespaces) -> tuple[str, str]:
    pod, node = lab.create("bench-pod"), lab.create("bench-node")
    lab.ip(pod, "link", "add", "eth0", "type", "veth", "peer", "name", "vpod", "netns", node)
    for ns, ifname, cidrs in ((pod, "eth0", [POD_IP]), (node, "vpod", [NODE_IP, SERVER_IP])):
        for ip in cidrs:
            lab.ip(ns, "addr", "add", f"{ip}/24", "dev", ifname)
        lab.ip(ns, "link", "set", ifname, "up")
    sink_log = Path("/tmp/pmsc-bench-sink.log")
    sink = lab.spawn(node, [sys.executable, "-c", SINK, NODE_IP, str(PORT)], log=sink_log)
    poll(lambda: "ready" in sink_log.read_text() or sink.poll() is not None, 10, "the sink")
    lab.spawn(node, ["iperf3", "-s", "-B", SERVER_IP, "-p", "5201"])
    poll(lambda: ":5201" in lab.exec(node, ["ss", "-ltn"]).stdout, 5, "iperf3 server")
    return pod, node


def iperf(lab: netns.Namespaces, pod: str, seconds: float, *args: str) -> dict[str, object]:
    out = lab.exec(
        pod, ["iperf3", "-c", SERVER_IP, "-p", "5201", "-t", str(seconds), "-J", *args], timeout=seconds + 30
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def tcp_gbps(lab: netns.Namespaces, pod: str, seconds: float) -> float:
    doc = iperf(lab, pod, seconds)
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9  # type: ignore[index]


def udp_pps(lab: netns.Namespaces, pod: str, seconds: float, rate: str = "0") -> float:
    doc = iperf(lab, pod, seconds, "-u", "-l", "64", "-b", rate)
    s = doc["end"]["sum"]  # type: ignore[index]
    return (s["packets"] - s["lost_packets"]) / s["seconds"]  # type: ignore[no-any-return]


def reassembly_requests(lab: netns.Namespaces, node: str) -> int:
    lines = lab.exec(node, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    names, values = [line.split() for line in lines if line.startswith("Ip:")][:2]
    return int(values[names.index("ReasmReqds")])


def udp_in(lab: netns.Namespaces, node: str) -> int:
    lines = lab.exec(node, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    names, values = [line.split() for line in lines if line.startswith("Udp:")][:2]
    return int(values[names.index("InDatagrams")]) + int(values[names.index("RcvbufErrors")])


class Sidecar:
    def __init__(self, lab: netns.Namespaces, pod: str, mode: str, *extra: str) -> None:
        self.lab, self.log = lab, Path(f"/tmp/pmsc-bench-{mode}.log")
        cmd = [sys.executable, "-m", "sidecar_lite", "--agent", f"{NODE_IP}:{PORT}", "--mode", mode, *extra]
        self.proc = lab.spawn(pod, cmd, log=self.log)
        poll(lambda: "mirroring eth0" in self.log.read_text() or self.proc.poll() is not None, 15, "sidecar")
        if self.proc.poll() is not None:
            raise RuntimeError(self.log.read_text())

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> str:
        code = self.lab.stop(self.proc, signal.SIGTERM, timeout=15)
        assert code == 0, self.log.read_text()
        return self.log.read_text().strip().splitlines()[-1]


def measure(
    lab: netns.Namespaces, pod: str, node: str, seconds: float
) -> tuple[float, float, float]:
    """(TCP Gbit/s, UDP-64 packets/s, IP fragments per tunnel datagram at the node)."""
    reasm, dgrams = reassembly_requests(lab, node), udp_in(lab, node)
    tcp = tcp_gbps(lab, pod, seconds)
    frags = (reassembly_requests(lab, node) - reasm) / max(1, udp_in(lab, node) - dgrams)
    return tcp, udp_pps(lab, pod, seconds), frags


def throughput(lab: netns.Namespaces, pod: str, node: str, seconds: float, reps: int) -> None:
    print(
        f"\n1) pod throughput: {reps} interleaved pairs (no mirroring, then mirroring), {seconds:.0f} s runs;"
    )
    print("   the machine is shared and noisy, so each ratio is against the run just before it (median)")
    print(f"{'setup':34} {'TCP Gbit/s':>15} {'ratio':>6} {'UDP64 kpps':>15} {'ratio':>6} {'frags/dgram':>11}")
    setups = [
        ("kernel, MTU 1500 (fragments)", "kernel", (), None),
        ("kernel, --tunnel-mtu 1600, node 1600", "kernel", ("--tunnel-mtu", "1600"), 1600),
        ("sniff", "sniff", (), None),
    ]
    for label, mode, extra, node_mtu in setups:
        rows, last = [], ""
        for _ in range(reps):
            base = measure(lab, pod, node, seconds)
            if node_mtu:
                lab.ip(node, "link", "set", "vpod", "mtu", str(node_mtu))
            sidecar = Sidecar(lab, pod, mode, *extra)
            mirrored = measure(lab, pod, node, seconds)
            last = sidecar.stop()
            if node_mtu:
                lab.ip(node, "link", "set", "vpod", "mtu", "1500")
            rows.append((base, mirrored))
        tcp_r = statistics.median(m[0] / b[0] for b, m in rows)
        udp_r = statistics.median(m[1] / b[1] for b, m in rows)
        tcp = (
            f"{statistics.median(b[0] for b, _ in rows):.1f}->{statistics.median(m[0] for _, m in rows):.1f}"
        )
        base_udp, mirror_udp = (statistics.median(r[i][1] for r in rows) / 1e3 for i in (0, 1))
        udp = f"{base_udp:.0f}->{mirror_udp:.0f}"
        frags = statistics.median(m[2] for _, m in rows)
        print(f"{label:34} {tcp:>15} {tcp_r:6.2f} {udp:>15} {udp_r:6.2f} {frags:11.2f}")
        if mode == "sniff":
            print(f"{'':34} sniff counters (last run): {last.split('stopped: ')[-1]}")


def cpu(lab: netns.Namespaces, pod: str, seconds: float) -> None:
    print(
        f"\n2) sidecar process at fixed offered load (UDP 64 B, {seconds:.0f} s each, fresh sidecar per row)"
    )
    print(f"{'mode':8} {'offered pps':>11} {'CPU s':>7} {'CPU %':>6} {'RSS MiB':>8}  sniff counters")
    for mode in ("kernel", "sniff"):
        for pps in (5_000, 40_000):
            sidecar = Sidecar(lab, pod, mode)
            before = sidecar.cpu_seconds()
            udp_pps(lab, pod, seconds, rate=str(pps * 64 * 8))
            used, rss = sidecar.cpu_seconds() - before, sidecar.rss_mib()
            last = sidecar.stop()
            counters = last.split("stopped: ")[-1] if mode == "sniff" else ""
            print(f"{mode:8} {pps:11,} {used:7.2f} {100 * used / seconds:6.1f} {rss:8.1f}  {counters}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per iperf3 run (default 2)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved pairs per setup (default 3)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    started = time.monotonic()
    lab = netns.Namespaces(f"pmsc-{secrets.token_hex(3)}-")
    try:
        pod, node = build(lab)
        throughput(lab, pod, node, args.seconds, args.reps)
        cpu(lab, pod, 4.0)
    finally:
        lab.close()
    print(
        f"\n(bench took {time.monotonic() - started:.0f} s;"
        f" kernel {os.uname().release}, {os.cpu_count()} CPUs)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
