"""Encrypted-flow cutoff: forward the handshake and the first bytes, then headers only (or nothing).

Model. A sensor learns little from the body of an encrypted flow, but much from its handshake
(SNI, certificates, JA3/JA4, SSH banners) and from its headers (duration and byte counts come from
TCP sequence numbers, which Zeek reads). Per flow and per direction, ``Cutoff.apply`` forwards the
first ``budget`` payload bytes whole; past the budget an encrypted flow's packets are cut to their
headers (``after="headers"``: Ethernet + IP + TCP/UDP kept, payload removed, lengths and
checksums fixed so the result is a valid packet; the record keeps its original length, see
``headers_only``) or dropped (``after="drop"``: ``CUT_OFF``; packets with SYN, FIN or
RST are still forwarded, cut to headers, so the sensor sees the connection open and close).

Detection, on the first payload of each direction of a flow (later payloads are never inspected:
a random body starting with the same bytes must not flip a clear flow), on any port:

- TLS: a handshake record header, ``0x16 0x03 0x00..0x04`` (RFC 8446 5.1, SSL 3.0 to TLS 1.3);
- SSH: the identification string ``SSH-`` (RFC 4253 4.2), sent by both sides first;
- QUIC: a UDP long-header packet (first byte ``0b11xxxxxx``) with a known version (RFC 9000 17.2,
  RFC 9369): the flow is encrypted from its first Initial.

Keyed per vantage: the state of a flow is kept per sender pod (``vantage``), so a pod's frames
(even forged ones: it speaks only for flows it is an end of, ``pipeline``) can change what its own
copies get, never what another pod's copies of the same flow get: a fake TLS hello on a flow does
not cut the other end's cleartext of it.

Bounded: flows live in a ``FlowTable`` (capacity, idle timeout; evictions counted). A flow evicted
and seen again mid-stream is inspected afresh and usually not recognised (its next payload is not a
handshake): it is then forwarded whole, never lost. Pure: ``now`` comes from the caller.
"""

from __future__ import annotations

import struct
from typing import Any

from nodeagent.stages.flowtable import FlowTable
from nodeagent.wire import normalize
from nodeagent.wire.headers import IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST, TCP_SYN, PacketMeta

HEADERS, DROP = "headers", "drop"
FORWARD = 0
"""``apply`` result: forward whole. A positive result is the length to cut the frame to; -1 drops."""
CUT = -1
QUIC_VERSIONS = frozenset({0x00000001, 0x6B3343CF} | {0xFF000000 + d for d in range(29, 35)})
"""QUIC v1, v2 and drafts 29-34 (what deployed stacks still send)."""
_CONTROL = TCP_SYN | TCP_FIN | TCP_RST
_U16 = struct.Struct("!H")


_ENCRYPTED, _SEEN, _SENT = 0, 1, 3
"""A flow's state is a list ``[encrypted, seen (2), sent (2)]``: whether it is encrypted, whether
each direction's first payload was inspected, the payload bytes each direction forwarded whole. A
list literal, not a ``__slots__`` object with two lists: 0.10 -> 0.02 us per new flow (every flow
with a payload makes one; measured per call)."""


class Cutoff:
    def __init__(self, *, budget: int = 16384, after: str = HEADERS, capacity: int = 65536,
                 idle: float = 300.0) -> None:
        if after not in (HEADERS, DROP):
            raise ValueError(f"after must be headers or drop, got {after!r}")
        self._budget = budget
        self._drop = after == DROP
        self._flows: FlowTable[list[Any]] = FlowTable(capacity=capacity, idle=idle)

    @property
    def evictions(self) -> int:
        return self._flows.evictions

    def __len__(self) -> int:
        """Encrypted flows tracked."""
        return len(self._flows)

    def apply(self, meta: PacketMeta, frame: memoryview | bytes, vantage: bytes, now: float) -> int:
        """``FORWARD`` (0), a length to cut the frame to (> 0), or ``CUT`` (-1: drop), for the copy
        ``vantage`` (the sender pod's packed address) delivered."""
        proto = meta.proto
        if meta.l4 < 0 or (proto != IPPROTO_TCP and proto != IPPROTO_UDP):
            return FORWARD
        # A flat canonical 5-tuple: the same order as comparing (address, port) pairs, without
        # building them (~0.2 us less per packet, measured per call).
        src, sport, dst, dport = meta.src, meta.sport, meta.dst, meta.dport
        forward = src < dst or (src == dst and sport < dport)
        key = ((vantage, proto, src, sport, dst, dport) if forward
               else (vantage, proto, dst, dport, src, sport))
        size = meta.end - meta.payload
        flow = self._flows.refresh(key, now)
        if flow is None:
            if size == 0:
                return FORWARD  # no state for bare handshakes and ACKs of unknown flows
            flow = [False, False, False, 0, 0]
            self._flows.put(key, flow, now)
        side = 0 if forward else 1
        if size and not flow[_SEEN + side]:
            flow[_SEEN + side] = True
            if not flow[_ENCRYPTED]:
                flow[_ENCRYPTED] = _is_encrypted(meta, frame)
        if not flow[_ENCRYPTED] or flow[_SENT + side] < self._budget:
            flow[_SENT + side] += size
            return FORWARD
        if self._drop and not (proto == IPPROTO_TCP and meta.tcp_flags & _CONTROL):
            return CUT
        return meta.payload if size else FORWARD


def headers_only(frame: memoryview | bytes, meta: PacketMeta) -> bytearray:
    """The frame cut to its headers as a valid packet: IP and UDP lengths and every checksum fixed.

    Why not pcap-style truncation: over VXLAN a sensor gets no capture length, so an IP length that
    promises a payload the frame lacks reads as a malformed packet (Zeek: ``truncated_IP``) and a
    checksum over the missing payload as a corrupt one (Zeek drops those). The record keeps the
    original length in ``Forward.wire_len``; TCP sequence numbers still tell the bytes sent.
    """
    out = bytearray(frame[: meta.payload])
    l3, l4 = meta.l3, meta.l4
    if meta.version == 4:
        _U16.pack_into(out, l3 + 2, meta.payload - l3)
        _U16.pack_into(out, l3 + 10, 0)
        _U16.pack_into(out, l3 + 10, normalize.finish(normalize.ones_sum(out[l3 : l4])))
    else:
        _U16.pack_into(out, l3 + 4, meta.payload - l3 - 40)
    if meta.proto == IPPROTO_UDP:
        _U16.pack_into(out, l4 + 4, meta.payload - l4)
    # ``checksum_offset`` and ``l4_checksum`` read the offsets, addresses and protocol, never
    # ``meta.end`` (the end is the argument): so no ``meta._replace(end=...)``, which cost 1.2 us
    # per cut packet (a third of the packets in bench/bench_pipeline.py's mix are cut).
    offset = normalize.checksum_offset(meta)
    if offset >= 0:  # -1: a first IP fragment, whose checksum covers the whole datagram: left as is
        _U16.pack_into(out, offset, normalize.l4_checksum(out, meta, meta.payload))
    return out


def _is_encrypted(meta: PacketMeta, frame: memoryview | bytes) -> bool:
    head = bytes(frame[meta.payload : meta.payload + 5])
    if meta.proto == IPPROTO_TCP:
        return (len(head) >= 3 and head[0] == 0x16 and head[1] == 0x03 and head[2] <= 0x04) or \
            head.startswith(b"SSH-")
    return len(head) == 5 and head[0] & 0xC0 == 0xC0 and int.from_bytes(head[1:5]) in QUIC_VERSIONS
