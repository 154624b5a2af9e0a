"""Bounded work per datagram: a VLAN-tag storm and crafted GSO super-packets, sent through a running
agent's tunnel socket on loopback; tshark counts what the pcap output wrote for each datagram.

Before the bounds one 65 KB datagram with 364 VLAN tags became 15,873 frames (an MSS of 4 bytes).
Now: more than 2 tags or 256 bytes of IPv6 extension headers is ``malformed`` (counted, nothing
written); a split never makes segments under 536 payload bytes (``normalize.MIN_MSS``), so one
datagram of at most 64 KB yields at most ceil(65536 / 536) = 123 frames, and at most 58 with the
default ``max_frame`` of 1514; a split that would go below is refused and counted (``unsplittable``)."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, PadN
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from nodeagent.wire import normalize
from tests.component.agent_kit import (
    KNOWN,
    MAC1,
    MAC2,
    get_status,
    make_settings,
    running,
    send_tunnel,
    sender,
    tunnel_port,
    wait_for,
    with_partial_checksum,
)

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (Debian package tshark)")

BOUND = math.ceil(65536 / normalize.MIN_MSS)
"""Most frames one datagram may become, whatever the configuration: 123."""
POD, PEER = "10.0.0.5", "10.0.0.9"
POD6, PEER6 = "fd00::5", "fd00::9"
LONG_TCP = [("NOP", None)] * 40
"""TCP options filling the 60-byte maximum header."""


def _payload(sport: int, size: int) -> bytes:
    return bytes((sport + i) % 251 for i in range(size))


def storm(sport: int, tags: int = 364) -> bytes:
    """The attack as reported: ``tags`` 802.1Q tags before a 60 KB TCP super-packet."""
    tag, last = b"\x00\x07\x81\x00", b"\x00\x07\x08\x00"  # VLAN 7, then 802.1Q again / IPv4
    head = bytes(Ether(src=MAC1, dst=MAC2, type=0x8100)) + tag * (tags - 1) + last
    return head + bytes(IP(src=POD, dst=PEER) / TCP(sport=sport, dport=80, flags="PA")
                        / _payload(sport, 62000 - len(head)))


def v4_longest(sport: int) -> bytes:
    """Two tags, 40 bytes of IPv4 options, 60 bytes of TCP: the longest IPv4 headers (142 bytes)."""
    pkt = (Ether(src=MAC1, dst=MAC2) / Dot1AD(vlan=5) / Dot1Q(vlan=6)
           / IP(src=POD, dst=PEER, options=[IPOption_NOP()] * 40)
           / TCP(sport=sport, dport=80, flags="PA", options=LONG_TCP))
    return with_partial_checksum(bytes(pkt / _payload(sport, 65000 - len(pkt))))


def v6_ext(sport: int, ext_bytes: int) -> bytes:
    """IPv6 behind ``ext_bytes`` of destination options (32-byte headers, an 8-byte one for the rest)."""
    exts: Any = None
    for size in [32] * (ext_bytes // 32) + ([8] if ext_bytes % 32 else []):
        ext = IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 28)] if size == 32 else [])
        exts = ext if exts is None else exts / ext
    pkt = Ether(src=MAC1, dst=MAC2) / Dot1Q(vlan=7) / IPv6(src=POD6, dst=PEER6)
    pkt = pkt / exts / TCP(sport=sport, dport=80, flags="PA", options=LONG_TCP)
    frame = bytes(pkt / _payload(sport, 65000 - len(pkt)))
    return with_partial_checksum(frame) if ext_bytes <= 256 else frame  # beyond: not decodable


def plain(sport: int) -> bytes:
    pkt = Ether(src=MAC1, dst=MAC2) / IP(src=POD, dst=PEER) / TCP(sport=sport, dport=80, flags="PA")
    return with_partial_checksum(bytes(pkt / _payload(sport, 65000 - len(pkt))))


def frames_per_sport(directory: Path) -> Counter[int]:
    (path,) = directory.glob("*.pcap")
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "tcp.srcport"],
                         capture_output=True, text=True, check=True).stdout
    return Counter(int(line) for line in out.split())


async def through_agent(tmp_path: Path, datagrams: dict[int, bytes], **groups: Any) -> tuple[
        Counter[int], dict[str, Any]]:
    # The pod's own addresses are the frames' sources (a sender speaks only for itself).
    settings = make_settings(outputs={"pcap": {"dir": str(tmp_path)}},
                             senders=[f"{KNOWN}+{POD}+{POD6},5,shop/web"], **groups)
    async with running(settings) as agent:
        sock = sender(KNOWN)
        for frame in datagrams.values():
            assert len(frame) + 8 <= 65507  # one UDP datagram on loopback
            send_tunnel(sock, tunnel_port(agent), frame)
        await wait_for(lambda: agent.stats.total.received == len(datagrams))
        status = await get_status(agent)
        sock.close()
    return frames_per_sport(tmp_path), status


async def test_tag_storm_and_long_headers_are_malformed_and_the_longest_accepted_split_once(
        tmp_path: Path) -> None:
    datagrams = {1001: storm(1001), 1002: storm(1002, tags=3), 1003: v6_ext(1003, 264),
                 1004: v6_ext(1004, 256), 1005: v4_longest(1005), 1006: plain(1006)}
    frames, status = await through_agent(tmp_path, datagrams)
    assert status["drops"]["malformed"] == 3 and status["forwarded"] == 3
    assert status["received"] == status["forwarded"] + sum(status["drops"].values())
    assert set(frames) == {1004, 1005, 1006}  # nothing at all of the three malformed datagrams
    for sport, count in frames.items():
        headers_len = {1004: 14 + 4 + 40 + 256 + 60, 1005: 142, 1006: 54}[sport]
        assert count == math.ceil((len(datagrams[sport]) - headers_len) / (1514 - headers_len)) <= 58
    assert status["normalize"]["unsplittable"] == 0


async def test_a_small_max_frame_never_goes_below_the_minimum_mss(tmp_path: Path) -> None:
    """``max_frame`` 590, its least: a plain super-packet splits into 536-byte segments (the most
    frames a datagram can become); longer headers would leave less: the frame goes on whole."""
    datagrams = {2001: plain(2001), 2002: v4_longest(2002), 2003: v6_ext(2003, 256)}
    frames, status = await through_agent(tmp_path, datagrams, normalize={"max_frame": 590})
    assert frames[2001] == math.ceil((len(datagrams[2001]) - 54) / normalize.MIN_MSS) <= BOUND
    assert frames[2002] == frames[2003] == 1
    assert status["normalize"]["unsplittable"] == 2 and status["drops"].get("malformed", 0) == 0
    assert max(frames.values()) <= BOUND
