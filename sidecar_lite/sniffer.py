"""Sniff mode: AF_PACKET capture of one interface, VXLAN-encapsulated to the agent in Python.

Model: one blocking loop over one preallocated buffer ``[VXLAN header | frame]``. The header is
written once; ``recvfrom_into`` fills the frame part in place and ``sendto`` sends a memoryview of
header + frame, so no per-packet allocation or copy. Needs only CAP_NET_RAW.

Invariants:

- the socket is bound to one interface, so each frame is seen once: outgoing frames through the
  transmit tap (``PACKET_OUTGOING``), incoming ones with their own packet type. Nothing is captured
  twice and both directions are counted separately;
- the kernel socket filter (``bpf.mirror_program``) excludes the tunnel, fragments included, and is
  attached before the socket is bound, so not one tunnel packet is ever queued to us;
- a frame that cannot travel in one UDP datagram (a GSO super-packet longer than 65,499 bytes) is
  sent truncated and counted as ``oversize``; send errors are counted, and so are the frames the
  kernel dropped because this process fell behind (``PACKET_STATISTICS``): nothing is lost silently.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence

from sidecar_lite import bpf, vxlan
from sidecar_lite.cbpf import Instruction

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MAX_UDP_PAYLOAD = 65_507
"""IPv4 UDP payload limit (65535 - 20 - 8): VXLAN header + frame must fit."""
BUFFER = 8 + 65_536 + 1024
"""Header + the largest GSO frame, with room to detect anything larger (MSG_TRUNC)."""
SOL_PACKET = 263
PACKET_STATISTICS = 6
TPACKET_STATS = struct.Struct("=II")  # tp_packets, tp_drops; the kernel resets both on every read
IP_MTU_DISCOVER = 10  # Linux values; not exported by the socket module
IP_PMTUDISC_DONT = 0


@dataclasses.dataclass
class Counters:
    captured_in: int = 0
    captured_out: int = 0
    sent: int = 0
    sent_bytes: int = 0
    send_errors: int = 0
    oversize: int = 0
    kernel_drops: int = 0
    """Frames the kernel dropped because our socket queue was full (PACKET_STATISTICS)."""

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())


class Sniffer:
    """Capture ``interface`` and send every frame to ``agent`` with ``vni``."""

    def __init__(
        self, interface: str, agent: tuple[str, int], vni: int, program: Sequence[Instruction]
    ) -> None:
        self.counters = Counters()
        self._agent = agent
        self._buf = bytearray(BUFFER)
        self._buf[:8] = vxlan.header(vni)
        self._view = memoryview(self._buf)
        self._rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: no frames yet
        bpf.attach_socket_filter(self._rx, program)
        self._rx.bind((interface, ETH_P_ALL))
        self._rx.settimeout(0.5)  # lets the loop notice the stop flag and its periodic duties
        self._rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # No DF: frames at the interface MTU become two IP fragments rather than an EMSGSIZE loss.
        self._tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        self._tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)

    def set_program(self, program: Sequence[Instruction]) -> None:
        """Replace the socket filter (push-down) without reopening the socket."""
        bpf.attach_socket_filter(self._rx, program)

    def update_kernel_drops(self) -> None:
        """Fold the kernel's drop count for our socket into the counters (cheap; call periodically)."""
        raw = self._rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS.size)
        self.counters.kernel_drops += TPACKET_STATS.unpack(raw)[1]

    def close(self) -> None:
        self.update_kernel_drops()
        self._rx.close()
        self._tx.close()

    def run(self, should_stop: Callable[[], bool], tick: Callable[[float], None]) -> None:
        """Loop until ``should_stop()``; ``tick(now)`` runs at least every 0.5 s for periodic work."""
        frame = self._view[8:]
        # Locals: attribute lookups per packet cost more than the rest of the loop body.
        recv, send, agent = self._rx.recvfrom_into, self._tx.sendto, self._agent
        view, c = self._view, self.counters
        next_tick = 0.0
        while not should_stop():
            now = time.monotonic()
            if now >= next_tick:
                self.update_kernel_drops()
                tick(now)
                next_tick = now + 0.5
            try:
                size, address = recv(frame, 0, socket.MSG_TRUNC)
            except TimeoutError:
                continue
            except InterruptedError:
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
