"""Sniff mode: AF_PACKET capture of one interface, VXLAN-encapsulated to the agent in Python.

Two ways to read and send (``--sniff-io``), one contract:

- ``ring`` (default): a TPACKET_V3 ring (``ring.Ring``): frames are read in place from memory
  shared with the kernel, a block at a time, and sent with ``sendmmsg(2)``, up to ``BATCH``
  datagrams per system call, each datagram two iovecs (the 8-byte VXLAN header, the frame in the
  ring): no system call to read, no copy in user space, one call per batch to send.
  ``bench/bench_sidecar.py`` measures its CPU per packet against the socket path at the same load.
- ``socket``: one ``recvfrom_into`` into a preallocated ``[VXLAN header | frame]`` buffer and one
  ``sendto`` per frame; the fallback when the ring cannot be set up (the sidecar logs why).

Invariants, both ways:

- the socket is bound to one interface, so each frame is seen once: outgoing frames through the
  transmit tap (``PACKET_OUTGOING``), incoming ones with their own packet type. Nothing is captured
  twice and both directions are counted separately;
- the kernel socket filter (``bpf.mirror_program``) excludes the tunnel, fragments included, and is
  attached before the socket is bound (the ring too), so not one tunnel packet is ever queued;
- a frame that cannot travel in one UDP datagram (a GSO super-packet longer than 65,499 bytes) is
  sent truncated and counted as ``oversize``; send errors are counted, and so are the frames the
  kernel dropped because this process fell behind (``PACKET_STATISTICS``): nothing is lost silently.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence

from sidecar_lite import bpf, mmsg, vxlan
from sidecar_lite.cbpf import Instruction
from sidecar_lite.ring import Ring

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MAX_UDP_PAYLOAD = 65_507
"""IPv4 UDP payload limit (65535 - 20 - 8): VXLAN header + frame must fit."""
MAX_FRAME = MAX_UDP_PAYLOAD - vxlan.HEADER.size
BUFFER = 8 + 65_536 + 1024
"""Socket path: header + the largest GSO frame, with room to detect anything larger (MSG_TRUNC)."""
SOL_PACKET = 263
PACKET_STATISTICS = 6
TPACKET_STATS = struct.Struct("=II")  # tp_packets, tp_drops; the kernel resets both on every read
IP_MTU_DISCOVER = 10  # Linux values; not exported by the socket module
IP_PMTUDISC_DONT = 0
BATCH = 64
"""Datagrams per sendmmsg (the ring path)."""
IO_MODES = ("ring", "socket")


@dataclasses.dataclass
class Counters:
    captured_in: int = 0
    captured_out: int = 0
    sent: int = 0
    sent_bytes: int = 0
    send_errors: int = 0
    oversize: int = 0
    kernel_drops: int = 0
    """Frames the kernel dropped because we fell behind (PACKET_STATISTICS)."""
    blocks: int = 0
    """Ring blocks read (the ring path; frames per block = captured / blocks)."""

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())


class Sniffer:
    """Capture ``interface`` and send every frame to ``agent`` with ``vni`` (``io``: see above)."""

    def __init__(self, interface: str, agent: tuple[str, int], vni: int, program: Sequence[Instruction],
                 io: str = "ring") -> None:
        self.counters = Counters()
        self._header = vxlan.header(vni)
        self._rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: no frames yet
        bpf.attach_socket_filter(self._rx, program)
        self._ring: Ring | None = None
        if io == "ring":
            try:
                self._ring = Ring(self._rx)
            except OSError as exc:  # an old kernel or a sandbox without packet rings: the socket path
                log.warning("sniff: no TPACKET_V3 ring (%s); one recvfrom/sendto per frame", exc)
        self.io = "ring" if self._ring is not None else "socket"
        if self._ring is None:
            self._rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._rx.bind((interface, ETH_P_ALL))
        self._tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # No DF: frames at the interface MTU become two IP fragments rather than an EMSGSIZE loss.
        self._tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        self._tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self._agent = agent
        if self._ring is not None:
            self._tx.connect(agent)

    def set_program(self, program: Sequence[Instruction]) -> None:
        """Replace the socket filter (push-down) without reopening the socket."""
        bpf.attach_socket_filter(self._rx, program)

    def update_kernel_drops(self) -> None:
        """Fold the kernel's drop count for our socket into the counters (cheap; call periodically)."""
        if self._ring is not None:
            self.counters.kernel_drops += self._ring.stats()[1]
            return
        raw = self._rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS.size)
        self.counters.kernel_drops += TPACKET_STATS.unpack(raw)[1]

    def close(self) -> None:
        self.update_kernel_drops()
        if self._ring is not None:
            self._ring.close()
        self._rx.close()
        self._tx.close()

    def run(self, should_stop: Callable[[], bool], tick: Callable[[float], None]) -> None:
        """Loop until ``should_stop()``; ``tick(now)`` runs at least every 0.5 s for periodic work."""
        if self._ring is not None:
            self._run_ring(self._ring, should_stop, tick)
        else:
            self._run_socket(should_stop, tick)

    def _due(self, now: float, next_tick: float, tick: Callable[[float], None]) -> float:
        if now < next_tick:
            return next_tick
        self.update_kernel_drops()
        tick(now)
        return now + 0.5

    def _run_ring(self, ring: Ring, should_stop: Callable[[], bool], tick: Callable[[float], None]) -> None:
        sender = BatchSender(self._tx.fileno(), self._header)
        base, c, next_tick = ring.address, self.counters, 0.0
        head, size = sender.header
        while not should_stop():
            next_tick = self._due(time.monotonic(), next_tick, tick)
            if not ring.wait(500):
                continue
            values: list[int] = []
            for at, snaplen, length, outgoing in ring.frames():
                if outgoing:
                    c.captured_out += 1
                else:
                    c.captured_in += 1
                if snaplen < length or snaplen > MAX_FRAME:
                    c.oversize += 1
                    snaplen = min(snaplen, MAX_FRAME)
                values += (head, size, base + at, snaplen)
                if len(values) == 4 * BATCH:
                    sender.send(values, c)
                    values = []
            if values:
                sender.send(values, c)
            ring.release()
            c.blocks += 1  # only now: the iovecs pointed into the block until the sends returned

    def _run_socket(self, should_stop: Callable[[], bool], tick: Callable[[float], None]) -> None:
        buf = bytearray(BUFFER)
        buf[:8] = self._header
        view = memoryview(buf)
        frame = view[8:]
        self._rx.settimeout(0.5)  # lets the loop notice the stop flag and its periodic duties
        # Locals: attribute lookups per packet cost more than the rest of the loop body.
        recv, send, agent, c = self._rx.recvfrom_into, self._tx.sendto, self._agent, self.counters
        next_tick = 0.0
        while not should_stop():
            next_tick = self._due(time.monotonic(), next_tick, tick)
            try:
                size, address = recv(frame, 0, socket.MSG_TRUNC)
            except (TimeoutError, InterruptedError):
                continue
            if address[2] == PACKET_OUTGOING:
                c.captured_out += 1
            else:
                c.captured_in += 1
            length = 8 + size
            if length > MAX_UDP_PAYLOAD:
                c.oversize += 1
                length = MAX_UDP_PAYLOAD
            try:
                send(view[:length], agent)
            except OSError:
                c.send_errors += 1  # ENOBUFS, or a route gone: counted, logged with the counters
                continue
            c.sent += 1
            c.sent_bytes += length


