"""The comparison model the end-to-end tests rely on (pure: no root, no tshark)."""

from __future__ import annotations

import collections
import socket
import struct
from pathlib import Path

from nodeagent.lab import capture
from nodeagent.wire import vxlan

Counts = dict[tuple[str, ...], int]


def traffic(packets: Counts, tcp: Counts | None = None) -> capture.Traffic:
    return capture.Traffic(collections.Counter(tcp or {}), collections.Counter(packets),
                           sum(packets.values()))


UDP = ("udp", "10.1.0.10", "40000", "10.1.0.11", "53", "0x0001", "40")
PING = ("icmp", "10.1.0.10", "10.1.0.11", "8", "0x0002", "84")
FLOW = ("tcp", "10.1.0.10", "5000", "10.1.0.11", "5201")


def test_identical_traffic_has_no_difference() -> None:
    same = traffic({UDP: 1, PING: 2}, {FLOW: 100})
    assert capture.diff(same, traffic({UDP: 1, PING: 2}, {FLOW: 100})) == {}


def test_missing_packet_is_reported() -> None:
    out = capture.diff(traffic({UDP: 1, PING: 1}), traffic({UDP: 1}))
    assert out["missing"] == {PING: 1, "total": 1}


def test_a_packet_seen_twice_is_a_duplicate_but_extras_outside_the_window_are_not() -> None:
    mld = ("icmpv6", "fe80::1", "ff02::16", "143", "", "36")
    out = capture.diff(traffic({UDP: 1}), traffic({UDP: 2, mld: 4}))
    assert out == {"duplicated": {UDP: 2}}


def test_tcp_is_compared_as_payload_bytes_per_direction() -> None:
    out = capture.diff(traffic({}, {FLOW: 64_000}), traffic({}, {FLOW: 63_000}))
    assert out == {"tcp_bytes (expected, got)": {FLOW: (64_000, 63_000)}}


def test_union_counts_a_packet_seen_at_two_pods_once() -> None:
    both = traffic({UDP: 1}, {FLOW: 10}).union(traffic({UDP: 1, PING: 1}, {FLOW: 10}))
    assert both.packets == collections.Counter({UDP: 1, PING: 1}) and both.tcp_bytes[FLOW] == 10
    assert both.kinds() == collections.Counter({"udp": 1, "icmp": 1})


def outer(inner: bytes, vni: int, dport: int = 4789, frag: int = 0) -> bytes:
    udp_payload = vxlan.encode(vni, inner)
    udp = struct.pack("!HHHH", 50000, dport, 8 + len(udp_payload), 0) + udp_payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, frag, 64, 17, 0,
                     socket.inet_aton("10.1.0.2"), socket.inet_aton("10.254.1.2"))
    return bytes(12) + b"\x08\x00" + ip + udp


def write_pcap(path: Path, frames: list[bytes]) -> None:
    records = b"".join(struct.pack("<IIII", 1, 0, len(f), len(f)) + f for f in frames)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1) + records)


def test_strip_vxlan_unwraps_and_flags_nested_tunnels_and_fragments(tmp_path: Path) -> None:
    inner = bytes.fromhex("02aabbccddee02aabbccddff0800") + bytes(46)
    nested = outer(inner, 7, dport=14789)              # a tunnel packet inside a tunnel: a mirror loop
    write_pcap(tmp_path / "in.pcap", [outer(inner, 5), outer(nested, 5), outer(inner, 6, frag=0x2000)])

    counts = capture.strip_vxlan(tmp_path / "in.pcap", tmp_path / "out.pcap")

    assert counts == {"frames": 2, "nested": 1, "fragments": 1, "vnis": 1}
    head, records = capture.read_pcap(tmp_path / "out.pcap")
    assert [frame for _, frame in records] == [inner, nested]
    macs = capture.source_macs(tmp_path / "out.pcap")
    assert macs == collections.Counter({"02:aa:bb:cc:dd:ff": 1, "00:00:00:00:00:00": 1})
