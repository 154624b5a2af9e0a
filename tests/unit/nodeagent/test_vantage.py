"""Flow-consistent vantage (same node) and cross-node ownership, for both settings."""

from __future__ import annotations

import pytest

from nodeagent.stages.vantage import Vantage
from nodeagent.verdict import Drop
from tests.unit.nodeagent.pipeline_packets import (
    CLIENT,
    CLIENT_IP,
    REMOTE,
    REMOTE_IP,
    SERVER,
    SERVER_IP,
    VIP,
    meta,
    tcp,
    udp,
)


def conversation(server_ip: str, dport: int) -> list[tuple[bytes, bytes]]:
    """(client's copy, server's copy) of a handshake and data both ways; ``server_ip`` may be a VIP."""
    def pair(flags: str, to_server: bool, payload: bytes = b"") -> tuple[bytes, bytes]:
        if to_server:
            at_client = tcp(CLIENT_IP, server_ip, dport=dport, flags=flags, payload=payload)
            at_server = tcp(CLIENT_IP, SERVER_IP, dport=8080, flags=flags, payload=payload)
        else:
            at_client = tcp(server_ip, CLIENT_IP, sport=dport, dport=40000, flags=flags, payload=payload)
            at_server = tcp(SERVER_IP, CLIENT_IP, sport=8080, dport=40000, flags=flags, payload=payload)
        return bytes(at_client), bytes(at_server)
    return [pair("S", True), pair("SA", False), pair("A", True, b"GET"), pair("PA", False, b"200")]


def decide(v: Vantage, frame: bytes, pod, peer, now: float = 0.0):  # type: ignore[no-untyped-def]
    return v.decide(meta(frame), pod, peer, now)


@pytest.mark.parametrize("server_ip,dport", [(SERVER_IP, 8080), (VIP, 80)])
def test_client_rule_keeps_every_packet_from_the_client_vantage(server_ip: str, dport: int) -> None:
    v = Vantage(prefer="client")
    for at_client, at_server in conversation(server_ip, dport):
        peer_from_client = SERVER if server_ip == SERVER_IP else None  # a VIP is no pod
        assert decide(v, at_client, CLIENT, peer_from_client) is None
        assert decide(v, at_server, SERVER, CLIENT) is Drop.OTHER_VANTAGE


def test_server_rule_keeps_every_packet_from_the_server_vantage() -> None:
    v = Vantage(prefer="server")
    for at_client, at_server in conversation(SERVER_IP, 8080):
        assert decide(v, at_server, SERVER, CLIENT) is None
        assert decide(v, at_client, CLIENT, SERVER) is Drop.OTHER_VANTAGE


def test_server_rule_learns_dnat_flows_after_the_servers_first_copy() -> None:
    v = Vantage(prefer="server")
    (syn_c, syn_s), *rest = conversation(VIP, 80)
    assert decide(v, syn_c, CLIENT, None) is None  # before learning: the documented limit
    assert decide(v, syn_s, SERVER, CLIENT) is None
    for at_client, at_server in rest:
        assert decide(v, at_server, SERVER, CLIENT) is None
        assert decide(v, at_client, CLIENT, None, now=0.1) is Drop.OTHER_VANTAGE


def test_without_handshake_the_lower_port_is_the_server() -> None:
    v = Vantage(prefer="client")
    query = bytes(udp(CLIENT_IP, SERVER_IP, sport=40000, dport=53))
    reply = bytes(udp(SERVER_IP, CLIENT_IP, sport=53, dport=40000))
    assert decide(v, query, CLIENT, SERVER) is None
    assert decide(v, query, SERVER, CLIENT) is Drop.OTHER_VANTAGE
    assert decide(v, reply, SERVER, CLIENT) is Drop.OTHER_VANTAGE
    assert decide(v, reply, CLIENT, SERVER) is None


@pytest.mark.parametrize("prefer", ["client", "server"])
def test_cross_node_exactly_one_node_owns_each_flow(prefer: str) -> None:
    """Two agents (fresh Vantage each) with the same rule: exactly one keeps each packet."""
    local_client = Vantage(prefer=prefer)   # on the client's node: the remote pod is the server
    remote_server = Vantage(prefer=prefer)  # on the server's node
    client_there = type(CLIENT)(CLIENT_IP, 5, "shop", "client", local=False)
    server_here = type(REMOTE)(REMOTE_IP, 7, "other", "remote", local=True)
    packets = [tcp(CLIENT_IP, REMOTE_IP, flags="S"),
               tcp(REMOTE_IP, CLIENT_IP, sport=80, dport=40000, flags="SA"),
               tcp(CLIENT_IP, REMOTE_IP, payload=b"x"), udp(CLIENT_IP, REMOTE_IP, sport=5000, dport=53)]
    for pkt in packets:
        a = decide(local_client, bytes(pkt), CLIENT, REMOTE)
        b = decide(remote_server, bytes(pkt), server_here, client_there)
        kept = [x for x in (a, b) if x is None]
        assert len(kept) == 1 and Drop.NOT_OWNER in (a, b)
        assert (a is None) == (prefer == "client")


def test_flow_without_monitored_peer_and_non_flow_packets_are_left_to_dedup() -> None:
    v = Vantage(prefer="client")
    assert decide(v, bytes(tcp(SERVER_IP, "8.8.8.8", sport=8080, dport=40000)), SERVER, None) is None
    from tests.unit.nodeagent.pipeline_packets import ICMP, IP, eth
    ping = bytes(eth() / IP(src=SERVER_IP, dst=CLIENT_IP) / ICMP())
    assert decide(v, ping, SERVER, CLIENT) is None


def test_role_table_is_bounded() -> None:
    v = Vantage(prefer="client", capacity=2, idle=60)
    for port in range(1000, 1004):
        decide(v, bytes(tcp(CLIENT_IP, SERVER_IP, sport=port, flags="S")), CLIENT, SERVER)
    assert v.evictions == 2


@pytest.mark.parametrize("prefer", ["client", "server"])
def test_echo_is_a_flow_whose_client_is_the_requester(prefer: str) -> None:
    from tests.unit.nodeagent.pipeline_packets import ICMP, IP, eth
    v = Vantage(prefer=prefer)
    request = bytes(eth() / IP(src=CLIENT_IP, dst=SERVER_IP) / ICMP(type=8))
    reply = bytes(eth() / IP(src=SERVER_IP, dst=CLIENT_IP) / ICMP(type=0))
    for frame in (request, reply):
        at_client, at_server = decide(v, frame, CLIENT, SERVER), decide(v, frame, SERVER, CLIENT)
        assert (at_client is None) == (prefer == "client") and (at_server is None) == (prefer == "server")
        assert Drop.OTHER_VANTAGE in (at_client, at_server)


def test_other_packets_across_nodes_belong_to_the_lower_address() -> None:
    from tests.unit.nodeagent.pipeline_packets import ICMP, IP, eth
    error = bytes(eth() / IP(src=CLIENT_IP, dst=REMOTE_IP) / ICMP(type=3, code=3) / (b"\0" * 28))
    here, there = Vantage(), Vantage()
    client_there = type(CLIENT)(CLIENT_IP, 5, "shop", "client", local=False)
    remote_here = type(REMOTE)(REMOTE_IP, 7, "other", "remote", local=True)
    assert decide(here, error, CLIENT, REMOTE) is None  # 10.0.0.5 < 10.1.0.7
    assert decide(there, error, remote_here, client_there) is Drop.NOT_OWNER
