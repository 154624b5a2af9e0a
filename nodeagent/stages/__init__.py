"""The pipeline's decisions, one module each, in the order ``pipeline.Pipeline`` runs them.

- ``containers``: a pod whose monitored containers were selected keeps only their ports
  (``OTHER_CONTAINER``);
- ``vantage``: a flow seen from two vantages is kept from one (``OTHER_VANTAGE``), a flow between
  two nodes' monitored pods from one node (``NOT_OWNER``);
- ``filters``: ordered include/exclude rules (``FILTERED``) with their tcpdump expressions
  (``bpfexpr``: libpcap's classic BPF translated into Python once, at start-up); ``pushdown``
  turns the rules that depend only on a pod's own packets into the program its sidecar installs;
- ``dedup`` with ``digest``: another vantage's copy of a packet already forwarded (``DUPLICATE``);
- ``cutoff``: encrypted flows past their budget, cut to headers or dropped (``CUT_OFF``);
- ``flowtable``: the bounded, expiring table the stateful stages keep their flows in.

Every stage is pure: it takes a decoded packet (``wire.headers.PacketMeta`` and the frame), the
pods involved (``pods.index.PodInfo``) and ``now``, and returns a decision. No sockets, no clock.
"""
