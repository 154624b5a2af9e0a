"""Vantage with a bounded hold: one pod's copies per connection, suppressed only for a copy that exists.

Driven through the pipeline as the receiver drives it (``feed``), so every test also checks the
books: received == forwarded + drops + held, per pod and in total.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.stages.vantage import KEEP, Vantage
from nodeagent.stats import Stats
from nodeagent.verdict import HELD, Drop, Forward, Released
from tests.unit.nodeagent.pipeline_packets import (
    CLIENT,
    CLIENT_IP,
    ICMP,
    IP,
    REMOTE,
    REMOTE_IP,
    SERVER,
    SERVER_IP,
    VIP,
    balanced,
    eth,
    feed,
    forwards,
    make_pipeline,
    make_vantage,
    meta,
    tcp,
    udp,
)

EXTERNAL = "93.184.216.34"
ATTACKER = PodInfo("10.0.0.66", 66, "evil", "attacker")
HOLD_S = 0.05


def warm(pipe: Any, stats: Stats, *pods: PodInfo, now: float = 0.0) -> None:
    """Each pod's sidecar delivers something (its push-down poll, a probe): the pods are live.
    (With prefer=server a probe toward a non-pod address waits for a possible local server: flushed.)"""
    for pod in pods:
        verdict = feed(pipe, stats, udp(pod.ip, "10.0.0.1", sport=5555, dport=9), pod, now)
        assert isinstance(verdict, Forward) or verdict is HELD
    pipe.flush()


def conversation(server_ip: str, dport: int) -> list[tuple[bytes, bytes]]:
    """(client's copy, server's copy) of a handshake and data both ways; ``server_ip`` may be a VIP."""
    def pair(flags: str, to_server: bool, seq: int, payload: bytes = b"") -> tuple[bytes, bytes]:
        kw: dict[str, Any] = {"flags": flags, "seq": seq, "payload": payload}
        if to_server:
            at_client = tcp(CLIENT_IP, server_ip, dport=dport, **kw)
            at_server = tcp(CLIENT_IP, SERVER_IP, dport=8080, **kw)
        else:
            at_client = tcp(server_ip, CLIENT_IP, sport=dport, dport=40000, **kw)
            at_server = tcp(SERVER_IP, CLIENT_IP, sport=8080, dport=40000, **kw)
        return bytes(at_client), bytes(at_server)
    return [pair("S", True, 100), pair("SA", False, 900), pair("A", True, 101, b"GET"),
            pair("PA", False, 901, b"200")]


@pytest.mark.parametrize("server_ip,dport", [(SERVER_IP, 8080), (VIP, 80)])
def test_client_rule_keeps_every_packet_from_the_client_vantage(server_ip: str, dport: int) -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER)
    warm(pipe, stats, CLIENT, SERVER)
    now = 1.0
    for at_client, at_server in conversation(server_ip, dport):
        assert isinstance(feed(pipe, stats, at_client, CLIENT, now), Forward)
        assert feed(pipe, stats, at_server, SERVER, now + 0.0001) is Drop.OTHER_VANTAGE
        now += 0.001
    assert balanced(stats) and stats.snapshot()["held"] == 0


@pytest.mark.parametrize("server_ip,dport", [(SERVER_IP, 8080), (VIP, 80)])
def test_client_rule_when_the_servers_copy_comes_first_holds_it_until_the_clients(server_ip: str,
                                                                                  dport: int) -> None:
    """A sniff-mode client and a kernel-mode server: the server's copy of the SYN arrives first."""
    pipe, stats = make_pipeline(CLIENT, SERVER)
    warm(pipe, stats, CLIENT, SERVER)
    (syn_c, syn_s), *rest = conversation(server_ip, dport)
    assert feed(pipe, stats, syn_s, SERVER, 1.0) is HELD
    assert stats.snapshot()["held"] == 1 and balanced(stats)
    verdict = feed(pipe, stats, syn_c, CLIENT, 1.002)
    assert [bytes(f.frame) for f in forwards(verdict)] == [syn_c] and isinstance(verdict, Released)
    assert stats.pods["shop/server"].drops[Drop.OTHER_VANTAGE] == 1 and stats.snapshot()["held"] == 0
    for at_client, at_server in rest:  # confirmed: the server's copies go at once, in either order
        assert feed(pipe, stats, at_server, SERVER, 1.003) is Drop.OTHER_VANTAGE
        assert isinstance(feed(pipe, stats, at_client, CLIENT, 1.004), Forward)
    assert balanced(stats)


