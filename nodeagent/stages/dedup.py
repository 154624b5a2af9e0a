"""Per-packet deduplication: drop another vantage's copy of a packet already forwarded.

Model: ``DedupWindow`` remembers, for ``window`` seconds, the digest (``digest.compute``) of every
packet it let through and the vantage (the sender pod's packed address) it came from.
``check_and_add(digest, vantage, now)`` answers True ("duplicate") only when the same digest was
seen from a *different* vantage within the window. The same digest from the *same* vantage is a
real retransmission (the pod sent or received those bytes again): it is forwarded, however soon,
and refreshes the entry, so the other vantage's copy of the retransmission is still a duplicate.

Why the window defaults to 50 ms (``DedupSettings.window``): both copies cross one node; the gap
between them is the kernel path from one pod's eth0 to the other's (microseconds) plus the
sidecars' scheduling (kernel mode: none; sniff mode: up to a few ms on a busy node). Both copies
then share the agent's socket queue, which delays them alike. 50 ms is ten times the few ms
expected in sniff mode (not yet measured in the lab), yet far below TCP's minimum RTO (200 ms
on Linux), and it keeps the table small: at 300k packets/s it holds about 15k digests.

Bounded: at most ``capacity`` digests; when full the oldest is evicted first and counted in
``evictions`` (an evicted digest's late copy is forwarded: a duplicate reaches the sensor, nothing
is lost). Pure: ``now`` comes from the caller.
"""

from __future__ import annotations

from nodeagent.stages.flowtable import FlowTable


class DedupWindow:
    def __init__(self, *, window: float, capacity: int) -> None:
        self._table: FlowTable[bytes] = FlowTable(capacity=capacity, idle=window)

    @property
    def evictions(self) -> int:
        return self._table.evictions

    def check_and_add(self, digest: int, vantage: bytes, now: float) -> bool:
        """True if ``digest`` was seen from another vantage in the window (drop this copy)."""
        seen = self._table.get(digest, now)
        if seen is not None and seen != vantage:
            return True
        self._table.put(digest, vantage, now)
        return False

    def __len__(self) -> int:
        return len(self._table)
