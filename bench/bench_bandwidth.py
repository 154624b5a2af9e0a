"""Bytes crossing the node's uplink per byte monitored: podmirror against the direct design.

Run (root, about 30 s; namespaces ``pmplbw-*``): ``sudo .venv/bin/python bench/bench_bandwidth.py``.

The standard lab workload (one node, pods ``client`` and ``web`` both monitored, kernel-mode
sidecars, the agent with its defaults plus the drop-health-probes preset, one remote sensor):

- intra-node: ``rounds`` x (HTTP GET of 20 kB, DNS query, TLS GET of 20 kB, 2 pings) client -> web;
- a TLS bulk transfer: client downloads ``--tls-mb`` MB over TLS from an outside host;
- kubelet health probes: ``--probes`` HTTP GETs from the node's address to web;
- all IPv4 and IPv6 where the workload has both (HTTP, DNS, TLS, ping intra-node).

Figures (same run, same packets):

- monitored: inner frame bytes the sidecars mirrored (the agent's received bytes minus the 8-byte
  VXLAN headers), i.e. what the pods' eth0 carried, counted at each monitored pod;
- direct design: every sidecar sends each copy straight to the remote sensor: received datagram
  bytes + 42 (outer UDP, IP, Ethernet) each; IP fragmentation of super-packets is not counted, so
  this underestimates the direct design's cost (the ratio below is conservative);
- podmirror: bytes the sensor host's eth0 received (the agent's VXLAN output, which crossed the
  node's uplink), read from the kernel's counters.

The sensor must still see every connection: every TCP SYN of the client's ground truth (tcpdump on
its eth0), except the probes the preset drops, is in the sensor's capture.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nodeagent.lab import capture, podmirror  # noqa: E402
from nodeagent.lab.topology import Lab, Pod  # noqa: E402
from nodeagent.lab.traffic import HTTP_PORT, TLS_PORT  # noqa: E402
from nodeagent.lab.workload import Workload  # noqa: E402

OUTER = 42
"""Ethernet + IPv4 + UDP in front of each VXLAN datagram sent to a remote sensor."""


def python_in(lab: Lab, ns: str, code: str, timeout: float = 120) -> str:
    prelude = f"import sys; sys.path.insert(0, {str(podmirror.SOURCE_ROOT)!r})\n"
    return lab.ns.exec(ns, [sys.executable, "-c", prelude + code], timeout=timeout).stdout


def tls_bulk(lab: Lab, client: Pod, host_ip: str, cafile: Path) -> int:
    code = ("from nodeagent.lab.traffic import _tls\n"
            f"print(_tls({host_ip!r}, {TLS_PORT}, {str(cafile)!r}))\n")
    return int(python_in(lab, client.ns, code).strip().splitlines()[-1])


def probes(lab: Lab, node_ns: str, target: str, count: int) -> None:
    code = ("import urllib.request\n"
            f"for _ in range({count}):\n"
            f"    urllib.request.urlopen('http://{target}:{HTTP_PORT}/healthz', timeout=5).read()\n")
    python_in(lab, node_ns, code)


def syns(traffic: capture.Traffic) -> set[tuple[str, ...]]:
    return {k[:5] for k in traffic.packets if k[0] == "tcp" and k[5] == "0x0002"}


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    lab = Lab("pmplbw", workdir=out)
    try:
        node = lab.add_node()
        client, web = lab.add_pod(node, "client"), lab.add_pod(node, "web")
        sensor, ext = lab.add_host("sensor"), lab.add_host("ext")
        lab.add_agent(node)
        work = Workload(lab, out)
        work.start_sink(sensor)
        config = {"filters": {"presets": ["drop-health-probes"], "node_ip": node.gateway}}
        agent = podmirror.start_agent(lab, node, out, sensors=[sensor], config=config)
        sidecars = [podmirror.start_sidecar(lab, p, out, extra=["--tunnel-mtu", "1600"])
                    for p in (client, web)]
        for pod, proc in zip((client, web), sidecars, strict=True):
            podmirror.wait_mirroring(lab, agent, pod, proc)
        work.start_servers(web, iperf=False)
        work.start_servers(ext, iperf=False, body=args.tls_mb * 1_000_000)
        base = agent.wait_quiet(timeout=30.0)
        sensor_dump = capture.start_tcpdump(lab, sensor.ns, "eth0", out / "sensor.pcap", "udp port 4789")
        truth_dump = capture.start_tcpdump(lab, client.ns, "eth0", out / "truth.pcap",
                                           f"not (ip dst host {agent.ip} and ip proto 17)")
        sensor_before = lab.counters(sensor.ns, "eth0")
        done = work.client(client, web, rounds=args.rounds)
        done["tls_bulk"] = tls_bulk(lab, client, ext.ip, work.cert)
        probes(lab, node.ns, web.ip, args.probes)
        st = agent.wait_quiet(timeout=30.0)
        capture.stop_tcpdump(lab, truth_dump, out / "truth.pcap")
        capture.stop_tcpdump(lab, sensor_dump, out / "sensor.pcap")
        sensor_after = lab.counters(sensor.ns, "eth0")
        for proc in sidecars:
            lab.ns.stop(proc, timeout=10)
        agent.stop()
    finally:
        lab.close()
    capture.strip_vxlan(out / "sensor.pcap", out / "sensor-inner.pcap")
    return {"base": base, "status": st, "done": done,
            "sensor_bytes": sensor_after["rx_bytes"] - sensor_before["rx_bytes"],
            "truth": capture.decode(out / "truth.pcap"), "sensor": capture.decode(out / "sensor-inner.pcap"),
            "node_ip": node.gateway}


def report(r: dict[str, Any]) -> None:
    st, base = r["status"], r["base"]
    received = st["received"] - base["received"]
    received_bytes = st["received_bytes"] - base["received_bytes"]
    monitored = received_bytes - 8 * received
    direct = received_bytes + OUTER * received
    podmirror_bytes = r["sensor_bytes"]
    print(f"workload done: {r['done']}")
    print(f"monitored at the pods: {monitored} bytes in {received} frames (both pods' copies)")
    print(f"direct design (each sidecar -> remote sensor): {direct} bytes over the uplink")
    print(f"podmirror (agent -> remote sensor):            {podmirror_bytes} bytes over the uplink")
    print(f"podmirror / direct = {podmirror_bytes / direct:.3f}   (target <= 0.25); "
          f"per monitored byte: direct {direct / monitored:.3f}, podmirror {podmirror_bytes / monitored:.3f}")
    drops = {k: v - base["drops"].get(k, 0) for k, v in st["drops"].items() if v - base["drops"].get(k, 0)}
    saved = {k: v - base.get("saved_bytes", {}).get(k, 0) for k, v in st.get("saved_bytes", {}).items()}
    print(f"agent drops: {drops}; bytes kept off the outputs by mechanism: {saved}")
    expected = {k for k in syns(r["truth"]) if r["node_ip"] not in k}
    missing = expected - syns(r["sensor"])
    print(f"connections (TCP SYNs) in the client's ground truth: {len(expected)}; "
          f"missing at the sensor: {len(missing)} {sorted(missing)[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tls-mb", type=int, default=8)
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pmplbw-") as tmp:
        report(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