def test_server_rule_keeps_every_packet_from_the_server_vantage() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER, prefer="server")
    warm(pipe, stats, CLIENT, SERVER)
    (syn_c, syn_s), *rest = conversation(SERVER_IP, 8080)
    assert feed(pipe, stats, syn_c, CLIENT, 1.0) is HELD  # the server's copy exists: wait for it
    assert [bytes(f.frame) for f in forwards(feed(pipe, stats, syn_s, SERVER, 1.0001))] == [syn_s]
    for at_client, at_server in rest:
        assert isinstance(feed(pipe, stats, at_server, SERVER, 1.001), Forward)
        assert feed(pipe, stats, at_client, CLIENT, 1.0011) is Drop.OTHER_VANTAGE
    assert balanced(stats) and stats.pods["shop/client"].drops[Drop.OTHER_VANTAGE] == 4


@pytest.mark.parametrize("server_first", [False, True])
def test_server_rule_through_a_clusterip_never_forwards_the_clients_dnat_copies(server_first: bool) -> None:
    """The client's copies (ClusterIP:80) wait for a local server's copy of the same packet; the
    server's copy (pod:8080) links the two tuples by content, whichever arrives first."""
    pipe, stats = make_pipeline(CLIENT, SERVER, prefer="server")
    warm(pipe, stats, CLIENT, SERVER)
    kept: list[bytes] = []
    now = 1.0
    for i, (at_client, at_server) in enumerate(conversation(VIP, 80)):
        order = [(at_server, SERVER), (at_client, CLIENT)] if server_first or i % 2 else \
            [(at_client, CLIENT), (at_server, SERVER)]
        for frame, pod in order:
            kept += [bytes(f.frame) for f in forwards(feed(pipe, stats, frame, pod, now))]
            now += 0.0005
    assert kept == [s for _, s in conversation(VIP, 80)]
    assert stats.pods["shop/client"].drops[Drop.OTHER_VANTAGE] == 4 and balanced(stats)
    assert pipe.state()["vantage"]["links"] == 1


def test_server_rule_releases_a_clients_copy_toward_no_local_server_at_the_hold_timeout_in_order() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER, prefer="server", hold=HOLD_S)
    warm(pipe, stats, CLIENT, SERVER)
    syn = bytes(tcp(CLIENT_IP, EXTERNAL, dport=443, flags="S", seq=1))
    again = bytes(tcp(CLIENT_IP, EXTERNAL, dport=443, flags="S", seq=1, ipid=78))  # SYN retransmitted
    assert feed(pipe, stats, syn, CLIENT, 1.0) is HELD
    assert feed(pipe, stats, again, CLIENT, 1.01) is HELD  # queued behind, in order
    assert pipe.next_deadline == pytest.approx(1.0 + HOLD_S)
    assert pipe.expire(1.0 + HOLD_S / 2) == [] and stats.snapshot()["held"] == 2
    released = pipe.expire(1.0 + HOLD_S)
    assert [bytes(f.frame) for f in released] == [syn, again] and released[0].now == 1.0
    later = bytes(tcp(CLIENT_IP, EXTERNAL, dport=443, flags="A", seq=2))
    assert isinstance(feed(pipe, stats, later, CLIENT, 1.1), Forward)  # decided: no more waiting
    assert balanced(stats) and stats.snapshot()["held"] == 0 and pipe.next_deadline is None


def test_service_cidrs_limit_what_waits_for_a_local_server() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER, prefer="server", service_cidrs=("10.96.0.0/12",))
    warm(pipe, stats, CLIENT, SERVER)
    assert isinstance(feed(pipe, stats, tcp(CLIENT_IP, EXTERNAL, dport=443, flags="S"), CLIENT, 1.0), Forward)
    assert feed(pipe, stats, tcp(CLIENT_IP, VIP, dport=80, flags="S", sport=40001), CLIENT, 1.0) is HELD


