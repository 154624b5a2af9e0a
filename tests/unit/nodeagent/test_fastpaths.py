"""The pipeline's fast paths decide exactly as the slow paths they shortcut.

The reference pipeline runs every stage on the eager ``FlowTable`` (an expiry pass per call, the
table the stages used before) and the vantage stage's full decision for every copy (no short path
for paired connections); the pipeline under test runs as shipped. Both get the benchmark's traffic
(``nodeagent.lab.loadgen``: DNAT'd pairs whose copies arrive in either order, holds, links, TLS
cut-offs), with both vantage preferences and tables small enough to evict; every outcome must be
the same, in the same order, with the same bytes."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.lab import loadgen
from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.settings import FilterSettings
from nodeagent.stages import filters
from nodeagent.stages.cutoff import Cutoff
from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.vantage import Vantage
from nodeagent.stats import Stats
from nodeagent.verdict import Forward, Released
from tests.unit.nodeagent.test_flowtable import EagerTable

PODS = [(f"127.0.0.{10 + i}", 10 + i) for i in range(4)]


class FullVantage(Vantage):
    """``decide`` without the paired short path: the endpoints built and the full path taken."""

    def decide(self, meta: Any, frame: Any, pod: PodInfo, peer: PodInfo | None, now: float) -> Any:
        proto = meta.proto
        if meta.l4 < 0 or proto not in (6, 17):
            return self._without_flow(meta, pod, peer)
        if meta.src in pod.addrs:
            own, other = (meta.src, meta.sport), (meta.dst, meta.dport)
        elif meta.dst in pod.addrs:
            own, other = (meta.dst, meta.dport), (meta.src, meta.sport)
        else:
            return 1  # CHECK
        key = (proto, *own, *other) if own < other else (proto, *other, *own)
        conn = self._conn(self._conns.refresh(key, now), key, meta, own, other, now)
        p = pod.addr
        if conn.first is None:
            conn.first = p
        elif conn.first != p:
            conn.paired = True
        if conn.held_from == p:
            return self._queue(conn, p, now)
        if peer is not None and peer is not pod:
            if not peer.local:
                return self._across_nodes(conn, own, peer)
            return self._between_pods(conn, key, meta, frame, pod, peer, own, other, now)
        return self._toward_non_pod(conn, key, meta, frame, pod, own, other, now)


def pipeline(reference: bool, prefer: str, stats: Stats) -> Pipeline:
    pods = PodIndex(PodInfo(ip=ip, vni=vni, namespace="bench", name=f"pod{i}")
                    for i, (ip, vni) in enumerate(PODS))
    kind = FullVantage if reference else Vantage
    vantage = kind(pods=pods, last_seen=stats.last_seen, prefer=prefer, capacity=3000, idle=0.2)
    dedup = DedupWindow(window=0.05, capacity=400)
    cutoff = Cutoff(budget=500, capacity=800, idle=0.3)
    if reference:
        vantage._conns = EagerTable(capacity=3000, idle=0.2)  # type: ignore[assignment]
        vantage._recent = EagerTable(capacity=3000, idle=0.05)  # type: ignore[assignment]
        dedup._digests = EagerTable(capacity=400, idle=0.05)  # type: ignore[assignment]
        dedup._ranges = EagerTable(capacity=400, idle=0.05)  # type: ignore[assignment]
        cutoff._flows = EagerTable(capacity=800, idle=0.3)  # type: ignore[assignment]
    return Pipeline(pods=pods, stats=stats, vantage=vantage, filters=filters.compile(FilterSettings()),
                    dedup=dedup, cutoff=cutoff)


def records(forwards: Any) -> list[tuple[int, int, bytes]]:
    return [(f.vni, f.wire_len, bytes(f.frame)) for f in forwards]


def outcomes(the_mix: loadgen.Mix, reference: bool, prefer: str) -> list[Any]:
    stats = Stats()
    p = pipeline(reference, prefer, stats)
    senders = [the_mix.senders[s] for s, _first, count in the_mix.runs for _ in range(count)]
    out: list[Any] = []
    now = 0.0
    for datagram, sender in zip(the_mix.datagrams, senders, strict=True):
        now += 5e-6
        verdict = p.process(memoryview(bytearray(datagram)), sender, now)
        forwards = ([verdict] if type(verdict) is Forward
                    else verdict.forwards if type(verdict) is Released else [])
        out.append(str(verdict) if not forwards else records(forwards))
        if now > 0.1 and int(now * 1000) % 20 == 0:  # the receiver's timer, now and then
            out.append(records(p.expire(now)))
    out.append(records(p.flush()))
    out.append(stats.snapshot()["drops"])
    return out


@pytest.mark.parametrize("prefer", ["client", "server"])
@pytest.mark.parametrize("lengths", [loadgen.FIXED, loadgen.HEAVY])
def test_fast_paths_decide_as_the_slow_paths_on_the_benchmark_mix(prefer: str, lengths: str) -> None:
    the_mix = loadgen.mix(PODS, flows=1500 if lengths == loadgen.FIXED else 400, lengths=lengths, seed=3)
    fast = outcomes(the_mix, False, prefer)
    assert fast == outcomes(the_mix, True, prefer)
    assert any(isinstance(o, str) and "other_vantage" in o for o in fast)  # the mix exercises vantage
    cut = [f for o in fast[:-1] if isinstance(o, list) for f in o if len(f[2]) < f[1]]
    assert cut  # and the cutoff: TLS flows past their budget are cut to headers
