"""Tunnel receiver: UDP socket -> ``Pipeline.process`` -> outputs. No packet logic here.

Model (docs/datapath.md "Receiving in Python"): the socket is non-blocking and registered with
``loop.add_reader`` (asyncio's DatagramProtocol would add a callback and a ``bytes`` object per
datagram). Each wake-up reads
``now`` once and drains up to ``batch`` datagrams from a reader: ``mmsg.BatchReader`` (recvmmsg,
32 datagrams per system call, the default) or ``SingleReader`` (one ``recvfrom_into`` per datagram,
``listen.recvmmsg: false`` or a C library without recvmmsg). Both yield ``(datagram, sender)``
pairs from reused buffers, so one loop serves both (a generator costs ~55 ns per datagram over an
inlined loop, measured: about 1% of a datagram's processing). Because the buffers are reused, a
``Forward`` handed to the outputs is valid only during ``offer`` (the ``Output`` contract).

Work per wake-up is bounded by ``batch`` datagrams *and* ``WAKEUP_BYTES``: 256 GSO super-packets
of 64 KB are ~11,000 segments to normalize and send, tens of milliseconds during which no timer
(batch flush, status, pcap) could run. Past the byte budget the drain returns; the socket is still
readable, so the loop calls it again right after running what is due.

The socket is either the receiver's own (bound in ``start``) or one handed to it (a worker's member
of the reuseport group, ``steering``), which it then reads but does not own. Kernel drops (receive
buffer full) are read on demand from ``/proc`` (``procnet``): no ancillary data per packet.

Counting: ``Stats.received`` and ``received_bytes`` count the datagrams read from the socket, here,
before the pipeline sees them (summed in the drain loop and added when the wake-up ends, in a
``finally``: nothing reads the counters between two datagrams of one wake-up, the loop being single
threaded), so a datagram lost between the socket and an outcome breaks ``received == forwarded +
sum(drops) + held``.

Held packets (``Pipeline`` answers ``HELD``; see ``stages.vantage``): when anything is held after
a wake-up, a timer (``loop.call_at``) runs ``Pipeline.expire`` at the oldest hold's deadline, even
if no datagram arrives, and hands what it releases to the outputs; ``stop`` releases everything
still held (``Pipeline.flush``) before the outputs are flushed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

from nodeagent.adapters import mmsg, procnet, steering
from nodeagent.adapters.droplog import DropLog, ErrorLog, MalformedLog
from nodeagent.pipeline import Pipeline
from nodeagent.settings import ListenSettings
from nodeagent.stats import Stats
from nodeagent.verdict import Drop, Forward, Released, Verdict

log = logging.getLogger(__name__)

WAKEUP_BYTES = 1 << 20
"""Datagram bytes after which a wake-up yields to the loop (16 super-packets; small packets hit
the datagram bound first)."""


class SingleReader:
    """One ``recvfrom_into`` per datagram into one 64 KiB buffer; the same ``read`` as BatchReader."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(mmsg.BUFFER_SIZE)
        self._view = memoryview(self._buf)

    def read(self, limit: int, budget: int) -> Iterator[tuple[memoryview, str]]:
        recv, buf, view = self._sock.recvfrom_into, self._buf, self._view
        for _ in range(limit):
            if budget <= 0:
                return
            try:
                size, addr = recv(buf)
            except (BlockingIOError, InterruptedError):
                return
            budget -= size
            sender = addr[0]
            if sender.startswith("::ffff:"):  # IPv4 on a dual-stack socket
                sender = sender[7:]
            yield view[:size], sender


