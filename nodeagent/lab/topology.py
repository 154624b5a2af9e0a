"""A Kubernetes-like cluster made of network namespaces: nodes, routed pods, an agent, remote hosts.

Model (addresses only ever exist inside the lab's namespaces)::

    pod ns (eth0 10.N.0.P/32) ──veth── node ns N ──uplink── fabric ns ──── host ns (eth0 10.254.H.2)
    agent ns (eth0 10.N.0.2/32) ─veth─┘   (router)          (router)      e.g. the remote sensor

- A node routes like a CNI: each pod's eth0 has a /32 (and an IPv6 /128) and a default route via
  the node's gateway address 10.N.0.1 (fd00:N::1), which sits on every node-side veth; the node has
  a /32 route per pod. Pods on one node talk through the node, as with Calico or Cilium.
- The node agent is a pod-like namespace on its node (10.N.0.2): pods reach it through the node.
- Nodes and hosts hang off one ``fabric`` router namespace; a node's ``uplink`` veth is what
  "crossing the network" means, and its counters are read from /sys/class/net.
- The node-side veths and the agent's eth0 get ``node_mtu`` (default 1600): a VXLAN copy of a
  full-size frame (1500 + 50 bytes) crosses them unfragmented when the sidecar also raises its
  route MTU. The pods' own eth0 keep 1500, as the CNI set them. ``node_mtu=1500`` shows fragments.
- VNI of a pod: the low 24 bits of its IPv4 address (``sidecar --vni auto``), unique per node.

Invariant: every namespace is named ``<tag><short>`` and is removed by ``close()`` (see netns).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from pathlib import Path

from nodeagent.lab.netns import Namespaces

TUNNEL_PORT = 14789
STATUS_PORT = 9477
PUSHDOWN_PORT = 9476
SENSOR_PORT = 4789


def vni_of(ip: str) -> int:
    """The pod's default VNI: low 24 bits of its IPv4 address (the ``--vni auto`` contract)."""
    return int(ipaddress.IPv4Address(ip)) & 0xFFFFFF


@dataclasses.dataclass
class Node:
    index: int
    ns: str
    gateway: str
    gateway6: str
    uplink_ip: str
    pods: list[Pod] = dataclasses.field(default_factory=list)
    agent: Pod | None = None


@dataclasses.dataclass
class Pod:
    name: str
    namespace: str
    """Kubernetes namespace of the pod (the agent's ``--sender`` NAMESPACE/NAME)."""
    ns: str
    node: Node
    ip: str
    ip6: str
    host_veth: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def vni(self) -> int:
        return vni_of(self.ip)


@dataclasses.dataclass
class Host:
    name: str
    ns: str
    ip: str
    ip6: str


