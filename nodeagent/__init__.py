"""podmirror's node agent.

One agent runs on each node. It receives the VXLAN tunnels of the sidecars on its own node, accepts
only those sent by a known monitored pod with its VNI, decodes each inner frame, runs it through a
pure pipeline (dedup, filters, slicing) and hands what is kept to the outputs (pcap files, VXLAN to
sensors, batched transport to a collector).

Layering (import-linter's ``layers`` contract in ``pyproject.toml``): ``cli`` -> ``app`` |
``collector`` | ``webhook`` | ``lab`` -> ``web`` | ``adapters`` -> ``pipeline`` -> ``stages`` |
``transport`` -> ``stats`` -> ``verdict`` -> ``pods`` -> ``settings`` | ``wire``. The core
(``wire``, ``pods``, ``verdict``, ``stats``, ``stages``, ``pipeline``, ``transport``) takes bytes and
``now`` and returns decisions; it never touches sockets, clocks or the Kubernetes API.

Invariant: every datagram the receiver hands to the pipeline is counted exactly once as
``received``, and exactly once either as ``forwarded`` or under one drop reason, so that
``received == forwarded + sum(drops)`` holds whenever ``Stats`` is read.
"""
