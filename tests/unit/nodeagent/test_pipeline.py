"""pipeline: the sender check before parsing, VNI check, malformed input, direction, a pod's tunnel
speaking only for the pod (foreign frames), accounting (received counted on its own)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.stats import UNKNOWN_POD, Stats
from nodeagent.verdict import Direction, Drop, Forward
from nodeagent.wire import vxlan
from tests.books import assert_balanced

MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
WEB = PodInfo(ip="10.0.0.5", vni=5, namespace="default", name="web")
DB6 = PodInfo(ip="fd00::7", vni=7, namespace="default", name="db6")
PEER = PodInfo(ip="10.0.9.9", vni=0, namespace="other", name="api", local=False)


def _frame(src: str = "10.0.0.5", dst: str = "10.0.0.9") -> bytes:
    ip = IPv6 if ":" in src else IP
    return bytes(Ether(src=MAC1, dst=MAC2) / ip(src=src, dst=dst) / TCP(sport=1234, dport=80) / b"data")


@pytest.fixture
def stats() -> Stats:
    return Stats()


@pytest.fixture
def pipeline(stats: Stats) -> Pipeline:
    return Pipeline(pods=PodIndex([WEB, DB6, PEER]), stats=stats)


def _invariant(stats: Stats) -> None:
    assert_balanced(stats.snapshot())


def run(pipeline: Pipeline, stats: Stats, datagram: bytes, sender: str, now: float) -> object:
    """As the receiver does: count the datagram as read, then process it."""
    stats.read(len(datagram))
    return pipeline.process(datagram, sender, now)


def test_known_sender_with_its_vni_is_forwarded(pipeline, stats):
    frame = _frame()
    verdict = run(pipeline, stats, vxlan.encode(5, frame), "10.0.0.5", now=3.0)
    assert isinstance(verdict, Forward)
    assert bytes(verdict.frame) == frame and verdict.wire_len == len(frame)
    assert verdict.vni == 5 and verdict.pod is WEB and verdict.now == 3.0
    assert verdict.direction == Direction.EGRESS and verdict.meta.dport == 80
    assert stats.snapshot()["pods"]["default/web"]["forwarded"] == 1
    _invariant(stats)


def test_direction_into_the_pod(pipeline, stats):
    into = run(pipeline, stats, vxlan.encode(5, _frame("10.0.0.9", "10.0.0.5")), "10.0.0.5", now=0.0)
    assert isinstance(into, Forward) and into.direction == Direction.INGRESS


def test_a_frame_naming_none_of_the_pods_addresses_is_foreign(pipeline, stats):
    """A pod's tunnel speaks only for the pod: injected frames between other hosts go."""
    for src, dst in (("10.1.1.1", "10.1.1.2"), ("10.0.9.9", "10.0.0.9"), ("fe80::1", "fd00::9")):
        assert run(pipeline, stats, vxlan.encode(5, _frame(src, dst)), "10.0.0.5", now=0.0) is Drop.FOREIGN
    arp = bytes(Ether(src=MAC1, dst=MAC2) / ARP(psrc="10.0.0.77", pdst="10.0.0.1"))
    assert run(pipeline, stats, vxlan.encode(5, arp), "10.0.0.5", now=0.0) is Drop.FOREIGN
    assert stats.snapshot()["pods"]["default/web"]["drops"]["foreign"] == 4
    _invariant(stats)


def test_link_scoped_frames_of_the_pods_own_link_are_its_own(pipeline, stats):
    """IPv6 neighbour discovery and MLD from link-local or unspecified addresses, ARP naming the pod."""
    from scapy.layers.inet6 import ICMPv6MLReport2, ICMPv6ND_NS

    frames = [Ether(src=MAC1, dst=MAC2) / IPv6(src="fe80::5", dst="ff02::16") / ICMPv6MLReport2(),
              Ether(src=MAC1, dst=MAC2) / IPv6(src="::", dst="ff02::1:ff00:7") / ICMPv6ND_NS(tgt="fd00::7"),
              Ether(src=MAC1, dst=MAC2) / ARP(psrc="10.0.0.1", pdst="10.0.0.5")]
    for frame in frames:
        verdict = run(pipeline, stats, vxlan.encode(5, bytes(frame)), "10.0.0.5", now=0.0)
        assert isinstance(verdict, Forward) and verdict.direction == Direction.UNKNOWN


