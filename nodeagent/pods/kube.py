"""Kubernetes pods -> the agent's pod table: selection, ``PodInfo`` conversion, silence.

Pure: takes Pod objects as the API's JSON dicts (camelCase, as listed or watched) and ``now``
(seconds, the event loop's clock), and updates a ``PodIndex``. No client, no I/O.

Model:
- Two *sources* feed the table. ``local``: every pod on this node (field selector
  ``spec.nodeName=<node>``), of which the monitored ones become senders (``PodInfo(local=True)``).
  ``peers``: the monitored pods of the whole cluster (label selector ``MONITORED_LABEL=true``),
  of which those on other nodes become peers (``local=False``). The two never hold the same pod:
  the peer source ignores pods on this node, so the local source is authoritative for them.
- A pod is selected when it carries the label the webhook sets (``podmirror.io/monitored=true``:
  labels can be selected server-side, annotations cannot) or the annotation
  ``podmirror.io/monitor: "true"``. A label alone never makes it a monitored pod (anyone may label
  their pod): it enters the table only when it **really has the sidecar**, the injected container
  ``podmirror-sidecar`` in its spec (as a container or a native sidecar init container), once it
  has an IP and while it is not finished (phase Succeeded/Failed release their address) and not on
  the host network (its address is the node's, not its own).
- A pod on another node (a peer: this node drops its copies of their connections when the peer's
  node owns them) must also have that container **Ready**. The injected readiness probe
  (``sidecar-lite --check-tunnel``) asks the pod's own agent whether it receives the pod's tunnel
  (``web/pushdown_api.py`` answers ``tunnel``), so Ready means "its node forwards its copies". On
  this node the agent sees the tunnel itself: the vantage stage checks that the pod's tunnel
  delivers (``stages.vantage``), whatever Kubernetes says.
- Dual-stack: ``status.podIPs`` beyond ``podIP`` become ``PodInfo.ips``, so the pod is found by
  either family's address (the tunnel still comes from ``podIP``, the sidecar's POD_IP).
- VNI: ``vni_for_address(pod IP)``, the low 24 bits of the IPv4 address. Pod addresses on one node
  come from the node's pod CIDR, so two pods on a node get the same VNI only if their addresses
  agree in the low 24 bits, impossible when the cluster's pod CIDR is a /8 or smaller. No
  coordination is needed: the sidecar computes the same number from its own POD_IP.
- Invariant: ``PodIndex`` holds exactly the union of both sources' current entries (last writer
  wins on an address clash, which Kubernetes only produces transiently when an address is reused).
- Silence: a local pod selected since ``since`` whose sidecar has sent nothing for ``after``
  seconds (``last_seen`` from the per-pod counters) is *silent*; ``/status`` lists it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from nodeagent.pods.index import PodIndex, PodInfo
from sidecar_lite.identity import vni_for_address

MONITOR_ANNOTATION = "podmirror.io/monitor"
"""Pod annotation asking for monitoring (value ``"true"``)."""
MONITORED_LABEL = "podmirror.io/monitored"
"""Pod label (value ``"true"``) set by the webhook and ``nodeagent inject``; what the watch selects."""
MODE_ANNOTATION = "podmirror.io/mode"
"""``kernel``, ``sniff`` or ``auto``: how the sidecar mirrors."""
CONTAINERS_ANNOTATION = "podmirror.io/containers"
"""Comma-separated container names to monitor (default: the whole pod)."""
PORTS_ANNOTATION = "podmirror.io/ports"
"""Written by the injector: the declared ports of the selected containers, e.g. ``8080/TCP,53/UDP``."""

SIDECAR_CONTAINER = "podmirror-sidecar"
"""The injected container's name (``webhook.inject``)."""

LOCAL = "local"
PEERS = "peers"

Pod = Mapping[str, Any]


def is_monitored(pod: Pod) -> bool:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return labels.get(MONITORED_LABEL) == "true" or annotations.get(MONITOR_ANNOTATION) == "true"


def parse_ports(text: str) -> tuple[int, ...]:
    """``"8080/TCP, 53/UDP,9090"`` -> ``(53, 8080, 9090)``; junk entries are skipped, not fatal
    (an annotation typo must not take the pod out of the table)."""
    ports: set[int] = set()
    for item in text.split(","):
        number = item.strip().split("/", 1)[0]
        if number.isdigit() and 0 < int(number) < 65536:
            ports.add(int(number))
    return tuple(sorted(ports))


def pod_key(pod: Pod) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def has_sidecar(pod: Pod) -> bool:
    """The injected sidecar container is in the pod's spec (a container or a native sidecar)."""
    spec = pod.get("spec") or {}
    return any(isinstance(c, Mapping) and c.get("name") == SIDECAR_CONTAINER
               for c in [*(spec.get("containers") or ()), *(spec.get("initContainers") or ())])


