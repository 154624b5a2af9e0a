"""VXLAN (RFC 7348): the project's one header codec, standard library only, pure.

    0                   1                   2                   3
    |R|R|R|R|I|R|R|R|            Reserved                           |
    |                VXLAN Network Identifier (VNI) |   Reserved    |

The sidecar's sniffer prepends ``header(vni)`` to every captured frame; the node agent decodes
tunnel datagrams with ``HEADER`` and ``FLAG_VNI_VALID`` (``nodeagent.wire.vxlan.decode``, its
per-packet path) and re-encapsulates for sensors with ``header``; the collector does too.
"""

from __future__ import annotations

import struct

from sidecar_lite.identity import VNI_MAX

HEADER = struct.Struct("!B3xI")
"""Flags, 3 reserved bytes, then the VNI in the high 24 bits of a word whose low byte is reserved."""
FLAG_VNI_VALID = 0x08
"""The I flag: the VNI field is valid. A datagram without it is not ours to decode."""
DEFAULT_PORT = 14789
"""Tunnel port to the node agent: not 4789 (Calico/Antrea), 8472 (flannel/Cilium) or 6081 (Geneve)."""


def header(vni: int) -> bytes:
    """The 8-byte header carrying ``vni`` (0 <= vni < 2**24)."""
    if not 0 <= vni <= VNI_MAX:
        raise ValueError(f"VNI {vni} is out of range 0..{VNI_MAX}")
    return HEADER.pack(FLAG_VNI_VALID, vni << 8)


def encode(vni: int, frame: bytes | memoryview) -> bytes:
    """A whole VXLAN payload (header + frame); for tests and tools, not the hot path."""
    return header(vni) + bytes(frame)
