"""The agent's receive path at offered loads: delivered rate and loss, 1 and 2 workers, against baselines.

Offered load (``nodeagent.lab.loadgen``): 10,000 TCP flows of four monitored pods on loopback
(127.0.0.10-13), 40% between two of them through a Service (each packet mirrored twice, before and
after DNAT), the rest to outside hosts (a fifth TLS); frame sizes from the simple IMIX (60/590/1514
bytes, 7:4:1); partial checksums on what pods sent. A separate generator process sends it at a
controlled rate (``sendmmsg``, prepared datagrams) for ``--seconds``. Receivers, each run in the
same invocation at every offered rate:

- ``bare recvmmsg``: a process reading the socket with the agent's own reader (``mmsg.BatchReader``,
  32 datagrams per call) and counting: the floor of any Python receiver;
- ``kernel vxlan`` (root): a kernel VXLAN device (collect-metadata mode, every VNI) in a throwaway
  namespace decapsulating the same load; its CPU is softirq (``/proc/stat``, machine-wide);
- ``agent workers=N``: ``nodeagent run --workers N`` as a user runs it: the default pipeline
  (vantage, filters, dedup, cutoff, normalization) and a pcap output to a temporary directory.

Per row: offered and delivered packets/s and Mbit/s (delivered: datagrams the receiver processed,
per wall second from the first offered datagram until its count stopped moving), the loss, and the
receiver's CPU per delivered packet (process CPU of every process of the receiver; softirq for the
kernel device) with its ratio to the bare loop's, the generator's CPU (one core = 100%), and how
busy the whole machine was while the generator sent (``busy``: /proc/stat, all cores, 100% = no
idle time left: a receiver cannot get more CPU than that, whatever its workers). Then, per rate,
workers=2 / workers=1.

Run: ``.venv/bin/python bench/bench_receive.py [--rates 50000,150000,300000] [--seconds 5]``
(root for the kernel row). On a shared machine, compare rows of one run.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import multiprocessing as mp
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nodeagent.adapters import mmsg, steering  # noqa: E402
from nodeagent.lab import loadgen, measure  # noqa: E402
from nodeagent.lab.loopback import LoopbackAgent  # noqa: E402
from nodeagent.settings import ListenSettings  # noqa: E402

PODS = [(f"127.0.0.{10 + i}", 10 + i) for i in range(4)]
"""Monitored pods on loopback: (address, VNI = low 24 bits of the address, as ``--vni auto``)."""
PODS = [(ip, int.from_bytes(socket.inet_aton(ip), "big") & 0xFFFFFF) for ip, _ in PODS]
SETTLE = 0.5
"""Seconds without progress after which a receiver has drained its socket."""
SETTLE_POLL = 0.1
"""Seconds between two reads of a receiver's count while it drains (its last change is known to this)."""
CTX = mp.get_context("fork")


# ---- receivers: each started, then read by ``count()`` -> (packets, bytes), ``cpu()`` -> seconds ----
class Bare:
    name = "bare recvmmsg"

    def __init__(self) -> None:
        self.counts = CTX.Array("d", 2, lock=False)
        parent, child = CTX.Pipe()
        self.proc = CTX.Process(target=self._loop, args=(child, self.counts), daemon=True)
        self.proc.start()
        self.target = ("127.0.0.1", parent.recv())

    @staticmethod
    def _loop(conn: Any, counts: Any) -> None:
        sock = steering.open_sockets(ListenSettings(host="127.0.0.1", port=0), 1)[0]
        conn.send(sock.getsockname()[1])
        reader = mmsg.BatchReader(sock.fileno())
        packets = nbytes = 0
        while True:
            select.select([sock], [], [])
            for datagram, _sender in reader.read(256, 1 << 20):
                packets += 1
                nbytes += len(datagram)
            counts[0], counts[1] = packets, nbytes

    def count(self) -> tuple[int, int]:
        return int(self.counts[0]), int(self.counts[1])

    def cpu(self) -> float:
        return measure.cpu_seconds(self.proc.pid)  # type: ignore[arg-type]

    def close(self) -> None:
        self.proc.kill()
        self.proc.join()


class Agent(LoopbackAgent):
    """``nodeagent run --workers N``: the default pipeline and a pcap output."""

    def __init__(self, workers: int) -> None:
        self.name = f"agent workers={workers}"
        self._pcap = tempfile.mkdtemp(prefix="pmbr-")
        senders = [arg for i, (ip, _) in enumerate(PODS) for arg in ("--sender", f"{ip},auto,bench/pod{i}")]
        super().__init__(["--workers", str(workers), "--pcap-dir", self._pcap, *senders])

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._pcap, ignore_errors=True)


class KernelVxlan:
    """A kernel VXLAN device decapsulating the load in a throwaway namespace (root only)."""

    name = "kernel vxlan"

    def __init__(self) -> None:
        self.ns = f"pmbr-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "vx0", "type", "vxlan", "dstport", "14789", "external"],
                    ["link", "set", "vx0", "up"]):
            subprocess.run(["ip", "-n", self.ns, *cmd], check=True)
        self.target = ("127.0.0.1", 14789)

    def count(self) -> tuple[int, int]:
        out = subprocess.run(["ip", "-n", self.ns, "-j", "-s", "link", "show", "vx0"], check=True,
                             capture_output=True, text=True).stdout
        rx = json.loads(out)[0]["stats64"]["rx"]
        return int(rx["packets"]), int(rx["bytes"]) + 8 * int(rx["packets"])  # + the VXLAN header

    def cpu(self) -> float:
        return measure.machine().softirq

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], check=False)


