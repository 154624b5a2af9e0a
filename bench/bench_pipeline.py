"""Packets per second of the full pipeline (all stages) against a no-op pipeline, same run, one core.

Usage: ``.venv/bin/python bench/bench_pipeline.py [--seconds 4] [--cpu 0]`` (under a minute).

Both pipelines see the same datagrams: a mixed node workload built once with scapy (never in the
timed loop) and varied per round by patching sequence numbers and IP ids in place:

- intra-node HTTP through a ClusterIP (client and server monitored: every packet arrives twice,
  the client's copy shows the VIP, the server's the pod address);
- a TLS bulk transfer to an outside address (cut to headers after the budget);
- DNS to the cluster resolver; ICMP echo between the two pods (both copies);
- kubelet health probes from the node address (dropped by the drop-health-probes preset).

Baseline ("no-op"): ``Pipeline`` with no stages (sender check + VXLAN and header decode), the cost
every packet pays anyway. Full: vantage (with its hold), filters (the preset and one BPF rule),
content dedup where the vantage stage asks for it, cutoff.
Prints packets/s for each, the ratio, the verdict mix and the bytes forwarded per byte received.
"""

from __future__ import annotations

import argparse
import collections
import os
import struct
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.l2 import Ether

from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.settings import load
from nodeagent.stages import filters
from nodeagent.stages.cutoff import Cutoff
from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.vantage import Vantage
from nodeagent.stats import Stats
from nodeagent.verdict import Forward
from nodeagent.wire import vxlan

CLIENT = PodInfo("10.0.0.5", 5, "shop", "client")
SERVER = PodInfo("10.0.0.9", 9, "shop", "server")
VIP, NODE, OUTSIDE, DNS = "10.96.0.10", "10.0.0.1", "192.168.50.7", "10.96.0.53"
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
RULES = {"presets": ["drop-health-probes"], "node_ip": NODE,
         "rules": [{"name": "no-ntp", "action": "exclude", "bpf": "udp port 123"}]}


def frame(ip: IP, l4: Any, payload: bytes = b"") -> bytes:
    return bytes(Ether(**MAC) / ip / l4 / payload)


def workload() -> list[tuple[bytes, str]]:
    """One round: (frame, sender pod) pairs; TCP frames get their seq patched per round."""
    c, s = CLIENT.ip, SERVER.ip
    out: list[tuple[bytes, str]] = []
    for i in range(4):  # HTTP via the VIP: request and response, seen by both sidecars
        req = b"GET /item/%d HTTP/1.1\r\nHost: shop\r\n\r\n" % i
        out.append((frame(IP(src=c, dst=VIP, id=i), TCP(sport=40000 + i, dport=80, flags="PA"), req), c))
        at_server = TCP(sport=40000 + i, dport=8080, flags="PA")
        out.append((frame(IP(src=c, dst=s, id=i, ttl=63), at_server, req), s))
        body = b"HTTP/1.1 200 OK\r\n\r\n" + b"b" * 600
        reply = TCP(sport=8080, dport=40000 + i, flags="PA")
        out.append((frame(IP(src=s, dst=c, id=100 + i), reply, body), s))
        out.append((frame(IP(src=VIP, dst=c, id=100 + i, ttl=63), TCP(sport=80, dport=40000 + i, flags="PA"),
                          body), c))
    tls = b"\x16\x03\x01" + b"h" * 300
    out.append((frame(IP(src=c, dst=OUTSIDE), TCP(sport=45000, dport=443, flags="PA"), tls), c))
    for _ in range(12):
        out.append((frame(IP(src=OUTSIDE, dst=c), TCP(sport=443, dport=45000, flags="A"), b"\x17" * 1400), c))
    out.append((frame(IP(src=c, dst=DNS, flags="DF"), UDP(sport=5353, dport=53), b"\x12\x34" + b"q" * 30), c))
    out.append((frame(IP(src=DNS, dst=c), UDP(sport=53, dport=5353), b"\x12\x34" + b"a" * 80), c))
    out.append((frame(IP(src=c, dst=OUTSIDE), UDP(sport=123, dport=123), b"n" * 48), c))
    for _ in range(2):
        out.append((frame(IP(src=NODE, dst=s), TCP(sport=52000, dport=8080, flags="PA"), b"GET /healthz"), s))
    ping = (IP(src=c, dst=s, id=7), ICMP(id=1, seq=1), b"p" * 56)
    out.append((frame(*ping), c))
    out.append((frame(IP(src=c, dst=s, id=7, ttl=63), ICMP(id=1, seq=1), b"p" * 56), s))
    return out


