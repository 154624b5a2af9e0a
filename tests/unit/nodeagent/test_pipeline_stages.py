"""The whole pipeline with its stages: each drop reason, slicing, accounting, saved bytes."""

from __future__ import annotations

from typing import Any

from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodIndex
from nodeagent.settings import load
from nodeagent.stages import filters
from nodeagent.stages.cutoff import Cutoff
from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.vantage import Vantage
from nodeagent.stats import Stats
from nodeagent.verdict import Drop, Forward
from tests.books import assert_balanced
from tests.unit.nodeagent.pipeline_packets import (
    CLIENT,
    CLIENT_IP,
    ICMP,
    IP,
    NODE_IP,
    REMOTE,
    REMOTE_IP,
    SERVER,
    SERVER_IP,
    VIP,
    copy_at,
    datagram,
    eth,
    tcp,
)


def make(rules: list[dict[str, Any]] | None = None, prefer: str = "client",
         **extra: Any) -> tuple[Pipeline, Stats]:
    stats = Stats()
    pods = PodIndex([CLIENT, SERVER, REMOTE])
    fs = filters.compile(load({"filters": {"rules": rules or [], **extra}}).filters)
    pipeline = Pipeline(pods=pods, stats=stats, vantage=Vantage(prefer=prefer), filters=fs,
                        dedup=DedupWindow(window=0.05, capacity=1000), cutoff=Cutoff(budget=100))
    return pipeline, stats


def test_second_copy_after_service_dnat_is_dropped_and_accounted() -> None:
    pipeline, stats = make()
    before = tcp(CLIENT_IP, VIP, dport=80, flags="S", seq=7)
    after = copy_at(before, dst=SERVER_IP, dport=8080)
    assert isinstance(pipeline.process(datagram(before, CLIENT), CLIENT_IP, now=0.0), Forward)
    assert pipeline.process(datagram(after, SERVER), SERVER_IP, now=0.001) is Drop.OTHER_VANTAGE
    assert_balanced(stats.snapshot())
    assert stats.pods["shop/server"].drops[Drop.OTHER_VANTAGE] == 1
    assert stats.saved_bytes["dedup"] == len(datagram(after, SERVER))


def test_snat_hides_the_client_so_per_packet_dedup_removes_the_copy_until_the_window_ends() -> None:
    pipeline, stats = make()
    pkt = tcp(CLIENT_IP, VIP, sport=40000, dport=80, payload=b"GET /")
    snat = copy_at(pkt, src=NODE_IP, sport=61000, dst=SERVER_IP, dport=8080)
    assert isinstance(pipeline.process(datagram(pkt, CLIENT), CLIENT_IP, now=0.0), Forward)
    assert pipeline.process(datagram(snat, SERVER), SERVER_IP, now=0.002) is Drop.DUPLICATE
    assert isinstance(pipeline.process(datagram(snat, SERVER), SERVER_IP, now=1.0), Forward)  # expired
    assert_balanced(stats.snapshot())


def test_retransmission_from_the_same_vantage_is_forwarded() -> None:
    pipeline, _ = make()
    ping = eth() / IP(src=CLIENT_IP, dst=SERVER_IP, id=9) / ICMP(type=13, id=1, seq=1) / b"abc"  # no flow
    assert isinstance(pipeline.process(datagram(ping, CLIENT), CLIENT_IP, now=0.0), Forward)
    assert isinstance(pipeline.process(datagram(ping, CLIENT), CLIENT_IP, now=0.0001), Forward)
    assert pipeline.process(datagram(copy_at(ping), SERVER), SERVER_IP, now=0.0002) is Drop.DUPLICATE


def test_a_copy_filtered_at_one_vantage_does_not_hide_the_other() -> None:
    pipeline, stats = make([{"action": "exclude", "namespace": "shop", "pod": "client", "protocol": "icmp"}])
    ping = eth() / IP(src=CLIENT_IP, dst=SERVER_IP, id=9) / ICMP(type=13, id=1, seq=1) / b"abc"  # no flow
    assert pipeline.process(datagram(ping, CLIENT), CLIENT_IP, now=0.0) is Drop.FILTERED
    assert isinstance(pipeline.process(datagram(copy_at(ping), SERVER), SERVER_IP, now=0.001), Forward)
    assert stats.saved_bytes["filter"] > 0
    assert_balanced(stats.snapshot())


def test_cross_node_flow_owned_by_the_other_node_is_not_owner() -> None:
    pipeline, _ = make()
    reply = tcp(CLIENT_IP, REMOTE_IP, sport=8080, dport=40000, flags="SA")  # the remote pod is the client
    assert pipeline.process(datagram(reply, CLIENT), CLIENT_IP, now=0.0) is Drop.NOT_OWNER


def test_snap_length_slices_and_keeps_the_wire_length() -> None:
    pipeline, stats = make([{"action": "include", "ports": [80], "snaplen": 64}])
    frame = bytes(tcp(CLIENT_IP, "192.168.1.1", dport=80, payload=b"p" * 500))
    verdict = pipeline.process(datagram(frame, CLIENT), CLIENT_IP, now=0.0)
    assert isinstance(verdict, Forward)
    assert len(verdict.frame) == 64 and verdict.wire_len == len(frame) and bytes(verdict.frame) == frame[:64]
    assert stats.saved_bytes["slice"] == len(frame) - 64


def test_encrypted_flow_is_cut_to_headers_and_counted() -> None:
    pipeline, stats = make()
    hello = tcp(CLIENT_IP, "192.168.1.1", dport=7000, payload=b"\x16\x03\x01" + b"h" * 150)
    data = tcp(CLIENT_IP, "192.168.1.1", dport=7000, seq=5000, payload=b"\x17" * 400)
    assert isinstance(pipeline.process(datagram(hello, CLIENT), CLIENT_IP, now=0.0), Forward)
    verdict = pipeline.process(datagram(data, CLIENT), CLIENT_IP, now=0.01)
    assert isinstance(verdict, Forward) and len(verdict.frame) == 54 and verdict.wire_len == len(bytes(data))
    assert verdict.frame[16:18] == b"\x00\x28"  # IPv4 total length: headers only
    assert stats.saved_bytes["cutoff"] == 400
    assert_balanced(stats.snapshot())


def test_state_reports_table_sizes_and_evictions() -> None:
    pipeline, _ = make()
    pipeline.process(datagram(tcp(CLIENT_IP, VIP, flags="S"), CLIENT), CLIENT_IP, now=0.0)
    state = pipeline.state()
    assert state["dedup"]["entries"] == 1 and state["vantage"]["evictions"] == 0
