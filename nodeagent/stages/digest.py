"""What deduplication compares: a digest of a packet that is the same for both copies of it.

Model. A packet between two monitored pods on one node is mirrored twice: leaving the sender's
eth0 and entering the receiver's. The two copies differ in everything the node rewrites on the
way: TTL / hop limit, MAC addresses, the IP and L4 checksums, and with a Service (kube-proxy DNAT)
the destination address and port of requests (the client's copy shows ClusterIP:port, the
server's copy podIP:targetPort) and the source of replies; with SNAT (masquerade, hairpin) the
source of requests too. ``compute`` therefore hashes only what no node rewrites:

==========================  =================================================================
compared                    ignored
==========================  =================================================================
IP protocol                 MAC addresses, VLAN tags, EtherType padding
IPv4 identification         TTL / hop limit, TOS / traffic class (DSCP may be re-marked)
IPv6 flow label             IP and L4 checksums (recomputed by NAT, partial on the sender)
IP payload length           source and destination addresses (DNAT / SNAT)
TCP seq, ack, flags, window source and destination ports (DNAT / SNAT)
L4 payload: length, first   TCP options (MSS clamping rewrites SYNs), TCP data offset
and last 64 bytes           the middle of payloads longer than 128 bytes (hashing a 64 KB GSO
ICMP type, code, id / seq   super-packet would cost ~40 us; seq+ack+length already separate
ICMP errors: the quoted     segments of one flow)
IPv4 id / IPv6 flow label   the vantage (kept beside the digest, see ``dedup``)
ARP: the 28-byte body
==========================  =================================================================

Invariant: two copies of one packet (same bytes from the sender, rewritten as above) have equal
digests. Two different packets collide only if they agree on every compared field, e.g. two
unconnected UDP datagrams with IP id 0 (Linux, DF set) and byte-identical payloads of equal
length: ``dedup`` therefore counts a match only between a copy and the *other end's pod's* copy,
so two pods' identical datagrams to third parties are never duplicates. TCP segments with payload
are compared by byte range instead (``dedup``: packetization differs between vantages); the
vantage stage uses the digest to link the two tuples of a DNAT'd connection (``vantage``).

Pure: ``compute`` reads the frame through the offsets of ``PacketMeta``; no copies beyond the
slices it hashes, no scapy. Python's ``hash`` (SipHash, per-process key) is enough: digests never
leave the process.
"""

from __future__ import annotations

import struct

from nodeagent.wire.headers import (
    ETH_P_ARP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    PacketMeta,
)

EDGE = 64
"""Payload bytes hashed at each end."""
_TCP_FIELDS = struct.Struct("!IIxBH")
"""TCP seq, ack, (data offset skipped), flags, window."""
_ICMP4_ERRORS = frozenset({3, 4, 5, 11, 12})
_ICMP6_ERRORS = frozenset({1, 2, 3, 4})


def compute(meta: PacketMeta, frame: memoryview | bytes) -> int:
    """The NAT-invariant digest of one decoded frame (see the module table)."""
    if meta.version == 0:
        return _non_ip(meta, frame)
    # IPv6: the flow label, plus the fragment header's identification when there is one.
    ident = meta.ident if meta.version == 4 else _flow_label(meta, frame) << 32 | meta.ident
    proto, l4, end = meta.proto, meta.l4, meta.end
    if l4 < 0:  # non-first fragment: no transport header, only data (and, for IPv4, its offset)
        offset = bytes(frame[meta.l3 + 6 : meta.l3 + 8]) if meta.version == 4 else b""
        return hash((proto, ident, offset, end - meta.l3, bytes(frame[max(meta.l3, end - EDGE) : end])))
    payload = meta.payload
    head = bytes(frame[payload : payload + EDGE])
    # Per packet: a payload within EDGE has an empty tail, so skip the slice and copy (~0.2 us).
    tail = bytes(frame[max(payload + EDGE, end - EDGE) : end]) if end - payload > EDGE else b""
    if proto == IPPROTO_TCP:
        # seq, ack (4..12) and flags, window (13..16): byte 12 holds the data offset, which
        # MSS clamping can change on SYNs. One unpack instead of two slices and copies (~0.1 us);
        # the integers are equal exactly when the bytes are.
        return hash((proto, ident, _TCP_FIELDS.unpack_from(frame, l4 + 4), end - payload, head, tail))
    if proto == IPPROTO_UDP:
        return hash((proto, ident, end - payload, head, tail))
    if proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6:
        return _icmp(meta, frame, ident, head, tail)
    return hash((proto, ident, end - l4, bytes(frame[l4 : l4 + EDGE]), tail))


def _icmp(meta: PacketMeta, frame: memoryview | bytes, ident: int, head: bytes, tail: bytes) -> int:
    errors = _ICMP4_ERRORS if meta.proto == IPPROTO_ICMP else _ICMP6_ERRORS
    if meta.sport not in errors:  # echo and the like: id, seq and data are never rewritten
        return hash((meta.proto, ident, meta.sport, meta.dport, bytes(frame[meta.l4 + 4 : meta.l4 + 8]),
                     meta.end - meta.payload, head, tail))
    # An error quotes the offending packet, and conntrack rewrites the quoted addresses, ports and
    # checksums for NAT'd flows: keep only the quoted packet's own identification.
    quoted = meta.l4 + 8
    if meta.proto == IPPROTO_ICMP:
        inner = bytes(frame[quoted + 4 : quoted + 6]) + bytes(frame[quoted + 9 : quoted + 10])
    else:
        inner = bytes(frame[quoted + 1 : quoted + 4]) + bytes(frame[quoted + 6 : quoted + 7])
    return hash((meta.proto, ident, meta.sport, meta.dport, inner, meta.end - meta.payload))


def _flow_label(meta: PacketMeta, frame: memoryview | bytes) -> int:
    l3 = meta.l3
    return (frame[l3 + 1] & 0x0F) << 16 | frame[l3 + 2] << 8 | frame[l3 + 3]


def _non_ip(meta: PacketMeta, frame: memoryview | bytes) -> int:
    # ARP bodies are 28 bytes; the rest of the frame is padding a bridge may add or strip.
    size = 28 if meta.ethertype == ETH_P_ARP else 256
    return hash((meta.ethertype, bytes(frame[meta.l3 : meta.l3 + size])))
