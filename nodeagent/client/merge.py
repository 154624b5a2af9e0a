"""Several agents' live pcapng streams -> one pcapng in timestamp order (pure: ``now`` passed in).

Live streams cannot be merged by waiting for every stream's next packet (a quiet node would stall
the output forever). Model: every packet is held ``delay`` seconds after it *arrived*, in a heap
ordered by its capture timestamp; the heap's head leaves once it has been held long enough. So the
output is in timestamp order whenever a packet reaches the client less than ``delay`` after any
packet with a later timestamp from another node (clock skew between nodes included). A packet that
arrives later still is written at once, after later ones, and counted in ``late``. ``drain()`` at
the end empties the heap in order.

Interfaces: one per pod in the output, whichever agent's stream it came from (a pod's packets can
come from two nodes when dedup kept the peer's copy); statistics are summed per pod over the
streams' last Interface Statistics Blocks.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

from nodeagent.wire import pcapng


class Item(NamedTuple):
    ts_ns: int
    pod: str
    description: str
    frame: bytes
    wire_len: int
    flags: int
    comment: str


class Merger:
    def __init__(self, delay: float = 0.5) -> None:
        self.delay = delay
        self._heap: list[tuple[int, int, float, Item]] = []
        self._seq = 0
        self._last = -1
        self.late = 0

    def push(self, item: Item, now: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (item.ts_ns, self._seq, now, item))

    def ready(self, now: float) -> list[Item]:
        out = []
        heap = self._heap
        while heap and heap[0][2] + self.delay <= now:
            out.append(self._pop())
        return out

    def drain(self) -> list[Item]:
        return [self._pop() for _ in range(len(self._heap))]

    def _pop(self) -> Item:
        item = heapq.heappop(self._heap)[3]
        if item.ts_ns < self._last:
            self.late += 1
        self._last = max(self._last, item.ts_ns)
        return item

    def __len__(self) -> int:
        return len(self._heap)


class Output:
    """The merged pcapng: section header, then interfaces and packets as items come, then the
    statistics of every pod (``finish``)."""

    def __init__(self, application: str = "podmirror capture") -> None:
        self._writer = pcapng.Writer()
        self.application = application
        self.packets = 0

    def start(self) -> bytes:
        return self._writer.start(self.application)

    def items(self, items: list[Item]) -> bytes:
        parts = []
        for item in items:
            parts.append(self._writer.encode(item.pod, item.description, item.ts_ns, item.frame,
                                             item.wire_len, item.flags, item.comment))
        self.packets += len(items)
        return b"".join(parts)

    def finish(self, stats: dict[tuple[str, str], pcapng.Stats], now_ns: int, start_ns: int,
               note: str = "") -> bytes:
        """``stats``: (stream, pod) -> that stream's last statistics of the pod."""
        per_pod: dict[str, tuple[int, int]] = {}
        for (_, pod), s in stats.items():
            received, dropped = per_pod.get(pod, (0, 0))
            per_pod[pod] = (received + (s.received or 0), dropped + (s.dropped or 0))
        parts = []
        for pod, (received, dropped) in sorted(per_pod.items()):
            idx, head = self._writer.describe(pod, f"pod {pod}")
            comment = f"{pod}: {received} packets offered by the agents, {dropped} dropped before this reader"
            parts += [head, pcapng.statistics(idx, now_ns, start_ns=start_ns, received=received,
                                              dropped=dropped, comment=comment + note)]
        return b"".join(parts)