def sidecar_ready(pod: Pod) -> bool:
    """The kubelet reports the sidecar container Ready (its probe: the agent receives the tunnel)."""
    status = pod.get("status") or {}
    statuses = [*(status.get("containerStatuses") or ()), *(status.get("initContainerStatuses") or ())]
    return any(isinstance(c, Mapping) and c.get("name") == SIDECAR_CONTAINER and c.get("ready") is True
               for c in statuses)


def pod_info(pod: Pod, *, node: str) -> PodInfo | None:
    """The table entry for ``pod``, or None when it is not (or no longer) a monitored pod with an IP:
    selected, with the sidecar container, and on another node that container Ready."""
    if not is_monitored(pod) or not has_sidecar(pod):
        return None
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    try:
        vni = vni_for_address(ip)
    except ValueError:
        return None  # not an address the sidecar could derive a VNI from either
    pod_node = spec.get("nodeName") or ""
    if pod_node != node and not sidecar_ready(pod):
        return None  # a peer counts only while Kubernetes says its node receives its tunnel
    annotations = meta.get("annotations") or {}
    return PodInfo(
        ip=ip,
        vni=vni,
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        labels=dict(meta.get("labels") or {}),
        node=pod_node,
        local=pod_node == node,
        ports=parse_ports(annotations.get(PORTS_ANNOTATION, "")),
        ips=other_addresses(status, ip),
    )


def other_addresses(status: Mapping[str, Any], ip: str) -> tuple[str, ...]:
    """A dual-stack pod's addresses besides ``podIP`` (``status.podIPs``), canonical text; entries
    that are not addresses are skipped (the pod keeps its primary address)."""
    out: list[str] = []
    for entry in status.get("podIPs") or ():
        text = entry.get("ip") if isinstance(entry, Mapping) else None
        try:
            canonical = str(ipaddress.ip_address(text or ""))
        except ValueError:
            continue
        if canonical != str(ipaddress.ip_address(ip)) and canonical not in out:
            out.append(canonical)
    return tuple(out)


@dataclasses.dataclass(slots=True)
class _Entry:
    info: PodInfo
    since: float
    """When the pod entered the table (seconds, caller's clock): silence counts from here."""


class PodTable:
    """The pods of both sources, applied to a ``PodIndex`` as watch events arrive."""

    def __init__(self, index: PodIndex, *, node: str) -> None:
        self._index = index
        self._node = node
        self._sources: dict[str, dict[str, _Entry]] = {LOCAL: {}, PEERS: {}}

    def apply(self, source: str, event_type: str, pod: Pod, now: float) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) from ``source``; others are ignored."""
        if event_type in ("ADDED", "MODIFIED"):
            self._upsert(source, pod_key(pod), self._info(source, pod), now)
        elif event_type == "DELETED":
            self._upsert(source, pod_key(pod), None, now)

    def replace(self, source: str, pods: Iterable[Pod], now: float) -> None:
        """A fresh list of ``source`` (start, or relist after 410 Gone): drop what it no longer has."""
        fresh = {pod_key(pod): self._info(source, pod) for pod in pods}
        for key in list(self._sources[source]):
            if fresh.get(key) is None:
                self._upsert(source, key, None, now)
        for key, info in fresh.items():
            self._upsert(source, key, info, now)

    def silent(self, last_seen: Mapping[str, float | None], now: float, after: float) -> list[str]:
        """Keys of local pods with no datagram for ``after`` seconds (nor since they were selected)."""
        quiet = []
        for key, entry in self._sources[LOCAL].items():
            seen = last_seen.get(key)
            latest = entry.since if seen is None else max(seen, entry.since)
            if now - latest >= after:
                quiet.append(key)
        return sorted(quiet)

    def keys(self, source: str) -> list[str]:
        return sorted(self._sources[source])

    def _info(self, source: str, pod: Pod) -> PodInfo | None:
        info = pod_info(pod, node=self._node)
        if info is None or info.local != (source == LOCAL):
            return None  # the local source owns this node's pods; peers owns the others
        return info

    def _upsert(self, source: str, key: str, info: PodInfo | None, now: float) -> None:
        entries = self._sources[source]
        old = entries.get(key)
        if old is not None and (info is None or old.info.ip != info.ip):
            current = self._index.by_addr(old.info.addr)
            if current is not None and current.key == key:  # the address may be another pod's now
                self._index.remove(old.info.ip)
        if info is None:
            entries.pop(key, None)
            return
        entries[key] = _Entry(info, now if old is None or old.info.ip != info.ip else old.since)
        self._index.add(info)
