"""The sidecar: sniff mode's CPU per packet (ring vs socket I/O) and the tunnel's MTU choice.

Run as root: ``.venv/bin/python bench/bench_sidecar.py [--seconds 3]`` (about 2 minutes; lab
namespaces ``pmscb-*``, removed at the end).

1. **Sniff mode, ring vs socket.** A lab node: pod ``client`` mirrored by a sniff-mode sidecar,
   pod ``server``, and ``nodeagent run`` receiving the tunnel. At each fixed offered load (iperf3
   from client to server: 64-byte UDP at 20,000 and 60,000 packets/s, TCP at 300 Mbit/s), a fresh
   sidecar with ``--sniff-io socket`` (one recvfrom + one sendto per frame) then with
   ``--sniff-io ring`` (TPACKET_V3 ring + sendmmsg). Printed: frames captured, sent, lost in the
   kernel (the sidecar's ``kernel_drops``, PACKET_STATISTICS), what the agent received, and the
   sidecar process's CPU seconds and microseconds per captured frame; the ring's CPU per frame
   as a share of the socket path's at the same load.
2. **The tunnel's MTU.** Kernel mode with the node's veths at 1500 (the tunnel datagram of a
   full-size frame is IP-fragmented) and at 1600 with ``--tunnel-mtu 1600`` (not): IP fragments
   reassembled at the agent per tunnel datagram, and the pod's bulk TCP throughput with mirroring
   as a share of the same pod's without, median of ``--reps`` interleaved pairs.
"""

from __future__ import annotations

import argparse
import os
import re
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

LOADS: list[tuple[str, dict[str, Any]]] = [
    ("UDP 64 B 20k pps", {"udp_len": 64, "bitrate": str(20_000 * 64 * 8)}),
    ("UDP 64 B 60k pps", {"udp_len": 64, "bitrate": str(60_000 * 64 * 8)}),
    ("TCP 300 Mbit/s", {"bitrate": "300M"}),
]


def counters(log: Path) -> dict[str, int]:
    """The sidecar's last counters line (written when it stops)."""
    line = [ln for ln in log.read_text().splitlines() if "sniff mode stopped:" in ln][-1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.split("stopped:", 1)[1])}


def sniff_row(lab: Lab, work: Workload, agent: podmirror.Agent, client: Pod, server: Pod, out: Path,
              io: str, load: dict[str, Any], seconds: float) -> dict[str, Any]:
    sidecar = podmirror.start_sidecar(lab, client, out, mode="sniff", extra=["--sniff-io", io])
    podmirror.wait_mirroring(lab, agent, client, sidecar)
    received0 = agent.wait_quiet()["pods"][client.key]["received"]
    cpu0, split0 = measure.cpu_seconds(sidecar.pid), measure.cpu_split(sidecar.pid)
    work.iperf(client, server, seconds=seconds, **load)
    cpu = measure.cpu_seconds(sidecar.pid) - cpu0
    user, system = (b - a for a, b in zip(split0, measure.cpu_split(sidecar.pid), strict=True))
    received = agent.wait_quiet()["pods"][client.key]["received"] - received0
    rss = measure.rss_bytes(sidecar.pid)
    assert lab.ns.stop(sidecar, timeout=15) == 0
    c = counters(out / f"sidecar-{client.name}.log")
    captured = c["captured_in"] + c["captured_out"]
    return {"captured": captured, "sent": c["sent"], "kernel_drops": c["kernel_drops"],
            "send_errors": c["send_errors"], "received": received, "cpu": cpu, "user": user, "system": system,
            "per_frame_us": cpu / max(1, captured) * 1e6, "rss_mib": rss / 2**20}


