"""Small facts about this process and its namespace, read with the standard library only.

Kept apart from ``kernel.py`` so sniff mode never imports pyroute2 (RSS).
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFADDR = 0x8915
CAP_NET_ADMIN = 12


def interface_ipv4(name: str) -> str:
    """The primary IPv4 address of interface ``name`` (OSError if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", name.encode()[:15])
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
    return socket.inet_ntoa(answer[20:24])


def effective_capabilities(status_text: str) -> int:
    """The CapEff mask from the text of /proc/<pid>/status (pure)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def has_net_admin(status_path: str = "/proc/self/status") -> bool:
    with open(status_path, encoding="ascii") as f:
        return bool(effective_capabilities(f.read()) >> CAP_NET_ADMIN & 1)
