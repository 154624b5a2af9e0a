"""pcap output: rotating capture files in one directory, bounded total size, oldest deleted first.

Model: the loop appends records to an in-memory ``bytearray`` (one copy per packet, no syscall)
and, when it holds ``buffer_bytes`` or once a second, hands the filled buffer to a single writer
thread. The thread does every blocking thing in order: write, open the next file, close, delete
old files. The loop decides *when* to rotate (it counts bytes and knows the age of the file), so
the size bound is exact and the thread needs no shared state with it.

Invariants:
- At most ``max_pending`` buffers wait for the thread; past that, packets are dropped and counted
  under ``OutputDrop.QUEUE_FULL`` (a slow disk never grows memory without bound nor blocks the
  loop). A buffer whose write fails loses its records, counted under ``OutputDrop.WRITE_ERROR``
  by the thread. So ``packets`` (records buffered) ``- dropped[write_error]`` reached the files,
  and every packet offered is in ``packets`` or ``dropped[queue_full]``.
- A file never exceeds ``max_bytes`` (unless one record alone is larger); after each rotation the
  closed files of this prefix are deleted oldest first until they and a full new file fit in
  ``max_total_bytes``.
- Timestamps are wall-clock nanoseconds taken here, when the packet is offered (microseconds
  after reception), not in the pure core.
- File names sort in creation order: ``<prefix>-<UTC yyyymmddTHHMMSS>-<seq>.pcap``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from typing import Any

from nodeagent.settings import PcapSettings
from nodeagent.verdict import Forward, OutputDrop
from nodeagent.wire import pcap

log = logging.getLogger(__name__)
_RECORD_SIZE = pcap.RECORD_SIZE
_pack_record = pcap.RECORD.pack


class _Writer:
    """Runs in the writer thread only: owns the open file and the directory."""

    def __init__(self, settings: PcapSettings, directory: str) -> None:
        self._s = settings
        self._dir = directory
        self._file: Any = None
        self._path = ""
        self._seq = 0
        self.files_deleted = 0
        self.lost_packets = 0
        """Records in buffers whose write failed (``OutputDrop.WRITE_ERROR``)."""
        self.last_error = ""

    def write(self, data: bytes | bytearray, rotate: bool, packets: int) -> None:
        """Write ``data`` (``packets`` records), first opening the next file if ``rotate``."""
        try:
            if rotate or self._file is None:
                self._open_next()
            self._file.write(data)
        except OSError as exc:
            self.lost_packets += packets
            self.last_error = f"{self._path}: {exc.strerror}"
            log.error("pcap write failed: %s", self.last_error)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def current(self) -> str:
        return self._path

    def _open_next(self) -> None:
        self.close()
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._path = os.path.join(self._dir, f"{self._s.prefix}-{stamp}-{self._seq:06d}.pcap")
        self._file = open(self._path, "wb", buffering=0)  # noqa: SIM115 - closed on rotate/close
        self._file.write(pcap.global_header(nanos=self._s.precision == "ns", snaplen=self._s.snaplen))
        self._enforce_total()

    def _enforce_total(self) -> None:
        names = sorted(
            n for n in os.listdir(self._dir) if n.startswith(self._s.prefix + "-") and n.endswith(".pcap")
        )
        closed = [os.path.join(self._dir, n) for n in names if os.path.join(self._dir, n) != self._path]
        sizes = {p: _size(p) for p in closed}
        total = sum(sizes.values())
        for path in closed:
            if total + self._s.max_bytes <= self._s.max_total_bytes:
                break
            try:
                os.unlink(path)
                self.files_deleted += 1
            except OSError:
                pass
            total -= sizes[path]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class PcapOutput:
    """The ``Output`` for pcap files (see ``adapters/outputs.py`` for the contract)."""

    max_pending = 32
    """Buffers queued for the writer thread before packets are dropped (32 x 1 MiB by default)."""

    def __init__(self, settings: PcapSettings, name: str = "pcap") -> None:
        if settings.dir is None:
            raise ValueError("PcapOutput needs outputs.pcap.dir")
        self.name = name
        self._s = settings
        self._nanos = settings.precision == "ns"
        self._dir: str = settings.dir
        self._writer = _Writer(settings, settings.dir)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pcap-writer")
        self._buf = bytearray()
        self._buf_packets = 0
        self._file_bytes = 0
        self._file_opened = 0.0
        self._rotate_next = True
        self._submitted = 0
        self._completed = 0
        """Written by the writer thread only; ``_submitted - _completed`` is the backlog."""
        self.packets = self.bytes = self.files = 0
        self.queue_full = 0
        """Packets offered while ``max_pending`` buffers waited (``OutputDrop.QUEUE_FULL``)."""
        self._snaplen, self._max_bytes = settings.snaplen, settings.max_bytes
        self._buffer_bytes = settings.buffer_bytes
        self._frac_div = 1 if self._nanos else 1000

    async def open(self) -> None:
        os.makedirs(self._dir, exist_ok=True)

    async def run(self) -> None:
        """Once a second: hand buffered records to the writer; rotate a file that is old enough."""
        while True:
            await asyncio.sleep(1.0)
            if self._file_bytes and time.monotonic() - self._file_opened >= self._s.max_seconds:
                self._submit(rotate_after=True)
            elif self._buf:
                self._submit()

    def offer(self, fwd: Forward) -> None:
        # The common case inline (a record that fits the open file, no rotation, no backlog):
        # 1.8 -> 1.0 us per packet (bench/bench_pipeline.py); every other case takes _offer.
        frame = fwd.frame
        caplen = len(frame)
        total = self._file_bytes + _RECORD_SIZE + caplen
        if (caplen > self._snaplen or total > self._max_bytes or not self._file_bytes
                or self._submitted - self._completed >= self.max_pending):
            self._offer(fwd)
            return
        sec, frac = divmod(time.time_ns(), 1_000_000_000)
        buf = self._buf
        buf += _pack_record(sec, frac // self._frac_div, caplen, max(fwd.wire_len, caplen))
        buf += frame
        self.bytes += total - self._file_bytes
        self._file_bytes = total
        self._buf_packets += 1
        self.packets += 1
        if len(buf) >= self._buffer_bytes:
            self._submit()

    def _offer(self, fwd: Forward) -> None:
        if self._submitted - self._completed >= self.max_pending:
            self.queue_full += 1
            return
        size = pcap.RECORD_SIZE + min(len(fwd.frame), self._s.snaplen)
        if self._file_bytes and self._file_bytes + size > self._s.max_bytes:
            self._submit(rotate_after=True)
        if not self._file_bytes:  # first record of a file
            self._file_bytes = pcap.GLOBAL_SIZE
            self._file_opened = time.monotonic()
            self.files += 1
        pcap.append_record(
            self._buf, time.time_ns(), fwd.frame, fwd.wire_len, nanos=self._nanos, snaplen=self._s.snaplen
        )
        self._file_bytes += size
        self._buf_packets += 1
        self.packets += 1
        self.bytes += size
        if len(self._buf) >= self._s.buffer_bytes:
            self._submit()

    def offer_segments(self, fwd: Forward, frames: list[memoryview]) -> None:
        """A super-packet's segments (``outputs.py``): one clock read and one check for all, the
        records appended with two ``join`` calls (all but the last segment share one header).
        Falls back to ``offer`` per segment when the records would not all fit in this file, the
        file is not open yet, the backlog is full, or snaplen would cut them: the rules above
        (exact size bound, rotation, counters) then apply unchanged."""
        count = len(frames)
        total = sum(len(f) for f in frames) + count * pcap.RECORD_SIZE
        fits = 0 < self._file_bytes and self._file_bytes + total <= self._s.max_bytes
        if (not fits or count < 2 or len(frames[0]) > self._s.snaplen
                or self._submitted - self._completed >= self.max_pending):
            for frame in frames:
                self._offer(fwd._replace(frame=frame, wire_len=len(frame)))
            return
        ts_ns, nanos, last = time.time_ns(), self._nanos, frames[-1]
        head = pcap.record_header(ts_ns, len(frames[0]), len(frames[0]), nanos=nanos)
        buf = self._buf
        buf += head
        buf += head.join(frames[:-1])
        buf += pcap.record_header(ts_ns, len(last), len(last), nanos=nanos)
        buf += last
        self._file_bytes += total
        self._buf_packets += count
        self.packets += count
        self.bytes += total
        if len(buf) >= self._s.buffer_bytes:
            self._submit()

    def _submit(self, rotate_after: bool = False) -> None:
        """Give the buffer to the writer thread; ``rotate_after``: the next record starts a new file."""
        data, self._buf = self._buf, bytearray()
        packets, self._buf_packets = self._buf_packets, 0
        rotate, self._rotate_next = self._rotate_next, False
        if data or rotate:
            self._submitted += 1
            future = self._pool.submit(self._writer.write, data, rotate, packets)
            future.add_done_callback(self._done)
        if rotate_after:
            self._rotate_next = True
            self._file_bytes = 0

    def _done(self, _future: concurrent.futures.Future[None]) -> None:
        self._completed += 1  # runs in the writer thread; the only writer of this counter

    async def flush(self) -> None:
        if self._buf:
            self._submit()
        await asyncio.wrap_future(self._pool.submit(self._writer.flush))

    async def close(self) -> None:
        await self.flush()
        await asyncio.wrap_future(self._pool.submit(self._writer.close))
        self._pool.shutdown(wait=True)

    def state(self) -> dict[str, Any]:
        return {
            "dir": self._s.dir,
            "file": self._writer.current(),
            "packets": self.packets,
            "bytes": self.bytes,
            "files_opened": self.files,
            "files_deleted": self._writer.files_deleted,
            "dropped": {OutputDrop.QUEUE_FULL: self.queue_full,
                        OutputDrop.WRITE_ERROR: self._writer.lost_packets},
            "pending_buffers": self._submitted - self._completed,
            "last_error": self._writer.last_error,
        }
