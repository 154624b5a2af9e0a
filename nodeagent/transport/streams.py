"""The collector's side of resume: the last delivered sequence per stream.

The collector (``Streams``) delivers a sequence only if it is above the last one delivered for that
stream, so a retransmission after a lost ACK is never delivered twice. A sequence jump tells the
collector how many batches the agent dropped. If the collector *process* restarts, it forgets its
streams and may deliver again the batches whose ACK was lost (at most what was in flight):
at-least-once across collector restarts, exactly-once across connection breaks.

Who may touch a stream: the key is opaque here; the collector (``collector.server``) makes it from
the client certificate's identity *and* the stream id of the HELLO, so a peer presenting another
certificate can never name, advance or black out that agent's stream, even knowing its id.

The sequence window: a batch may be at most ``WINDOW`` above the last delivered one (a stream new
to the collector starts from 0), else ``Malformed`` and the connection is closed. Without it one
forged batch numbered 2**64-1 made every later batch of the stream look like a retransmission: the
agent's packets were acknowledged and never delivered. The agent keeps within the window by
renumbering what it holds when it resumes (``outbox.Outbox.on_welcome``).
"""

from __future__ import annotations

import collections
from typing import NamedTuple

from nodeagent.wire.errors import Malformed

WINDOW = 1 << 20
"""Largest sequence step accepted: 1,048,576 batches (the agent dropping batches for 35 minutes at
500 batches/s, its rate at 1 Gbit/s, before it could resume)."""


class StreamState(NamedTuple):
    last: int
    """Highest sequence delivered."""
    lost: int
    """Batches the agent skipped (dropped before sending)."""


class Streams:
    """The collector's side: the last delivered sequence per stream, bounded (oldest forgotten)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._s: collections.OrderedDict[bytes, StreamState] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._s)

    def hello(self, stream: bytes) -> int:
        state = self._s.get(stream)
        if state is None:
            state = self._s[stream] = StreamState(0, 0)
            while len(self._s) > self.capacity:
                self._s.popitem(last=False)
        self._s.move_to_end(stream)
        return state.last

    def accept(self, stream: bytes, seq: int) -> tuple[bool, int]:
        """-> (deliver this batch?, batches skipped just before it). Malformed beyond the window."""
        state = self._s.get(stream, StreamState(0, 0))
        if seq <= state.last:
            return False, 0
        if seq - state.last > WINDOW:
            raise Malformed(f"batch: sequence {seq} is more than {WINDOW} above {state.last}")
        # A stream new to this collector (or to this process) starts wherever the agent resumes.
        gap = seq - state.last - 1 if state.last else 0
        self._s[stream] = StreamState(seq, state.lost + gap)
        return True, gap

    def get(self, stream: bytes) -> StreamState | None:
        return self._s.get(stream)
