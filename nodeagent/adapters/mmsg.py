"""Many datagrams per system call: ``recvmmsg(2)`` and ``sendmmsg(2)`` through ctypes.

The ctypes declarations are the sidecar's (``sidecar_lite.mmsg``: standard library only, one copy
for both programs). Used by the receiver (many tunnel datagrams per system call,
``BatchReader``), the VXLAN output (a GSO super-packet's segments in one call) and the lab's load
generator (``SendBatch``: prepared datagrams sent with no per-call Python work).

``BatchReader`` model: ``count`` preallocated 64 KiB buffers (GSO super-packets arrive whole, up to
65,234 bytes) and a sockaddr slot each; one ``recvmmsg`` fills up to ``count`` of them. ``read``
yields ``(datagram view, sender text)`` pairs: the views point into the reused buffers, so they are
valid only until the next ``recv``. The sender's address is read from the raw ``sockaddr``: an
IPv4 source is one 32-bit word looked up in a bounded dict (``sources4``), so no tuple or string
is built per packet; other families go through ``source`` (``inet_ntop`` once per address).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from collections.abc import Iterator, Sequence

from sidecar_lite.mmsg import IOVec, MMsgHdr, MsgHdr, libc_function, sendmmsg

__all__ = ["BatchReader", "IOVec", "MMsgHdr", "MsgHdr", "SendBatch", "address_text", "libc_function",
           "sendmmsg"]

BUFFER_SIZE = 65536
"""Bytes per receive buffer: the largest UDP payload over IPv4/IPv6 without jumbograms, rounded up."""
MMSG_BATCH = 32
"""Datagrams per recvmmsg call: 32 x 64 KiB of buffers (2 MiB), enough to amortise the call."""
SOURCES_MAX = 4096
"""Tunnel sources whose text form is cached: a node's pods and then some; a flood of spoofed or
churned sources clears it instead of growing it (per-pod state follows the pod table)."""
_SOCKADDR = 28
"""Room for a sockaddr_in6 per message (a sockaddr_in uses the first 16 bytes)."""
_MSG_DONTWAIT = 0x40
_V4_MAPPED = bytes(10) + b"\xff\xff"
_AF_INET = int(socket.AF_INET)
"""A plain int: comparing with the IntEnum member costs ~0.1 us per datagram more (measured)."""


def _raise_errno() -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def address_text(raw: bytes) -> str:
    """Packed address -> text as the pod table spells it; IPv4-mapped IPv6 (a dual-stack socket
    receiving IPv4) becomes plain IPv4, so ``--listen [::]:14789`` matches IPv4 senders."""
    if len(raw) == 16 and raw[:12] == _V4_MAPPED:
        raw = raw[12:]
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


class BatchReader:
    """recvmmsg(2) into ``count`` preallocated 64 KiB buffers (see the module docstring)."""

    def __init__(self, fd: int, count: int = MMSG_BATCH) -> None:
        self._recvmmsg = libc_function(
            "recvmmsg", [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p])
        if self._recvmmsg is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        self._fd, self.count = fd, count
        self._data = bytearray(count * BUFFER_SIZE)
        self._names = bytearray(count * _SOCKADDR)
        self._iovs = (IOVec * count)()
        self._msgbuf = bytearray(ctypes.sizeof(MMsgHdr) * count)
        msgs = (MMsgHdr * count).from_buffer(self._msgbuf)
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
        stride, len_at = ctypes.sizeof(MMsgHdr) // 4, MMsgHdr.len.offset // 4
        self._names_view = memoryview(self._names)
        self._sources: dict[bytes, str] = {}
        self.name_words = self._names_view.cast("I")
        """The sockaddr array as 32-bit words (7 per message): on little-endian hosts word 0's low
        half is sa_family and word 1 is sin_addr, read without building bytes."""
        self.sources4: dict[int, str] = {}
        """IPv4 sin_addr word -> text, filled by ``source``; the read loop's fast lookup."""
        self._fast4 = sys.byteorder == "little"
        self.slots = [(i * BUFFER_SIZE, i * stride + len_at, i * 7) for i in range(count)]
        """Per message: data offset, index of its length in ``lens``, index of its sockaddr in
        ``name_words``; precomputed so the read loop does no per-packet index arithmetic."""

    def recv(self) -> int:
        """Datagrams now in the buffers (0 when the socket is empty)."""
        n: int = self._recvmmsg(self._fd, self._msgs_ptr, self.count, _MSG_DONTWAIT, None)
        if n < 0:
            if ctypes.get_errno() in (errno.EAGAIN, errno.EINTR):
                return 0
            _raise_errno()
        return n

    def read(self, limit: int, budget: int) -> Iterator[tuple[memoryview, str]]:
        """Datagrams and their senders until the socket is empty, ``limit`` datagrams are read or
        ``budget`` bytes are spent (checked per recvmmsg call: may overshoot by one call's worth)."""
        view, source, lens, slots = self.view, self.source, self.lens, self.slots
        words, sources4 = self.name_words, self.sources4 if self._fast4 else {}
        for _ in range(0, limit, self.count):
            n = self.recv()
            for i in range(n):
                # Offsets from the precomputed slot and the sender from the raw word: ~0.4 us per
                # datagram less than calling size(i)/source(i) (bench/bench_receive.py).
                start, at, w = slots[i]
                size = lens[at]
                budget -= size
                sender = sources4.get(words[w + 1]) if words[w] & 0xFFFF == _AF_INET else None
                yield view[start : start + size], sender or source(i)
            if n < self.count or budget <= 0:
                return

    def size(self, i: int) -> int:
        return int(self.lens[self.slots[i][1]])

    def source(self, i: int) -> str:
        """The sender's address as text (``inet_ntop`` once per address, then a dict hit)."""
        base = i * _SOCKADDR
        family = self._names[base] | self._names[base + 1] << 8  # sa_family_t, little-endian hosts
        raw = bytes(self._names_view[base + 4 : base + 8] if family == socket.AF_INET
                    else self._names_view[base + 8 : base + 24])
        text = self._sources.get(raw)
        if text is None:
            if len(self._sources) >= SOURCES_MAX:
                self._sources.clear()
                self.sources4.clear()
            text = self._sources[raw] = address_text(raw)
            if len(raw) == 4:
                self.sources4[self.name_words[i * 7 + 1]] = text
        return text


