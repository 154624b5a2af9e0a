"""Adapters: thin I/O around the pure core, one kind of I/O each.

``receiver`` (tunnel socket -> pipeline), ``outputs`` (the ``Output`` protocol and the fan-out),
``pcap_out`` (rotating files), ``vxlan_out`` (re-encapsulation to sensors). Each holds no packet
logic: decisions come from ``pipeline`` and ``wire``.
"""
