"""Container selection: only the selected containers' ports, at the agent and in the push-down."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import ARP

from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodInfo
from nodeagent.settings import ConfigError, PeerSettings, SenderSettings, load
from nodeagent.stages import containers, filters, pushdown
from nodeagent.stats import Stats
from nodeagent.verdict import Direction, Drop, Forward
from sidecar_lite import cbpf
from tests import cbpf_reference
from tests.books import assert_balanced
from tests.unit.nodeagent.pipeline_packets import (
    CLIENT,
    CLIENT_IP,
    REMOTE,
    REMOTE_IP,
    SERVER,
    SERVER_IP,
    eth,
    feed,
    make_pipeline,
    meta,
    tcp,
    udp,
)

WEB = dataclasses.replace(SERVER, ports=(53, 8080))
"""The server pod with containers selected: their declared ports are 8080 and 53."""
OUTSIDE = "192.168.7.7"


def icmp_error(src: str, dst: str, quoted_src: str, quoted_dst: str, sport: int, dport: int) -> bytes:
    """Port unreachable from ``src`` quoting a UDP packet ``quoted_src:sport -> quoted_dst:dport``."""
    return bytes(eth() / IP(src=src, dst=dst) / ICMP(type=3, code=3) /
                 IPerror(src=quoted_src, dst=quoted_dst) / UDPerror(sport=sport, dport=dport) / b"q")


def direction(frame: bytes, pod: PodInfo) -> Direction:
    m = meta(frame)
    if m.src in pod.addrs:
        return Direction.EGRESS
    return Direction.INGRESS if m.dst in pod.addrs else Direction.UNKNOWN


CASES = [
    ("into a selected port", bytes(tcp(CLIENT_IP, SERVER_IP, dport=8080)), True),
    ("reply from a selected port", bytes(tcp(SERVER_IP, CLIENT_IP, sport=8080, dport=40000)), True),
    ("udp into a selected port", bytes(udp(CLIENT_IP, SERVER_IP, dport=53)), True),
    ("into another container's port", bytes(tcp(CLIENT_IP, SERVER_IP, dport=9090)), False),
    ("out to a remote port 8080", bytes(tcp(SERVER_IP, OUTSIDE, sport=41000, dport=8080)), False),
    ("icmp error for a selected flow", icmp_error(OUTSIDE, SERVER_IP, SERVER_IP, OUTSIDE, 53, 5353), True),
    ("icmp error sent by the pod", icmp_error(SERVER_IP, CLIENT_IP, CLIENT_IP, SERVER_IP, 40000, 8080), True),
    ("icmp error for another flow", icmp_error(OUTSIDE, SERVER_IP, SERVER_IP, OUTSIDE, 41000, 53), False),
    ("truncated icmp error", icmp_error(OUTSIDE, SERVER_IP, SERVER_IP, OUTSIDE, 53, 1)[:14 + 20 + 8 + 20 + 2],
     False),
    ("echo", bytes(eth() / IP(src=CLIENT_IP, dst=SERVER_IP) / ICMP()), False),
    ("arp", bytes(eth() / ARP(psrc=SERVER_IP, pdst=CLIENT_IP)), False),
    ("non-first fragment", bytes(eth() / IP(src=CLIENT_IP, dst=SERVER_IP, proto=17, frag=10) / (b"x" * 16)),
     False),
]


@pytest.mark.parametrize(("frame", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_selection_by_pod_side_port(frame: bytes, expected: bool) -> None:
    assert containers.selected(frame, meta(frame), WEB, direction(frame, WEB)) is expected


def test_icmpv6_error_quoting_a_selected_flow_of_a_dual_stack_pod() -> None:
    pod = dataclasses.replace(WEB, ips=("fd00::9",))
    quoted = IPv6(src="fd00::9", dst="fd00::77") / UDP(sport=8080, dport=999) / b"q"
    too_big = bytes(eth() / IPv6(src="fd00::77", dst="fd00::9") / ICMPv6PacketTooBig(mtu=1280) / quoted)
    assert containers.selected(too_big, meta(too_big), pod, Direction.INGRESS)
    echo = bytes(eth() / IPv6(src="fd00::77", dst="fd00::9") / ICMPv6EchoRequest())
    assert not containers.selected(echo, meta(echo), pod, Direction.INGRESS)


def test_peer_sees_only_its_selected_ports() -> None:
    to_selected = meta(tcp(CLIENT_IP, SERVER_IP, dport=8080))
    to_other = meta(tcp(CLIENT_IP, SERVER_IP, dport=9090))
    assert containers.peer_sees(to_selected, WEB)
    assert not containers.peer_sees(to_other, WEB)
    assert containers.peer_sees(to_other, SERVER)  # no selection: the whole pod


def pipeline(*pods: PodInfo) -> tuple[Pipeline, Stats]:
    return make_pipeline(*pods)


def test_pipeline_drops_other_containers_traffic_and_accounts_for_it() -> None:
    pipe, stats = pipeline(CLIENT, WEB)
    kept = feed(pipe, stats, tcp(OUTSIDE, SERVER_IP, dport=8080), WEB, 1.0)
    dropped = feed(pipe, stats, tcp(OUTSIDE, SERVER_IP, dport=9090), WEB, 1.0)
    assert isinstance(kept, Forward)
    assert dropped == Drop.OTHER_CONTAINER
    snap = stats.snapshot()
    assert snap["drops"]["other_container"] == 1
    assert_balanced(snap)
    assert snap["received"] == 2


def test_a_flow_the_restricted_peer_does_not_forward_is_kept_by_the_other_vantage() -> None:
    """The selected pod opens a connection from an ephemeral port to the whole-pod client's port 80:
    its own copy is another container's traffic, so the client's copy must be kept although
    the vantage rule (client side) would otherwise choose the other end."""
    pipe, stats = pipeline(CLIENT, WEB)
    syn = tcp(SERVER_IP, CLIENT_IP, sport=41000, dport=80, flags="S")
    assert feed(pipe, stats, syn, WEB, 1.0) == Drop.OTHER_CONTAINER
    assert isinstance(feed(pipe, stats, syn, CLIENT, 1.0), Forward)


def test_a_flow_into_a_selected_port_is_still_kept_from_one_vantage() -> None:
    pipe, stats = pipeline(CLIENT, WEB)
    syn = tcp(CLIENT_IP, SERVER_IP, sport=40000, dport=8080, flags="S")
    assert isinstance(feed(pipe, stats, syn, CLIENT, 1.0), Forward)
    assert feed(pipe, stats, syn, WEB, 1.0) == Drop.OTHER_VANTAGE


def frames() -> list[bytes]:
    out = [c[1] for c in CASES]
    for peer in (CLIENT_IP, OUTSIDE):
        for sport, dport in ((40000, 8080), (8080, 40000), (53, 999), (999, 53), (41000, 9090)):
            out.append(bytes(tcp(SERVER_IP, peer, sport=sport, dport=dport)))
            out.append(bytes(tcp(peer, SERVER_IP, sport=sport, dport=dport)))
            out.append(bytes(udp(SERVER_IP, peer, sport=sport, dport=dport)))
    return out


def test_pushed_program_mirrors_every_frame_the_agent_keeps_and_no_other_tcp_or_udp() -> None:
    plan = pushdown.plan(filters.compile(load({}).filters), WEB)
    assert plan.program is not None
    match = functools.partial(cbpf_reference.run, plan.program)
    for frame in frames():
        m = meta(frame)
        keep = containers.selected(frame, m, WEB, direction(frame, WEB))
        if keep:
            assert match(frame), frame.hex()
        elif m.proto in (6, 17) and m.l4 >= 0:
            assert not match(frame), frame.hex()  # exact for TCP/UDP: nothing mirrored in vain


def test_push_down_ands_the_selection_with_the_rules() -> None:
    rules = filters.compile(load({"filters": {"rules": [{"action": "exclude", "ports": [53]}]}}).filters)
    match = functools.partial(cbpf_reference.run, pushdown.plan(rules, WEB).program or cbpf.ACCEPT_ALL)
    assert match(bytes(tcp(CLIENT_IP, SERVER_IP, dport=8080)))
    assert not match(bytes(udp(CLIENT_IP, SERVER_IP, dport=53)))  # selected, excluded by a rule
    assert not match(bytes(tcp(CLIENT_IP, SERVER_IP, dport=9090)))  # included by default, not selected
    assert pushdown.plan(rules, SERVER).expression == "not ((port 53))"  # no selection: rules only


def test_static_sender_and_peer_take_optional_ports() -> None:
    sender = SenderSettings.from_text("10.0.0.9,9,shop/web,8080+53")
    assert sender.ports == (8080, 53)
    assert SenderSettings.from_text("10.0.0.9,9,shop/web").ports == ()
    assert PeerSettings.from_text("10.1.0.7,other/db,5432").ports == (5432,)
    with pytest.raises(ConfigError, match="ports"):
        SenderSettings.from_text("10.0.0.9,9,shop/web,http")
    with pytest.raises(ConfigError, match="ports"):
        load({"senders": [{"ip": "10.0.0.9", "vni": 9, "namespace": "a", "name": "b", "ports": [70000]}]})


def test_across_nodes_a_flow_the_restricted_owner_does_not_forward_is_kept_here() -> None:
    """The remote pod (selected port 5432) is the client of a flow into this node's whole pod: by
    the client rule its node would own the flow, but its agent drops it as another container's."""
    remote = dataclasses.replace(REMOTE, ports=(5432,))
    syn = tcp(REMOTE_IP, SERVER_IP, sport=41000, dport=80, flags="S")
    pipe, stats = pipeline(SERVER, remote)
    assert isinstance(feed(pipe, stats, syn, SERVER, 1.0), Forward)
    pipe, stats = pipeline(SERVER, REMOTE)  # without a selection the remote node owns it
    assert feed(pipe, stats, syn, SERVER, 1.0) == Drop.NOT_OWNER
