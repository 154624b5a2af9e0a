"""Node agent receive + decode rate on one core, against baselines measured in the same run.

Offered load: 68-byte VXLAN datagrams (8-byte header + a 60-byte Ethernet/IPv4/UDP frame) sent on
loopback by a generator process pinned to one CPU, as fast as ``sendmmsg`` (ctypes, 512 per call)
can. Each receiver runs in its own process pinned to the other CPU:

- ``bare recv_into``: a non-blocking ``recv_into`` loop that only counts, ``select`` when the
  socket is empty (the Python floor);
- ``agent core``: the agent's ``Receiver`` (add_reader + drain, recvmmsg) with ``Pipeline``
  sender check, VXLAN and header decode, no optional stages, no outputs; ``agent core 1/call``
  is the same with one ``recvfrom_into`` per datagram;
- ``agent default``: the same with the default pipeline (vantage, filters, dedup, cutoff) and the
  normalizer's fan-out to one output that does nothing: what ``nodeagent run`` does per packet
  before its outputs;
- ``kernel vxlan`` (root only): a kernel VXLAN device in a throwaway namespace decapsulating the
  same offered load, counted by its rx_packets (the physical limit; its CPU is softirq on the
  generator's CPU, so only its rate is compared).

Printed: offered rate, received packets per second, delivered share, receiver CPU microseconds per
packet (getrusage between the first and the last packet), and each rate as a ratio of the bare
loop's. Run as root for the kernel row: ``.venv/bin/python bench/bench_agent.py [--count N]``.

``--bulk`` instead measures bulk TCP (docs/datapath.md): VXLAN datagrams of 65,234 bytes, each a GSO
super-packet of 45 x 1448 bytes of TCP payload with a partial checksum (as tc mirred copies it),
paced at ``--bulk-rate`` super-packets/s. The agent (default pipeline, normalizer) outputs to pcap
files or VXLAN to a loopback sensor, each with the segment path (``offer_segments``: one call per
super-packet, UDP GSO) and with one ``offer`` per segment (``Fanout(segments=False)``, the old
path). Printed per row: super-packets/s received, delivered share, CPU us per super-packet (all
threads, the pcap writer's included), and the capacity of one core in super-packets/s and Gbit/s
of inner TCP payload, and the worst lateness of a 50 ms timer during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import inspect
import json
import multiprocessing as mp
import os
import resource
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nodeagent.settings import SenderSettings  # noqa: E402
from nodeagent.wire import vxlan  # noqa: E402

IDLE = 0.5
"""Seconds without a packet after which a receiver stops and reports."""
RECV_CPU, GEN_CPU = 0, 1
LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def frame60() -> bytes:
    """Ethernet + IPv4 + UDP + 18 bytes of payload = 60 bytes, checksums left 0 (not verified)."""
    eth = bytes.fromhex("0200000000020200000000010800")
    ip = bytes.fromhex("4500002e00004000401100000a0000050a000009")
    udp = bytes.fromhex("9c40003500 1a0000".replace(" ", ""))
    return eth + ip + udp + b"p" * 18


DATAGRAM = vxlan.encode(5, frame60())
POD = ("127.0.0.1+10.0.0.5,5,bench/pod" if "ips" in SenderSettings.__dataclass_fields__
       else "127.0.0.1,5,bench/pod")
"""The sender: its tunnel comes from loopback, its frames carry 10.0.0.5 (a frame naming none of a
pod's addresses is foreign). A tree before pods had several addresses takes the first only."""


def receiver_extra(receiver_class: Any, stats: Any) -> list[Any]:
    """``Receiver`` counts ``received`` itself since it takes the ``Stats`` (older trees: not)."""
    return [stats] if "stats" in inspect.signature(receiver_class).parameters else []
assert len(DATAGRAM) == 68


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(IOVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


def _pin(cpu: int) -> None:
    if os.cpu_count() and os.cpu_count() > cpu:  # type: ignore[operator]
        os.sched_setaffinity(0, {cpu})


def _enter_netns(name: str | None) -> None:
    if name is None:
        return
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    if LIBC.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns failed")
    os.close(fd)


def generate(port: int, count: int, netns: str | None, result: Any) -> None:
    """Send ``count`` copies of DATAGRAM to 127.0.0.1:port with sendmmsg; report the seconds taken."""
    _enter_netns(netns)
    _pin(GEN_CPU)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect(("127.0.0.1", port))
    buf = ctypes.create_string_buffer(DATAGRAM, len(DATAGRAM))
    iov = IOVec(ctypes.cast(buf, ctypes.c_void_p), len(DATAGRAM))
    batch = 512
    msgs = (MMsgHdr * batch)()
    for m in msgs:
        m.hdr.iov = ctypes.pointer(iov)
        m.hdr.iovlen = 1
    sent, start = 0, time.perf_counter()
    while sent < count:
        n = LIBC.sendmmsg(sock.fileno(), msgs, min(batch, count - sent), 0)
        if n < 0:
            if ctypes.get_errno() in (11, 105):  # EAGAIN, ENOBUFS: the loopback queue is full
                continue
            raise OSError(ctypes.get_errno(), "sendmmsg")
        sent += n
    result.send((sent, time.perf_counter() - start))
    sock.close()


BULK_PAYLOAD = 45 * 1448


def super_packet() -> bytes:
    """A 64 KB TCP/IPv4 GSO super-packet (timestamps option, MSS 1448) with a partial checksum."""
    from nodeagent.wire import headers, normalize

    eth = bytes.fromhex("0200000000020200000000010800")
    ip = bytearray.fromhex("450000001234400040060000" "0a000005" "0a000009")
    ip[2:4] = (20 + 32 + BULK_PAYLOAD).to_bytes(2, "big")
    tcp = bytes.fromhex("9c401f90" "00000001" "00000001" "801801f5" "00000000" "0101080a0000000100000002")
    frame = bytearray(eth + ip + tcp + bytes(i % 251 for i in range(BULK_PAYLOAD)))
    meta = headers.decode(bytes(frame))
    partial = normalize.pseudo_sum(meta, meta.end - meta.l4) or 0xFFFF
    frame[meta.l4 + 16 : meta.l4 + 18] = partial.to_bytes(2, "big")
    return bytes(frame)


def generate_bulk(port: int, count: int, rate: float, result: Any) -> None:
    """Send ``count`` VXLAN super-packets to 127.0.0.1:port at ``rate`` per second, in bursts of 8."""
    _pin(GEN_CPU)
    datagram = vxlan.encode(5, super_packet())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect(("127.0.0.1", port))
    sent, start = 0, time.perf_counter()
    while sent < count:
        delay = start + sent / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        for _ in range(min(8, count - sent)):
            try:
                sock.send(datagram)
            except (BlockingIOError, OSError):
                pass  # loopback queue full: offered but lost before the agent, like a NIC drop
            sent += 1
    result.send((sent, time.perf_counter() - start))
    sock.close()


def bulk_receiver(conn: Any, output: str, segments: bool, gso: bool) -> None:
    _pin(RECV_CPU)
    asyncio.run(_bulk_receive(conn, output, segments, gso))


async def _bulk_receive(conn: Any, output: str, segments: bool, gso: bool) -> None:
    import inspect
    import shutil
    import tempfile

    from nodeagent import app, settings
    from nodeagent.adapters.outputs import Fanout
    from nodeagent.adapters.pcap_out import PcapOutput
    from nodeagent.adapters.receiver import DropLog, Receiver
    from nodeagent.adapters.vxlan_out import VxlanOutput
    from nodeagent.pods.index import PodIndex
    from nodeagent.stats import Stats
    from nodeagent.wire.normalize import Normalizer

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the sensor: never read, drops in the kernel
    sink.bind(("127.0.0.1", 0))
    tmp = tempfile.mkdtemp(prefix="pmbk-")
    pcap_cfg = {"dir": tmp, "max_total_bytes": 256 << 20, "max_bytes": 64 << 20}
    sensor = {"host": "127.0.0.1", "port": sink.getsockname()[1]} | ({"gso": True} if gso else {})
    cfg = settings.load({"listen": {"host": "127.0.0.1", "port": 0}, "senders": [POD],
                         "outputs": {"pcap": pcap_cfg, "sensors": [sensor]}})
    stats, pods = Stats(), PodIndex(app.static_pods(cfg))
    out: Any = PcapOutput(cfg.outputs.pcap) if output == "pcap" else VxlanOutput(cfg.outputs.sensors)
    await out.open()
    # the same bench file runs against an older tree (before/after): pass ``segments`` only if known
    kw = {"segments": segments} if "segments" in inspect.signature(Fanout).parameters else {}
    fanout = Fanout([out], Normalizer(), **kw)
    receiver = Receiver(cfg.listen, app.build_pipeline(cfg, pods, stats), fanout.offer, DropLog(60.0),
                        *receiver_extra(Receiver, stats))
    receiver.start(asyncio.get_running_loop())
    assert receiver.address is not None
    conn.send(receiver.address[1])
    try:
        result = await _measure(stats)
    finally:
        receiver.stop()
        await out.close()
        sink.close()
        shutil.rmtree(tmp, ignore_errors=True)
    result["output_packets"] = out.state()["packets"]
    conn.send(result)


async def _measure(stats: Any) -> dict[str, Any]:
    """Receive until IDLE seconds pass without a packet: count, seconds and CPU in between."""
    while stats.total.received == 0:
        await asyncio.sleep(0.001)
    first, cpu0, seen, seen_at = time.perf_counter(), _cpu(), 0, time.perf_counter()
    lag = 0.0
    """How late a 50 ms timer fires at worst: what the agent's own timers (batch flush, pcap, status)
    suffer while the receiver drains (before the per-wake-up byte bound: ~100 ms with 256 super-packets)."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(0.05)
        now = time.perf_counter()
        if stats.total.received != seen:
            seen, seen_at = stats.total.received, now
            lag = max(lag, now - before - 0.05)
        elif now - seen_at >= IDLE:
            break
    return {"received": stats.total.received, "seconds": seen_at - first, "cpu": _cpu() - cpu0,
            "forwarded": stats.total.forwarded, "lag": lag}


def run_bulk(count: int, rate: float) -> None:
    ctx = mp.get_context("fork")
    gbps = rate * BULK_PAYLOAD * 8 / 1e9
    print(f"bulk: {count:,} super-packets of {BULK_PAYLOAD:,} payload bytes (45 segments) at {rate:,.0f}/s "
          f"offered ({gbps:.2f} Gbit/s); receiver CPU {RECV_CPU}, generator CPU {GEN_CPU}")
    print(f"{'output / path':<26}{'rcvd SP/s':>10}{'delivered':>10}{'CPU us/SP':>11}{'1 core SP/s':>12}"
          f"{'1 core Gbit/s':>14}{'segments out':>14}{'timer lag ms':>14}")
    rows = [("pcap", False, False), ("pcap", True, False), ("vxlan", False, False), ("vxlan", True, False),
            ("vxlan", True, True)]
    import dataclasses

    from nodeagent.settings import SensorSettings

    for output, segments, gso in rows:
        if gso and "gso" not in {f.name for f in dataclasses.fields(SensorSettings)}:
            continue  # an older tree (before/after runs)
        sent, r = _bulk_run(ctx, count, rate, output, segments, gso)
        per_sp = r["cpu"] / r["received"]
        name = f"{output} {'segments' if segments else 'per segment'}{' + GSO' if gso else ''}"
        print(f"{name:<26}{r['received'] / r['seconds']:>10,.0f}{r['received'] / sent:>10.1%}"
              f"{per_sp * 1e6:>11.0f}{1 / per_sp:>12,.0f}{BULK_PAYLOAD * 8 / per_sp / 1e9:>14.2f}"
              f"{r['output_packets']:>14,}{r['lag'] * 1e3:>14.1f}")


def _bulk_run(ctx: Any, count: int, rate: float, *args: Any) -> tuple[int, dict[str, Any]]:
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=bulk_receiver, args=(child, *args))
    receiver.start()
    port = parent.recv()
    gen_parent, gen_child = ctx.Pipe()
    gen = ctx.Process(target=generate_bulk, args=(port, count, rate, gen_child))
    gen.start()
    sent, _ = gen_parent.recv()
    gen.join()
    result = parent.recv()
    receiver.join()
    return sent, result


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.bind(("127.0.0.1", 0))
    return sock


def bare_receiver(conn: Any) -> None:
    """Non-blocking ``recv_into`` drained in a tight loop, ``select`` only when the queue is empty."""
    _pin(RECV_CPU)
    sock = _udp_socket()
    conn.send(sock.getsockname()[1])
    buf = bytearray(65536)
    select.select([sock], [], [], 30)
    sock.setblocking(False)
    count, first, cpu0, last = 0, time.perf_counter(), _cpu(), time.perf_counter()
    recv_into = sock.recv_into
    while True:
        try:
            recv_into(buf)
            count += 1
        except BlockingIOError:
            last = time.perf_counter()
            if not select.select([sock], [], [], IDLE)[0]:
                break
    cpu = _cpu() - cpu0
    conn.send({"received": count, "seconds": last - first, "cpu": cpu})


def agent_receiver(conn: Any, default_pipeline: bool, recvmmsg: bool = True) -> None:
    _pin(RECV_CPU)
    asyncio.run(_agent_receive(conn, default_pipeline, recvmmsg))


async def _agent_receive(conn: Any, default_pipeline: bool, recvmmsg: bool) -> None:
    from nodeagent import app, settings
    from nodeagent.adapters.outputs import Fanout
    from nodeagent.adapters.receiver import DropLog, Receiver
    from nodeagent.pipeline import Pipeline
    from nodeagent.pods.index import PodIndex
    from nodeagent.stats import Stats
    from nodeagent.wire.normalize import Normalizer

    cfg = settings.load({"listen": {"host": "127.0.0.1", "port": 0, "recvmmsg": recvmmsg},
                         "senders": [POD]})
    stats, pods = Stats(), PodIndex(app.static_pods(cfg))
    if default_pipeline:
        pipeline = app.build_pipeline(cfg, pods, stats)
        offer: Callable[..., None] = Fanout([NullOutput()], Normalizer()).offer
    else:
        pipeline = Pipeline(pods=pods, stats=stats)
        offer = lambda fwd: None  # noqa: E731
    receiver = Receiver(cfg.listen, pipeline, offer, DropLog(60.0), *receiver_extra(Receiver, stats))
    loop = asyncio.get_running_loop()
    receiver.start(loop)
    assert receiver.address is not None
    conn.send(receiver.address[1])
    while stats.total.received == 0:
        await asyncio.sleep(0.001)
    first, cpu0, seen, seen_at = time.perf_counter(), _cpu(), 0, time.perf_counter()
    while True:
        await asyncio.sleep(0.05)
        now = time.perf_counter()
        if stats.total.received != seen:
            seen, seen_at = stats.total.received, now
        elif now - seen_at >= IDLE:
            break
    cpu = _cpu() - cpu0
    receiver.stop()
    conn.send(
        {
            "received": stats.total.received,
            "seconds": seen_at - first,
            "cpu": cpu,
            "forwarded": stats.total.forwarded,
        }
    )


class NullOutput:
    """An output that takes every packet and does nothing: the fan-out and normalizer still run."""

    name = "null"

    def offer(self, fwd: Any) -> None:
        return None


def run_receiver(target: Callable[..., None], count: int, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=target, args=(child, *args))
    receiver.start()
    port = parent.recv()
    gen_parent, gen_child = ctx.Pipe()
    gen = ctx.Process(target=generate, args=(port, count, None, gen_child))
    gen.start()
    sent, gen_seconds = gen_parent.recv()
    gen.join()
    result = parent.recv()
    receiver.join()
    result.update(sent=sent, offered_pps=sent / gen_seconds)
    return result


def kernel_vxlan(count: int) -> dict[str, Any] | None:
    """A kernel VXLAN device in a throwaway namespace decapsulating the same load (root only)."""
    if os.geteuid() != 0:
        return None
    name = f"pmag-bench-{uuid.uuid4().hex[:8]}"
    port = 14789
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            [
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "5",
                "dstport",
                str(port),
                "local",
                "127.0.0.1",
                "nolearning",
            ],
            ["link", "set", "vx0", "up"],
        ):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        ctx = mp.get_context("fork")
        gen_parent, gen_child = ctx.Pipe()
        gen = ctx.Process(target=generate, args=(port, count, name, gen_child))
        before = _rx_packets(name)
        gen.start()
        sent, seconds = gen_parent.recv()
        gen.join()
        deadline = time.monotonic() + 2
        received = _rx_packets(name) - before
        while time.monotonic() < deadline and received < sent:
            time.sleep(0.05)
            received = _rx_packets(name) - before
        return {
            "received": received,
            "seconds": seconds,
            "cpu": None,
            "sent": sent,
            "offered_pps": sent / seconds,
        }
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _rx_packets(netns: str) -> int:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "-s", "link", "show", "vx0"], check=True, capture_output=True, text=True
    ).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def report(rows: list[tuple[str, dict[str, Any] | None]]) -> None:
    """One line per receiver. ``1 core pps`` = 1 / CPU per packet: the rate a whole core would give,
    robust when other processes share the pinned CPU (the measured rate then is not)."""
    base = next(r for name, r in rows if name.startswith("bare"))
    base_pps = base["received"] / base["seconds"]
    base_core = base["received"] / base["cpu"]
    print(
        f"{'receiver':<18}{'offered pps':>13}{'received pps':>14}{'delivered':>11}"
        f"{'CPU us/pkt':>12}{'1 core pps':>12}{'vs bare':>9}{'1 core vs bare':>16}"
    )
    for name, r in rows:
        if r is None:
            print(f"{name:<18}{'(needs root: skipped)':>40}")
            continue
        pps = r["received"] / r["seconds"] if r["seconds"] > 0 else 0.0
        if r.get("cpu"):
            cpu, core = f"{r['cpu'] / r['received'] * 1e6:.2f}", r["received"] / r["cpu"]
            core_text, core_ratio = f"{core:,.0f}", f"{core / base_core:.2f}"
        else:
            cpu, core_text, core_ratio = "softirq", "-", "-"
        print(
            f"{name:<18}{r['offered_pps']:>13,.0f}{pps:>14,.0f}{r['received'] / r['sent']:>10.1%}"
            f"{cpu:>12}{core_text:>12}{pps / base_pps:>9.2f}{core_ratio:>16}"
        )


def breakdown(calls: int = 100_000) -> None:
    """In-process cost of each step for the same datagram, on the receiver's CPU (best of 3)."""
    from nodeagent import app, settings
    from nodeagent.adapters.outputs import Fanout
    from nodeagent.pipeline import Pipeline
    from nodeagent.pods.index import PodIndex
    from nodeagent.stats import Stats
    from nodeagent.wire import headers
    from nodeagent.wire.normalize import Normalizer

    _pin(RECV_CPU)
    cfg = settings.load({"senders": [POD]})
    stats, pods = Stats(), PodIndex(app.static_pods(cfg))
    core, default = Pipeline(pods=pods, stats=stats), app.build_pipeline(cfg, pods, stats)
    datagram = memoryview(bytearray(DATAGRAM))
    inner = vxlan.decode(datagram).inner
    fwd = core.process(datagram, "127.0.0.1", 0.0)
    fanout = Fanout([NullOutput()], Normalizer())  # type: ignore[list-item]
    clock = iter(range(10**9))
    steps: list[tuple[str, Callable[[], object]]] = [
        ("vxlan.decode", lambda: vxlan.decode(datagram)),
        ("headers.decode", lambda: headers.decode(inner)),
        ("Pipeline.process core", lambda: core.process(datagram, "127.0.0.1", 0.0)),
        ("Pipeline.process default", lambda: default.process(datagram, "127.0.0.1", float(next(clock)))),
        ("Fanout.offer + normalize", lambda: fanout.offer(fwd)),  # type: ignore[arg-type]
    ]
    print("in-process cost per call (us):", end="")
    for name, step in steps:
        best = min(_time(step, calls) for _ in range(3))
        print(f"  {name} {best * 1e6:.2f}", end="")
    print()


def _time(step: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_500_000, help="datagrams per run (default 1,500,000)")
    parser.add_argument("--no-kernel", action="store_true", help="skip the kernel VXLAN row")
    parser.add_argument("--bulk", action="store_true", help="bulk TCP: 64 KB GSO super-packets (see above)")
    parser.add_argument("--bulk-count", type=int, default=8000, help="super-packets per bulk run")
    parser.add_argument("--bulk-rate", type=float, default=4000.0, help="super-packets offered per second")
    args = parser.parse_args()
    if args.bulk:
        run_bulk(args.bulk_count, args.bulk_rate)
        return
    print(
        f"{args.count:,} datagrams of {len(DATAGRAM)} bytes per run; receiver on CPU {RECV_CPU}, "
        f"generator on CPU {GEN_CPU}; {os.cpu_count()} CPUs"
    )
    rows: list[tuple[str, dict[str, Any] | None]] = [
        ("bare recv_into", run_receiver(bare_receiver, args.count)),
        ("agent core 1/call", run_receiver(agent_receiver, args.count, False, False)),
        ("agent core", run_receiver(agent_receiver, args.count, False)),
        ("agent default", run_receiver(agent_receiver, args.count, True)),
        ("kernel vxlan", None if args.no_kernel else kernel_vxlan(args.count)),
    ]
    report(rows)
    breakdown()


if __name__ == "__main__":
    main()
