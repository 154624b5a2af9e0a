"""The collector (``nodeagent collect``): receives batches from many agents and hands them to a sensor.

Runs beside the sensor. Agents connect over TLS (``transport``: HELLO/WELCOME, BATCH/ACK); for each
batch the collector checks the stream's sequence (``streams.Streams``: a retransmitted batch is
acknowledged again but never delivered twice), decompresses it, delivers every record to each
configured sink, and only then acknowledges it. So an ACK means "written to the sinks" and the
agent's resume after a broken connection loses and duplicates nothing.

Sinks (``sinks``), none of which needs the sensor to change: rotating pcapng files with the pod
identity in interface descriptions (``wire.pcapng``, the project's one pcapng encoder), VXLAN to a
sensor (VNI kept unless configured,
outer source port from the symmetric flow hash), or a local veth pair a sensor sniffs.

Layout: ``sinks`` (file/socket adapters), ``server`` (TLS server and the per-connection
protocol), ``bounds`` (limits, client identities, bounded counts), ``web`` (``/status``,
``/metrics``), ``main`` (settings, wiring, CLI).
"""
