"""The agent's side of resume: batches kept until acknowledged, bounded in bytes.

A *stream* is one agent process: a random 16-byte id and batch sequences 1, 2, 3... that only
grow. The agent keeps every batch until it is acknowledged (``Outbox``, bounded in bytes: the
oldest batches are dropped first and their packets counted). After a broken connection it
reconnects, reads WELCOME and retransmits exactly the batches above ``acked``.

The collector accepts a sequence at most ``streams.WINDOW`` above the last it delivered. After an
outage long enough to evict more batches than that, ``on_welcome`` renumbers the batches it still
holds (none of them was delivered: the collector holds nothing above ``acked``) so that the first
is ``acked + WINDOW``; the collector then counts ``WINDOW - 1`` lost batches, a lower bound, while
the agent counts every evicted packet itself (``queue_full``).
"""

from __future__ import annotations

import collections
from typing import NamedTuple

from nodeagent.transport.streams import WINDOW
from nodeagent.wire.errors import Malformed


class Pending(NamedTuple):
    seq: int
    raw: bytes
    """The batch's records, uncompressed (``encode_records``)."""
    packets: int


class Outbox:
    """The agent's side: batches kept until acknowledged, bounded by ``max_bytes`` (raw bytes).

    ``push`` appends a batch and evicts the oldest ones beyond the bound (returns how many packets
    were evicted). ``next_batch`` yields what to send next on the current connection; ``restart``
    (new connection) rewinds to the first unacknowledged batch; ``on_welcome`` and ``on_ack``
    release acknowledged batches and return their packet counts.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._q: collections.deque[Pending] = collections.deque()
        self._next = 0
        """Index in ``_q`` of the next batch to send on this connection."""
        self.next_seq = 1
        self.acked = 0
        self.nbytes = 0
        self.packets = 0

    def __len__(self) -> int:
        return len(self._q)

    @property
    def unsent(self) -> int:
        return len(self._q) - self._next

    def push(self, raw: bytes, count: int) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self._q.append(Pending(seq, raw, count))
        self.nbytes += len(raw)
        self.packets += count
        evicted = 0
        while self.nbytes > self.max_bytes and len(self._q) > 1:
            evicted += self._popleft().packets
        return evicted

    def _popleft(self) -> Pending:
        item = self._q.popleft()
        self.nbytes -= len(item.raw)
        self.packets -= item.packets
        if self._next:
            self._next -= 1
        return item

    def next_batch(self) -> Pending | None:
        if self._next >= len(self._q):
            return None
        self._next += 1
        return self._q[self._next - 1]

    def restart(self) -> None:
        self._next = 0

    def on_ack(self, seq: int) -> int:
        if seq >= self.next_seq:
            raise Malformed(f"ack {seq} for a batch never sent")
        self.acked = max(self.acked, seq)
        delivered = 0
        while self._q and self._q[0].seq <= seq:
            delivered += self._popleft().packets
        return delivered

    def on_welcome(self, acked: int) -> int:
        """A new connection: release what the collector already holds, resend the rest."""
        delivered = self.on_ack(min(acked, self.next_seq - 1))
        first = self._q[0].seq if self._q else self.next_seq
        if first - acked > WINDOW:
            shift = first - acked - WINDOW
            self._q = collections.deque(item._replace(seq=item.seq - shift) for item in self._q)
            self.next_seq -= shift
            self.acked = acked
        self.restart()
        return delivered

    def drain(self) -> int:
        """Drop everything (shutdown); returns the packets dropped."""
        dropped = self.packets
        self._q.clear()
        self._next = self.nbytes = self.packets = 0
        return dropped