class Lab:
    """Build with ``add_node``/``add_pod``/``add_host``; processes via ``Namespaces.spawn``; ``close()``."""

    def __init__(self, prefix: str = "pmlab", *, node_mtu: int = 1600, workdir: Path | None = None) -> None:
        self.tag = f"{prefix}-{secrets.token_hex(3)}-"
        self.node_mtu = node_mtu
        self.ns = Namespaces(self.tag)
        self.workdir = workdir
        self.nodes: list[Node] = []
        self.hosts: list[Host] = []
        self.fabric = self.ns.create("fabric")
        self._forwarding(self.fabric)

    # -- building -------------------------------------------------------------------------------
    def add_node(self) -> Node:
        n = len(self.nodes) + 1
        ns = self.ns.create(f"node{n}")
        self._forwarding(ns)
        node = Node(n, ns, f"10.{n}.0.1", f"fd00:{n}::1", f"10.255.{n}.2")
        self._veth(self.fabric, f"n{n}", ns, "uplink", mtu=self.node_mtu, inner_mtu=self.node_mtu)
        self._addr(self.fabric, f"n{n}", f"10.255.{n}.1/24", f"fd00:ff:{n}::1/64")
        self._addr(ns, "uplink", f"10.255.{n}.2/24", f"fd00:ff:{n}::2/64")
        self.ns.ip(ns, "route", "add", "default", "via", f"10.255.{n}.1")
        self.ns.ip(ns, "-6", "route", "add", "default", "via", f"fd00:ff:{n}::1")
        self.ns.ip(self.fabric, "route", "add", f"10.{n}.0.0/16", "via", f"10.255.{n}.2")
        self.ns.ip(self.fabric, "-6", "route", "add", f"fd00:{n}::/64", "via", f"fd00:ff:{n}::2")
        self.nodes.append(node)
        return node

    def add_pod(self, node: Node, name: str, *, namespace: str = "default", host: int | None = None) -> Pod:
        """A pod on ``node`` with eth0 10.N.0.<host>/32 (host defaults to 10, 11, ... in order)."""
        host = host if host is not None else 10 + len(node.pods)
        pod = self._routed(node, name, namespace, host, mtu=1500)
        node.pods.append(pod)
        return pod

    def add_agent(self, node: Node) -> Pod:
        """The node agent's namespace (10.N.0.2), reached from the pods through the node."""
        node.agent = self._routed(node, "agent", "podmirror", 2, mtu=self.node_mtu)
        return node.agent

    def add_host(self, name: str) -> Host:
        """A host outside every node, behind the fabric (a remote sensor, an external server)."""
        h = len(self.hosts) + 1
        ns = self.ns.create(name)
        self._veth(self.fabric, f"h{h}", ns, "eth0", mtu=self.node_mtu, inner_mtu=self.node_mtu)
        self._addr(self.fabric, f"h{h}", f"10.254.{h}.1/24", f"fd00:fe:{h}::1/64")
        host = Host(name, ns, f"10.254.{h}.2", f"fd00:fe:{h}::2")
        self._addr(ns, "eth0", f"{host.ip}/24", f"{host.ip6}/64")
        self.ns.ip(ns, "route", "add", "default", "via", f"10.254.{h}.1")
        self.ns.ip(ns, "-6", "route", "add", "default", "via", f"fd00:fe:{h}::1")
        self.hosts.append(host)
        return host

    def add_cluster_ip(self, node: Node, vip: str, port: int, backend: Pod, backend_port: int) -> None:
        """A Service ClusterIP as kube-proxy's nftables mode does it: DNAT in the node namespace, TCP
        and UDP ``vip:port`` to ``backend:backend_port``; an IPv6 ``vip`` leads to the pod's IPv6."""
        family, target = ("ip6", f"[{backend.ip6}]") if ":" in vip else ("ip", backend.ip)
        match = "ip6 daddr" if family == "ip6" else "ip daddr"
        rules = (
            f"table {family} podmirror_lab {{\n"
            " chain prerouting { type nat hook prerouting priority dstnat; }\n"
            "}\n"
        )
        for proto in ("tcp", "udp"):
            rules += (f"add rule {family} podmirror_lab prerouting {match} {vip} {proto} dport {port} "
                      f"dnat to {target}:{backend_port}\n")
        self.ns.exec(node.ns, ["nft", "-f", "-"], input=rules)

    def drop_once_per_connection(self, pod: Pod, port: int, min_length: int = 100) -> None:
        """In ``pod``, drop the first TCP segment to ``port`` longer than ``min_length`` bytes of each
        connection, once (conntrack mark), after the pod's sidecar and tcpdump saw it (both tap the
        interface before netfilter): the sender retransmits it, a real retransmission."""
        rules = (
            "table inet podmirror_retx {\n"
            " chain input { type filter hook input priority 0;\n"
            f"  tcp dport {port} ct mark 0 meta length > {min_length} ct mark set 1 counter drop\n"
            " }\n"
            "}\n"
        )
        self.ns.exec(pod.ns, ["nft", "-f", "-"], input=rules)

    def dropped_once(self, pod: Pod) -> int:
        """Segments ``drop_once_per_connection`` dropped in ``pod`` so far."""
        out = self.ns.exec(pod.ns, ["nft", "list", "table", "inet", "podmirror_retx"]).stdout
        for line in out.splitlines():
            if "counter packets" in line:
                return int(line.split("counter packets", 1)[1].split()[0])
        return 0

    def close(self) -> None:
        self.ns.close()

    # -- reading --------------------------------------------------------------------------------
    def counters(self, ns: str, dev: str) -> dict[str, int]:
        """rx/tx bytes and packets of ``dev`` in ``ns`` (the kernel's veth counters)."""
        out = self.ns.exec(ns, ["sh", "-c", f"cd /sys/class/net/{dev}/statistics && "
                                "grep . rx_bytes tx_bytes rx_packets tx_packets"]).stdout
        return {k: int(v) for k, v in (line.split(":") for line in out.split())}

    def ip_stats(self, ns: str) -> dict[str, int]:
        """The namespace's IPv4 MIB (``/proc/net/snmp`` ``Ip:``), e.g. ``ReasmOKs``, ``FragCreates``."""
        return self.ns.snmp(ns)["Ip"]

    def tunnel_tx_packets(self, pod: Pod) -> int | None:
        """Packets the pod's kernel-mode VXLAN device(s) sent (None: no such device, e.g. sniff mode)."""
        devs = [line.split(":")[1].strip().split("@")[0]
                for line in self.ns.ip(pod.ns, "-o", "link", "show", "type", "vxlan").splitlines()]
        if not devs:
            return None
        return sum(self.counters(pod.ns, dev)["tx_packets"] for dev in devs)

    def mac(self, ns: str, dev: str) -> str:
        return self.ns.exec(ns, ["cat", f"/sys/class/net/{dev}/address"]).stdout.strip()

    # -- helpers --------------------------------------------------------------------------------
    def _routed(self, node: Node, name: str, namespace: str, host: int, *, mtu: int) -> Pod:
        ns = self.ns.create(f"n{node.index}-{name}")
        veth = f"v{host}"
        self._veth(node.ns, veth, ns, "eth0", mtu=self.node_mtu, inner_mtu=mtu)
        ip, ip6 = f"10.{node.index}.0.{host}", f"fd00:{node.index}::{host:x}"
        self._addr(ns, "eth0", f"{ip}/32", f"{ip6}/128")
        self.ns.ip(ns, "route", "add", node.gateway, "dev", "eth0", "scope", "link")
        self.ns.ip(ns, "route", "add", "default", "via", node.gateway, "dev", "eth0")
        self.ns.ip(ns, "-6", "route", "add", node.gateway6, "dev", "eth0")
        self.ns.ip(ns, "-6", "route", "add", "default", "via", node.gateway6, "dev", "eth0")
        self._addr(node.ns, veth, f"{node.gateway}/32", f"{node.gateway6}/128")
        self.ns.ip(node.ns, "route", "add", f"{ip}/32", "dev", veth)
        self.ns.ip(node.ns, "-6", "route", "add", f"{ip6}/128", "dev", veth)
        return Pod(name, namespace, ns, node, ip, ip6, veth)

    def _veth(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str, *, mtu: int, inner_mtu: int) -> None:
        self.ns.ip(ns_a, "link", "add", dev_a, "mtu", str(mtu), "type", "veth",
                   "peer", "name", dev_b, "mtu", str(inner_mtu), "netns", ns_b)
        self.ns.ip(ns_a, "link", "set", dev_a, "up")
        self.ns.ip(ns_b, "link", "set", dev_b, "up")

    def _addr(self, ns: str, dev: str, v4: str, v6: str) -> None:
        self.ns.ip(ns, "addr", "add", v4, "dev", dev)
        self.ns.ip(ns, "-6", "addr", "add", v6, "dev", dev, "nodad")

    def _forwarding(self, ns: str) -> None:
        self.ns.sysctl(ns, {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