def rounds(count: int) -> list[tuple[bytes, str]]:
    """``count`` rounds, each with fresh sequence numbers / ids so dedup sees new packets."""
    base = workload()
    out = []
    for r in range(count):
        for data, sender in base:
            buf = bytearray(data)
            struct.pack_into("!H", buf, 18, (struct.unpack_from("!H", buf, 18)[0] + r) & 0xFFFF)  # IP id
            if buf[23] == 6:
                seq = struct.unpack_from("!I", buf, 38)[0]
                struct.pack_into("!I", buf, 38, (seq + r * 1500) & 0xFFFFFFFF)
            pod = CLIENT if sender == CLIENT.ip else SERVER
            out.append((vxlan.encode(pod.vni, bytes(buf)), sender))
    return out


def build(full: bool) -> tuple[Pipeline, Stats]:
    stats = Stats()
    pods = PodIndex([CLIENT, SERVER])
    if not full:
        return Pipeline(pods=pods, stats=stats), stats
    settings = load({"filters": RULES})
    d, c = settings.dedup, settings.cutoff
    vantage = Vantage(pods=pods, last_seen=stats.last_seen, prefer=d.vantage, hold=d.hold, live=d.live,
                      confirm=d.confirm)
    return Pipeline(pods=pods, stats=stats, vantage=vantage,
                    filters=filters.compile(settings.filters),
                    dedup=DedupWindow(window=d.window, capacity=d.capacity),
                    cutoff=Cutoff(budget=c.budget, after=c.after)), stats


def run(full: bool, data: list[tuple[bytes, str]], seconds: float) -> tuple[float, float, Stats]:
    """Packets per wall second and CPU microseconds per packet (``process_time``: robust when other
    processes share the CPU, which the wall rate is not)."""
    pipeline, stats = build(full)
    process = pipeline.process
    sent = 0
    now = 0.0
    start, cpu0 = time.perf_counter(), time.process_time()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for datagram, sender in data:
            now += 2e-6  # 500k packets/s of virtual time: the dedup window holds ~25k digests
            process(datagram, sender, now)
        sent += len(data)
        pipeline.expire(now)  # what the receiver's timer does (nothing is held in this workload)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return sent / elapsed, cpu / sent * 1e6, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per pipeline and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the last one)")
    args = parser.parse_args()
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    data = rounds(400)
    print(f"workload: {len(data)} datagrams per pass, pinned to CPU {cpu}")
    best: dict[bool, float] = {}
    best_cpu: dict[bool, float] = {}
    last: dict[bool, Stats] = {}
    for _ in range(args.repeats):  # interleaved, so both see the same machine noise
        for full in (False, True):
            pps, cpu_us, stats = run(full, data, args.seconds)
            best[full] = max(best.get(full, 0.0), pps)
            best_cpu[full] = min(best_cpu.get(full, float("inf")), cpu_us)
            last[full] = stats
    report(best, best_cpu, last[True])


def report(best: dict[bool, float], best_cpu: dict[bool, float], stats: Stats) -> None:
    base, full = best[False], best[True]
    print(f"no-op pipeline (sender + decode): {base:10.0f} packets/s  ({1e6 / base:.2f} us/packet wall, "
          f"{best_cpu[False]:.2f} CPU)")
    print(f"full pipeline:                    {full:10.0f} packets/s  ({1e6 / full:.2f} us/packet wall, "
          f"{best_cpu[True]:.2f} CPU)")
    print(f"full / no-op throughput: {full / base:.2f}  (stage cost {1e6 / full - 1e6 / base:.2f} us/packet; "
          f"CPU {best_cpu[True] - best_cpu[False]:.2f})")
    snap = stats.snapshot()
    mix = collections.Counter({k: v for k, v in snap["drops"].items() if v})
    mix["forwarded"] = snap["forwarded"]
    mix["held"] = snap["held"]
    total = snap["pipeline_received"]  # the pipeline alone: no receiver counted datagrams as read
    print("verdicts: " + ", ".join(f"{k} {v / total:.1%}" for k, v in mix.most_common()))
    saved = sum(snap["saved_bytes"].values())
    received = stats.total.received_bytes  # at the pipeline's entry
    print(f"bytes: received {received}, saved {saved} "
          f"({saved / received:.1%}); by mechanism {snap['saved_bytes']}")
    assert isinstance(Forward, type)


if __name__ == "__main__":
    main()
