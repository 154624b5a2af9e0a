"""The pod table: which addresses are monitored pods, on this node (senders) or elsewhere (peers).

Pure: the Kubernetes adapter and the static configuration both feed it ``PodInfo`` values.
Lookups on the packet path are dict hits on packed addresses (``by_addr``) or on the tunnel's
source string (``sender``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping


@dataclasses.dataclass(frozen=True, slots=True)
class PodInfo:
    ip: str
    """The pod's address, as the tunnel's source and inside its packets."""
    vni: int
    namespace: str
    name: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    node: str = ""
    local: bool = True
    """True for a pod on this node (a sender); False for a monitored pod on another node (a peer)."""
    ports: tuple[int, ...] = ()
    """Declared container ports of the monitored containers (empty: the whole pod is monitored)."""
    ips: tuple[str, ...] = ()
    """The pod's other addresses (dual-stack ``status.podIPs``): looked up like ``ip``, never a
    tunnel source of their own."""

    addr: bytes = dataclasses.field(init=False, repr=False, compare=False)
    """Packed ``ip`` (4 or 16 bytes), computed once: packets are matched on packed addresses."""
    key: str = dataclasses.field(init=False, repr=False, compare=False)
    """``namespace/name``: the per-pod key in ``/status`` and ``/metrics``."""
    addrs: frozenset[bytes] = dataclasses.field(init=False, repr=False, compare=False)
    """Every packed address of the pod (``ip`` and ``ips``): "is this the pod?" for either family."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", ipaddress.ip_address(self.ip).packed)
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")
        object.__setattr__(self, "addrs", frozenset(ipaddress.ip_address(a).packed for a in self.all_ips))

    @property
    def all_ips(self) -> tuple[str, ...]:
        """``ip`` first, then the other addresses."""
        return (self.ip, *(a for a in self.ips if a != self.ip))


class PodIndex:
    """Pods by tunnel source address and by packed address. Replace or update as events arrive.

    A local pod's tunnel may come from any of its addresses (the sidecar sends from the address
    the route to the agent picks, IPv4 or IPv6), so ``sender`` knows every one of them."""

    def __init__(self, pods: Iterable[PodInfo] = ()) -> None:
        self._by_ip: dict[str, PodInfo] = {}
        self._by_addr: dict[bytes, PodInfo] = {}
        self._sources: dict[str, PodInfo] = {}
        self.locals = 0
        """Local pods (senders) in the table."""
        self.version = 0
        """Incremented by every change: caches keyed on senders (``Pipeline``) compare it per packet."""
        for pod in pods:
            self.add(pod)

    def add(self, pod: PodInfo) -> None:
        old = self._by_ip.get(pod.ip)
        if old is not None:
            self.remove(old.ip)
        self._by_ip[pod.ip] = pod
        self.version += 1
        self.locals += pod.local
        for addr in pod.addrs:  # a dual-stack pod: each family's packets find it
            self._by_addr[addr] = pod
        if pod.local:
            for ip in pod.all_ips:
                self._sources[ip] = pod

    def remove(self, ip: str) -> PodInfo | None:
        pod = self._by_ip.pop(ip, None)
        if pod is not None:
            self.version += 1
            self.locals -= pod.local
            for addr in pod.addrs:
                if self._by_addr.get(addr) is pod:  # the address may be another pod's by now
                    del self._by_addr[addr]
                    # Another pod may hold it too (two pods' podIPs overlapping while one of them
                    # goes): it gets it back, so no pod in the table is left unreachable by address.
                    other = next((p for p in self._by_ip.values() if addr in p.addrs), None)
                    if other is not None:
                        self._by_addr[addr] = other
            for text in pod.all_ips:
                if self._sources.get(text) is pod:
                    del self._sources[text]
                    other = next((p for p in self._by_ip.values() if p.local and text in p.all_ips), None)
                    if other is not None:
                        self._sources[text] = other
        return pod

    def replace_all(self, pods: Iterable[PodInfo]) -> None:
        self._by_ip.clear()
        self._by_addr.clear()
        self._sources.clear()
        self.locals = 0
        self.version += 1
        for pod in pods:
            self.add(pod)

    def sender(self, ip: str) -> PodInfo | None:
        """The local monitored pod with address ``ip`` (a tunnel's source), else None."""
        return self._sources.get(ip)

    def by_addr(self, addr: bytes) -> PodInfo | None:
        """Any monitored pod (local or peer) with this packed address."""
        return self._by_addr.get(addr)

    def all(self) -> list[PodInfo]:
        return list(self._by_ip.values())

    def __len__(self) -> int:
        return len(self._by_ip)
