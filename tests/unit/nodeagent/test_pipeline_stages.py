"""The whole pipeline with its stages: each drop reason, slicing, accounting, saved bytes."""

from __future__ import annotations

from typing import Any

from nodeagent.pipeline import Pipeline
from nodeagent.stages.cutoff import Cutoff
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
    balanced,
    copy_at,
    datagram,
    eth,
    feed,
    forwards,
    make_pipeline,
    tcp,
)


def make(rules: list[dict[str, Any]] | None = None, prefer: str = "client") -> tuple[Pipeline, Stats]:
    return make_pipeline(CLIENT, SERVER, REMOTE, rules=rules, cutoff=Cutoff(budget=100), prefer=prefer)


def test_second_copy_after_service_dnat_is_dropped_and_accounted() -> None:
    pipeline, stats = make()
    before = tcp(CLIENT_IP, VIP, dport=80, flags="S", seq=7)
    after = copy_at(before, dst=SERVER_IP, dport=8080)
    assert isinstance(feed(pipeline, stats, before, CLIENT, 0.0), Forward)
    assert feed(pipeline, stats, after, SERVER, 0.001) is Drop.OTHER_VANTAGE
    assert_balanced(stats.snapshot())
    assert stats.pods["shop/server"].drops[Drop.OTHER_VANTAGE] == 1
    assert stats.saved_bytes["dedup"] == len(datagram(after, SERVER))


def test_snat_between_two_pods_is_forwarded_from_both_since_neither_copy_names_the_other_pod() -> None:
    """Masquerade hides the client from the server's copy: no pod is at the other address of either
    copy, so nothing says they are one packet (the trade-off that removes the identical-UDP false
    positive, docs/dedup.md): both go to the sensor, nothing is lost."""
    pipeline, stats = make()
    pkt = tcp(CLIENT_IP, VIP, sport=40000, dport=80, payload=b"GET /")
    snat = copy_at(pkt, src=NODE_IP, sport=61000, dst=SERVER_IP, dport=8080)
    assert isinstance(feed(pipeline, stats, pkt, CLIENT, 0.0), Forward)
    assert isinstance(feed(pipeline, stats, snat, SERVER, 0.002), Forward)
    assert_balanced(stats.snapshot())


def test_retransmission_from_the_same_vantage_is_forwarded() -> None:
    pipeline, stats = make()
    ping = eth() / IP(src=CLIENT_IP, dst=SERVER_IP, id=9) / ICMP(type=13, id=1, seq=1) / b"abc"  # no flow
    assert isinstance(feed(pipeline, stats, ping, CLIENT, 0.0), Forward)
    assert isinstance(feed(pipeline, stats, ping, CLIENT, 0.0001), Forward)
    assert feed(pipeline, stats, copy_at(ping), SERVER, 0.0002) is Drop.DUPLICATE


def test_a_copy_filtered_at_one_vantage_does_not_hide_the_other() -> None:
    pipeline, stats = make([{"action": "exclude", "namespace": "shop", "pod": "client", "protocol": "icmp"}])
    ping = eth() / IP(src=CLIENT_IP, dst=SERVER_IP, id=9) / ICMP(type=13, id=1, seq=1) / b"abc"  # no flow
    assert feed(pipeline, stats, ping, CLIENT, 0.0) is Drop.FILTERED
    assert isinstance(feed(pipeline, stats, copy_at(ping), SERVER, 0.001), Forward)
    assert stats.saved_bytes["filter"] > 0
    assert_balanced(stats.snapshot())


def test_cross_node_flow_owned_by_the_other_node_is_not_owner() -> None:
    pipeline, stats = make()
    reply = tcp(CLIENT_IP, REMOTE_IP, sport=8080, dport=40000, flags="SA")  # the remote pod is the client
    assert feed(pipeline, stats, reply, CLIENT, 0.0) is Drop.NOT_OWNER


def test_snap_length_slices_and_keeps_the_wire_length() -> None:
    pipeline, stats = make([{"action": "include", "ports": [80], "snaplen": 64}])
    frame = bytes(tcp(CLIENT_IP, "192.168.1.1", dport=80, payload=b"p" * 500))
    verdict = feed(pipeline, stats, frame, CLIENT, 0.0)
    assert isinstance(verdict, Forward)
    assert len(verdict.frame) == 64 and verdict.wire_len == len(frame) and bytes(verdict.frame) == frame[:64]
    assert stats.saved_bytes["slice"] == len(frame) - 64


def test_encrypted_flow_is_cut_to_headers_and_counted() -> None:
    pipeline, stats = make()
    hello = tcp(CLIENT_IP, "192.168.1.1", dport=7000, payload=b"\x16\x03\x01" + b"h" * 150)
    data = tcp(CLIENT_IP, "192.168.1.1", dport=7000, seq=5000, payload=b"\x17" * 400)
    assert isinstance(feed(pipeline, stats, hello, CLIENT, 0.0), Forward)
    verdict = feed(pipeline, stats, data, CLIENT, 0.01)
    assert isinstance(verdict, Forward) and len(verdict.frame) == 54 and verdict.wire_len == len(bytes(data))
    assert verdict.frame[16:18] == b"\x00\x28"  # IPv4 total length: headers only
    assert stats.saved_bytes["cutoff"] == 400
    assert_balanced(stats.snapshot())


def test_state_reports_table_sizes_evictions_and_holds() -> None:
    pipeline, stats = make()
    feed(pipeline, stats, tcp(CLIENT_IP, VIP, flags="S"), CLIENT, 0.0)
    state = pipeline.state()
    assert state["dedup"]["entries"] == 1 and state["vantage"]["evictions"] == 0
    assert state["hold"] == {"packets": 0, "bytes": 0, "overflows": 0}


def test_cutoff_poisoning_by_a_fake_tls_flow_changes_nothing_of_another_pods_copies() -> None:
    """A pod forges a TLS hello for a flow between two other hosts (foreign: dropped) and for its
    own flow with the server, whose copies the server's vantage owns (prefer=server): the server's
    cleartext copies still reach the sensor whole."""
    pipeline, stats = make(prefer="server")
    warm = [(tcp(CLIENT_IP, NODE_IP, sport=5555, dport=9, flags="S"), CLIENT),
            (tcp(SERVER_IP, NODE_IP, sport=5555, dport=9, flags="S"), SERVER)]
    for frame, pod in warm:
        feed(pipeline, stats, frame, pod, 0.0)
    pipeline.flush()
    hello = b"\x16\x03\x01" + b"h" * 300
    assert feed(pipeline, stats, tcp("10.0.0.77", SERVER_IP, dport=8080, payload=hello), CLIENT, 1.0) \
        is Drop.FOREIGN
    forged = tcp(CLIENT_IP, SERVER_IP, dport=8080, seq=1, payload=hello)  # never sent on the wire
    feed(pipeline, stats, forged, CLIENT, 1.0)
    for i in range(3):
        clear = tcp(CLIENT_IP, SERVER_IP, dport=8080, seq=1000 + 500 * i, payload=b"GET /secret " * 40)
        verdict = feed(pipeline, stats, copy_at(clear), SERVER, 1.01 + i * 0.01)
        assert any(f.wire_len == len(f.frame) == len(copy_at(clear)) for f in forwards(verdict))
    assert balanced(stats) and stats.saved_bytes.get("cutoff", 0) == 0
