"""Batching: group records so that one compressed message carries many packets.

Model: at most one open batch. ``add(record, now)`` appends to it and returns the closed
``Batch`` when the batch reached ``max_bytes`` or ``max_records``; ``due(now)`` returns it once it
is ``max_delay`` seconds old; ``flush()`` closes it unconditionally. The caller owns the clock
(``now`` in seconds, any monotonic origin) and arms a timer for ``deadline``.

Invariants: a record is in exactly one batch; a batch is never empty; no record waits longer than
``max_delay`` after the first record of its batch, provided the caller calls ``due`` at
``deadline``. Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses

from nodeagent.transport.records import MAX_RECORDS, RECORD_OVERHEAD, Record


@dataclasses.dataclass(slots=True)
class Batch:
    records: list[Record]
    opened: float
    """``now`` when the first record was added."""
    nbytes: int
    """Sum of frame lengths plus ``RECORD_OVERHEAD`` per record."""


class Batcher:
    def __init__(self, *, max_bytes: int = 256 * 1024, max_delay: float = 0.02,
                 max_records: int = MAX_RECORDS) -> None:
        if max_bytes <= 0 or max_delay <= 0 or not 0 < max_records <= MAX_RECORDS:
            raise ValueError(f"batcher limits must be > 0 (and max_records <= {MAX_RECORDS})")
        self.max_bytes, self.max_delay, self.max_records = max_bytes, max_delay, max_records
        self._open: Batch | None = None

    @property
    def deadline(self) -> float | None:
        """When the open batch is due (None when nothing is open)."""
        return None if self._open is None else self._open.opened + self.max_delay

    @property
    def pending(self) -> int:
        """Records in the open batch."""
        return 0 if self._open is None else len(self._open.records)

    def add(self, record: Record, now: float) -> Batch | None:
        batch = self._open
        if batch is None:
            batch = self._open = Batch([], now, 0)
        batch.records.append(record)
        batch.nbytes += len(record.frame) + RECORD_OVERHEAD
        if batch.nbytes >= self.max_bytes or len(batch.records) >= self.max_records:
            self._open = None
            return batch
        return None

    def due(self, now: float) -> Batch | None:
        batch = self._open
        if batch is not None and now >= batch.opened + self.max_delay:
            self._open = None
            return batch
        return None

    def flush(self) -> Batch | None:
        batch, self._open = self._open, None
        return batch
