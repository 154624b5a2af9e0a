"""``nodeagent lab``: build a node from namespaces, mirror its pods, drive traffic, summarize, clean up.

The run, in order: topology (one node with ``--pods`` pods, the agent, a remote sensor host and an
external server host behind the fabric); the sensor's tcpdump (UDP 4789 -> ``sensor.pcap``); the
agent (pcap output in ``<output>/pcap``, VXLAN output to the sensor); one sidecar per pod; traffic
for ``--duration`` seconds (client -> web and extra pods -> web inside the node; egress -> ext
outside it; HTTP, DNS/UDP, TLS, ICMP and ICMPv6 each round; one iperf3 bulk TCP transfer); then the
summary. ``--pod-table apiserver``: the agent learns the pods from a real kube-apiserver
instead of ``--sender`` flags (``kubelab``). Every namespace and process goes away at the end, on
Ctrl-C, SIGTERM and failure (the ``Namespaces`` registry: try/finally plus atexit), unless
``--keep`` asks to leave it running; ``--cleanup`` removes what a killed lab (kill -9) left.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from nodeagent.lab import capture, kubelab, netns, podmirror
from nodeagent.lab.netns import LabError
from nodeagent.lab.topology import Host, Lab, Node, Pod
from nodeagent.lab.workload import Workload

PROGRESS_EVERY = 2.0
"""Seconds between two progress lines."""
MIN_UNFRAGMENTED_MTU = 1550
"""1500-byte frames + 50 bytes of VXLAN over IPv4: the node MTU below which the tunnel fragments."""


@dataclasses.dataclass
class Run:
    lab: Lab
    node: Node
    out: Path
    web: Pod
    client: Pod
    egress: Pod
    extra: list[Pod]
    sensor: Host
    ext: Host
    agent: podmirror.Agent | None = None
    sidecars: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    sensor_dump: subprocess.Popen[bytes] | None = None
    uplink_before: dict[str, int] = dataclasses.field(default_factory=dict)
    mirrored_before: dict[str, int | None] = dataclasses.field(default_factory=dict)
    received_before: dict[str, int] = dataclasses.field(default_factory=dict)
    totals: dict[str, int] = dataclasses.field(default_factory=dict)
    iperf: dict[str, Any] = dataclasses.field(default_factory=dict)
    kube: kubelab.KubeLab | None = None


def register(subparsers: Any) -> None:
    """Register ``lab`` on the ``nodeagent`` command's subparsers (cli.py's two-line hook)."""
    p = subparsers.add_parser("lab", help="run the local lab (root): a node of namespaces, mirrored pods")
    configure(p)
    p.set_defaults(func=run)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pods", type=int, default=3, help="pods on the node (>= 3; default 3)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of traffic (default 15)")
    p.add_argument("--sidecar-mode", choices=("kernel", "sniff", "auto"), default="kernel")
    p.add_argument("--node-mtu", type=int, default=1600,
                   help="MTU of the node-side veths (default 1600: no tunnel fragments; 1500 shows them)")
    p.add_argument("--output", type=Path, help="pcaps and logs (default ./podmirror-lab-<time>)")
    p.add_argument("--keep", action="store_true", help="leave the lab running until Ctrl-C, to explore it")
    p.add_argument("--cleanup", action="store_true",
                   help="only remove namespaces left by labs whose process died (e.g. kill -9), then exit")
    p.add_argument("--iperf-seconds", type=float, default=3.0)
    p.add_argument("--iperf-rate", default="500M",
                   help="iperf3 bitrate (default 500M: no loss to pcap + VXLAN on a quiet 2-core VM; "
                        "0 = unlimited)")
    p.add_argument("--workers", default="auto",
                   help="the agent's worker processes (default auto: one per CPU, nodeagent run --workers)")
    p.add_argument("--pod-table", choices=("static", "apiserver"), default="static",
                   help="where the agent learns its pods: --sender flags (static), or a real kube-apiserver "
                        "in the agent's namespace (apiserver; see nodeagent/lab/kubelab.py)")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    if args.cleanup:
        stale = netns.reap_stale("pmlab")
        print(f"lab: removed {len(stale)} stale namespaces {' '.join(stale)}")
        return 0
    if args.pods < 3:
        print("nodeagent lab: --pods must be >= 3", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("nodeagent lab: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if args.pod_table == "apiserver" and (why := kubelab.missing()):
        print(f"nodeagent lab: --pod-table apiserver: {why}; run .ci/apiserver.sh first", file=sys.stderr)
        return 2
    out = (args.output or Path(f"podmirror-lab-{time.strftime('%Y%m%d-%H%M%S')}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Both set explicitly: a process started with SIGINT ignored (a shell's background job, a CI
    # harness) gets no KeyboardInterrupt from Python, and the lab would run to its end, leaving the
    # cleanup to chance; the agent (asyncio signal handlers) already answers both whatever it inherited.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    lab = Lab("pmlab", node_mtu=args.node_mtu, workdir=out)
    try:
        r = build(lab, args, out)
        start(r, args)
        drive(r, args)
        summarize(r, args)
        if args.keep:
            keep(r)
        finish(r)
        return 0
    except KeyboardInterrupt:
        print("\nlab: interrupted, cleaning up", flush=True)
        return 130
    except LabError as exc:
        print(f"lab: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        lab.close()
        kubelab.remove_data(out)
        print(f"lab: removed namespaces {lab.tag}*", flush=True)


def say(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def build(lab: Lab, args: argparse.Namespace, out: Path) -> Run:
    say(f"building the node (namespaces {lab.tag}*, node-side MTU {args.node_mtu})")
    node = lab.add_node()
    web, client, egress = (lab.add_pod(node, name) for name in ("web", "client", "egress"))
    extra = [lab.add_pod(node, f"client{i}") for i in range(2, args.pods - 1)]
    lab.add_agent(node)
    sensor, ext = lab.add_host("sensor"), lab.add_host("ext")
    return Run(lab, node, out, web, client, egress, extra, sensor, ext)


def start(r: Run, args: argparse.Namespace) -> None:
    Workload(r.lab, r.out).start_sink(r.sensor)
    r.sensor_dump = capture.start_tcpdump(r.lab, r.sensor.ns, "eth0", r.out / "sensor.pcap", "udp port 4789")
    if args.pod_table == "apiserver":
        say("starting etcd and kube-apiserver in the agent's namespace; pods created with kubectl")
        r.kube = kubelab.setup(r.lab, r.node, r.out)
    extra = ["--workers", args.workers] + ([] if r.kube is None else r.kube.agent_args)
    r.agent = podmirror.start_agent(r.lab, r.node, r.out, sensors=[r.sensor], pcap_dir=r.out / "pcap",
                                    pods=None if r.kube is None else [], extra=extra)
    if r.kube is not None:
        wait_kube_synced(r.agent, r.kube)
    say(f"agent ready at {r.agent.ip} (tunnels :14789, status :9477); sensor {r.sensor.ip}:4789")
    extra = ["--tunnel-mtu", str(args.node_mtu)] if args.node_mtu >= MIN_UNFRAGMENTED_MTU else []
    for pod in r.node.pods:
        r.sidecars[pod.key] = podmirror.start_sidecar(r.lab, pod, r.out, mode=args.sidecar_mode, rules=True,
                                                          extra=extra)
    for pod in r.node.pods:
        podmirror.wait_mirroring(r.lab, r.agent, pod, r.sidecars[pod.key])
    say(f"{len(r.sidecars)} sidecars mirroring ({args.sidecar_mode} mode)")
    r.uplink_before = r.lab.counters(r.node.ns, "uplink")
    r.mirrored_before = {pod.key: r.lab.tunnel_tx_packets(pod) for pod in r.node.pods}
    r.received_before = {k: c["received"] for k, c in r.agent.status()["pods"].items()}


def wait_kube_synced(agent: podmirror.Agent, kube: kubelab.KubeLab, timeout: float = 30.0) -> None:
    """Sidecars start only once the agent knows every pod from the API (no unknown_sender drops)."""
    deadline = time.monotonic() + timeout
    while not kubelab.synced(kube, status := agent.status()):
        if agent.proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the agent did not learn {kube.pods} from the API: {status.get('kube')}; "
                           f"see {agent.log}")
        time.sleep(0.1)
    say(kubelab.summary_line(kube, status))


def drive(r: Run, args: argparse.Namespace) -> None:
    work = Workload(r.lab, r.out)
    work.start_servers(r.web)
    work.start_servers(r.ext, iperf=False)
    say(f"traffic for {args.duration:.0f}s: HTTP, DNS/UDP, TLS, ICMP(v6); one iperf3 TCP bulk transfer")
    t0 = time.monotonic()
    rounds, shown = 0, -PROGRESS_EVERY
    while (elapsed := time.monotonic() - t0) < args.duration or rounds == 0:
        pairs: list[tuple[Pod, Pod | Host]] = [(r.client, r.web), (r.egress, r.ext)]
        for client, server in pairs + [(p, r.web) for p in r.extra]:
            for k, v in work.client(client, server).items():
                r.totals[k] = r.totals.get(k, 0) + v
        # One bulk transfer, after a first round of small exchanges when the duration allows it.
        if not r.iperf and (rounds == 1 or args.duration < 2 * args.iperf_seconds):
            r.iperf = work.iperf(r.client, r.web, seconds=args.iperf_seconds, bitrate=args.iperf_rate)
        rounds += 1
        if elapsed - shown >= PROGRESS_EVERY:
            progress(r, elapsed)
            shown = elapsed


def progress(r: Run, elapsed: float) -> None:
    assert r.agent is not None
    st = r.agent.status()
    up = r.lab.counters(r.node.ns, "uplink")
    t = dict.fromkeys(("http_bytes", "dns_ok", "tls_bytes", "ping_replies", "errors"), 0) | r.totals
    say(f"[{elapsed:5.1f}s] http {t['http_bytes'] // 1000} kB, dns {t['dns_ok']}, "
        f"tls {t['tls_bytes'] // 1000} kB, ping {t['ping_replies']}, errors {t['errors']}"
        f" | agent received {st['received']} forwarded {st['forwarded']} dropped {sum(st['drops'].values())}"
        f" | uplink tx {(up['tx_bytes'] - r.uplink_before['tx_bytes']) / 1e6:.1f} MB")


def summarize(r: Run, args: argparse.Namespace) -> None:
    assert r.agent is not None
    sent = tunnel_sent(r)
    st = settled_status(r, sent)
    up = r.lab.counters(r.node.ns, "uplink")
    sensor_rx = r.lab.counters(r.sensor.ns, "eth0")
    print("\n== podmirror lab summary ==")
    print(kubelab.summary_line(r.kube, st))
    print(f"{'pod (at the agent)':24} {'mode':>7} {'packets':>10} {'bytes':>14} {'forwarded':>10} "
          f"{'dropped':>8}")
    for key, c in sorted(st.get("pods", {}).items()):
        print(f"{key:24} {c.get('mode', '?'):>7} {c['received']:>10} {c['received_bytes']:>14} "
              f"{c['forwarded']:>10} {sum(c['drops'].values()):>8}")
    print(f"agent totals: received {st['received']} = forwarded {st['forwarded']} + drops "
          f"{ {k: v for k, v in st['drops'].items() if v} or 0} + held {st.get('held', 0)}")
    coverage(r, st, sent)
    print(f"agent socket: {st.get('socket', {})} (kernel_drops: datagrams lost before the agent read them)")
    for w in st.get("workers", []):
        print(f"  worker {w['index']}: received {w['received']}, forwarded {w['forwarded']}, socket drops "
              f"{w['kernel_drops']}, CPU {w['cpu_seconds']:.1f} s, RSS {w['rss_bytes'] / 2**20:.0f} MiB")
    norm = st.get("normalize", {})
    if norm:
        print(f"normalized for sensors: {norm['segmented']} GSO super-packets re-segmented into "
              f"{norm['segments']} frames of at most {norm['max_frame']} bytes, {norm['checksums_fixed']} "
              "partial checksums completed (so outputs count more packets than `forwarded`)")
    for name, state in st.get("outputs", {}).items():
        print(f"output {name}: {compact(state)}")
        for sensor in state.get("sensors", []) if isinstance(state, dict) else []:
            print(f"    sensor {compact(sensor)}")
    if r.iperf:
        print(f"iperf3 client -> web: {r.iperf['bps'] / 1e9:.2f} Gbit/s, {r.iperf['bytes'] / 1e6:.0f} MB")
    print(f"node uplink during traffic: tx {up['tx_bytes'] - r.uplink_before['tx_bytes']} bytes, "
          f"rx {up['rx_bytes'] - r.uplink_before['rx_bytes']} bytes; the sensor host received "
          f"{sensor_rx['rx_bytes']} bytes in {sensor_rx['rx_packets']} packets")
    mtu = (f"raised to {args.node_mtu}: a VXLAN copy of a full-size frame (1550 bytes) is not fragmented"
           if args.node_mtu >= MIN_UNFRAGMENTED_MTU else
           f"{args.node_mtu}: VXLAN copies of full-size frames are IP-fragmented between pod and agent")
    assert r.node.agent is not None
    reasm = r.lab.ip_stats(r.node.agent.ns)["ReasmOKs"]
    print(f"node-side veth MTU {mtu}; tunnel datagrams reassembled from fragments at the agent: {reasm}")
    saved = {k: v for k, v in st.get("saved_bytes", {}).items() if v}
    print(f"bytes the agent kept off its outputs, by mechanism: {saved or 'none'}")
    pcaps = sorted((r.out / "pcap").glob("*"))
    print(f"agent pcap files ({len(pcaps)}): {r.out / 'pcap'}  e.g. tshark -r {pcaps[0] if pcaps else '...'}")
    print(f"sensor capture: {r.out / 'sensor.pcap'}; logs: {r.out}/*.log")


def compact(state: Any) -> str:
    """An output's state on one line: its scalar fields, without the empty ones, and what it
    dropped by reason (``verdict.OutputDrop``)."""
    if not isinstance(state, dict):
        return str(state)
    fields = [f"{k}={v}" for k, v in state.items() if not isinstance(v, (dict, list)) and v not in ("", None)]
    dropped = state.get("dropped")
    if isinstance(dropped, dict):
        fields.append("dropped " + (", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "0"))
    return ", ".join(fields) or "-"


def tunnel_sent(r: Run) -> int | None:
    """Kernel mode: packets the pods' VXLAN devices sent since the traffic began (None otherwise)."""
    sent = 0
    for pod in r.node.pods:
        before, after = r.mirrored_before.get(pod.key), r.lab.tunnel_tx_packets(pod)
        if before is None or after is None:
            return None
        sent += after - before
    return sent


