"""Where a worker's CPU goes, step by step, on the benchmark mix (a profile, not a rate).

The datagrams of ``nodeagent.lab.loadgen.mix`` (10,000 flows, IMIX sizes, 40% seen from two pods
through a Service, partial checksums on what pods sent) go through one worker's objects in this
process, without sockets: ``Pipeline.process`` with the stages added one at a time (the sender
check and decode alone, then vantage, filters, dedup and cutoff: the default pipeline), then the
fan-out to the outputs (normalization, pcap, VXLAN to a loopback sensor). Each figure is the
process CPU per datagram of the mix (``time.process_time``), the best of ``--repeats`` passes
(other load on the machine only ever adds), and the cost of a step is its difference to the
previous line. A second mix (``loadgen.HEAVY``: heavy-tailed flow lengths, so most packets are
not a flow's first few) gives the decode and default-pipeline rows again. The process first
applies a worker's collector policy (``settle_heap``: the mixes' own datagrams, which a worker
never holds, are frozen with the rest). The rates a worker reaches at an offered load are
``bench/bench_receive.py``'s.

Run: ``.venv/bin/python bench/bench_pipeline.py [--repeats 5]`` (no root, under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nodeagent import settings as settings_mod  # noqa: E402
from nodeagent.adapters.outputs import Fanout, Output  # noqa: E402
from nodeagent.adapters.pcap_out import PcapOutput  # noqa: E402
from nodeagent.adapters.vxlan_out import VxlanOutput  # noqa: E402
from nodeagent.lab import loadgen  # noqa: E402
from nodeagent.pipeline import Pipeline  # noqa: E402
from nodeagent.pods.index import PodIndex  # noqa: E402
from nodeagent.settings import SensorSettings  # noqa: E402
from nodeagent.stats import Stats  # noqa: E402
from nodeagent.verdict import Forward, Released  # noqa: E402
from nodeagent.wire.normalize import Normalizer  # noqa: E402
from nodeagent.workers.worker import build_pipeline, settle_heap, static_pods  # noqa: E402

PODS = [(f"127.0.0.{10 + i}", 10 + i) for i in range(4)]
"""The loopback pods of bench/bench_receive.py: (address, VNI = its low 24 bits, ``--vni auto``)."""


def datagrams(**kwargs: Any) -> list[tuple[memoryview, str]]:
    the_mix = loadgen.mix(PODS, **kwargs)
    senders = [the_mix.senders[s] for s, _first, count in the_mix.runs for _ in range(count)]
    return [(memoryview(bytearray(d)), s) for d, s in zip(the_mix.datagrams, senders, strict=True)]


def pipelines(settings: Any) -> list[tuple[str, Callable[[], Pipeline]]]:
    """The pipeline with its stages added one by one, ending with the default one."""
    def make(**stages: Any) -> Callable[[], Pipeline]:
        def build() -> Pipeline:
            full = build_pipeline(settings, PodIndex(static_pods(settings)), Stats())
            kept = {name: getattr(full, f"_{name}") if on else None for name, on in stages.items()}
            return Pipeline(pods=full._pods, stats=full._stats, **kept)
        return build
    off = {"vantage": False, "filters": False, "dedup": False, "cutoff": False}
    return [("sender check + decode", make(**off)),
            ("+ vantage", make(**{**off, "vantage": True})),
            ("+ filters", make(**{**off, "vantage": True, "filters": True})),
            ("+ dedup", make(**{**off, "vantage": True, "filters": True, "dedup": True})),
            ("+ cutoff (default pipeline)", make(vantage=True, filters=True, dedup=True, cutoff=True))]


def best(step: Callable[[], int], repeats: int) -> float:
    """Fewest CPU seconds per item of ``step`` (which returns how many items it handled)."""
    out = float("inf")
    for _ in range(repeats):
        cpu = time.process_time()
        count = step()
        out = min(out, (time.process_time() - cpu) / count)
    return out


def run_pipeline(build: Callable[[], Pipeline], data: list[tuple[memoryview, str]]) -> Callable[[], int]:
    def step() -> int:
        pipeline, now = build(), 0.0
        process = pipeline.process
        for datagram, sender in data:
            now += 5e-6  # 200,000 datagrams/s of virtual time: the dedup window holds 10,000
            process(datagram, sender, now)
        pipeline.flush()  # what is still held (the receiver's timer releases it in the agent)
        return len(data)
    return step


def forwarded(settings: Any, data: list[tuple[memoryview, str]]) -> list[Forward]:
    pipeline, now, out = build_pipeline(settings, PodIndex(static_pods(settings)), Stats()), 0.0, []
    for datagram, sender in data:
        now += 5e-6
        verdict = pipeline.process(datagram, sender, now)
        if type(verdict) is Forward:
            out.append(verdict)
        elif type(verdict) is Released:
            out.extend(verdict.forwards)
    return out + pipeline.flush()


async def outputs(fwds: list[Forward], repeats: int) -> list[tuple[str, float]]:
    tmp = tempfile.mkdtemp(prefix="pmbp-")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the sensor: never read, the kernel drops
    sink.bind(("127.0.0.1", 0))
    pcap_out = PcapOutput(settings_mod.load({"outputs": {"pcap": {"dir": tmp}}}).outputs.pcap)
    vxlan_out = VxlanOutput([SensorSettings("127.0.0.1", sink.getsockname()[1])])
    for output in (pcap_out, vxlan_out):
        await output.open()
    rows = []
    cases: list[tuple[str, list[Output], Normalizer]] = [
        ("fan-out: normalize only", [_Null()], Normalizer()),
        ("fan-out: normalize + pcap", [pcap_out], Normalizer()),
        ("fan-out: normalize + VXLAN", [vxlan_out], Normalizer())]
    for name, outs, normalizer in cases:
        fanout = Fanout(outs, normalizer)

        def step(offer: Callable[[Forward], None] = fanout.offer) -> int:
            for fwd in fwds:
                offer(fwd)
            return len(fwds)
        rows.append((name, best(step, repeats)))
    for output in (pcap_out, vxlan_out):
        await output.close()
    sink.close()
    return rows


class _Null:
    """An output that takes every packet and does nothing: the fan-out and normalization still run."""

    name = "null"

    async def open(self) -> None:
        return None

    async def run(self) -> None:
        return None

    def offer(self, fwd: Forward) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heavy-flows", type=int, default=5000,
                        help="flows of the second, heavy-tailed mix (0: skip it)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    settings = settings_mod.load({"senders": [f"{ip},auto,bench/pod{i}" for i, (ip, _) in enumerate(PODS)]})
    data = datagrams()
    fwds = forwarded(settings, data)
    heavy = datagrams(flows=args.heavy_flows, lengths=loadgen.HEAVY) if args.heavy_flows else []
    settle_heap()
    print(f"mix: {len(data):,} datagrams, {len(fwds):,} forwarded by the default pipeline "
          f"({len(fwds) / len(data):.0%}); CPU per datagram, best of {args.repeats}")
    previous = 0.0
    for name, build in pipelines(settings):
        cost = best(run_pipeline(build, data), args.repeats) * 1e6
        print(f"  {name:<32}{cost:7.2f} us   (step {cost - previous:+.2f})")
        previous = cost
    for name, per_forward in asyncio.run(outputs(fwds, args.repeats)):
        per = per_forward * len(fwds) / len(data) * 1e6
        print(f"  {name:<32}{per:7.2f} us per datagram ({per_forward * 1e6:.2f} per forwarded packet)")
    if heavy:
        print(f"heavy-tailed flow lengths (loadgen.HEAVY): {len(heavy):,} datagrams of {args.heavy_flows:,} "
              "flows, the same pods and shares")
        steps = pipelines(settings)
        for name, build in (steps[0], steps[-1]):
            cost = best(run_pipeline(build, heavy), args.repeats) * 1e6
            print(f"  {name:<32}{cost:7.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
