"""Crafted packets for the pipeline's unit tests (scapy here only, never in nodeagent).

``copy_at(pkt, ...)`` models what a node does to a packet between two vantages: another TTL and
MAC pair, recomputed checksums, optionally a rewritten address/port (DNAT or SNAT).
"""

from __future__ import annotations

from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.settings import load
from nodeagent.stages import filters
from nodeagent.stages.cutoff import Cutoff
from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.vantage import Vantage
from nodeagent.stats import Stats
from nodeagent.verdict import Forward, Released, Verdict
from nodeagent.wire import headers, vxlan
from tests.books import balances

CLIENT_IP, SERVER_IP, VIP, NODE_IP, REMOTE_IP = "10.0.0.5", "10.0.0.9", "10.96.0.10", "10.0.0.1", "10.1.0.7"
CLIENT = PodInfo(CLIENT_IP, 5, "shop", "client", labels={"app": "client"})
SERVER = PodInfo(SERVER_IP, 9, "shop", "server", labels={"app": "server", "tier": "db"})
REMOTE = PodInfo(REMOTE_IP, 0, "other", "remote", labels={"app": "remote"}, local=False)

__all__ = ["ARP", "IP", "TCP", "Dot1Q", "ICMP", "IPv6", "Raw", "UDP"]


def eth() -> Ether:
    """Explicit MACs: scapy must never resolve one (that would send ARP on the host's network)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def tcp(src: str, dst: str, sport: int = 40000, dport: int = 80, flags: str = "A", seq: int = 1000,
        ack: int = 2000, payload: bytes = b"", ttl: int = 64, ipid: int = 77, **kw: Any) -> Packet:
    return (eth() /
            IP(src=src, dst=dst, ttl=ttl, id=ipid) /
            TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, **kw) / payload)


def udp(src: str, dst: str, sport: int = 40000, dport: int = 53, payload: bytes = b"q", ipid: int = 0,
        ttl: int = 64) -> Packet:
    ip = IP(src=src, dst=dst, ttl=ttl, id=ipid, flags="DF")
    return eth() / ip / UDP(sport=sport, dport=dport) / payload


def copy_at(pkt: Packet, *, ttl: int = 63, src: str | None = None, dst: str | None = None,
            sport: int | None = None, dport: int | None = None, vlan: int | None = None) -> bytes:
    """The other vantage's copy: new MACs, TTL, checksums recomputed, optional NAT rewrite."""
    pkt = pkt.copy()
    pkt[Ether].src, pkt[Ether].dst = "0a:00:00:00:00:0a", "0a:00:00:00:00:0b"
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    if IP in pkt:
        pkt[IP].ttl = ttl
        del pkt[IP].chksum
    else:
        pkt[IPv6].hlim = ttl
    if src:
        ip.src = src
    if dst:
        ip.dst = dst
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP] if UDP in pkt else None
    if l4 is not None:
        if sport:
            l4.sport = sport
        if dport:
            l4.dport = dport
        del l4.chksum
    if vlan is not None:
        inner = pkt[Ether].payload
        pkt = Ether(src=pkt[Ether].src, dst=pkt[Ether].dst) / Dot1Q(vlan=vlan) / inner
    return bytes(pkt)


def meta(frame: bytes | Packet) -> headers.PacketMeta:
    return headers.decode(bytes(frame))


def datagram(frame: bytes | Packet, pod: PodInfo) -> bytes:
    return vxlan.encode(pod.vni, bytes(frame))


def make_vantage(pods: PodIndex, stats: Stats, **kw: Any) -> Vantage:
    return Vantage(pods=pods, last_seen=stats.last_seen, **kw)


def make_pipeline(*pods: PodInfo, rules: list[dict[str, Any]] | None = None, cutoff: Cutoff | None = None,
                  window: float = 0.05, **vantage: Any) -> tuple[Pipeline, Stats]:
    """The agent's pipeline (vantage, filters, dedup; cutoff when given) over ``pods``."""
    stats, index = Stats(), PodIndex(pods)
    fs = filters.compile(load({"filters": {"rules": rules or []}}).filters) if rules else None
    return Pipeline(pods=index, stats=stats, vantage=make_vantage(index, stats, **vantage), filters=fs,
                    dedup=DedupWindow(window=window, capacity=10_000), cutoff=cutoff), stats


def feed(pipeline: Pipeline, stats: Stats, frame: bytes | Packet, pod: PodInfo, now: float,
         source: str | None = None) -> Verdict:
    """What the receiver does with one datagram: count it as read, then process it."""
    data = datagram(frame, pod)
    stats.read(len(data))
    return pipeline.process(data, source or pod.ip, now)


def forwards(verdict: object) -> list[Forward]:
    """The packets a verdict hands to the outputs now."""
    if isinstance(verdict, Forward):
        return [verdict]
    if isinstance(verdict, Released):
        return list(verdict.forwards)
    return []


def balanced(stats: Stats) -> bool:
    """``tests.books``' identity (held included, the receiver's count equal to the pipeline's)."""
    snap = stats.snapshot()
    pods = all(balances(p) for p in snap["pods"].values())
    return pods and balances(snap) and snap["received"] == snap["pipeline_received"]