class Receiver:
    """Reads the tunnel socket. ``start`` binds (or adopts) and registers it; ``stop`` unregisters."""

    def __init__(
        self,
        settings: ListenSettings,
        pipeline: Pipeline,
        offer: Callable[[Forward], None],
        drop_log: DropLog,
        stats: Stats,
    ) -> None:
        self._s = settings
        self._pipeline = pipeline
        self._stats = stats
        self._timer: asyncio.TimerHandle | None = None
        self._offer = offer
        self._drop_log = drop_log
        self._errors = ErrorLog()
        self.malformed = MalformedLog()
        self._sock: socket.socket | None = None
        self._owned = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: mmsg.BatchReader | SingleReader | None = None
        self.address: tuple[str, int] | None = None
        self.wakeups = 0

    def start(self, loop: asyncio.AbstractEventLoop, sock: socket.socket | None = None) -> None:
        """Bind the listen address, or read ``sock`` (already bound, non-blocking, not owned)."""
        self._owned = sock is None
        if sock is None:
            sock = steering.open_sockets(self._s, 1)[0]
        self._sock, self._loop = sock, loop
        self.address = sock.getsockname()[:2]
        self._reader = _reader(sock) if self._s.recvmmsg else SingleReader(sock)
        loop.add_reader(sock.fileno(), self._drain)
        log.info("receiving tunnels on %s:%d (SO_RCVBUF %d)", self.address[0], self.address[1],
                 sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def stop(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            if self._owned:
                self._sock.close()
            self._sock = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for forward in self._pipeline.flush():  # nothing stays held (and uncounted) at exit
            self._offer(forward)

    @property
    def is_bound(self) -> bool:
        return self._sock is not None

    def _drain(self) -> None:
        process, offer, reader = self._pipeline.process, self._offer, self._reader
        assert reader is not None and self._loop is not None
        now = self._loop.time()
        self.wakeups += 1
        count = nbytes = 0
        try:
            for datagram, sender in reader.read(self._s.batch, WAKEUP_BYTES):
                count += 1  # read: counted before the pipeline sees it (added in ``finally``)
                nbytes += len(datagram)
                try:
                    verdict = process(datagram, sender, now)
                except Exception:  # the outermost boundary: count, log, keep receiving
                    self._failed(datagram, sender, now)
                    continue
                if type(verdict) is Forward:
                    offer(verdict)
                else:
                    self._other(verdict, datagram, sender, now)
        finally:
            self._stats.received += count
            self._stats.received_bytes += nbytes
            self._after_drain()

    def _other(self, verdict: Verdict, datagram: memoryview, sender: str, now: float) -> None:
        """Not a plain ``Forward``: a drop (logged), held (nothing yet), or released packets."""
        if type(verdict) is Released:
            for forward in verdict.forwards:
                self._offer(forward)
        elif type(verdict) is Drop:
            self._dropped(verdict, datagram, sender, now)

    def _after_drain(self) -> None:
        """Something is held: make sure the timer will release it at its deadline."""
        if self._timer is None and self._pipeline.held and self._loop is not None:
            deadline = self._pipeline.next_deadline
            if deadline is not None:
                self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """Timer: release the held packets whose wait ended (to the outputs, in order)."""
        self._timer = None
        assert self._loop is not None
        try:
            for forward in self._pipeline.expire(self._loop.time()):
                self._offer(forward)
        except Exception:  # the outermost boundary of the timer: log, keep the agent running
            log.exception("releasing held packets raised")
        self._after_drain()

    def _failed(self, datagram: memoryview, sender: str, now: float) -> None:
        """``process`` raised (a bug): count the datagram as ``internal_error`` so the books still
        balance, log the traceback (rate-limited), go on."""
        reason = self._pipeline.fail(datagram, sender)
        self._errors.note(sender, reason, now)
        self._drop_log.note(reason, sender, now)

    def _dropped(self, reason: Drop, datagram: memoryview, sender: str, now: float) -> None:
        if reason is Drop.MALFORMED:
            self.malformed.note(datagram, sender)
        self._drop_log.note(reason, sender, now)

    def socket_state(self) -> dict[str, Any]:
        """Kernel view of the socket: receive buffer size, queued bytes and drops."""
        if self._sock is None:
            return {}
        state: dict[str, Any] = {"rcvbuf": self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}
        state.update(procnet.udp_socket_counters(os.fstat(self._sock.fileno()).st_ino))
        return state


def _reader(sock: socket.socket) -> mmsg.BatchReader | SingleReader:
    try:
        return mmsg.BatchReader(sock.fileno())
    except OSError as exc:
        log.info("recvmmsg unavailable (%s): one recvfrom_into per datagram", exc.strerror)
        return SingleReader(sock)
