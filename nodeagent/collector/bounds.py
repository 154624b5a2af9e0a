"""What the collector bounds and whom it names: its ``Limits``, the client certificate's identity
(``peer_identity``), the bounded per-pod counts (``PodCounts``). Pure: no sockets, no clock."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import ssl
from typing import Any

UNAUTHENTICATED = " (unauthenticated)"
"""Appended to the self-declared HELLO name of an agent without a certificate (client
authentication off, ``--insecure-no-client-auth``): the only name such an agent has."""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_connections: int = 1024
    """Open connections, handshakes included: one per agent and collector, so 1024 nodes."""
    max_connections_per_peer: int = 16
    """Open connections from one source address (agents behind one NAT address share it)."""
    handshake_timeout: float = 10.0
    """Seconds for the TLS handshake, and again for the HELLO after it."""
    idle_timeout: float = 90.0
    """Seconds without a complete message before the connection is closed (agents PING every 20 s)."""
    max_pods: int = 4096
    """Pods counted by name (``/status`` ``pods``, one Prometheus series each)."""

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_peer", "max_pods"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("handshake_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


def peer_identity(ssl_object: ssl.SSLObject | None) -> tuple[bytes, str | None]:
    """(16-byte key, display name) of the verified client certificate; (zeros, None) without one."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der or ssl_object is None:
        return bytes(16), None
    digest = hashlib.sha256(der).digest()
    cert: dict[str, Any] = dict(ssl_object.getpeercert() or {})
    names: list[str] = [str(value) for rdn in cert.get("subject", ()) for key, value in rdn
                        if key == "commonName"]
    names += [str(value) for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return digest[:16], f"{names[0] if names else 'certificate'} sha256:{digest.hex()[:16]}"


class PodCounts:
    """Packets per pod for at most ``capacity`` pods: the least recently delivered one is forgotten
    (its packets move to ``overflow``), so the sum over ``counts`` plus ``overflow`` is every packet."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.overflow = 0
        self.forgotten = 0

    def add(self, pod: str, n: int) -> None:
        counts = self.counts
        if pod in counts:
            counts[pod] += n
            counts.move_to_end(pod)
            return
        counts[pod] = n
        if len(counts) > self.capacity:
            _, packets = counts.popitem(last=False)
            self.overflow += packets
            self.forgotten += 1
