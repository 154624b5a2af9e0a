"""The pipeline's decisions, one module each, in the order ``pipeline.Pipeline`` runs them.

- ``containers``: a pod whose monitored containers were selected keeps only their ports
  (``OTHER_CONTAINER``);
- ``vantage``: a connection seen from two pods is kept from one (``OTHER_VANTAGE``), only in favour
  of a copy that exists (a bounded hold waits for it), a connection between two nodes' monitored
  pods from one node (``NOT_OWNER``); DNAT'd tuples linked by content;
- ``filters``: ordered include/exclude rules (``FILTERED``) with their tcpdump expressions
  (``bpfexpr``: libpcap's classic BPF translated into Python once, at start-up); ``pushdown``
  turns the rules that depend only on a pod's own packets into the program its sidecar installs;
- ``dedup`` with ``digest``: the other end's pod already forwarded this content: TCP byte ranges,
  field digests for the rest (``DUPLICATE``);
- ``cutoff``: encrypted flows past their budget, cut to headers or dropped (``CUT_OFF``);
- ``flowtable``: the bounded, expiring table the stateful stages keep their flows in.

Every stage is pure: it takes a decoded packet (``wire.headers.PacketMeta`` and the frame), the
pods involved (``pods.index.PodInfo``) and ``now``, and returns a decision. No sockets, no clock.
"""