def sniff_section(seconds: float, out: Path) -> None:
    lab = Lab("pmscb", workdir=out)
    try:
        node = lab.add_node()
        client, server = lab.add_pod(node, "client"), lab.add_pod(node, "server")
        lab.add_agent(node)
        work = Workload(lab, out)
        work.start_servers(server)
        agent = podmirror.start_agent(lab, node, out, pods=[client], extra=["--workers", "1"])
        print(f"\n1) sniff mode, {seconds:.0f} s per load, the agent receiving (nodeagent run --workers 1)")
        print(f"{'load':<18}{'io':>7}{'captured':>10}{'sent':>9}{'k.drops':>9}{'agent rx':>10}"
              f"{'CPU s':>8}{'user/sys':>11}{'us/frame':>10}{'RSS MiB':>9}{'ring/socket':>13}")
        for label, load in LOADS:
            rows = {io: sniff_row(lab, work, agent, client, server, out, io, load, seconds)
                    for io in ("socket", "ring")}
            for io, r in rows.items():
                share = f"{r['per_frame_us'] / rows['socket']['per_frame_us']:.2f}" if io == "ring" else ""
                print(f"{label:<18}{io:>7}{r['captured']:>10}{r['sent']:>9}{r['kernel_drops']:>9}"
                      f"{r['received']:>10}{r['cpu']:>8.2f}{r['user']:>6.2f}/{r['system']:.2f}"
                      f"{r['per_frame_us']:>10.1f}{r['rss_mib']:>9.1f}"
                      f"{share:>13}", flush=True)
        agent.stop()
    finally:
        lab.close()


def mtu_pair(lab: Lab, work: Workload, client: Pod, server: Pod, out: Path, extra: list[str],
             seconds: float) -> tuple[float, float, float]:
    """(Gbit/s without mirroring, Gbit/s with, IP fragments reassembled per tunnel datagram)."""
    base = work.iperf(client, server, seconds=seconds)["bps"] / 1e9
    agent_ns = client.node.agent.ns  # type: ignore[union-attr]
    sidecar = podmirror.start_sidecar(lab, client, out, mode="kernel", extra=extra)
    try:
        deadline = time.monotonic() + 15
        while lab.tunnel_tx_packets(client) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        reasm0, udp0 = lab.ip_stats(agent_ns)["ReasmReqds"], udp_datagrams(lab, agent_ns)
        mirrored = work.iperf(client, server, seconds=seconds)["bps"] / 1e9
        frags = lab.ip_stats(agent_ns)["ReasmReqds"] - reasm0
        datagrams = udp_datagrams(lab, agent_ns) - udp0
    finally:
        lab.ns.stop(sidecar, timeout=15)
    return base, mirrored, frags / max(1, datagrams)


def udp_datagrams(lab: Lab, ns: str) -> int:
    """UDP datagrams that reached the namespace's sockets (delivered or dropped for a full buffer):
    the tunnel's, as the agent's end sees them (a GSO super-packet the kernel cut counts per cut)."""
    udp = lab.ns.snmp(ns)["Udp"]
    return udp["InDatagrams"] + udp["RcvbufErrors"]


def mtu_section(seconds: float, reps: int, out: Path) -> None:
    print(f"\n2) the tunnel's MTU, kernel mode, {reps} interleaved pairs of {seconds:.0f} s bulk TCP")
    print(f"{'setup':<40}{'TCP Gbit/s none -> mirrored':>30}{'ratio':>8}{'frags/datagram':>16}")
    for label, node_mtu, extra in (("node veths 1500, default (fragments)", 1500, []),
                                   ("node veths 1600, --tunnel-mtu 1600", 1600, ["--tunnel-mtu", "1600"])):
        lab = Lab("pmscb", node_mtu=node_mtu, workdir=out)
        try:
            node = lab.add_node()
            client, server = lab.add_pod(node, "client"), lab.add_pod(node, "server")
            lab.add_agent(node)
            work = Workload(lab, out)
            work.start_servers(server)
            work.start_sink(node.agent, 14789)  # type: ignore[arg-type]  # the tunnel's end: no ICMP errors
            pairs = [mtu_pair(lab, work, client, server, out, extra, seconds) for _ in range(reps)]
        finally:
            lab.close()
        base = statistics.median(p[0] for p in pairs)
        mirrored = statistics.median(p[1] for p in pairs)
        ratio = statistics.median(p[1] / p[0] for p in pairs)
        print(f"{label:<40}{f'{base:.1f} -> {mirrored:.1f}':>30}{ratio:>8.2f}"
              f"{statistics.median(p[2] for p in pairs):>16.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=("sniff", "mtu"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_sidecar: needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pmscb-") as tmp:
        if args.only in (None, "sniff"):
            sniff_section(args.seconds, Path(tmp))
        if args.only in (None, "mtu"):
            mtu_section(args.seconds, args.reps, Path(tmp))
    print(f"\n(kernel {os.uname().release}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