def test_a_client_port_reused_toward_two_destinations_links_only_the_one_the_server_saw() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER, prefer="server")
    warm(pipe, stats, CLIENT, SERVER)
    to_vip = bytes(tcp(CLIENT_IP, VIP, dport=80, flags="S", seq=111))
    to_ext = bytes(tcp(CLIENT_IP, EXTERNAL, dport=80, flags="S", seq=222))
    at_server = bytes(tcp(CLIENT_IP, SERVER_IP, dport=8080, flags="S", seq=111))
    assert feed(pipe, stats, to_vip, CLIENT, 1.0) is HELD
    assert feed(pipe, stats, to_ext, CLIENT, 1.0) is HELD
    assert isinstance(forwards(feed(pipe, stats, at_server, SERVER, 1.001))[0], Forward)
    assert [bytes(f.frame) for f in pipe.expire(2.0)] == [to_ext]
    assert stats.pods["shop/client"].drops[Drop.OTHER_VANTAGE] == 1 and balanced(stats)


def test_another_pod_cannot_claim_a_clients_connection_without_its_packet() -> None:
    """A local pod forging "server" copies with the client's endpoint (it does not know the ISN)
    links nothing: the client's copies are released, never dropped in its favour."""
    thief = PodInfo("10.0.0.77", 77, "evil", "thief")
    pipe, stats = make_pipeline(CLIENT, SERVER, thief, prefer="server")
    warm(pipe, stats, CLIENT, SERVER, thief)
    syn = bytes(tcp(CLIENT_IP, VIP, dport=80, flags="S", seq=4242))
    assert feed(pipe, stats, syn, CLIENT, 1.0) is HELD
    for guess in range(3):
        forged = tcp(CLIENT_IP, thief.ip, dport=8080, flags="S", seq=guess)
        assert isinstance(forwards(feed(pipe, stats, forged, thief, 1.001))[0], Forward)
    assert [bytes(f.frame) for f in pipe.expire(2.0)] == [syn]
    assert stats.pods["shop/client"].drops[Drop.OTHER_VANTAGE] == 0 and balanced(stats)


@pytest.mark.parametrize("prefer", ["client", "server"])
def test_a_declared_pod_without_a_sidecar_never_suppresses_its_peers_copies(prefer: str) -> None:
    """The attacker is a declared sender on this node but its tunnel never delivers: the victim's
    copies of their connections go to the sensor at once, whichever end the rule prefers."""
    pipe, stats = make_pipeline(ATTACKER, SERVER, prefer=prefer)
    warm(pipe, stats, SERVER)
    attacker_is_client = prefer == "client"  # the preferred end is the attacker
    a, v = (ATTACKER.ip, SERVER_IP)
    packets = ([tcp(a, v, dport=8080, flags="S"), tcp(v, a, sport=8080, dport=40000, flags="SA"),
                tcp(a, v, dport=8080, payload=b"exploit"), udp(a, v, dport=53)] if attacker_is_client else
               [tcp(v, a, sport=40000, dport=80, flags="S"), tcp(a, v, sport=80, dport=40000, flags="SA"),
                tcp(a, v, sport=80, dport=40000, payload=b"payload"), udp(v, a, sport=40000, dport=53)])
    for i, pkt in enumerate(packets):
        assert isinstance(feed(pipe, stats, pkt, SERVER, 1.0 + i * 0.01), Forward)
    assert stats.snapshot()["held"] == 0 and balanced(stats)