# ---- the generator ----
def _generate(the_mix: loadgen.Mix, target: tuple[str, int], rate: float, seconds: float, netns: str | None,
              conn: Any) -> None:
    if netns is not None:
        _enter_netns(netns)
    conn.send(loadgen.send(the_mix, target, rate, seconds))


def _enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)


def offer(receiver: Any, the_mix: loadgen.Mix, rate: float, seconds: float) -> dict[str, Any]:
    """One offered load against one running receiver: what was sent and what it delivered."""
    packets0, bytes0 = receiver.count()
    cpu0 = receiver.cpu()
    machine0 = measure.machine()
    parent, child = CTX.Pipe()
    gen = CTX.Process(target=_generate, args=(the_mix, receiver.target, rate, seconds,
                                               getattr(receiver, "ns", None), child))
    gen.start()
    sent: loadgen.Sent = parent.recv()
    window = measure.machine() - machine0  # while the generator sent: are the cores all taken?
    gen.join()
    last, changed = receiver.count(), time.monotonic()
    while time.monotonic() - changed < SETTLE:
        time.sleep(SETTLE_POLL)
        now = receiver.count()
        if now != last:
            last, changed = now, time.monotonic()
    elapsed = max(changed - sent.started, sent.seconds)  # conservative: up to one poll late
    delivered, delivered_bytes = last[0] - packets0, last[1] - bytes0
    return {"offered_pps": sent.pps, "offered_mbps": sent.bps / 1e6, "sent": sent.packets,
            "delivered": delivered, "delivered_pps": delivered / elapsed,
            "delivered_mbps": 8 * delivered_bytes / elapsed / 1e6,
            "loss": 1 - delivered / max(1, sent.packets),
            "cpu": receiver.cpu() - cpu0, "generator_cpu": sent.cpu_seconds / max(sent.seconds, 1e-9),
            "machine_busy": window.busy / max(window.busy + window.idle, 1e-9)}


Row = tuple[str, float, dict[str, Any]]


def run(rates: list[float], seconds: float, kernel: bool, workers: list[int]) -> list[Row]:
    the_mix = loadgen.mix(PODS)
    print(f"mix: {the_mix.flows:,} flows, {the_mix.packets:,} datagrams per round, "
          f"mean {the_mix.bytes / the_mix.packets:.0f} bytes; {seconds:.0f} s per offered rate; "
          f"{os.cpu_count()} CPUs", flush=True)
    makers: list[tuple[str, Callable[[], Any]]] = [("bare recvmmsg", Bare)]
    if kernel:
        makers.append(("kernel vxlan", KernelVxlan))
    makers += [(f"agent workers={n}", functools.partial(Agent, n)) for n in workers]
    rows = []
    for name, make in makers:
        receiver = make()
        try:
            for rate in rates:
                print(f"  {name} at {rate:,.0f}/s ...", flush=True)
                rows.append((name, rate, offer(receiver, the_mix, rate, seconds)))
        finally:
            receiver.close()
    return rows


def report(rows: list[Row]) -> None:
    bare = {rate: r for name, rate, r in rows if name == "bare recvmmsg"}
    print(f"\n{'receiver':<18}{'offered pps':>12}{'Mbit/s':>8}{'delivered pps':>15}{'Mbit/s':>8}{'loss':>8}"
          f"{'CPU us/pkt':>12}{'vs bare':>9}{'gen CPU':>9}{'busy':>7}")
    for name, rate, r in rows:
        per = r["cpu"] / max(1, r["delivered"]) * 1e6
        base = bare[rate]["cpu"] / max(1, bare[rate]["delivered"]) * 1e6
        kind = " (softirq)" if name == "kernel vxlan" else ""
        print(f"{name:<18}{r['offered_pps']:>12,.0f}{r['offered_mbps']:>8,.0f}{r['delivered_pps']:>15,.0f}"
              f"{r['delivered_mbps']:>8,.0f}{r['loss']:>8.1%}{per:>12.2f}{per / base:>9.2f}"
              f"{r['generator_cpu']:>9.0%}{r['machine_busy']:>7.0%}{kind}")
    by = {(name, rate): r for name, rate, r in rows}
    for rate in sorted({rate for _, rate, _ in rows}):
        one, two = by.get(("agent workers=1", rate)), by.get(("agent workers=2", rate))
        if one and two:
            ratio = two["delivered_pps"] / one["delivered_pps"]
            print(f"at {rate:,.0f}/s asked: workers=2 delivered {ratio:.2f}x workers=1 "
                  f"({two['delivered_pps']:,.0f} of {two['offered_pps']:,.0f} offered vs "
                  f"{one['delivered_pps']:,.0f} of {one['offered_pps']:,.0f}; the same load only if the "
                  f"generator kept both rates; all cores busy {two['machine_busy']:.0%} vs "
                  f"{one['machine_busy']:.0%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="50000,150000,300000",
                        help="offered datagrams per second, comma-separated (0: as fast as possible)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", default="1,2", help="agent worker counts to run")
    parser.add_argument("--no-kernel", action="store_true", help="skip the kernel VXLAN row")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    rows = run(rates, args.seconds, not args.no_kernel and os.geteuid() == 0,
               [int(n) for n in args.workers.split(",")])
    report(rows)
    if args.json:
        args.json.write_text(json.dumps([{"receiver": n, "rate": r, **row} for n, r, row in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
