"""Capture relay: a subscriber gets the forwarded packets of every worker that match its filter.

For a live capture (``GET /v1/capture``, pcapng out): ``Relay.subscribe(CaptureFilter(...))`` returns a
``Subscription``, an async iterator of ``transport.records.Record`` (ts_ns, wire_len, pod, vni,
direction, frame) with a bounded queue; ``close()`` ends it. The relay hides where the workers are:

- one worker in this process: a ``Tap`` output in its ``Fanout`` calls ``Relay.publish`` directly;
- N worker processes: the ``WorkerPool`` sends the filter to every worker (and to a restarted
  one), each worker's ``Tap`` sends matching records over a datagram socketpair (one record per
  message, never blocking: a full socket buffer is a drop counted by the worker as
  ``capture.dropped``), and the pool hands them to ``publish``.

The filter runs in the workers, so packets nobody asked for never leave them; the ``Tap`` is in the
fanout only while a subscription exists (no cost per packet otherwise). A record is taken after
normalization (what the outputs receive) and timestamped when offered, like the pcap output.

Bounded: each subscription's queue holds ``queue_size`` records; when the subscriber is slower,
new records are dropped and counted (``Subscription.dropped``), and the workers never wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from nodeagent.stages import bpfexpr
from nodeagent.transport.records import Record
from nodeagent.verdict import Forward

QUEUE_SIZE = 4096
"""Records buffered per subscriber by default (at most ~256 MB of 64 KB frames, usually far less)."""
MAX_SUBSCRIPTIONS = 16
"""Concurrent captures per node: each costs every worker a filter per forwarded packet."""


@dataclasses.dataclass(frozen=True)
class CaptureFilter:
    """Which forwarded packets a subscriber wants. Every condition given must hold."""

    pods: tuple[str, ...] = ()
    """``namespace/name`` of the sender pods; empty: every pod."""
    bpf: str | None = None
    """A tcpdump expression over the Ethernet frame (compiled once, in each worker)."""
    snaplen: int = 262144
    """Bytes of each frame kept (the record keeps its original ``wire_len``)."""

    def to_json(self) -> dict[str, Any]:
        return {"pods": list(self.pods), "bpf": self.bpf, "snaplen": self.snaplen}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaptureFilter:
        return cls(pods=tuple(data.get("pods") or ()), bpf=data.get("bpf"),
                   snaplen=int(data.get("snaplen", 262144)))

    def compile(self) -> Callable[[Forward], bool]:
        """The predicate the workers run per forwarded packet (raises ``bpfexpr.BpfError``)."""
        pods = frozenset(self.pods)
        match = bpfexpr.to_function(bpfexpr.compile_expression(self.bpf)) if self.bpf else None
        return lambda fwd: (not pods or fwd.pod.key in pods) and (match is None or bool(match(fwd.frame)))


class Subscription:
    """Records for one subscriber; iterate with ``async for``; ``close()`` to unsubscribe."""

    def __init__(self, sub_id: int, capture: CaptureFilter, queue_size: int,
                 on_close: Callable[[int], None]) -> None:
        self.id, self.filter = sub_id, capture
        self.queue: asyncio.Queue[Record | None] = asyncio.Queue(queue_size)
        self.received = self.dropped = 0
        """Records queued for the subscriber, and records dropped because its queue was full."""
        self._on_close = on_close
        self.closed = False

    def put(self, record: Record) -> None:
        try:
            self.queue.put_nowait(record)
            self.received += 1
        except asyncio.QueueFull:
            self.dropped += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close(self.id)
            try:
                self.queue.put_nowait(None)  # wake an iterator waiting on an empty queue
            except asyncio.QueueFull:
                pass

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._records()

    async def _records(self) -> AsyncIterator[Record]:
        while not self.closed or not self.queue.empty():
            record = await self.queue.get()
            if record is None:
                return
            yield record


class Relay:
    """Subscriptions by id; ``backend`` installs and removes filters where the packets are."""

    def __init__(self) -> None:
        self.subscriptions: dict[int, Subscription] = {}
        self._next = 1
        self._install: Callable[[int, CaptureFilter], None] | None = None
        self._remove: Callable[[int], None] | None = None

    def attach(self, install: Callable[[int, CaptureFilter], None], remove: Callable[[int], None]) -> None:
        """Where filters go: the in-process worker's tap, or the pool's workers."""
        self._install, self._remove = install, remove

    def subscribe(self, capture: CaptureFilter, queue_size: int = QUEUE_SIZE) -> Subscription:
        """A new subscription; ``bpfexpr.BpfError`` for a bad expression, ``RuntimeError`` when
        ``MAX_SUBSCRIPTIONS`` are open or the agent is not running."""
        if self._install is None:
            raise RuntimeError("the agent is not running")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise RuntimeError(f"{MAX_SUBSCRIPTIONS} captures are already running")
        capture.compile()  # a bad expression fails here, for the caller, not in the workers
        sub = Subscription(self._next, capture, queue_size, self._unsubscribe)
        self._next += 1
        self.subscriptions[sub.id] = sub
        self._install(sub.id, capture)
        return sub

    def publish(self, sub_id: int, record: Record) -> None:
        sub = self.subscriptions.get(sub_id)
        if sub is not None:
            sub.put(record)

    def _unsubscribe(self, sub_id: int) -> None:
        if self.subscriptions.pop(sub_id, None) is not None and self._remove is not None:
            self._remove(sub_id)

    def state(self) -> dict[str, Any]:
        return {"subscriptions": len(self.subscriptions),
                "received": sum(s.received for s in self.subscriptions.values()),
                "dropped": sum(s.dropped for s in self.subscriptions.values())}


class Tap:
    """The worker side: an ``Output`` that emits a ``Record`` per forwarded packet matching a filter."""

    name = "capture"

    def __init__(self, emit: Callable[[int, Record], bool]) -> None:
        self._emit = emit
        self._filters: dict[int, tuple[Callable[[Forward], bool], int]] = {}
        self.records = self.dropped = 0

    def subscribe(self, sub_id: int, capture: CaptureFilter) -> None:
        self._filters[sub_id] = (capture.compile(), capture.snaplen)

    def unsubscribe(self, sub_id: int) -> bool:
        """Forget ``sub_id``; True when no subscription is left (the tap can leave the fanout)."""
        self._filters.pop(sub_id, None)
        return not self._filters

    def offer(self, fwd: Forward) -> None:
        ts_ns = time.time_ns()
        for sub_id, (wanted, snaplen) in list(self._filters.items()):
            if wanted(fwd):
                record = Record(ts_ns, fwd.wire_len, fwd.pod.key, fwd.vni, int(fwd.direction),
                                bytes(fwd.frame[:snaplen]))
                if self._emit(sub_id, record):
                    self.records += 1
                else:
                    self.dropped += 1

    async def open(self) -> None:
        return None

    async def run(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {"records": self.records, "dropped": self.dropped}
