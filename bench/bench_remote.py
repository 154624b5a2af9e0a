"""Remote leg: bytes and packets on the wire per byte monitored, VXLAN vs batched, plus latency.

One lab run (root; namespaces ``pmrsb*``): a node with 3 mirrored pods (kernel-mode sidecars), the
agent with *both* outputs on (VXLAN to a sensor host, batched TLS to a collector host), so both
carry exactly the same kept packets. The wire figures are the kernel counters of each remote
host's eth0 (the VXLAN sensor receives only the VXLAN output; the collector's eth0 carries the
batched output both ways, TCP ACKs and TLS included). The design without an agent (sidecars
straight to the sensor) is ``bench/bench_bandwidth.py``'s, run there. Latency: the collector's
capture-to-delivery delays (the agent's reception time to the collector writing the pcapng) at
the default flush delay.

Compression is measured on content that does not repeat: the HTTP server answers each request
with the next document of a corpus of this machine's text, JSON and HTML files (about 24 MB, each
content once: ``traffic.corpus_files``), so zstd's window never holds an earlier copy of a body.
Phases: ``mixed`` (the lab workload's HTTP, DNS, TLS and ping rounds, HTTP bodies from the
corpus), ``corpus bulk`` (``--corpus-gets`` HTTP downloads of corpus documents in a row), and
``random bulk`` (TCP with fresh ``os.urandom`` bytes: the incompressible worst case). Run:
``sudo .venv/bin/python bench/bench_remote.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

from nodeagent.lab import podmirror
from nodeagent.lab.collector import LabCollector, start_collector
from nodeagent.lab.podmirror import Agent
from nodeagent.lab.topology import Host, Lab
from nodeagent.lab.traffic import HTTP_PORT, corpus_files
from nodeagent.lab.workload import Workload


def certs(out: Path, host: Host) -> tuple[str, str, str, str, str]:
    """CA, the collector's certificate and key, the agent's client certificate and key (mutual TLS)."""
    ca = trustme.CA()
    cert, client = ca.issue_cert(host.ip), ca.issue_cert("agent.lab")
    names = ("ca.pem", "collector.pem", "collector.key", "agent.pem", "agent.key")
    paths = tuple(str(out / n) for n in names)
    ca.cert_pem.write_to_path(paths[0])
    cert.cert_chain_pems[0].write_to_path(paths[1])
    cert.private_key_pem.write_to_path(paths[2])
    client.cert_chain_pems[0].write_to_path(paths[3])
    client.private_key_pem.write_to_path(paths[4])
    return paths  # type: ignore[return-value]


def snapshot(lab: Lab, agent: Agent, sensor: Host, coll: Host) -> dict[str, Any]:
    st = agent.status()
    s, c = lab.counters(sensor.ns, "eth0"), lab.counters(coll.ns, "eth0")
    vx, tr = st["outputs"]["vxlan"], st["outputs"]["transport"]
    return {
        "received": st["received"], "received_bytes": st["received_bytes"],
        "vxlan_packets": vx["packets"], "vxlan_bytes": sum(x["bytes"] for x in vx["sensors"]),
        "sensor_bytes": s["rx_bytes"], "sensor_packets": s["rx_packets"],
        "coll_bytes": c["rx_bytes"] + c["tx_bytes"], "coll_packets": c["rx_packets"] + c["tx_packets"],
        "offered": tr["offered"], "delivered": tr["delivered"], "dropped": sum(tr["dropped"].values()),
    }


def settle(agent: Agent, timeout: float = 20.0) -> None:
    """Wait until the transport has nothing queued or open (every batch acknowledged)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tr = agent.status()["outputs"]["transport"]
        if tr["queued_packets"] == 0 and tr["open_packets"] == 0:
            return
        time.sleep(0.1)


def report(name: str, a: dict[str, Any], b: dict[str, Any]) -> None:
    d = {k: b[k] - a[k] for k in a}
    frames = d["vxlan_bytes"] - 8 * d["vxlan_packets"]      # kept frame bytes (what is monitored)
    print(f"\n== {name}: {d['vxlan_packets']} kept packets, {frames} frame bytes monitored ==")
    print(f"{'design':34} {'wire bytes':>12} {'packets':>9} {'bytes/byte':>11} {'vs VXLAN':>9}")
    rows = [("agent VXLAN output (sensor eth0)", d["sensor_bytes"], d["sensor_packets"]),
            ("agent batched TLS (collector eth0)", d["coll_bytes"], d["coll_packets"])]
    for label, nbytes, npk in rows:
        print(f"{label:34} {nbytes:>12} {npk:>9} {nbytes / max(frames, 1):>11.3f} "
              f"{nbytes / max(d['sensor_bytes'], 1):>9.3f}")
    print(f"transport: offered {d['offered']} delivered {d['delivered']} dropped {d['dropped']}")


