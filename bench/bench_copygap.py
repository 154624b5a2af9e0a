"""The gap between the two copies of one packet (kernel and sniff sidecars): what the hold and the
dedup window are derived from.

Usage (root): ``.venv/bin/python bench/bench_copygap.py [--pairs kernel-kernel,sniff-sniff,kernel-sniff]
[--rounds 20] [--iperf-rate 200M] [--seconds 3]`` (about a minute per pair).

Per pair of sidecar modes, a lab node with two monitored pods (``a`` the client, ``b`` the server)
and, in the agent's namespace, instead of the agent, a receiver that stamps every tunnel datagram
with the kernel's receive time (``SO_TIMESTAMPNS``: the receiver's own scheduling is excluded, as
both copies share the agent's socket queue) and its NAT-invariant digest (``stages.digest``). Two
datagrams with one digest from the two pods are the two copies of one packet; their gap is
``t(b's copy) - t(a's copy)``. The workload: HTTP, DNS, TLS and ping rounds between the pods (v4
and v6), then an iperf3 transfer at ``--iperf-rate`` (the sniffer's worst case: bulk traffic).

Printed per pair: copies paired, p50 / p99 / p99.9 / max of |gap| in microseconds, and how often
the copy of the packet's *receiver* arrives first (the hold's case: the non-sending vantage first).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

SO_TIMESTAMPNS = 35
"""Linux: the socket option and its control message type (``socket`` lacks the constant)."""
_TIMESPEC = struct.Struct("@qq")


def receive(host: str, port: int, out: str) -> None:
    """Inside the agent's namespace: stamp datagrams until SIGTERM, then write them to ``out``."""
    from nodeagent.stages import digest
    from nodeagent.wire import Malformed, headers, vxlan

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((host, port))
    sock.settimeout(0.2)
    rows: list[tuple[int, str, int, str, str]] = []
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("ready", flush=True)
    while not stop:
        try:
            data, ancillary, _, addr = sock.recvmsg(65536, 64)
        except TimeoutError:
            continue
        stamp = 0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(value)
                stamp = sec * 1_000_000_000 + nsec
        try:
            inner = vxlan.decode(data).inner
            meta = headers.decode(inner)
        except Malformed:
            continue
        rows.append((stamp, addr[0], digest.compute(meta, inner), socket.inet_ntop(
            socket.AF_INET if meta.version == 4 else socket.AF_INET6, meta.src) if meta.version else "",
            socket.inet_ntop(socket.AF_INET if meta.version == 4 else socket.AF_INET6, meta.dst)
            if meta.version else ""))
    Path(out).write_text(json.dumps(rows))


def gaps(rows: list[list[Any]], a: Any, b: Any) -> dict[str, Any]:
    """Pair the two pods' copies by digest; |gap| percentiles and how often the receiver's copy led."""
    first: dict[int, tuple[int, str, str]] = {}
    out: list[int] = []
    receiver_first = 0
    addrs = {a.ip: a, a.ip6: a, b.ip: b, b.ip6: b}
    for stamp, source, dig, src, _dst in sorted(rows):
        seen = first.get(dig)
        if seen is None or seen[1] == source:
            first[dig] = (stamp, source, src)
            continue
        del first[dig]
        out.append(stamp - seen[0])
        sender_pod = addrs.get(seen[2])
        if sender_pod is not None and sender_pod.ip != seen[1]:
            receiver_first += 1  # the first copy came from the pod that did not send the packet
    out.sort()
    if not out:
        return {"pairs": 0}

    def pct(q: float) -> float:
        return out[min(len(out) - 1, int(q * len(out)))] / 1000

    return {"pairs": len(out), "p50_us": pct(0.5), "p99_us": pct(0.99), "p999_us": pct(0.999),
            "max_us": out[-1] / 1000, "receiver_first": receiver_first / len(out)}


def run_pair(modes: tuple[str, str], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from nodeagent.lab import netns, podmirror
    from nodeagent.lab.topology import TUNNEL_PORT, Lab
    from nodeagent.lab.workload import Workload

    lab = Lab("pmgap", workdir=workdir)
    try:
        node = lab.add_node()
        a, b = lab.add_pod(node, "a"), lab.add_pod(node, "b")
        agent = lab.add_agent(node)
        out = workdir / f"stamps-{modes[0]}-{modes[1]}.json"
        log = workdir / "receiver.log"
        proc = lab.ns.spawn(agent.ns, [sys.executable, os.path.abspath(__file__), "--receive",
                                       agent.ip, str(TUNNEL_PORT), str(out)], log=log, env=podmirror.ENV)
        podmirror.wait_log(log, "ready", what="the stamping receiver")
        sidecars = [podmirror.start_sidecar(lab, pod, workdir, mode=mode, extra=["--tunnel-mtu", "1600"])
                    for pod, mode in zip((a, b), modes, strict=True)]
        for pod in (a, b):
            podmirror.wait_log(workdir / f"sidecar-{pod.name}.log", "mirroring", what=f"{pod.name} mirroring")
        work = Workload(lab, workdir)
        work.start_servers(b)
        work.client(a, b, rounds=args.rounds)
        work.iperf(a, b, seconds=args.seconds, bitrate=args.iperf_rate)
        time.sleep(0.5)  # the sniffer's queue drains (a bench, not a test: a fixed settle is fine)
        for sidecar in sidecars:
            lab.ns.stop(sidecar)
        lab.ns.stop(proc, timeout=10)
        rows = json.loads(out.read_text())
        return gaps(rows, a, b)
    finally:
        lab.close()
        assert netns.leftovers(lab.tag) == []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--receive", nargs=3, metavar=("HOST", "PORT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--pairs", default="kernel-kernel,sniff-sniff,kernel-sniff,sniff-kernel",
                        help="client-server sidecar modes, comma-separated")
    parser.add_argument("--rounds", type=int, default=20, help="HTTP/DNS/TLS/ping rounds")
    parser.add_argument("--iperf-rate", default="200M")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.receive:
        receive(args.receive[0], int(args.receive[1]), args.receive[2])
        return
    if os.geteuid() != 0:
        raise SystemExit("bench_copygap needs root (network namespaces)")
    print(f"{'client-server':16} {'pairs':>7} {'p50 us':>9} {'p99 us':>9} {'p99.9 us':>9} {'max us':>9}  "
          "receiver's copy first")
    with tempfile.TemporaryDirectory(prefix="pmgap-") as tmp:
        for pair in args.pairs.split(","):
            client, server = pair.split("-")
            r = run_pair((client, server), args, Path(tmp))
            if not r["pairs"]:
                print(f"{pair:16} no pairs")
                continue
            print(f"{pair:16} {r['pairs']:7d} {r['p50_us']:9.0f} {r['p99_us']:9.0f} {r['p999_us']:9.0f} "
                  f"{r['max_us']:9.0f}  {r['receiver_first']:.0%}")


if __name__ == "__main__":
    main()
