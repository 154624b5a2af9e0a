"""sidecar_lite: mirror one pod's interface to the node agent on the same node.

Model: the sidecar runs in the pod's network namespace and turns every frame that enters or leaves
the pod's interface into one VXLAN datagram (RFC 7348, VNI = the pod's identity) sent to the node
agent over UDP (default port 14789).

Two data paths, one contract:

- **kernel** (CAP_NET_ADMIN): a VXLAN device toward the agent, a clsact qdisc on the interface and
  one cls_bpf filter per direction whose action is ``mirred mirror`` into the VXLAN device. No Python
  runs per packet; the process only verifies and repairs that state every few seconds.
- **sniff** (CAP_NET_RAW only): an AF_PACKET socket on the interface, a classic-BPF socket filter,
  and a blocking ``recvfrom_into`` / ``sendto`` loop over one preallocated buffer.

Invariants:

- the tunnel's own packets (every IPv4 UDP datagram to the agent's address, which includes non-first
  fragments) are never mirrored: one classic-BPF prefix (``bpf.tunnel_exclusion``) guards both paths;
- every other frame is mirrored exactly once, unless a program pushed by the agent skips it;
- on SIGTERM/SIGINT the sidecar removes exactly what it created and exits 0.

Layout: pure modules (``identity``, ``vxlan``, ``settings``, ``bpf``, ``plan``, ``rules.parse``)
and thin adapters (``kernel``: the only pyroute2 importer; ``sniffer``; ``rules.Poller``;
``discovery``; ``discovery_label``: the only kubernetes importer, loaded lazily).
"""
