"""The batched transport to remote collectors, and which sensor each flow goes to (pure, both ends).

- ``affinity``: a symmetric flow hash on a consistent-hash ring (VXLAN sensors and collectors);
- ``batcher``: groups forwarded packets into batches (size or age);
- ``records``: a batch's packets and their encoding; ``compression``: one zstd stream per
  connection;
- ``messages``: HELLO / WELCOME / BATCH / ACK and their framing;
- ``outbox`` (agent) and ``streams`` (collector): resume after a broken connection, exactly once.

The adapters are ``adapters/transport_out.py`` with ``adapters/collector_link.py`` (agent) and
``collector/server.py``. The protocol is described in ``docs/transport.md``.
"""