class SendBatch:
    """Prepared datagrams for ``sendmmsg(2)``: one buffer, one message array, built once.

    ``send(fd, start, count)`` sends datagrams ``start .. start+count-1`` on a connected socket with
    one system call and no Python work per datagram (the lab's load generator must cost as little
    CPU as it can: it shares the machine with the receivers it measures).
    """

    def __init__(self, datagrams: Sequence[bytes]) -> None:
        self._sendmmsg = sendmmsg()
        if self._sendmmsg is None:
            raise OSError(errno.ENOSYS, "sendmmsg is not available")
        self.count = len(datagrams)
        self.sizes = [len(d) for d in datagrams]
        self._data = ctypes.create_string_buffer(b"".join(datagrams), max(1, sum(self.sizes)))
        self._iovs = (IOVec * max(1, self.count))()
        self._msgs = (MMsgHdr * max(1, self.count))()
        base, at = ctypes.addressof(self._data), 0
        for i, size in enumerate(self.sizes):
            self._iovs[i].base, self._iovs[i].len = base + at, size
            self._msgs[i].hdr.iov, self._msgs[i].hdr.iovlen = ctypes.addressof(self._iovs[i]), 1
            at += size
        self._base = ctypes.addressof(self._msgs)
        self._stride = ctypes.sizeof(MMsgHdr)

    def send(self, fd: int, start: int, count: int) -> int:
        """Datagrams the kernel took (from ``start``); 0 when the socket buffer is full."""
        n: int = self._sendmmsg(fd, self._base + start * self._stride, count, 0)
        if n < 0:
            if ctypes.get_errno() in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
                return 0
            _raise_errno()
        return n