def test_a_silent_owner_must_show_a_fresh_copy_before_the_others_are_dropped() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER, confirm=1.0)
    warm(pipe, stats, CLIENT, SERVER)
    (syn_c, syn_s), (sa_c, sa_s), (data_c, data_s), (reply_c, reply_s) = conversation(SERVER_IP, 8080)
    feed(pipe, stats, syn_c, CLIENT, 1.0)
    assert feed(pipe, stats, syn_s, SERVER, 1.0) is Drop.OTHER_VANTAGE
    warm(pipe, stats, CLIENT, now=5.0)  # the client is live, but sent nothing of this connection
    assert feed(pipe, stats, reply_s, SERVER, 5.0) is HELD
    verdict = feed(pipe, stats, reply_c, CLIENT, 5.001)
    assert [bytes(f.frame) for f in forwards(verdict)] == [reply_c]
    assert stats.pods["shop/server"].drops[Drop.OTHER_VANTAGE] == 2 and balanced(stats)


def test_after_a_hold_timeout_the_connection_stays_with_the_vantage_that_delivered() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER, hold=HOLD_S)
    warm(pipe, stats, CLIENT, SERVER)
    (syn_c, syn_s), (sa_c, sa_s), *_ = conversation(SERVER_IP, 8080)
    assert feed(pipe, stats, syn_s, SERVER, 1.0) is HELD
    assert feed(pipe, stats, sa_s, SERVER, 1.01) is HELD
    assert [bytes(f.frame) for f in pipe.expire(1.1)] == [syn_s, sa_s]
    assert feed(pipe, stats, syn_c, CLIENT, 1.2) is Drop.OTHER_VANTAGE  # late: the server's now
    assert isinstance(feed(pipe, stats, sa_s, SERVER, 1.3), Forward)
    assert balanced(stats)


def test_hold_bounds_decide_the_connection_early_and_release_in_order() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER, hold_flow_packets=3)
    warm(pipe, stats, CLIENT, SERVER)
    copies = [bytes(tcp(SERVER_IP, CLIENT_IP, sport=8080, dport=40000, seq=900 + i, payload=b"x"))
              for i in range(4)]
    assert [feed(pipe, stats, c, SERVER, 1.0) for c in copies[:3]] == [HELD] * 3
    verdict = feed(pipe, stats, copies[3], SERVER, 1.0)
    assert isinstance(verdict, Released) and [bytes(f.frame) for f in verdict.forwards] == copies
    assert pipe.state()["hold"]["overflows"] == 1 and balanced(stats)


def test_total_hold_bytes_bound_decides_new_connections_at_once() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER, hold_bytes=65536, hold_flow_bytes=65536)
    warm(pipe, stats, CLIENT, SERVER)
    big = bytes(tcp(SERVER_IP, CLIENT_IP, sport=8080, dport=40000, payload=b"x" * 1400))
    n = 0
    while feed(pipe, stats, big if n == 0 else tcp(SERVER_IP, CLIENT_IP, sport=8080, dport=41000 + n,
                                                   payload=b"x" * 1400), SERVER, 1.0) is HELD:
        n += 1
    assert 40 < n < 50 and pipe.state()["hold"]["bytes"] <= 65536 + 1500 and balanced(stats)


def test_held_copies_survive_the_eviction_of_their_connection() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER, capacity=1)
    warm(pipe, stats, CLIENT, SERVER)
    held = bytes(tcp(SERVER_IP, CLIENT_IP, sport=8080, dport=40000, payload=b"x"))
    assert feed(pipe, stats, held, SERVER, 1.0) is HELD
    feed(pipe, stats, tcp(CLIENT_IP, SERVER_IP, sport=40001, dport=8080, flags="S"), CLIENT, 1.001)
    assert pipe.state()["vantage"]["evictions"] >= 1
    assert [bytes(f.frame) for f in pipe.flush()] == [held] and balanced(stats)


def test_echo_between_two_local_pods_goes_to_content_dedup() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER)
    request = eth() / IP(src=CLIENT_IP, dst=SERVER_IP, id=5) / ICMP(type=8, id=1, seq=1) / b"ping"
    assert isinstance(feed(pipe, stats, request, CLIENT, 1.0), Forward)
    assert feed(pipe, stats, request, SERVER, 1.0001) is Drop.DUPLICATE
    assert balanced(stats)


