"""Tunnel receiver: UDP socket -> ``Pipeline.process`` -> outputs. No packet logic here.

Fast path (docs/datapath.md "Receiving in Python": a ``recv_into`` loop measured 3.5 us/packet,
asyncio's DatagramProtocol adds a callback and a ``bytes`` object per datagram): the socket is
non-blocking and registered with ``loop.add_reader``; each wake-up drains up to ``batch`` datagrams
with ``recvfrom_into`` into one preallocated 64 KiB buffer (GSO super-packets arrive whole, up to
65,234 bytes), so no per-packet allocation beyond the source address. ``now`` is read once per
wake-up.

Because the buffer is reused, a ``Forward`` handed to the outputs is valid only during ``offer``
(the ``Output`` contract). Datagrams longer than the buffer cannot happen on UDP over IPv4/IPv6
without jumbograms; a truncated one would be counted as malformed by the pipeline.

With ``listen.recvmmsg`` (default, Linux), ``BatchReader`` takes up to ``MMSG_BATCH`` datagrams per
system call with ``recvmmsg(2)`` through ctypes into preallocated buffers (measured in
``bench/bench_agent.py``); source addresses are read from the raw ``sockaddr`` and mapped to text
through a small bounded cache, so no tuple or string is built per packet. ``recvfrom_into`` is the
fallback when libc lacks ``recvmmsg``.

Work per wake-up is bounded by ``batch`` datagrams *and* ``WAKEUP_BYTES``: 256 GSO super-packets
of 64 KB are ~11,000 segments to normalize and send, tens of milliseconds during which no timer
(batch flush, status, pcap) could run. Past the byte budget the drain returns; the socket is still
readable, so the loop calls it again right after running what is due (checked per recvmmsg call:
a wake-up may overshoot by one call's datagrams).

Kernel drops (socket receive buffer full) are read on demand from ``/proc/net/udp{,6}`` by the
socket's inode: no ancillary data per packet.

Counting: ``Stats.received`` is incremented here, per ``recvmmsg`` batch as the datagrams are read
(bytes from the wake-up's byte budget), before the pipeline sees them, so a datagram lost between
the socket and an outcome breaks ``received == forwarded + sum(drops) + held``.

Held packets (``Pipeline`` answers ``HELD``; see ``stages.vantage``): when anything is held after
a wake-up, a timer (``loop.call_at``) runs ``Pipeline.expire`` at the oldest hold's deadline, even
if no datagram arrives, and hands what it releases to the outputs; ``stop`` releases everything
still held (``Pipeline.flush``) before the outputs are flushed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from nodeagent.adapters import mmsg
from nodeagent.pipeline import Pipeline
from nodeagent.settings import ListenSettings
from nodeagent.stats import Stats
from nodeagent.verdict import Drop, Forward, Released, Verdict
from nodeagent.wire import Malformed, headers, vxlan

log = logging.getLogger(__name__)
ERROR_LOG_INTERVAL = 10.0
"""Seconds between two tracebacks of datagrams whose processing raised (each one is counted)."""

BUFFER_SIZE = 65536
MMSG_BATCH = 32
WAKEUP_BYTES = 1 << 20
"""Datagram bytes after which a wake-up yields to the loop (16 super-packets; small packets hit
the datagram bound first)."""
"""Datagrams per recvmmsg call: 32 x 64 KiB of buffers (2 MiB), enough to amortise the call."""
SOURCES = 4096
"""Tunnel sources whose text form is cached: a node's pods and then some; a flood of spoofed or
churned sources clears it instead of growing it (per-pod state follows the pod table)."""
_SOCKADDR = 28
"""Room for a sockaddr_in6 per message (a sockaddr_in uses the first 16 bytes)."""
_MSG_DONTWAIT = 0x40
_V4_MAPPED = bytes(10) + b"\xff\xff"
_AF_INET = int(socket.AF_INET)


class BatchReader:
    """recvmmsg(2) into ``count`` preallocated 64 KiB buffers; ``view``/``size``/``source`` per index."""

    def __init__(self, fd: int, count: int = MMSG_BATCH) -> None:
        self._recvmmsg = mmsg.libc_function(
            "recvmmsg", [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p])
        if self._recvmmsg is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        self._fd, self.count = fd, count
        self._data = bytearray(count * BUFFER_SIZE)
        self._names = bytearray(count * _SOCKADDR)
        self._iovs = (mmsg.IOVec * count)()
        self._msgbuf = bytearray(ctypes.sizeof(mmsg.MMsgHdr) * count)
        msgs = (mmsg.MMsgHdr * count).from_buffer(self._msgbuf)
        data = ctypes.addressof(ctypes.c_char.from_buffer(self._data))
        names = ctypes.addressof(ctypes.c_char.from_buffer(self._names))
        for i in range(count):
            self._iovs[i].base, self._iovs[i].len = data + i * BUFFER_SIZE, BUFFER_SIZE
            hdr = msgs[i].hdr
            hdr.name, hdr.namelen = names + i * _SOCKADDR, _SOCKADDR
            hdr.iov, hdr.iovlen = ctypes.addressof(self._iovs[i]), 1
        self._msgs_ptr = ctypes.addressof(msgs)
        self._keep = msgs
        self.view = memoryview(self._data)
        self.lens = memoryview(self._msgbuf).cast("I")
        self.stride = ctypes.sizeof(mmsg.MMsgHdr) // 4
        self.len_at = mmsg.MMsgHdr.len.offset // 4
        self._names_view = memoryview(self._names)
        self._sources: dict[bytes, str] = {}
        self.name_words = self._names_view.cast("I")
        """The sockaddr array as 32-bit words (7 per message): on little-endian hosts word 0's low
        half is sa_family and word 1 is sin_addr, read without building bytes."""
        self.sources4: dict[int, str] = {}
        """IPv4 sin_addr word -> text, filled by ``source``; the drain loop's fast lookup."""
        self.fast4 = sys.byteorder == "little"
        self.slots = [(i * BUFFER_SIZE, i * self.stride + self.len_at, i * 7) for i in range(count)]
        """Per message: data offset, index of its length in ``lens``, index of its sockaddr in
        ``name_words``; precomputed so the drain loop does no per-packet index arithmetic."""

    def recv(self) -> int:
        """Datagrams now in the buffers (0 when the socket is empty)."""
        n: int = self._recvmmsg(self._fd, self._msgs_ptr, self.count, _MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        return n

    def size(self, i: int) -> int:
        return self.lens[i * self.stride + self.len_at]

    def source(self, i: int) -> str:
        """The sender's address as text (``inet_ntop`` once per address, then a dict hit)."""
        base = i * _SOCKADDR
        family = self._names[base] | self._names[base + 1] << 8  # sa_family_t, little-endian hosts
        raw = bytes(self._names_view[base + 4 : base + 8] if family == socket.AF_INET
                    else self._names_view[base + 8 : base + 24])
        text = self._sources.get(raw)
        if text is None:
            if len(self._sources) >= SOURCES:  # spoofed sources must not grow memory without bound
                self._sources.clear()
                self.sources4.clear()
            text = self._sources[raw] = address_text(raw)
            if len(raw) == 4:
                self.sources4[self.name_words[i * 7 + 1]] = text
        return text


class DropLog:
    """Log the first drop of each reason at once, then at most one line per ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next: dict[Drop, float] = {}
        self._since: dict[Drop, int] = {}

    def note(self, reason: Drop, sender: str, now: float) -> None:
        due = self._next.get(reason)
        if due is not None and now < due:
            self._since[reason] = self._since.get(reason, 0) + 1
            return
        more = self._since.pop(reason, 0)
        self._next[reason] = now + self._interval
        suffix = f" (+{more} more since the last line)" if more else ""
        log.warning("dropped a datagram from %s: %s%s", sender, reason.value, suffix)


class MalformedLog:
    """First and last reason a datagram was malformed (re-decoded only for malformed datagrams)."""

    def __init__(self) -> None:
        self.first: str | None = None
        self.last: str | None = None

    def note(self, datagram: memoryview, sender: str) -> None:
        reason = describe_malformed(datagram)
        text = f"{sender}: {reason}"
        if self.first is None:
            self.first = text
        self.last = text


def describe_malformed(datagram: memoryview | bytes) -> str:
    try:
        headers.decode(vxlan.decode(datagram).inner)
    except Malformed as exc:
        return str(exc)
    return "malformed (reason not reproduced)"


class Receiver:
    """Owns the tunnel socket. ``start`` binds and registers it; ``stop`` unregisters and closes."""

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
        self._next_error_log = 0.0
        self.malformed = MalformedLog()
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: BatchReader | None = None
        self.address: tuple[str, int] | None = None
        self.wakeups = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        family = socket.AF_INET6 if ":" in self._s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _set_rcvbuf(sock, self._s.rcvbuf)
            sock.setblocking(False)
            sock.bind((self._s.host, self._s.port))
        except OSError:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        self.address = sock.getsockname()[:2]
        self._batch = _batch_reader(sock.fileno()) if self._s.recvmmsg else None
        loop.add_reader(sock.fileno(), self._drain if self._batch is None else self._drain_batch)
        log.info(
            "receiving tunnels on %s:%d (SO_RCVBUF %d)",
            self.address[0],
            self.address[1],
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )

    def stop(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for forward in self._pipeline.flush():  # nothing stays held (and uncounted) at exit
            self._offer(forward)

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

    def _other(self, verdict: Verdict, datagram: memoryview, sender: str, now: float) -> None:
        """Not a plain ``Forward``: a drop (logged), held (nothing yet), or released packets."""
        if type(verdict) is Released:
            for forward in verdict.forwards:
                self._offer(forward)
        elif type(verdict) is Drop:
            self._dropped(verdict, datagram, sender, now)

    @property
    def is_bound(self) -> bool:
        return self._sock is not None

    def _drain(self) -> None:
        budget = WAKEUP_BYTES
        try:
            budget = self._drain_each(budget)
        finally:
            self._stats.received_bytes += WAKEUP_BYTES - budget
            self._after_drain()

    def _drain_each(self, budget: int) -> int:
        sock, view, process, offer = self._sock, self._view, self._pipeline.process, self._offer
        stats = self._stats
        assert sock is not None and self._loop is not None
        now = self._loop.time()
        self.wakeups += 1
        for _ in range(self._s.batch):
            if budget <= 0:
                return budget
            try:
                size, addr = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return budget
            stats.received += 1
            budget -= size
            sender = addr[0]
            if sender.startswith("::ffff:"):  # IPv4 on a dual-stack socket
                sender = sender[7:]
            try:
                verdict = process(view[:size], sender, now)
            except Exception:  # the outermost boundary: count, log, keep receiving
                self._failed(view[:size], sender, now)
                continue
            if type(verdict) is Forward:
                offer(verdict)
            else:
                self._other(verdict, view[:size], sender, now)
        return budget

    def _drain_batch(self) -> None:
        budget = WAKEUP_BYTES
        try:
            budget = self._drain_batches(budget)
        finally:
            self._stats.received_bytes += WAKEUP_BYTES - budget
            self._after_drain()

    def _drain_batches(self, budget: int) -> int:
        reader, process, offer = self._batch, self._pipeline.process, self._offer
        stats = self._stats
        assert reader is not None and self._loop is not None
        now = self._loop.time()
        self.wakeups += 1
        view, source, lens, slots = reader.view, reader.source, reader.lens, reader.slots
        words, sources4 = reader.name_words, reader.sources4 if reader.fast4 else {}
        for _ in range(0, self._s.batch, reader.count):
            n = reader.recv()
            stats.received += n  # read: counted before the pipeline sees them
            for i in range(n):
                # Inlined size(i)/source(i): ~0.4 us per datagram less (bench/bench_agent.py); the
                # slot's offsets are precomputed and AF_INET is a plain int (~0.1 us less, measured).
                start, at, w = slots[i]
                size = lens[at]
                budget -= size
                datagram = view[start : start + size]
                sender = sources4.get(words[w + 1]) if words[w] & 0xFFFF == _AF_INET else None
                if sender is None:
                    sender = source(i)
                try:
                    verdict = process(datagram, sender, now)
                except Exception:  # the outermost boundary: count, log, keep receiving
                    self._failed(datagram, sender, now)
                    continue
                if type(verdict) is Forward:
                    offer(verdict)
                else:
                    self._other(verdict, datagram, sender, now)
            if n < reader.count or budget <= 0:
                return budget
        return budget

    def _failed(self, datagram: memoryview, sender: str, now: float) -> None:
        """``process`` raised (a bug): count the datagram as ``internal_error`` so the books still
        balance, log the traceback (at most every ``ERROR_LOG_INTERVAL`` seconds), go on."""
        reason = self._pipeline.fail(datagram, sender)
        if now >= self._next_error_log:
            self._next_error_log = now + ERROR_LOG_INTERVAL
            log.exception("processing a datagram from %s raised; counted as %s", sender, reason)
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
        state.update(proc_udp_counters(os.fstat(self._sock.fileno()).st_ino))
        return state


def address_text(raw: bytes) -> str:
    """Packed address -> text as the pod table spells it; IPv4-mapped IPv6 (a dual-stack socket
    receiving IPv4) becomes plain IPv4, so ``--listen [::]:14789`` matches IPv4 senders."""
    if len(raw) == 16 and raw[:12] == _V4_MAPPED:
        raw = raw[12:]
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _batch_reader(fd: int) -> BatchReader | None:
    try:
        return BatchReader(fd)
    except OSError as exc:
        log.info("recvmmsg unavailable (%s): one recvfrom_into per datagram", exc.strerror)
        return None


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN; fall back quietly.
    force = getattr(socket, "SO_RCVBUFFORCE", 33)
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def proc_udp_counters(inode: int) -> dict[str, int]:
    """``rx_queue`` bytes and ``drops`` of the UDP socket with this inode (``/proc/net/udp{,6}``)."""
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name, encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == str(inode):
                        rx_queue = int(fields[4].split(":")[1], 16)
                        return {"rx_queue_bytes": rx_queue, "kernel_drops": int(fields[-1])}
        except OSError:
            continue
    return {"kernel_drops": 0}