def tunnel_received(r: Run, st: dict[str, Any]) -> int:
    return sum(st["pods"][pod.key]["received"] - r.received_before.get(pod.key, 0) for pod in r.node.pods)


def settled_status(r: Run, sent: int | None) -> dict[str, Any]:
    """The agent's status once it has read what the tunnels sent (the last datagrams may still sit
    in its socket), or after 3 s: what is missing then is lost, and ``kernel_drops`` says where."""
    assert r.agent is not None
    deadline = time.monotonic() + 3.0
    st = r.agent.status()
    while sent is not None and tunnel_received(r, st) < sent and time.monotonic() < deadline:
        time.sleep(0.1)
        st = r.agent.status()
    return st


def coverage(r: Run, st: dict[str, Any], sent: int | None) -> None:
    if sent is None:
        return
    received = tunnel_received(r, st)
    lost = sent - received
    print(f"tunnel during traffic: sidecars' VXLAN devices sent {sent} packets, the agent received {received}"
          f" ({lost} lost on the way{', see kernel_drops' if lost else ''})")


def finish(r: Run) -> None:
    """Stop sidecars (they remove their kernel state), then the agent (it flushes), then the sensor."""
    codes = {key: r.lab.ns.stop(proc, timeout=10.0) for key, proc in r.sidecars.items()}
    assert r.agent is not None
    code = r.agent.stop()
    if r.sensor_dump is not None:
        capture.stop_tcpdump(r.lab, r.sensor_dump)
    say(f"sidecars exited {sorted(set(codes.values()))}, agent exited {code}")


def keep(r: Run) -> None:
    say("--keep: the lab stays up until Ctrl-C. Enter a namespace with:")
    for name in r.lab.ns.names:
        print(f"    ip netns exec {name} bash")
    if r.agent is not None and r.node.agent is not None:
        print(f"  the agent's status: ip netns exec {r.node.agent.ns} curl -s http://{r.agent.ip}:9477/status")
        print(f"  watch a pod: ip netns exec {r.client.ns} tcpdump -ni eth0")
    if r.kube is not None:
        print(f"  the API: {kubelab.kubectl_hint(r.kube)} get pods -A -o wide")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodeagent lab", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))