DISCARD_PORT = 5399
_DISCARD = (f"import socket\ns=socket.create_server(('0.0.0.0', {DISCARD_PORT}))\n"
            "while True:\n c,_=s.accept()\n while c.recv(1<<20): pass\n c.close()\n")
_RANDOM = (f"import os,socket,sys,time\nc=socket.create_connection((sys.argv[1], {DISCARD_PORT}))\n"
           "rate,end=float(sys.argv[2])/8,time.monotonic()+float(sys.argv[3])\n"
           "while time.monotonic()<end:\n c.sendall(os.urandom(int(rate/20)))\n time.sleep(0.05)\n"
           "c.close()\n")


def random_bulk(lab: Lab, client: Any, server: Any, bits_per_second: float, seconds: float) -> None:
    """TCP bulk with fresh random bytes (iperf3 repeats one random buffer, which zstd undoes)."""
    lab.ns.spawn(server.ns, [sys.executable, "-c", _DISCARD])
    deadline = time.monotonic() + 10
    while True:
        try:
            lab.ns.connect(server.ns, server.ip, DISCARD_PORT).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    lab.ns.exec(client.ns, [sys.executable, "-c", _RANDOM, server.ip, str(bits_per_second), str(seconds)],
                timeout=seconds + 30)


def corpus_gets(lab: Lab, client: Any, server: Any, count: int) -> int:
    """``count`` HTTP GETs from ``client`` to ``server`` (each answered with the corpus's next
    document); the bytes received."""
    code = ("import urllib.request\n"
            f"n = sum(len(urllib.request.urlopen('http://{server.ip}:{HTTP_PORT}/', timeout=10).read())"
            f" for _ in range({count}))\nprint(n)\n")
    out = lab.ns.exec(client.ns, [sys.executable, "-c", code], timeout=300).stdout
    return int(out.strip().splitlines()[-1])


def delay(label: str, d: dict[str, float]) -> None:
    print(f"capture-to-collector delay, {label}: p50 {d['p50'] * 1e3:.1f} ms, "
          f"p99 {d['p99'] * 1e3:.1f} ms, max {d['max'] * 1e3:.1f} ms")


