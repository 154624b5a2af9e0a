"""Tunnel receiver: UDP socket -> ``Pipeline.process`` -> outputs. No packet logic here.

Fast path (DATAPLANE.md: a ``recv_into`` loop measured 3.5 us/packet, asyncio's DatagramProtocol
adds a callback and a ``bytes`` object per datagram): the socket is non-blocking and registered
with ``loop.add_reader``; each wake-up drains up to ``batch`` datagrams with ``recvfrom_into`` into
one preallocated 64 KiB buffer (GSO super-packets arrive whole, up to 65,234 bytes), so no
per-packet allocation beyond the source address. ``now`` is read once per wake-up.

Because the buffer is reused, a ``Forward`` handed to the outputs is valid only during ``offer``
(the ``Output`` contract). Datagrams longer than the buffer cannot happen on UDP over IPv4/IPv6
without jumbograms; a truncated one would be counted as malformed by the pipeline.

Kernel drops (socket receive buffer full) are read on demand from ``/proc/net/udp{,6}`` by the
socket's inode: no ancillary data per packet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from nodeagent.pipeline import Pipeline
from nodeagent.settings import ListenSettings
from nodeagent.verdict import Drop, Forward
from nodeagent.wire import Malformed, headers, vxlan

log = logging.getLogger(__name__)

BUFFER_SIZE = 65536


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
    ) -> None:
        self._s = settings
        self._pipeline = pipeline
        self._offer = offer
        self._drop_log = drop_log
        self.malformed = MalformedLog()
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
        loop.add_reader(sock.fileno(), self._drain)
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

    @property
    def is_bound(self) -> bool:
        return self._sock is not None

    def _drain(self) -> None:
        sock, view, process, offer = self._sock, self._view, self._pipeline.process, self._offer
        assert sock is not None and self._loop is not None
        now = self._loop.time()
        self.wakeups += 1
        for _ in range(self._s.batch):
            try:
                size, addr = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            verdict = process(view[:size], addr[0], now)
            if type(verdict) is Forward:
                offer(verdict)
            else:
                self._dropped(verdict, view[:size], addr[0], now)  # type: ignore[arg-type]

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
