"""Bytes crossing the node's uplink to the remote sensor: podmirror against the direct design, both run.

Run (root, about a minute; namespaces ``pmplbw-*``): ``sudo .venv/bin/python bench/bench_bandwidth.py``.

The same workload twice in one invocation, each on a fresh lab node (pods ``client`` and ``web``
monitored by kernel-mode sidecars with ``--tunnel-mtu 1600``, a remote ``sensor`` host, an
outside host ``ext``):

- ``rounds`` x (HTTP GET of 20 kB, DNS query, TLS GET of 20 kB, 2 pings) client -> web, IPv4
  and IPv6; a TLS download of ``--tls-mb`` MB from ``ext``; ``--probes`` kubelet-style HTTP
  probes from the node's address to web;
- **podmirror**: sidecars -> the node agent (its defaults plus the drop-health-probes preset)
  -> VXLAN to the sensor;
- **direct**: every sidecar sends its VXLAN straight to the sensor (``--agent SENSOR:4789``), the
  design without a node agent.

Measured, not computed: what the sensor host's interface received (every byte of it crossed the
node's uplink and nothing else goes to the sensor), in packets and bytes. The uplink's GSO is
limited to one segment (``gso_max_segs 1``), so the kernel cuts super-packets into wire-sized
packets before the uplink, as a NIC would: both designs are counted in the packets a wire
carries (bytes as the interface counts them: from the Ethernet header, no preamble or FCS).
Also printed: the bytes the pods' eth0 carried (monitored: the frames their VXLAN devices
mirrored) and whether the sensor saw every TCP
connection of the client's ground truth in the podmirror run (the preset drops only the probes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nodeagent.lab import capture, podmirror  # noqa: E402
from nodeagent.lab.topology import SENSOR_PORT, Lab, Pod  # noqa: E402
from nodeagent.lab.traffic import HTTP_PORT, TLS_PORT  # noqa: E402
from nodeagent.lab.workload import Workload  # noqa: E402


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


def run(design: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    lab = Lab("pmplbw", workdir=out)
    try:
        node = lab.add_node()
        client, web = lab.add_pod(node, "client"), lab.add_pod(node, "web")
        sensor, ext = lab.add_host("sensor"), lab.add_host("ext")
        lab.add_agent(node)
        lab.ns.ip(node.ns, "link", "set", "uplink", "gso_max_segs", "1")
        work = Workload(lab, out)
        work.start_sink(sensor)
        extra = ["--tunnel-mtu", "1600"]
        agent = None
        if design == "podmirror":
            config = {"filters": {"presets": ["drop-health-probes"], "node_ip": node.gateway}}
            agent = podmirror.start_agent(lab, node, out, sensors=[sensor], config=config)
            sidecars = [podmirror.start_sidecar(lab, p, out, extra=extra) for p in (client, web)]
            for pod, proc in zip((client, web), sidecars, strict=True):
                podmirror.wait_mirroring(lab, agent, pod, proc)
        else:
            extra += ["--agent", f"{sensor.ip}:{SENSOR_PORT}"]
            sidecars = [podmirror.start_sidecar(lab, p, out, extra=extra) for p in (client, web)]
            _wait_direct(lab, sensor, (client, web))
        work.start_servers(web, iperf=False)
        work.start_servers(ext, iperf=False, body=args.tls_mb * 1_000_000)
        if agent is not None:
            agent.wait_quiet(timeout=30.0)
        truth_path, sensor_path = out / f"truth-{design}.pcap", out / f"sensor-{design}.pcap"
        sensor_dump = capture.start_tcpdump(lab, sensor.ns, "eth0", sensor_path, f"udp port {SENSOR_PORT}")
        tunnel = agent.ip if agent is not None else sensor.ip
        truth_dump = capture.start_tcpdump(lab, client.ns, "eth0", truth_path,
                                           f"not (ip dst host {tunnel} and ip proto 17)")
        before = {"sensor": lab.counters(sensor.ns, "eth0"), **_mirrored(lab, (client, web))}
        done = work.client(client, web, rounds=args.rounds)
        done["tls_bulk"] = tls_bulk(lab, client, ext.ip, work.cert)
        probes(lab, node.ns, web.ip, args.probes)
        if agent is not None:
            agent.wait_quiet(timeout=30.0)
        capture.stop_tcpdump(lab, truth_dump, truth_path)
        capture.stop_tcpdump(lab, sensor_dump, sensor_path)
        after = {"sensor": lab.counters(sensor.ns, "eth0"), **_mirrored(lab, (client, web))}
        for proc in sidecars:
            lab.ns.stop(proc, timeout=10)
        if agent is not None:
            agent.stop()
    finally:
        lab.close()
    d = {side: {k: after[side][k] - before[side][k] for k in after[side]} for side in after}
    monitored = d["client"]["tx_bytes"] + d["web"]["tx_bytes"]
    result: dict[str, Any] = {"done": done, "sensor_bytes": d["sensor"]["rx_bytes"],
                              "sensor_packets": d["sensor"]["rx_packets"], "monitored": monitored}
    if design == "podmirror":
        capture.strip_vxlan(sensor_path, out / "sensor-inner.pcap")
        expected = {k for k in syns(capture.decode(truth_path)) if node.gateway not in k}
        result["missing"] = expected - syns(capture.decode(out / "sensor-inner.pcap"))
        result["connections"] = len(expected)
    return result


def _mirrored(lab: Lab, pods: tuple[Pod, ...]) -> dict[str, dict[str, int]]:
    """Per pod, its kernel-mode VXLAN device's counters: ``tx_bytes`` is the frames it mirrored
    (what the pod's eth0 carried, without the tunnel's own datagrams, which eth0 also carries)."""
    out = {}
    for pod in pods:
        devs = [line.split(":")[1].strip().split("@")[0]
                for line in lab.ns.ip(pod.ns, "-o", "link", "show", "type", "vxlan").splitlines()]
        out[pod.name] = lab.counters(pod.ns, devs[0])
    return out


def _wait_direct(lab: Lab, sensor: Any, pods: tuple[Pod, ...], timeout: float = 20.0) -> None:
    """The direct sidecars mirror when a probe from each pod reaches the sensor's interface."""
    import time

    for pod in pods:
        deadline, start = time.monotonic() + timeout, lab.counters(sensor.ns, "eth0")["rx_packets"]
        while lab.counters(sensor.ns, "eth0")["rx_packets"] == start:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no VXLAN from {pod.key} at the sensor")
            podmirror.probe(lab, pod)
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tls-mb", type=int, default=8)
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pmplbw-") as tmp:
        runs = {design: run(design, args, Path(tmp)) for design in ("direct", "podmirror")}
    print(f"workload: {runs['podmirror']['done']}")
    print(f"{'design':<12}{'monitored bytes':>17}{'to the sensor: packets':>24}{'bytes':>14}"
          f"{'per monitored byte':>20}")
    for design, r in runs.items():
        print(f"{design:<12}{r['monitored']:>17,}{r['sensor_packets']:>24,}{r['sensor_bytes']:>14,}"
              f"{r['sensor_bytes'] / r['monitored']:>20.3f}")
    ratio = runs["podmirror"]["sensor_bytes"] / runs["direct"]["sensor_bytes"]
    print(f"podmirror / direct uplink bytes = {ratio:.3f}; packets "
          f"{runs['podmirror']['sensor_packets'] / runs['direct']['sensor_packets']:.3f}")
    p = runs["podmirror"]
    print(f"connections (TCP SYNs) in the client's ground truth: {p['connections']}; missing at the sensor: "
          f"{len(p['missing'])} {sorted(p['missing'])[:5]}")


if __name__ == "__main__":
    main()
