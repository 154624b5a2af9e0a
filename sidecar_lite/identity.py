"""A pod's VXLAN identity (VNI), derived without coordination.

Model: the VNI of a pod is the low 24 bits of its IPv4 address. Pod addresses on one node are
unique, and a node's pod CIDR is at most a /8 in every CNI we know, so the low 24 bits are unique on
the node: the agent and the sidecar compute the same number independently, with no allocator.

Pure: no I/O. ``parse_vni`` accepts the spellings of the environment contract.
"""

from __future__ import annotations

import ipaddress

VNI_MAX = (1 << 24) - 1
AUTO = "auto"


def is_ip(text: str) -> bool:
    """``text`` is an IPv4 or IPv6 address (how the sidecar's and the agent's settings tell an
    address from a name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def vni_for_address(ip: str) -> int:
    """The VNI of the pod whose IPv4 address is ``ip`` (low 24 bits)."""
    try:
        address = ipaddress.IPv4Address(ip.strip())
    except ipaddress.AddressValueError as exc:
        raise ValueError(f"not an IPv4 address: {ip!r}") from exc
    return int(address) & VNI_MAX


def parse_vni(text: str, *, hex_default: bool = False) -> int | None:
    """Parse a VNI: decimal, ``0x``-prefixed hex, or ``auto`` (returns None).

    ``hex_default`` reads unprefixed digits as hexadecimal: the reference sidecar's ``VNI`` variable
    is hex (docs/datapath.md).
    """
    value = text.strip().lower()
    if value == AUTO:
        return None
    try:
        if value.startswith("0x"):
            vni = int(value, 16)
        else:
            vni = int(value, 16 if hex_default else 10)
    except ValueError as exc:
        raise ValueError(f"VNI {text!r} is not a number (decimal, 0x.. or 'auto')") from exc
    if not 0 <= vni <= VNI_MAX:
        raise ValueError(f"VNI {text!r} is out of range 0..{VNI_MAX}")
    return vni
