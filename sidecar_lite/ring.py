"""A TPACKET_V3 receive ring on an AF_PACKET socket: frames read in place, in blocks, no system call each.

Model (``Documentation/networking/packet_mmap.rst``): the kernel writes captured frames into a ring
of ``blocks`` blocks of ``block_size`` bytes shared with this process (``mmap``). A block belongs
to the kernel until it is full or ``retire_ms`` milliseconds after its first frame, then to user
space (``TP_STATUS_USER`` in its descriptor) until user space hands it back (``release``). Inside a
block, frames follow each other, each behind a ``tpacket3_hdr`` (lengths, offset of the frame) and
the ``sockaddr_ll`` (``sll_pkttype``: PACKET_OUTGOING for what the interface sent). So reading costs
no system call and no copy per frame; a ``poll`` waits only when the next block is not ready.

Bounds: ``blocks * block_size`` bytes of memory (8 MiB by default); a frame that does not fit a
block is cut (``tp_snaplen < tp_len``). When user space falls behind and every block is full, the
kernel drops frames and counts them: ``stats()`` (PACKET_STATISTICS, reset by each read) returns
them, so losses are counted, never silent.
Latency: at most ``retire_ms`` for a block that does not fill.
"""

from __future__ import annotations

import ctypes
import mmap
import select
import socket
import struct
from collections.abc import Iterator

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1
PACKET_OUTGOING = 4
BLOCK_SIZE = 128 << 10
"""Bytes per block: a multiple of the page size holding at least one 64 KB GSO super-packet."""
BLOCKS = 64
"""8 MiB in all. Every block holds at least ``RETIRE_MS`` of traffic, so the ring absorbs at least
256 ms of stall at any rate (4 blocks of 1 MiB absorbed 16 ms and dropped frames at 20,000 small
packets/s on a busy machine where the recv path's 4 MB socket buffer, 270 ms of them, did not)."""
RETIRE_MS = 4
"""Milliseconds after which a block that is not full is handed over anyway (sniff-mode latency:
well inside the agent's 50 ms dedup window)."""
FRAME_SIZE = 2048
"""Nominal frame size the kernel requires for TPACKET_V3 (frames are variable-sized inside blocks)."""

_REQ3 = struct.Struct("=IIIIIII")
"""struct tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov, sizeof_priv,
feature_req_word."""
_BLOCK = struct.Struct("=8xIII")
"""struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1's block_status,
num_pkts, offset_to_first_pkt."""
_FRAME = struct.Struct("=I8xII4xH")
"""struct tpacket3_hdr: tp_next_offset, (tp_sec, tp_nsec), tp_snaplen, tp_len, (tp_status), tp_mac."""
PKTTYPE_AT = 48 + 10
"""``sll_pkttype`` of the sockaddr_ll that follows the 48-byte tpacket3_hdr (TPACKET_ALIGN'ed)."""
_STATS3 = struct.Struct("=III")
"""struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt."""


class Ring:
    """The ring of an AF_PACKET socket that is not bound yet (set it up before ``bind``)."""

    def __init__(self, sock: socket.socket, *, block_size: int = BLOCK_SIZE, blocks: int = BLOCKS,
                 retire_ms: int = RETIRE_MS) -> None:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frames = block_size // FRAME_SIZE * blocks
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING,
                        _REQ3.pack(block_size, blocks, FRAME_SIZE, frames, retire_ms, 0, 0))
        self._sock = sock
        self.block_size, self.blocks = block_size, blocks
        self.map = mmap.mmap(sock.fileno(), block_size * blocks, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        """Where the ring starts in this process's memory (iovecs point into it)."""
        self._status = [ctypes.c_uint32.from_buffer(self.map, i * block_size + 8) for i in range(blocks)]
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)
        self.next = 0
        """The block to read next: the kernel fills blocks in order."""

    def wait(self, timeout_ms: int) -> bool:
        """True when the next block is the reader's (polls up to ``timeout_ms`` if it is not yet)."""
        if self._status[self.next].value & TP_STATUS_USER:
            return True
        self._poll.poll(timeout_ms)
        return bool(self._status[self.next].value & TP_STATUS_USER)

    def frames(self) -> Iterator[tuple[int, int, int, bool]]:
        """The next block's frames: (offset in the ring, captured length, length on the wire,
        outgoing). Call only after ``wait`` returned True; ``release`` the block afterwards."""
        base = self.next * self.block_size
        view, unpack = self.view, _FRAME.unpack_from
        _status, count, offset = _BLOCK.unpack_from(view, base)
        at = base + offset
        for _ in range(count):
            next_offset, snaplen, length, mac = unpack(view, at)
            yield at + mac, snaplen, length, view[at + PKTTYPE_AT] == PACKET_OUTGOING
            at += next_offset

    def release(self) -> None:
        """Give the block back to the kernel and move to the next one."""
        self._status[self.next].value = TP_STATUS_KERNEL
        self.next = (self.next + 1) % self.blocks

    def stats(self) -> tuple[int, int]:
        """(frames, drops) since the last call (the kernel resets both when read)."""
        packets, drops, _freeze = _STATS3.unpack(
            self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size))
        return packets, drops

    def close(self) -> None:
        self._status.clear()
        self.view.release()
        self.map.close()
