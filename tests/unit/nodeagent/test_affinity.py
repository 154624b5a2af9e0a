"""Symmetric flow hash, consistent ring, outer source port."""

from __future__ import annotations

import collections
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from nodeagent.transport import affinity
from nodeagent.wire import headers


def meta(pkt):  # type: ignore[no-untyped-def]
    raw = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt)
    return headers.decode(raw), raw


@pytest.mark.parametrize(
    "fwd,rev",
    [
        (IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=40000, dport=80),
         IP(src="10.0.0.9", dst="10.0.0.5") / TCP(sport=80, dport=40000)),
        (IP(src="10.1.2.3", dst="10.1.2.3") / UDP(sport=53, dport=5353),
         IP(src="10.1.2.3", dst="10.1.2.3") / UDP(sport=5353, dport=53)),
        (IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1234, dport=443),
         IPv6(src="fd00::2", dst="fd00::1") / TCP(sport=443, dport=1234)),
    ],
)
def test_both_directions_of_a_connection_hash_alike(fwd, rev) -> None:  # type: ignore[no-untyped-def]
    assert affinity.flow_hash(*meta(fwd)) == affinity.flow_hash(*meta(rev))


def test_different_flows_usually_hash_apart() -> None:
    hashes = {
        affinity.flow_hash(*meta(IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=p, dport=80)))
        for p in range(30000, 31000)
    }
    assert len(hashes) > 990


def test_protocol_is_part_of_the_flow() -> None:
    tcp = affinity.flow_hash(*meta(IP(src="10.0.0.5", dst="10.0.0.9") / TCP(sport=53, dport=53)))
    udp = affinity.flow_hash(*meta(IP(src="10.0.0.5", dst="10.0.0.9") / UDP(sport=53, dport=53)))
    assert tcp != udp


def test_all_fragments_of_a_datagram_hash_alike() -> None:
    first = IP(src="10.0.0.5", dst="10.0.0.9", flags="MF", id=7) / UDP(sport=1, dport=2) / (b"x" * 64)
    later = IP(src="10.0.0.5", dst="10.0.0.9", frag=10, id=7, proto=17) / (b"y" * 64)
    assert affinity.flow_hash(*meta(first)) == affinity.flow_hash(*meta(later))


def test_non_ip_frames_hash_on_the_unordered_mac_pair() -> None:
    a = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ARP())
    b = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / ARP(op=2))
    assert affinity.flow_hash(headers.decode(a), a) == affinity.flow_hash(headers.decode(b), b)


def test_icmp_hashes_without_error() -> None:
    assert 0 <= affinity.flow_hash(*meta(IP(src="10.0.0.5", dst="10.0.0.9") / ICMP())) < 2**32


def _hashes(n: int) -> list[int]:
    rng = random.Random(5)
    return [rng.getrandbits(32) for _ in range(n)]


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_removing_one_of_n_sensors_moves_only_its_flows(n: int) -> None:
    ring = affinity.Ring([f"s{i}" for i in range(n)])
    hashes = _hashes(20000)
    before = [ring.lookup(h) for h in hashes]
    ring.set_down({"s0"})
    after = [ring.lookup(h) for h in hashes]
    moved = sum(b != a for b, a in zip(before, after, strict=True))
    owned = before.count("s0")
    assert moved == owned                        # nothing else moved
    assert "s0" not in after
    assert abs(moved / len(hashes) - 1 / n) < 0.35 / n   # about 1/N
    ring.set_down(())
    assert [ring.lookup(h) for h in hashes] == before    # it comes back with exactly its flows


def test_load_is_spread_evenly() -> None:
    ring = affinity.Ring(["a", "b", "c", "d"])
    counts = collections.Counter(ring.lookup(h) for h in _hashes(40000))
    assert all(8000 < c < 12000 for c in counts.values()), counts


def test_all_members_down_falls_back_to_the_full_ring() -> None:
    ring = affinity.Ring(["a", "b"])
    before = [ring.lookup(h) for h in _hashes(100)]
    ring.set_down({"a", "b"})
    assert [ring.lookup(h) for h in _hashes(100)] == before


def test_empty_ring_is_refused() -> None:
    with pytest.raises(ValueError):
        affinity.Ring([])
