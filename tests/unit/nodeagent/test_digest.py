"""The digest is equal for the two vantages' copies of one packet and differs between packets."""

from __future__ import annotations

from nodeagent.stages import digest
from tests.unit.nodeagent.pipeline_packets import (
    ICMP,
    IP,
    UDP,
    VIP,
    IPv6,
    copy_at,
    eth,
    meta,
    tcp,
    udp,
)


def digest_of(frame: bytes) -> int:
    return digest.compute(meta(frame), frame)


def test_copies_differing_in_ttl_mac_and_checksums_have_one_digest() -> None:
    pkt = tcp("10.0.0.5", "10.0.0.9", payload=b"hello")
    original = bytes(pkt)
    other = copy_at(pkt, ttl=12)
    assert original != other
    assert digest_of(original) == digest_of(other)


def test_dnat_destination_and_snat_reply_source_are_ignored() -> None:
    request = tcp("10.0.0.5", VIP, dport=80, payload=b"GET /")
    assert digest_of(bytes(request)) == digest_of(copy_at(request, dst="10.0.0.9", dport=8080))
    reply = tcp("10.0.0.9", "10.0.0.5", sport=8080, dport=40000, payload=b"200 OK")
    assert digest_of(bytes(reply)) == digest_of(copy_at(reply, src=VIP, sport=80))


def test_tcp_options_rewritten_by_mss_clamping_are_ignored() -> None:
    syn = tcp("10.0.0.5", "10.0.0.9", flags="S", options=[("MSS", 1460)])
    clamped = tcp("10.0.0.5", "10.0.0.9", flags="S", options=[("MSS", 1400), ("NOP", None), ("NOP", None)])
    assert digest_of(bytes(syn)) == digest_of(bytes(clamped))


def test_vlan_tag_on_one_copy_is_ignored() -> None:
    pkt = tcp("10.0.0.5", "10.0.0.9", payload=b"x" * 10)
    assert digest_of(bytes(pkt)) == digest_of(copy_at(pkt, vlan=42))


def test_ipv6_copies_match_and_flow_label_separates() -> None:
    pkt = eth() / IPv6(src="fd00::5", dst="fd00::9", fl=7, hlim=64) / UDP(sport=1, dport=2) / b"data"
    assert digest_of(bytes(pkt)) == digest_of(copy_at(pkt, ttl=3, dst="fd00::99"))
    other = eth() / IPv6(src="fd00::5", dst="fd00::9", fl=8) / UDP(sport=1, dport=2) / b"data"
    assert digest_of(bytes(pkt)) != digest_of(bytes(other))


def test_different_segments_of_one_flow_differ() -> None:
    a = tcp("10.0.0.5", "10.0.0.9", seq=1000, payload=b"x" * 100)
    b = tcp("10.0.0.5", "10.0.0.9", seq=1100, payload=b"x" * 100)
    c = tcp("10.0.0.5", "10.0.0.9", seq=1000, payload=b"x" * 99 + b"y")
    assert len({digest_of(bytes(a)), digest_of(bytes(b)), digest_of(bytes(c))}) == 3


def test_long_payloads_hash_head_tail_and_length() -> None:
    body = bytearray(b"z" * 3000)
    a = bytes(tcp("10.0.0.5", "10.0.0.9", payload=bytes(body)))
    body[-1] = ord("q")
    b = bytes(tcp("10.0.0.5", "10.0.0.9", payload=bytes(body)))
    assert digest_of(a) != digest_of(b)


def test_udp_with_ip_id_zero_and_identical_payload_collides_the_documented_limit() -> None:
    first = udp("10.0.0.5", "10.0.0.9", sport=1111, payload=b"metric:1|c")
    second = udp("10.0.0.6", "10.0.0.9", sport=2222, payload=b"metric:1|c")
    assert digest_of(bytes(first)) == digest_of(bytes(second))


def test_icmp_echo_and_natted_icmp_error_copies_match() -> None:
    echo = eth() / IP(src="10.0.0.5", dst="10.0.0.9", id=5) / ICMP(id=3, seq=4) / b"ping"
    assert digest_of(bytes(echo)) == digest_of(copy_at(echo, ttl=1))
    quoted = IP(src="10.0.0.5", dst=VIP, id=99) / UDP(sport=5, dport=53)
    error = eth() / IP(src="10.0.0.9", dst="10.0.0.5", id=6) / ICMP(type=3, code=3) / bytes(quoted)[:28]
    natted = IP(src="10.0.0.5", dst="10.0.0.9", id=99) / UDP(sport=5, dport=5353)
    error2 = eth() / IP(src=VIP, dst="10.0.0.5", id=6, ttl=3) / ICMP(type=3, code=3) / bytes(natted)[:28]
    assert digest_of(bytes(error)) == digest_of(bytes(error2))


def test_non_first_fragments_and_arp_have_digests() -> None:
    frag = eth() / IP(src="10.0.0.5", dst="10.0.0.9", frag=10, proto=17, id=4) / (b"f" * 80)
    assert digest_of(bytes(frag)) == digest_of(copy_at(frag, ttl=9))
    other = eth() / IP(src="10.0.0.5", dst="10.0.0.9", frag=20, proto=17, id=4) / (b"f" * 80)
    assert digest_of(bytes(frag)) != digest_of(bytes(other))
    from scapy.layers.l2 import ARP
    arp = bytes(eth() / ARP(psrc="10.0.0.5", pdst="10.0.0.1"))
    assert digest_of(arp) == digest_of(arp + b"\0" * 18)
