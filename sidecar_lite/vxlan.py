"""VXLAN header encoding (RFC 7348), standard library only.

    flags(8: I=0x08) | reserved(24) | VNI(24) | reserved(8)

nodeagent's tests cross-check this against ``nodeagent.wire.vxlan``. Pure.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!B3xI")
FLAG_VNI_VALID = 0x08
DEFAULT_PORT = 14789
"""Tunnel port to the node agent: not 4789 (Calico/Antrea), 8472 (flannel/Cilium) or 6081 (Geneve)."""
OVERHEAD_IPV4 = 50
"""Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 bytes added to every mirrored frame."""


def header(vni: int) -> bytes:
    """The 8-byte header carrying ``vni`` (0 <= vni < 2**24)."""
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"VNI {vni} is out of range 0..16777215")
    return HEADER.pack(FLAG_VNI_VALID, vni << 8)


def encode(vni: int, frame: bytes | memoryview) -> bytes:
    """A whole VXLAN payload (header + frame); for tests and tools, not the hot path."""
    return header(vni) + bytes(frame)