def test_a_dual_stack_pods_tunnel_may_come_from_either_address(stats):
    web = PodInfo(ip="10.0.0.5", vni=5, namespace="default", name="web", ips=("fd00::5",))
    pipeline = Pipeline(pods=PodIndex([web]), stats=stats)
    for source in ("10.0.0.5", "fd00::5"):
        verdict = run(pipeline, stats, vxlan.encode(5, _frame("fd00::5", "fd00::9")), source, now=0.0)
        assert isinstance(verdict, Forward) and verdict.pod is web and verdict.direction == Direction.EGRESS
    assert stats.pods["default/web"].received == 2


def test_ipv6_sender(pipeline, stats):
    verdict = run(pipeline, stats, vxlan.encode(7, _frame("fd00::7", "fd00::9")), "fd00::7", now=0.0)
    assert isinstance(verdict, Forward) and verdict.direction == Direction.EGRESS


def test_unknown_sender_is_dropped_before_parsing(pipeline, stats):
    assert run(pipeline, stats, b"garbage that would not parse", "10.0.0.99", now=0.0) is Drop.UNKNOWN_SENDER
    snap = stats.snapshot()
    assert snap["pods"][UNKNOWN_POD]["drops"]["unknown_sender"] == 1
    assert snap["drops"]["malformed"] == 0
    _invariant(stats)


def test_peer_address_is_not_a_sender(pipeline, stats):
    verdict = run(pipeline, stats, vxlan.encode(0, _frame("10.0.9.9")), "10.0.9.9", now=0.0)
    assert verdict is Drop.UNKNOWN_SENDER


def test_wrong_vni_from_a_known_address_is_dropped(pipeline, stats):
    assert run(pipeline, stats, vxlan.encode(6, _frame()), "10.0.0.5", now=0.0) is Drop.WRONG_VNI
    assert stats.snapshot()["pods"]["default/web"]["drops"]["wrong_vni"] == 1
    _invariant(stats)


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x08\x00\x00\x00\x00\x00\x05\x00",
        b"\x00\x00\x00\x00\x00\x00\x05\x00" + _frame(),  # I flag missing
        vxlan.encode(5, _frame()[:30]),  # truncated IPv4 header
        vxlan.encode(5, bytes(Ether(src=MAC1, dst=MAC2) / IP(src="10.0.0.5", dst="10.0.0.9") / UDP()))[:44],
    ],
)
def test_malformed_datagrams_are_counted(pipeline, stats, datagram):
    assert run(pipeline, stats, datagram, "10.0.0.5", now=0.0) is Drop.MALFORMED
    assert stats.snapshot()["drops"]["malformed"] == 1
    _invariant(stats)


def test_invariant_holds_over_a_mixed_sequence(pipeline, stats):
    good = vxlan.encode(5, _frame())
    inputs = [
        (good, "10.0.0.5"),
        (b"x", "10.0.0.5"),
        (good, "10.9.9.9"),
        (vxlan.encode(1, _frame()), "10.0.0.5"),
    ]
    for i in range(40):
        datagram, sender = inputs[i % len(inputs)]
        run(pipeline, stats, datagram, sender, now=float(i))
        _invariant(stats)
    snap = stats.snapshot()
    assert snap["received"] == 40 and snap["forwarded"] == 10
    assert snap["received_bytes"] == 10 * (2 * len(good) + 1 + len(good))


class _Exploding:
    """A cutoff stage with a bug: it raises on every packet."""

    evictions = 0

    def apply(self, meta: object, frame: object, vantage: bytes, now: float) -> int:
        raise RuntimeError("bug")

    def __len__(self) -> int:
        return 0


def test_a_datagram_whose_processing_raised_is_counted_once_as_internal_error(stats: Stats) -> None:
    pipeline = Pipeline(pods=PodIndex([WEB]), stats=stats, cutoff=_Exploding())  # type: ignore[arg-type]
    datagram = vxlan.encode(5, _frame())
    with pytest.raises(RuntimeError):
        run(pipeline, stats, datagram, "10.0.0.5", now=1.0)
    assert pipeline.fail(datagram, "10.0.0.5") is Drop.INTERNAL_ERROR
    stats.read(len(datagram))  # the receiver read it, then process raised before the sender check
    assert pipeline.fail(datagram, "10.9.9.9") is Drop.INTERNAL_ERROR  # an unknown source too
    snap = stats.snapshot()
    assert snap["received"] == 2
    assert snap["drops"]["internal_error"] == 2
    assert snap["pods"]["default/web"]["drops"]["internal_error"] == 1
    assert snap["pods"][UNKNOWN_POD]["drops"]["internal_error"] == 1
    _invariant(stats)