# ---- the stage alone: roles, ownership across nodes, bounds --------------------------------
def decide(v: Vantage, frame: Any, pod: PodInfo, peer: PodInfo | None, now: float = 0.0) -> Any:
    frame = bytes(frame)
    return v.decide(meta(frame), frame, pod, peer, now)


def alone(*pods: PodInfo, **kw: Any) -> Vantage:
    return make_vantage(PodIndex(pods), Stats(), **kw)


@pytest.mark.parametrize("prefer", ["client", "server"])
def test_cross_node_exactly_one_node_owns_each_flow(prefer: str) -> None:
    """Two agents (fresh Vantage each) with the same rule: exactly one keeps each packet."""
    client_there = dataclasses.replace(CLIENT, local=False)
    server_here = dataclasses.replace(REMOTE, local=True)
    local_client = alone(CLIENT, REMOTE, prefer=prefer)   # on the client's node
    remote_server = alone(server_here, client_there, prefer=prefer)  # on the server's node
    packets = [tcp(CLIENT_IP, REMOTE_IP, flags="S"),
               tcp(REMOTE_IP, CLIENT_IP, sport=80, dport=40000, flags="SA"),
               tcp(CLIENT_IP, REMOTE_IP, payload=b"x"), udp(CLIENT_IP, REMOTE_IP, sport=5000, dport=53)]
    for pkt in packets:
        a = decide(local_client, pkt, CLIENT, REMOTE)
        b = decide(remote_server, pkt, server_here, client_there)
        assert sorted([a, b], key=str) == sorted([KEEP, Drop.NOT_OWNER], key=str)
        assert (a == KEEP) == (prefer == "client")


def test_without_handshake_the_higher_port_is_the_client() -> None:
    pipe, stats = make_pipeline(CLIENT, SERVER)
    warm(pipe, stats, CLIENT, SERVER)
    query = udp(CLIENT_IP, SERVER_IP, sport=40000, dport=53)
    reply = udp(SERVER_IP, CLIENT_IP, sport=53, dport=40000)
    assert isinstance(feed(pipe, stats, query, CLIENT, 1.0), Forward)
    assert feed(pipe, stats, query, SERVER, 1.0001) is Drop.OTHER_VANTAGE
    assert feed(pipe, stats, reply, SERVER, 1.001) is Drop.OTHER_VANTAGE
    assert isinstance(feed(pipe, stats, reply, CLIENT, 1.0011), Forward)


def test_connection_table_is_bounded() -> None:
    v = alone(CLIENT, SERVER, capacity=2, idle=60)
    for port in range(1000, 1004):
        decide(v, tcp(CLIENT_IP, SERVER_IP, sport=port, flags="S"), CLIENT, SERVER)
    assert v.evictions == 2


@pytest.mark.parametrize("prefer", ["client", "server"])
def test_echo_across_nodes_belongs_to_the_requesters_node(prefer: str) -> None:
    client_there = dataclasses.replace(CLIENT, local=False)
    server_here = dataclasses.replace(REMOTE, local=True)
    request = eth() / IP(src=CLIENT_IP, dst=REMOTE_IP) / ICMP(type=8)
    reply = eth() / IP(src=REMOTE_IP, dst=CLIENT_IP) / ICMP(type=0)
    for frame in (request, reply):
        here = decide(alone(CLIENT, REMOTE, prefer=prefer), frame, CLIENT, REMOTE)
        there = decide(alone(server_here, client_there, prefer=prefer), frame, server_here, client_there)
        assert (here == KEEP) == (prefer == "client") and (there == KEEP) == (prefer == "server")


def test_other_packets_across_nodes_belong_to_the_lower_address() -> None:
    error = eth() / IP(src=CLIENT_IP, dst=REMOTE_IP) / ICMP(type=3, code=3) / (b"\0" * 28)
    client_there = dataclasses.replace(CLIENT, local=False)
    remote_here = dataclasses.replace(REMOTE, local=True)
    assert decide(alone(CLIENT, REMOTE), error, CLIENT, REMOTE) == KEEP  # 10.0.0.5 < 10.1.0.7
    assert decide(alone(remote_here, client_there), error, remote_here, client_there) is Drop.NOT_OWNER
