"""Container selection: a pod's traffic restricted to its selected containers' declared ports.

Model. The containers of a pod share one network namespace (one eth0, one address), so a sidecar
cannot mirror one container alone: the webhook turns a container selection
(``podmirror.io/containers``) into those containers' declared ports (``podmirror.io/ports``), which
reach ``PodInfo.ports`` (``pods.kube``, or a static sender's 4th field). A non-empty ``ports`` means:
forward only the packets that belong to a selected container, i.e. whose port *on the pod's side*
is one of ``ports``:

- TCP, UDP, SCTP: the source port for a packet out of the pod, the destination port for one into
  it (a connection the container opened to a remote port 8080 is not "port 8080" of the pod);
- an ICMP or ICMPv6 *error* (unreachable, time exceeded, packet too big, parameter problem, and
  IPv4's source quench and redirect) quotes the packet it answers: it is kept when the quoted
  packet's port on the pod's side is selected, so path-MTU trouble of a selected flow reaches the
  sensor;
- everything else is not attributable to a container and is dropped: ARP and other non-IP frames,
  ICMP echo (answered by the kernel, not a container), non-first IP fragments (they carry no
  ports; tracking fragments is not worth it for pods, whose eth0 rarely fragments), other
  protocols.

Dropped packets are counted as ``Drop.OTHER_CONTAINER``. Ports are matched whatever the transport
protocol (``8080/TCP`` selects UDP 8080 too): the annotation's protocol is advisory.

Vantage consistency: a peer pod whose selection excludes a flow forwards none of its copies, so
for the vantage stage that peer does not see the flow (``peer_sees``); otherwise a flow between a
restricted pod and a whole-pod one would be dropped at both vantages.

Push-down (``expression``): the same restriction as a tcpdump expression for the pod's sidecar. It
is a superset of the agent's check (every ICMP is mirrored, the agent drops the unselected
errors), so pushing down never loses a frame the agent would forward.

Pure: bytes and ``PodInfo`` in, booleans and text out.
"""

from __future__ import annotations

import ipaddress
import struct

from nodeagent.pods.index import PodInfo
from nodeagent.verdict import Direction
from nodeagent.wire.headers import IPPROTO_ICMP, IPPROTO_ICMPV6, PacketMeta

_PORTED = frozenset({6, 17, 132})
_ICMP4_ERRORS = frozenset({3, 4, 5, 11, 12})
_ICMP6_ERRORS = frozenset({1, 2, 3, 4})
_PORTS = struct.Struct("!HH")


def selected(frame: memoryview | bytes, meta: PacketMeta, pod: PodInfo, direction: Direction) -> bool:
    """Whether this packet of ``pod`` belongs to one of its selected containers (``pod.ports``)."""
    if meta.l4 < 0:
        return False
    if meta.proto in _PORTED:
        if direction == Direction.EGRESS:
            return meta.sport in pod.ports
        return direction == Direction.INGRESS and meta.dport in pod.ports
    if meta.proto == IPPROTO_ICMP and meta.sport in _ICMP4_ERRORS:
        return _quoted_port(frame, meta.l4 + 8, 4, pod) in pod.ports
    if meta.proto == IPPROTO_ICMPV6 and meta.sport in _ICMP6_ERRORS:
        return _quoted_port(frame, meta.l4 + 8, 6, pod) in pod.ports
    return False


def peer_sees(meta: PacketMeta, peer: PodInfo) -> bool:
    """Whether ``peer`` (the other end, a monitored pod) forwards its copy of this flow's packets.

    Only TCP/UDP/SCTP are decided here (the vantage stage's flows); anything else is left as
    seen, which at worst leaves a copy to content dedup."""
    if not peer.ports or meta.l4 < 0 or meta.proto not in _PORTED:
        return True
    if meta.dst in peer.addrs:
        return meta.dport in peer.ports
    if meta.src in peer.addrs:
        return meta.sport in peer.ports
    return True


def _quoted_port(frame: memoryview | bytes, q: int, version: int, pod: PodInfo) -> int:
    """The pod-side port of the packet an ICMP error quotes (at offset ``q``), or -1."""
    try:
        if version == 4:
            ihl = (frame[q] & 0x0F) * 4
            proto, src, dst, ports = frame[q + 9], frame[q + 12 : q + 16], frame[q + 16 : q + 20], q + ihl
            offset = int.from_bytes(frame[q + 6 : q + 8]) & 0x1FFF
            if ihl < 20 or offset:
                return -1
        else:
            proto, src, dst, ports = frame[q + 6], frame[q + 8 : q + 24], frame[q + 24 : q + 40], q + 40
        if proto not in _PORTED:
            return -1
        sport, dport = _PORTS.unpack_from(frame, ports)
    except (IndexError, struct.error):
        return -1  # truncated quote: not attributable
    if bytes(src) in pod.addrs:
        return int(sport)
    if bytes(dst) in pod.addrs:
        return int(dport)
    return -1


def expression(pod: PodInfo) -> str | None:
    """The restriction as a tcpdump expression for the pod's sidecar, None when unrestricted."""
    if not pod.ports:
        return None
    sides = []
    for ip in pod.all_ips:
        family = "ip" if ipaddress.ip_address(ip).version == 4 else "ip6"
        for end in ("src", "dst"):
            ports = " or ".join(f"{end} port {p}" for p in pod.ports)
            sides.append(f"({family} {end} host {ip} and ({ports}))")
    return " or ".join([*sides, "icmp", "icmp6"])
