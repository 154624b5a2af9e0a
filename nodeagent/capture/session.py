"""One reader's capture: a bounded queue of ``Record`` values between the packet path and the reader.

``offer(record)`` runs on the packet path (loop thread) and never waits: when the queue holds
``queue_limit`` records or ``queue_bytes`` bytes of frames, the record is dropped and counted for
its pod. The reader awaits ``batch()`` (up to ``limit`` records; ``[]`` once the session is closed
and drained) or iterates ``async for record in session``. A relay (a supervisor collecting several
workers' taps) feeds a session of its own with ``offer`` and adds the losses upstream of it with
``count_dropped``: the reader's statistics then cover the whole path.

Invariant, per pod and in total: ``received == delivered + dropped + queued``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from typing import Any

from nodeagent.capture.filter import CaptureFilter
from nodeagent.transport.records import Record

QUEUE_LIMIT = 10_000
"""Records a reader may lag behind by default: about 1 s of a busy node's forwarded packets."""
QUEUE_BYTES = 32 << 20
"""Bytes of frames a reader may lag behind by default (the memory a stalled reader can hold)."""
MAX_PODS = 4096
"""Per-pod counters kept per session (bounded whatever the pod churn); beyond, counted under "-"."""


class TooManySessions(RuntimeError):
    """``open_capture`` refused: the host holds its maximum of sessions."""


class Session:
    def __init__(self, flt: CaptureFilter, queue_limit: int = QUEUE_LIMIT,
                 queue_bytes: int = QUEUE_BYTES, ident: int = 0) -> None:
        if queue_limit <= 0 or queue_bytes <= 0:
            raise ValueError("queue_limit and queue_bytes must be > 0")
        self.filter = flt
        self.ident = ident
        self.queue_limit, self.queue_bytes = queue_limit, queue_bytes
        self.started_ns = time.time_ns()
        self._queue: collections.deque[Record] = collections.deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self.closed = False
        self.received: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.delivered = 0

    # ---- packet path (never waits) ----------------------------------------------------------
    def offer(self, record: Record) -> bool:
        """Queue ``record`` for the reader; False (counted as dropped) when the queue is full."""
        pod = self._pod_key(record.pod)
        self.received[pod] = self.received.get(pod, 0) + 1
        size = len(record.frame)
        if self.closed or len(self._queue) >= self.queue_limit or self._bytes + size > self.queue_bytes:
            self.dropped[pod] = self.dropped.get(pod, 0) + 1
            return False
        if not self._queue:
            self._wake.set()
        self._queue.append(record)
        self._bytes += size
        return True

    def count_dropped(self, pod: str, count: int) -> None:
        """Records lost before this session saw them (a relay's upstream queue): received and dropped."""
        pod = self._pod_key(pod)
        self.received[pod] = self.received.get(pod, 0) + count
        self.dropped[pod] = self.dropped.get(pod, 0) + count

    def _pod_key(self, pod: str) -> str:
        if pod in self.received or len(self.received) < MAX_PODS:
            return pod
        return "-"

    def close(self) -> None:
        """No more records are queued; the reader gets what is queued, then ``[]``."""
        self.closed = True
        self._wake.set()

    # ---- reader side ------------------------------------------------------------------------
    async def batch(self, limit: int = 1024) -> list[Record]:
        """Wait for records and take up to ``limit`` of them; ``[]`` when closed and drained."""
        while not self._queue:
            if self.closed:
                return []
            self._wake.clear()
            await self._wake.wait()
        queue, out = self._queue, []
        for _ in range(min(limit, len(queue))):
            record = queue.popleft()
            self._bytes -= len(record.frame)
            out.append(record)
        self.delivered += len(out)
        return out

    async def __aiter__(self) -> AsyncIterator[Record]:
        while batch := await self.batch():
            for record in batch:
                yield record

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def state(self) -> dict[str, Any]:
        return {"id": self.ident, "filter": self.filter.as_query(), "received": sum(self.received.values()),
                "delivered": self.delivered, "dropped": self.total_dropped, "queued": self.queued,
                "queued_bytes": self._bytes}