class BatchSender:
    """``sendmmsg`` of up to ``BATCH`` datagrams ``header + frame`` on a connected socket.

    Message i uses iovecs 2i (the header, one buffer shared by all) and 2i+1 (the frame, by its
    address and length); a send writes all the (address, length) pairs with one ``pack_into``.
    """

    def __init__(self, fd: int, header: bytes) -> None:
        self._func = mmsg.sendmmsg()
        if self._func is None:
            raise OSError("sendmmsg is not available")
        self._fd = fd
        self._head = ctypes.create_string_buffer(header, len(header))
        self.header = (ctypes.addressof(self._head), len(header))
        """(address, length) of the header: the first two values of every message."""
        self._iov = (ctypes.c_uint64 * (4 * BATCH))()
        self._msgs = (mmsg.MMsgHdr * BATCH)()
        base = ctypes.addressof(self._iov)
        for i in range(BATCH):
            self._msgs[i].hdr.iov, self._msgs[i].hdr.iovlen = base + 32 * i, 2
        self._packs = [struct.Struct(f"={4 * n}Q") for n in range(BATCH + 1)]
        self._msgs_addr, self._msg_size = ctypes.addressof(self._msgs), ctypes.sizeof(mmsg.MMsgHdr)

    def send(self, values: list[int], c: Counters) -> None:
        """Send ``[head, head_len, frame, frame_len, ...]`` (addresses and lengths); count in ``c``."""
        count = len(values) // 4
        self._packs[count].pack_into(self._iov, 0, *values)
        done = 0
        while done < count:
            n: int = self._func(self._fd, self._msgs_addr + done * self._msg_size, count - done, 0)
            if n <= 0:  # the first message failed (ENOBUFS, ECONNREFUSED after an ICMP error): skip it
                c.send_errors += 1
                done += 1
                continue
            c.sent += n
            c.sent_bytes += sum(values[4 * done + 1 : 4 * (done + n) : 2])
            done += n