def cpu_per_packet(n: int = 50_000) -> None:
    """CPU per packet on the agent's loop: ``offer`` (hash, copy, batch, encode) and the zstd
    stream at send time, against ``VxlanOutput.offer`` (one sendmsg) on the same packets."""
    import asyncio
    import socket

    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from nodeagent.adapters.transport_out import TransportOutput
    from nodeagent.adapters.vxlan_out import VxlanOutput
    from nodeagent.pods.index import PodInfo
    from nodeagent.settings import SensorSettings, TransportSettings
    from nodeagent.tls import client_context
    from nodeagent.transport import compression
    from nodeagent.verdict import Direction, Forward
    from nodeagent.wire import headers

    pod = PodInfo(ip="10.0.0.5", vni=5, namespace="shop", name="client")
    text = b"".join(open(p, "rb").read() for p in corpus_files(4 << 20))  # noqa: SIM115 - read at once
    frames = [bytes(Ether() / IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=40000 + i % 100, dport=80)
                    / text[i * 800 : i * 800 + 300 + i % 1100]) for i in range(5000)]
    fwds = [Forward(memoryview(f), headers.decode(f), 5, pod, Direction.EGRESS, len(f), 0.0) for f in frames]

    async def measure() -> None:
        out = TransportOutput([("127.0.0.1", 9)], client_context(None),
                              TransportSettings(queue_bytes=1 << 30))
        t0 = time.process_time()
        for i in range(n):
            out.offer(fwds[i % len(fwds)])
        out.ship()
        offer = (time.process_time() - t0) / n
        link = next(iter(out.links.values()))
        zstd, t0, raw, wire = compression.StreamCompressor(), time.process_time(), 0, 0
        while (item := link.outbox.next_batch()) is not None:
            raw += len(item.raw)
            wire += len(zstd.compress(item.raw))
        compress = (time.process_time() - t0) / n
        await out.close()
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        vx = VxlanOutput([SensorSettings("127.0.0.1", sink.getsockname()[1])])
        await vx.open()
        t0 = time.process_time()
        for i in range(n):
            vx.offer(fwds[i % len(fwds)])
            if i % 200 == 0:
                while True:
                    try:
                        sink.recv(70000, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
        vxlan = (time.process_time() - t0) / n
        await vx.close()
        sink.close()
        size = sum(len(f) for f in frames) / len(frames)
        print(f"\n== CPU per packet on the agent's loop ({n} packets of {size:.0f} bytes on average: "
              "payloads cut from the corpus, 5000 distinct) ==")
        print(f"batched: offer {offer * 1e6:.2f} us + zstd stream {compress * 1e6:.2f} us "
              f"(compressed to {wire / raw:.3f} of the records); VXLAN offer (sendmsg): {vxlan * 1e6:.2f} us")

    asyncio.run(measure())


def run(args: argparse.Namespace) -> int:
    out = Path(args.output or tempfile.mkdtemp(prefix="pmrs-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    lab = Lab("pmrsb", node_mtu=args.node_mtu, workdir=out)
    try:
        node = lab.add_node()
        web, client, egress = (lab.add_pod(node, n) for n in ("web", "client", "egress"))
        lab.add_agent(node)
        sensor, coll, ext = lab.add_host("sensor"), lab.add_host("collect"), lab.add_host("ext")
        work = Workload(lab, out)
        work.start_sink(sensor)
        ca, cert, key, agent_cert, agent_key = certs(out, coll)
        collector: LabCollector = start_collector(lab, coll, out, cert=cert, key=key, client_ca=ca,
                                                  pcap_dir=out / "collector")
        agent = podmirror.start_agent(lab, node, out, sensors=[sensor],
                                      extra=["--collector", coll.ip, "--collector-ca", ca,
                                             "--collector-cert", agent_cert, "--collector-key", agent_key])
        sidecars = {p.key: podmirror.start_sidecar(lab, p, out, extra=["--tunnel-mtu", str(args.node_mtu)])
                    for p in node.pods}
        for p in node.pods:
            podmirror.wait_mirroring(lab, agent, p, sidecars[p.key])
        corpus = corpus_files()
        print(f"corpus: {len(corpus)} documents (text, JSON, HTML), "
              f"{sum(os.path.getsize(p) for p in corpus) / 1e6:.1f} MB, each served once per pass")
        work.start_servers(web, corpus=corpus)
        work.start_servers(ext, iperf=False, corpus=corpus)
        settle(agent)
        a = snapshot(lab, agent, sensor, coll)
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.duration:
            work.client(client, web)
            work.client(egress, ext)
        settle(agent)
        b = snapshot(lab, agent, sensor, coll)
        report(f"mixed ({args.duration:.0f} s of HTTP, DNS, TLS, ping rounds; HTTP bodies from the "
               "corpus)", a, b)
        delays = collector.status()["delay_seconds"]
        fetched = corpus_gets(lab, client, web, args.corpus_gets)
        settle(agent)
        c = snapshot(lab, agent, sensor, coll)
        report(f"corpus bulk ({args.corpus_gets} HTTP downloads, {fetched / 1e6:.1f} MB of distinct text, "
               "JSON and HTML)", b, c)
        random_bulk(lab, client, web, args.random_rate, args.random_seconds)
        settle(agent)
        d = snapshot(lab, agent, sensor, coll)
        report(f"random bulk (TCP, fresh os.urandom payload, {args.random_rate / 1e6:.0f} Mbit/s, "
               f"{args.random_seconds:.0f} s: incompressible)", c, d)
        report("all phases", a, d)
        print()
        delay("mixed phase (default max_delay 20 ms)", delays)
        delay("last 100k packets, bulk included", collector.status()["delay_seconds"])
        for proc in sidecars.values():
            lab.ns.stop(proc, timeout=10.0)
        agent.stop()
        collector.stop()
        return 0
    finally:
        lab.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--corpus-gets", type=int, default=300, help="HTTP downloads in the corpus bulk phase")
    p.add_argument("--random-seconds", type=float, default=3.0)
    p.add_argument("--random-rate", type=float, default=50e6, help="bits/s of the random bulk phase")
    p.add_argument("--node-mtu", type=int, default=1600)
    p.add_argument("--output")
    p.add_argument("--cpu-only", action="store_true", help="only the CPU-per-packet part (no root)")
    args = p.parse_args()
    cpu_per_packet()
    return 0 if args.cpu_only else run(args)


if __name__ == "__main__":
    sys.exit(main())
