"""Content dedup: the other end's copy of the same content is a duplicate, by byte range for TCP
payload (not by packetization), by fields for the rest; a retransmission is forwarded."""

from __future__ import annotations

from typing import Any

from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from nodeagent.pods.index import PodInfo
from nodeagent.stages.dedup import DedupWindow
from nodeagent.stages.flowtable import FlowTable
from tests.unit.nodeagent.pipeline_packets import (
    CLIENT,
    CLIENT_IP,
    SERVER,
    SERVER_IP,
    VIP,
    copy_at,
    meta,
    tcp,
    udp,
)

OTHER = PodInfo("10.0.0.7", 7, "shop", "other")
EXTERNAL = "93.184.216.34"


def check(window: DedupWindow, frame: Any, pod: PodInfo, now: float) -> bool:
    frame = bytes(frame)
    return window.check(meta(frame), frame, pod, now)


def data(src: str, dst: str, seq: int, size: int, sport: int = 40000, dport: int = 8080) -> Any:
    payload = bytes((seq + i) & 0xFF for i in range(size))
    return tcp(src, dst, sport=sport, dport=dport, flags="PA", seq=seq, payload=payload)


def test_the_other_ends_copy_is_a_duplicate() -> None:
    window = DedupWindow(window=0.05, capacity=100)
    query = udp(CLIENT_IP, SERVER_IP, payload=b"same")
    assert not check(window, query, CLIENT, 0.0)
    assert check(window, copy_at(query), SERVER, 0.001)


def test_identical_datagrams_of_two_pods_to_third_parties_are_not_duplicates() -> None:
    """The known false positive of a digest alone: two pods, UDP with IP id 0, same payload."""
    window = DedupWindow(window=0.05, capacity=100)
    assert not check(window, udp(CLIENT_IP, EXTERNAL, payload=b"beacon"), CLIENT, 0.0)
    assert not check(window, udp(OTHER.ip, EXTERNAL, payload=b"beacon"), OTHER, 0.001)
    assert not check(window, udp(SERVER_IP, EXTERNAL, payload=b"beacon"), SERVER, 0.002)


def test_a_retransmission_is_forwarded_and_the_other_ends_copy_of_it_is_not() -> None:
    window = DedupWindow(window=0.05, capacity=100)
    segment = data(CLIENT_IP, SERVER_IP, 1000, 500)
    assert not check(window, segment, CLIENT, 0.0)
    assert not check(window, segment, CLIENT, 0.0001)  # the same vantage again: a retransmission
    assert check(window, copy_at(segment), SERVER, 0.0002)
    assert check(window, copy_at(segment), SERVER, 0.0003)


def test_tcp_is_compared_by_byte_range_not_packetization() -> None:
    """A 3000-byte super-packet at the client, its two segments at the server (and back)."""
    window = DedupWindow(window=0.05, capacity=100)
    assert not check(window, data(CLIENT_IP, SERVER_IP, 5000, 3000), CLIENT, 0.0)
    assert check(window, copy_at(data(CLIENT_IP, SERVER_IP, 5000, 1500)), SERVER, 0.001)
    assert check(window, copy_at(data(CLIENT_IP, SERVER_IP, 6500, 1500)), SERVER, 0.001)
    # The reply: segments first at the server, the client's copy is one GRO'd super-packet.
    assert not check(window, data(SERVER_IP, CLIENT_IP, 90000, 1400, 8080, 40000), SERVER, 0.002)
    assert not check(window, data(SERVER_IP, CLIENT_IP, 91400, 1400, 8080, 40000), SERVER, 0.002)
    assert check(window, copy_at(data(SERVER_IP, CLIENT_IP, 90000, 2800, 8080, 40000)), CLIENT, 0.003)


def test_a_copy_with_any_new_byte_is_forwarded_whole() -> None:
    window = DedupWindow(window=0.05, capacity=100)
    assert not check(window, data(CLIENT_IP, SERVER_IP, 0, 1000), CLIENT, 0.0)
    assert not check(window, copy_at(data(CLIENT_IP, SERVER_IP, 500, 1000)), SERVER, 0.001)


def test_ranges_are_keyed_nat_invariantly_by_the_clients_endpoint() -> None:
    """The client's copy shows ClusterIP:80, the server's copy its pod:8080; the wrap at 2^32 too."""
    window = DedupWindow(window=0.05, capacity=100)
    seq = 0xFFFFFF00
    assert not check(window, data(CLIENT_IP, VIP, seq, 1000, dport=80), CLIENT, 0.0)
    assert check(window, data(CLIENT_IP, SERVER_IP, seq, 1000), SERVER, 0.001)
    assert check(window, data(CLIENT_IP, SERVER_IP, (seq + 256) & 0xFFFFFFFF, 500), SERVER, 0.001)


def test_syn_and_pure_acks_are_compared_by_their_fields() -> None:
    window = DedupWindow(window=0.05, capacity=100)
    ack = tcp(CLIENT_IP, SERVER_IP, flags="A", seq=7, ack=9)
    assert not check(window, ack, CLIENT, 0.0)
    assert check(window, copy_at(ack), SERVER, 0.001)
    assert not check(window, tcp(SERVER_IP, CLIENT_IP, sport=8080, dport=40000, flags="A", seq=7, ack=10),
                     SERVER, 0.002)


def test_window_expiry_forgets() -> None:
    window = DedupWindow(window=0.05, capacity=100)
    query = udp(CLIENT_IP, SERVER_IP)
    assert not check(window, query, CLIENT, 0.0)
    assert not check(window, copy_at(query), SERVER, 0.051)
    segment = data(CLIENT_IP, SERVER_IP, 0, 100)
    assert not check(window, segment, CLIENT, 1.0)
    assert not check(window, copy_at(segment), SERVER, 1.051)


def test_capacity_evicts_oldest_first_and_counts_it() -> None:
    window = DedupWindow(window=10, capacity=3)
    for i in range(5):
        check(window, udp(CLIENT_IP, SERVER_IP, payload=b"%d" % i), CLIENT, i * 0.001)
    assert window.evictions == 2
    assert not check(window, copy_at(udp(CLIENT_IP, SERVER_IP, payload=b"0")), SERVER, 0.01)  # evicted
    assert check(window, copy_at(udp(CLIENT_IP, SERVER_IP, payload=b"4")), SERVER, 0.01)


def test_flow_table_expires_in_order_and_refreshes_on_put() -> None:
    table: FlowTable[int] = FlowTable(capacity=10, idle=1.0)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=0.5)
    table.put("a", 3, now=0.9)
    assert table.get("b", now=1.4) == 2
    assert table.get("b", now=1.6) is None
    assert table.get("a", now=1.6) == 3
    assert table.evictions == 0


def test_non_tcp_payload_uses_fields_even_for_a_tcp_fragment() -> None:
    window = DedupWindow(window=0.05, capacity=100)
    frag = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                 IP(src=CLIENT_IP, dst=SERVER_IP, id=5, frag=100, proto=6) / (b"z" * 64))
    assert not check(window, frag, CLIENT, 0.0)
    assert check(window, frag, SERVER, 0.001)
