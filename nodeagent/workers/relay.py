"""Live capture across worker processes: the reader's session, fed by every worker's tap.

The capture API (``nodeagent.capture``, ``docs/capture.md``) is ``open_capture(filter,
queue_limit) -> Session``. With worker processes the packets are in the workers, so:

- the supervisor (``Captures``) opens the reader's ``Session`` and tells every worker
  ``capture {id, filter, queue_limit}`` (the filter as its query text, ``CaptureFilter.as_query``),
  a worker started later too; when the reader closes its session, ``uncapture {id}``;
- each worker opens a session of its own on its tap (``Worker.open_capture``), says so
  (``capturing {id}``: the capture sees that worker's packets from then on) and a ``forward``
  task moves its records, in batches, to the supervisor over the worker's capture stream, with
  what its session dropped since the last batch;
- the supervisor ``offer``s the records to the reader's session and adds the workers' losses with
  ``count_dropped``, so the reader's statistics cover the whole path (worker queue, stream, its
  own queue). Nothing waits on a slow reader: every queue is bounded and counts what it drops.

Stream frames (worker -> supervisor): ``FRAME`` (body length, capture id, kind) then the body:
kind ``R`` the record count (``COUNT``) and the records in the transport's record encoding
(``records.encode_records``), kind ``D`` JSON ``{pod: records dropped}``.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from nodeagent.capture import filter as capture_filter
from nodeagent.capture.filter import CaptureFilter
from nodeagent.capture.session import QUEUE_BYTES, Session, TooManySessions
from nodeagent.transport.records import decode_records, encode_records
from nodeagent.verdict import OutputDrop

FRAME = struct.Struct("!IIc")
COUNT = struct.Struct("!I")
RECORDS, DROPS = b"R", b"D"
STREAM_BUFFER = 8 << 20
"""Bytes of capture frames a worker lets wait for the supervisor before it drops (and counts)."""
BATCH = 256
"""Records per frame at most (a frame stays well under a second of one reader's packets)."""


def frame(capture: int, kind: bytes, body: bytes) -> bytes:
    return FRAME.pack(len(body), capture, kind) + body


class Captures:
    """The supervisor's captures: the readers' sessions and what the workers must be told."""

    def __init__(self, max_sessions: int, queue_bytes: int = QUEUE_BYTES) -> None:
        self.max_sessions, self.queue_bytes = max_sessions, queue_bytes
        self.sessions: dict[int, Session] = {}
        self.workers: dict[int, set[int]] = {}
        """Per capture, the workers whose side of it is open (``capturing`` from each)."""
        self.opened = self.refused = 0
        self._ended = {"delivered": 0, "dropped": 0}

    def open(self, flt: CaptureFilter, queue_limit: int) -> Session:
        """The reader's session (``CaptureError`` for a bad expression, ``TooManySessions``)."""
        self.prune()
        if len(self.sessions) >= self.max_sessions:
            self.refused += 1
            raise TooManySessions(f"{self.max_sessions} capture sessions are open already")
        capture_filter.compile(flt)  # a bad BPF expression fails here, for the reader
        self.opened += 1
        session = Session(flt, queue_limit, self.queue_bytes, ident=self.opened)
        self.sessions[self.opened] = session
        return session

    def message(self, capture: int) -> dict[str, Any]:
        """What a worker needs to open its side of ``capture``."""
        session = self.sessions[capture]
        return {"op": "capture", "id": capture, "filter": session.filter.as_query(),
                "queue_limit": session.queue_limit}

    def prune(self) -> list[int]:
        """Forget the sessions their readers closed; their ids (the workers must be told)."""
        closed = [i for i, s in self.sessions.items() if s.closed]
        for capture in closed:
            session = self.sessions.pop(capture)
            self._ended["delivered"] += session.delivered
            self._ended["dropped"] += session.total_dropped
        for capture in closed:
            self.workers.pop(capture, None)
        return closed

    def serving(self, capture: int, worker: int) -> None:
        if capture in self.sessions:
            self.workers.setdefault(capture, set()).add(worker)

    def close_all(self) -> None:
        for session in self.sessions.values():
            session.close()

    def receive(self, capture: int, kind: bytes, body: bytes) -> None:
        """One frame from a worker's capture stream (``Malformed`` if the records do not decode)."""
        session = self.sessions.get(capture)
        if session is None or session.closed:
            return
        if kind == RECORDS:
            (count,) = COUNT.unpack_from(body)
            for record in decode_records(body[COUNT.size:], count):
                session.offer(record)
        elif kind == DROPS:
            for pod, count in json.loads(body).items():
                session.count_dropped(pod, int(count))

    def state(self) -> dict[str, Any]:
        """The same shape as the tap's (``capture.tap.Tap.state``), for the readers' sessions."""
        sessions = [s.state() for s in self.sessions.values() if not s.closed]
        lost = self._ended["dropped"] + sum(s["dropped"] for s in sessions)
        return {"sessions": len(sessions), "sessions_opened": self.opened, "sessions_refused": self.refused,
                "delivered": self._ended["delivered"] + sum(s["delivered"] for s in sessions),
                "dropped": {OutputDrop.QUEUE_FULL: lost}, "open": sessions}


async def forward(capture: int, session: Session, stream: asyncio.StreamWriter) -> None:
    """A worker's side: move ``session``'s records to the supervisor until it closes, with its
    drops (and those of a full stream) reported as they grow."""
    reported: dict[str, int] = {}
    lost: dict[str, int] = {}
    while batch := await session.batch(BATCH):
        if stream.is_closing():
            return
        if stream.transport.get_write_buffer_size() > STREAM_BUFFER:
            for record in batch:
                lost[record.pod] = lost.get(record.pod, 0) + 1
        else:
            stream.write(frame(capture, RECORDS, COUNT.pack(len(batch)) + encode_records(batch)))
        _report(capture, session, reported, lost, stream)
    _report(capture, session, reported, lost, stream)


def _report(capture: int, session: Session, reported: dict[str, int], lost: dict[str, int],
            stream: asyncio.StreamWriter) -> None:
    news = {pod: n - reported.get(pod, 0) for pod, n in session.dropped.items() if n > reported.get(pod, 0)}
    for pod, n in lost.items():
        news[pod] = news.get(pod, 0) + n
    if news and not stream.is_closing():
        reported.update(session.dropped)
        lost.clear()
        stream.write(frame(capture, DROPS, json.dumps(news).encode()))

