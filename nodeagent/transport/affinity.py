"""Flow affinity: a symmetric flow hash and a consistent-hashing ring over sensors.

Model:

- ``flow_hash(meta, frame)`` maps a packet to a 32-bit value that depends only on the *unordered*
  pair of endpoints ``{(src, sport), (dst, dport)}`` and the protocol. Both directions of a
  connection therefore get the same value, so they reach the same sensor, as a Zeek cluster
  requires (docs/transport.md, "Flow affinity"). IP fragments are hashed with ports 0: a non-first
  fragment carries no ports, and hashing every fragment the same way keeps all fragments of one
  datagram together (a fragmented UDP flow may then differ from its unfragmented packets; TCP is
  rarely fragmented). Non-IP frames (ARP...) hash on the unordered MAC pair.
- ``Ring`` places each sensor at ``VNODES`` pseudo-random points on a 2**32 circle; a flow goes to
  the first point clockwise from its hash whose sensor is up. Removing one of N sensors moves only
  the flows that sensor owned (about 1/N); when it comes back, exactly those flows return.

Pure: no I/O, no clock. ``flow_hash`` runs per packet: one ``bytes`` join, one ``zlib.crc32`` and
an integer finaliser (crc32 alone clusters poorly on a ring; the finaliser spreads it).
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import zlib
from collections.abc import Iterable

from nodeagent.wire.headers import PacketMeta

VNODES = 160
"""Points per sensor on the ring: with 160 the load of 2-10 sensors stays within about +-10 %."""

_PORTS = struct.Struct("!HHB")
_M32 = 0xFFFFFFFF


def _mix(h: int) -> int:
    """murmur3's 32-bit finaliser: every input bit affects every output bit."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def flow_hash(meta: PacketMeta, frame: bytes | memoryview = b"") -> int:
    """Symmetric 32-bit hash of the packet's flow (see the module docstring)."""
    if meta.version:
        sport, dport = (0, 0) if meta.fragment else (meta.sport, meta.dport)
        a, b = meta.src, meta.dst
        if (a, sport) > (b, dport):
            a, b, sport, dport = b, a, dport, sport
        # ICMP "ports" are type and code: sorting keeps echo request/reply apart, which is fine.
        key = a + b + _PORTS.pack(sport, dport, meta.proto & 0xFF)
    else:
        view = memoryview(frame)
        m1, m2 = bytes(view[0:6]), bytes(view[6:12])
        key = min(m1, m2) + max(m1, m2) + meta.ethertype.to_bytes(2, "big")
    return _mix(zlib.crc32(key))


def _point(name: str, replica: int) -> int:
    digest = hashlib.blake2b(f"{name}#{replica}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


class Ring:
    """Consistent hashing over named members, some of which may be down.

    ``lookup(h)`` returns the member owning hash ``h`` among the members that are up. The full
    ring is built once; ``set_down`` rebuilds only the list of live points (a health change is
    rare, a lookup is per packet and stays one ``bisect``).
    """

    def __init__(self, members: Iterable[str], vnodes: int = VNODES) -> None:
        self.members: tuple[str, ...] = tuple(dict.fromkeys(members))
        if not self.members:
            raise ValueError("a ring needs at least one member")
        pairs = sorted((_point(m, r), m) for m in self.members for r in range(vnodes))
        self._all = pairs
        self._down: frozenset[str] = frozenset()
        self._points: list[int] = []
        self._owners: list[str] = []
        self._rebuild()

    @property
    def down(self) -> frozenset[str]:
        return self._down

    def set_down(self, names: Iterable[str]) -> None:
        """Mark ``names`` down (all others up). If every member is down, lookups use the full
        ring: data then queues at each flow's usual member instead of being spread arbitrarily."""
        down = frozenset(names) & frozenset(self.members)
        if down != self._down:
            self._down = down
            self._rebuild()

    def _rebuild(self) -> None:
        live = [(p, m) for p, m in self._all if m not in self._down] or self._all
        self._points = [p for p, _ in live]
        self._owners = [m for _, m in live]

    def lookup(self, h: int) -> str:
        i = bisect.bisect_left(self._points, h)
        return self._owners[i if i < len(self._owners) else 0]

