"""podmirror's node agent.

One agent runs on each node. It receives the VXLAN tunnels of the sidecars on its own node, accepts
only those sent by a known monitored pod with its VNI, decodes each inner frame, runs it through a
pure pipeline (vantage and dedup, filters, cutoff, slicing) and hands what is kept to the outputs
(pcap files, VXLAN to sensors, batched transport to a collector).

Layering (import-linter's ``layers`` contract in ``pyproject.toml``): ``cli`` -> ``app`` |
``collector`` | ``webhook`` | ``lab`` -> ``web`` | ``adapters`` -> ``pipeline`` -> ``stages`` |
``transport`` -> ``stats`` -> ``verdict`` -> ``pods`` -> ``settings`` | ``wire``. The core
(``wire``, ``pods``, ``verdict``, ``stats``, ``stages``, ``pipeline``, ``transport``) takes bytes and
``now`` and returns decisions; it never touches sockets, clocks or the Kubernetes API.

Invariant: every datagram the receiver reads is counted there as ``received`` (and per pod at the
pipeline's entry), and exactly once as its outcome: ``forwarded``, one drop reason, or ``held``
while it waits (bounded) for the other vantage's copy of its flow, so that ``received == forwarded
+ sum(drops) + held`` holds whenever ``Stats`` is read. Each term is counted where its event
happens, so a datagram lost on the way breaks the identity (docs/dedup.md, "The books").
"""
