"""The hot path's shortcuts keep the slow path's answers: the cached sender follows every change of
the pod table, and ``received`` and the totals are derived from the per-pod outcomes."""

from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.stats import UNKNOWN_POD, Stats
from nodeagent.verdict import Drop, Forward
from nodeagent.wire import vxlan
from tests.books import assert_balanced

WEB = PodInfo(ip="10.0.0.5", vni=5, namespace="default", name="web")


def _datagram(vni: int = 5) -> bytes:
    frame = Ether() / IP(src="10.0.0.5", dst="10.0.0.9") / UDP(sport=5353, dport=53) / b"q"
    return vxlan.encode(vni, bytes(frame))


def test_cached_sender_follows_removal_readding_and_replacement():
    pods, stats = PodIndex([WEB]), Stats()
    pipeline = Pipeline(pods=pods, stats=stats)
    assert isinstance(pipeline.process(_datagram(), WEB.ip, 1.0), Forward)  # now cached
    pods.remove(WEB.ip)
    assert pipeline.process(_datagram(), WEB.ip, 2.0) is Drop.UNKNOWN_SENDER
    moved = PodInfo(ip=WEB.ip, vni=9, namespace="default", name="web2")
    pods.add(moved)
    assert pipeline.process(_datagram(5), WEB.ip, 3.0) is Drop.WRONG_VNI
    verdict = pipeline.process(_datagram(9), WEB.ip, 4.0)
    assert isinstance(verdict, Forward) and verdict.pod is moved
    pods.replace_all([PodInfo(ip=WEB.ip, vni=9, namespace="default", name="web2", local=False)])
    assert pipeline.process(_datagram(9), WEB.ip, 5.0) is Drop.UNKNOWN_SENDER  # a peer now
    snap = stats.snapshot()
    assert snap["pods"]["default/web"]["forwarded"] == 1
    assert (snap["pods"]["default/web2"]["received"], snap["pods"]["default/web2"]["forwarded"]) == (2, 1)
    assert snap["pods"][UNKNOWN_POD]["drops"]["unknown_sender"] == 2
    assert stats.pods["default/web2"].last_seen == 4.0


def test_unknown_senders_are_not_cached():
    pipeline = Pipeline(pods=PodIndex([WEB]), stats=Stats())
    for i in range(100):
        assert pipeline.process(_datagram(), f"10.1.0.{i}", 0.0) is Drop.UNKNOWN_SENDER
    assert len(pipeline._senders) == 0


def test_totals_are_sums_of_pods_and_received_is_counted_on_its_own():
    stats = Stats()
    a, b = stats.pod("ns/a"), stats.pod("ns/b")
    for counters, size in ((a, 100), (a, 40), (b, 7)):
        stats.read(size)
        stats.receive(counters, size, 1.0)
    stats.forward(a, 100)
    stats.drop(a, Drop.FILTERED, 40)
    stats.drop(b, Drop.DUPLICATE, 7)
    assert (a.received, a.received_bytes, b.received, b.received_bytes) == (2, 140, 1, 7)
    total = stats.total
    assert (total.received, total.forwarded, total.received_bytes) == (3, 1, 147)
    assert total.drops[Drop.FILTERED] == 1 and total.drop_bytes[Drop.DUPLICATE] == 7
    snap = stats.snapshot()
    assert_balanced(snap)
    assert snap["received"] == 3
    stats.read(1)  # a datagram read but never given an outcome: the identity breaks, as it must
    snap = stats.snapshot()
    assert snap["received"] == 4 != snap["forwarded"] + sum(snap["drops"].values()) + snap["held"]


def test_a_first_fragment_past_the_cutoff_is_cut_not_raised():
    """A first IPv4 fragment has no L4 checksum to fix (it covers the whole datagram): it used to
    raise ``struct.error`` from ``headers_only``, which aborted the receiver's batch."""
    from scapy.layers.inet import TCP

    from nodeagent.stages.cutoff import Cutoff, headers_only
    from nodeagent.wire import headers

    cutoff = Cutoff(budget=100)
    hello = bytes(Ether() / IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=1000, dport=443, flags="PA")
                  / (b"\x16\x03\x01" + b"h" * 300))
    assert cutoff.apply(headers.decode(hello), hello, b"\x0a\x00\x00\x05", 0.0) == 0
    frag = bytes(Ether() / IP(src="10.0.0.5", dst="10.0.0.9", flags="MF")
                 / TCP(sport=1000, dport=443, flags="PA", chksum=0x1234) / (b"\x17" * 300))
    meta = headers.decode(frag)
    assert meta.fragment and cutoff.apply(meta, frag, b"\x0a\x00\x00\x05", 0.1) == meta.payload
    out = headers_only(frag, meta)
    assert len(out) == meta.payload and IP(bytes(out[14:])).len == meta.payload - 14
    assert bytes(out[meta.l4 + 16 : meta.l4 + 18]) == b"\x12\x34"  # the checksum is left as it was
