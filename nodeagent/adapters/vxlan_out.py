"""VXLAN output: re-encapsulate each forwarded frame to remote sensors on UDP (4789 by default).

One *connected*, non-blocking UDP socket per sensor: ``send`` never blocks, and a connected socket
is the only kind to which the kernel reports ICMP port/host unreachable (as ECONNREFUSED or
EHOSTUNREACH on a later send), so a sensor that is down is visible per sensor in ``state()``.
Header and frame go out in one ``sendmsg`` with two buffers: no concatenation copy. A packet that
does not leave is counted per sensor under ``dropped`` by ``verdict.send_failure`` of its errno
(``unreachable``, ``queue_full`` for EAGAIN/ENOBUFS, ``send_error``; ``last_error`` names the
errno), so for each sensor: packets offered == ``packets`` + ``sum(dropped)``.

The VNI is the sender's (the pod's identity travels to the sensor) unless the sensor's settings
fix one.

Flow affinity (docs/transport.md): each packet goes to *one* sensor, chosen by the symmetric flow hash on a
consistent ring (``transport.affinity``): both directions of a connection reach the same sensor (a Zeek
cluster needs that), and a sensor that goes down moves only its own flows. The outer UDP source
port follows the same hash: each sensor has a small pool of connected sockets, each bound to its
own ephemeral port, indexed by the hash, so receivers that balance on the outer header keep flows
together too. Health: an ICMP unreachable reported on a send (ECONNREFUSED, EHOSTUNREACH...) marks
the sensor down for a hold-down time that doubles on each repeated failure (1 s to 30 s); when it
expires the sensor takes traffic again, and stays if no new error comes (so sensors come back
automatically). With ``probe_port`` set, a TCP connect every few seconds decides health instead.

Bulk TCP (``offer_segments``, see ``outputs.py``): the segments of one GSO super-packet belong to
one flow, so the hash and the sensor are chosen once, and they leave in as few ``sendmsg`` calls
as possible with UDP GSO (``UDP_SEGMENT``): the buffers ``header, seg0, header, seg1, ...`` go
down as one datagram with a segment size of ``8 + len(seg0)`` and the kernel cuts it into one
VXLAN datagram per segment (the last may be shorter; measured ~6 us per ``sendmsg`` saved per
segment). A call carries at most ``GSO_SEGMENTS`` segments and ``GSO_BYTES`` bytes (the UDP
length field bounds the super-datagram). When the kernel refuses (EINVAL: the segment plus outer
headers exceed the route's MTU, or the socket cannot offload; EIO: the device cannot checksum),
the sensor falls back to one ``sendmsg`` per segment for good, counted as ``gso_fallbacks``.
Without GSO the segments still leave in one system call each ``GSO_SEGMENTS``: ``sendmmsg(2)``
through ctypes (``MultiSend``: preallocated message and iovec arrays, the iovecs written with one
``pack_into``; measured 195 -> 125 us for 45 segments on loopback, ``mmsg_sends``).
Opt-in per sensor (``SensorSettings.gso``): the kernel cuts the super-datagram only where the
packet leaves through a device that cannot carry it whole (a NIC, in hardware or software); over
a veth to a sensor on the same node the sensor's sniffer would see the super-datagram (measured
in the lab: tcpdump in the sensor namespace records 64 KB VXLAN datagrams).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

from nodeagent.adapters import mmsg
from nodeagent.settings import SensorSettings
from nodeagent.transport import affinity
from nodeagent.verdict import Forward, OutputDrop, send_failure
from nodeagent.wire import vxlan

log = logging.getLogger(__name__)

SNDBUF = 4 << 20
UDP_SEGMENT = 103
"""``setsockopt``/cmsg at ``SOL_UDP`` (linux/udp.h); Python 3.11's socket module lacks the name."""
GSO_SEGMENTS = 64
"""Segments per GSO send: the kernel's UDP_MAX_SEGMENTS was 64 before Linux 5.x raised it to 128."""
GSO_BYTES = 65000
"""UDP payload bytes per GSO send, under the 65,507 the IPv4 UDP length allows."""
_GSO_REFUSED = frozenset({errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EMSGSIZE})
POOL = 8
"""Sockets (outer source ports) per sensor: enough for a receiver's RSS to spread flows."""
HOLDDOWN_MIN, HOLDDOWN_MAX = 1.0, 30.0
"""Seconds a sensor stays down after an ICMP unreachable, doubling on each repeated failure."""
PROBE_INTERVAL = 2.0
SENSOR_DROPS = (OutputDrop.QUEUE_FULL, OutputDrop.UNREACHABLE, OutputDrop.SEND_ERROR)
"""What a sensor can lose a packet to (``verdict.send_failure`` of the errno)."""


class MultiSend:
    """``sendmmsg(2)`` of up to ``GSO_SEGMENTS`` datagrams ``header + frame`` on a connected socket.

    Message i uses iovecs 2i and 2i+1 of one preallocated array (no name, no control data); a
    send writes the iovecs' (address, length) pairs with one ``pack_into``. The frames must be
    writable buffers (ctypes takes their address): the normalizer's segments are.
    """

    def __init__(self, func: Any) -> None:
        self._func = func
        self._iov = (ctypes.c_uint64 * (4 * GSO_SEGMENTS))()
        self._msgs = (mmsg.MMsgHdr * GSO_SEGMENTS)()
        base = ctypes.addressof(self._iov)
        for i in range(GSO_SEGMENTS):
            self._msgs[i].hdr.iov, self._msgs[i].hdr.iovlen = base + 32 * i, 2
        self._packs = [struct.Struct(f"={4 * n}Q") for n in range(GSO_SEGMENTS + 1)]
        self._headers: dict[bytes, Any] = {}

    def send(self, fd: int, header: bytes, frames: list[memoryview]) -> int:
        """Datagrams the kernel took (from the first); OSError when it took none."""
        head = self._headers.get(header)
        if head is None:
            head = self._headers[header] = ctypes.create_string_buffer(header, len(header))
        head_addr, size = ctypes.addressof(head), len(header)
        keep = [ctypes.c_char.from_buffer(f) for f in frames]  # TypeError: read-only
        values: list[int] = []
        for frame, ref in zip(frames, keep, strict=True):
            values += (head_addr, size, ctypes.addressof(ref), len(frame))
        self._packs[len(frames)].pack_into(self._iov, 0, *values)
        n: int = self._func(fd, self._msgs, len(frames), 0)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return n


_SENDMMSG = mmsg.sendmmsg()


class Sensor:
    """One remote sensor: its sockets (one per outer source port), health and counters."""

    def __init__(self, settings: SensorSettings) -> None:
        self.settings = settings
        self.address = (settings.host, settings.port)
        self.vni = settings.vni if isinstance(settings.vni, int) else None
        self.socks: list[socket.socket] = []
        self.packets = self.bytes = 0
        self.dropped = dict.fromkeys(SENSOR_DROPS, 0)
        self.last_error = ""
        """The errno name of the last failed send."""
        self._headers: dict[int, bytes] = {}
        self.gso = settings.gso
        """UDP GSO for ``send_segments`` (``SensorSettings.gso``); False after the kernel refused it."""
        self.gso_sends = self.gso_fallbacks = self.mmsg_sends = 0
        self._multi = MultiSend(_SENDMMSG) if _SENDMMSG is not None else None
        self.up = True
        self.failures = 0
        """Consecutive hold-downs; reset after HOLDDOWN_MAX seconds up."""
        self.since = 0.0
        """``now`` of the last health change."""

    def open(self) -> None:
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        for _ in range(POOL):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            sock.connect(self.address)   # binds an ephemeral source port: this socket's port
            self.socks.append(sock)

    def _header(self, vni: int) -> bytes:
        vni = vni if self.vni is None else self.vni
        header = self._headers.get(vni)
        if header is None:
            header = self._headers[vni] = vxlan.header(vni)
        return header

    def send(self, fwd: Forward, flow: int = 0) -> bool:
        """Send on the socket the flow hash picks; False when the sensor is unreachable (ICMP)."""
        try:
            self.bytes += self.socks[flow % len(self.socks)].sendmsg((self._header(fwd.vni), fwd.frame))
            self.packets += 1
        except OSError as exc:
            return self._failed(exc, 1)
        return True

    def send_segments(self, vni: int, frames: list[memoryview], flow: int) -> bool:
        """One super-packet's segments (all but the last of one length), UDP GSO when allowed."""
        header, sock = self._header(vni), self.socks[flow % len(self.socks)]
        size = len(header) + len(frames[0])
        step = max(1, min(GSO_SEGMENTS, GSO_BYTES // size))
        cmsg = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        for start in range(0, len(frames), step):
            part = frames[start : start + step]
            if not self.gso or len(part) == 1:
                if not self._send_many(sock, header, part):
                    # The sensor is unreachable: the rest of the super-packet goes down with it.
                    self.dropped[OutputDrop.UNREACHABLE] += len(frames) - start - len(part)
                    return False
                continue
            try:
                self.bytes += sock.sendmsg([b for frame in part for b in (header, frame)], cmsg)
                self.packets += len(part)
                self.gso_sends += 1
            except OSError as exc:
                if exc.errno in _GSO_REFUSED:
                    self._refuse_gso(exc)
                    return self.send_segments(vni, frames[start:], flow)
                return self._failed(exc, len(frames) - start)   # this part and the rest
        return True

    def _send_many(self, sock: socket.socket, header: bytes, frames: list[memoryview]) -> bool:
        """One datagram per frame, in one ``sendmmsg`` when possible; the rest one by one."""
        sent = 0
        if self._multi is not None and len(frames) > 1:
            try:
                sent = self._multi.send(sock.fileno(), header, frames)
            except TypeError:
                pass  # read-only frames: no address for the iovec, plain sendmsg below
            except OSError as exc:
                return self._failed(exc, len(frames))
            else:
                self.mmsg_sends += 1
                self.packets += sent
                self.bytes += sent * len(header) + sum(len(f) for f in frames[:sent])
        for i in range(sent, len(frames)):
            if not self._send_one(sock, header, frames[i]):
                self.dropped[OutputDrop.UNREACHABLE] += len(frames) - i - 1   # abandoned with it
                return False
        return True

    def _send_one(self, sock: socket.socket, header: bytes, frame: memoryview) -> bool:
        try:
            self.bytes += sock.sendmsg((header, frame))
            self.packets += 1
        except OSError as exc:
            return self._failed(exc, 1)
        return True

    def _refuse_gso(self, exc: OSError) -> None:
        self.gso = False
        self.gso_fallbacks += 1
        log.warning("VXLAN to sensor %s:%d: UDP GSO refused (%s), one sendmsg per segment from now on",
                    self.address[0], self.address[1], exc.strerror)

    def _failed(self, exc: OSError, packets: int) -> bool:
        """Count ``packets`` lost to ``exc``; False when the sensor is unreachable (the caller stops
        sending to it and marks it down)."""
        reason = send_failure(exc.errno)
        first = self.dropped[reason] == 0
        self.dropped[reason] += packets
        self.last_error = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
        if first:
            log.warning("VXLAN to sensor %s:%d: %s, %s (further drops of this kind only counted)",
                        self.address[0], self.address[1], reason, exc.strerror)
        return reason is not OutputDrop.UNREACHABLE

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks = []

    def state(self) -> dict[str, Any]:
        return {"address": f"{self.address[0]}:{self.address[1]}", "vni": self.vni,
                "state": "up" if self.up else "down", "packets": self.packets, "bytes": self.bytes,
                "dropped": dict(self.dropped), "last_error": self.last_error, "gso": self.gso,
                "gso_sends": self.gso_sends, "gso_fallbacks": self.gso_fallbacks,
                "mmsg_sends": self.mmsg_sends}


class VxlanOutput:
    """The ``Output`` sending each flow to one sensor (see the module docstring and ``outputs.py``)."""

    def __init__(self, sensors: Sequence[SensorSettings], name: str = "vxlan") -> None:
        self.name = name
        self.sensors = [Sensor(s) for s in sensors]
        self._ring = affinity.Ring(str(i) for i in range(len(self.sensors))) if self.sensors else None
        self._down: dict[int, float] = {}
        """Sensor index -> ``now`` when its hold-down ends (inf while a probe says it is down)."""

    async def open(self) -> None:
        for sensor in self.sensors:
            sensor.open()

    async def run(self) -> None:
        """Probe sensors that configure ``probe_port`` (TCP connect); others need no task."""
        probed = [i for i, s in enumerate(self.sensors) if s.settings.probe_port]
        if not probed:
            return
        loop = asyncio.get_running_loop()
        while True:
            for i in probed:
                self.set_health(i, await self._probe(self.sensors[i]), loop.time())
            await asyncio.sleep(PROBE_INTERVAL)

    @staticmethod
    async def _probe(sensor: Sensor) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(sensor.settings.host, sensor.settings.probe_port), 1.0)
        except (TimeoutError, OSError):
            return False
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        return True

    def offer(self, fwd: Forward) -> None:
        i, h = self._pick(fwd)
        if not self.sensors[i].send(fwd, h):
            self.set_health(i, False, fwd.now)

    def offer_segments(self, fwd: Forward, frames: list[memoryview]) -> None:
        """A super-packet's segments (``outputs.py``): one flow, so one hash, one sensor."""
        i, h = self._pick(fwd)
        if not self.sensors[i].send_segments(fwd.vni, frames, h):
            self.set_health(i, False, fwd.now)

    def _pick(self, fwd: Forward) -> tuple[int, int]:
        """(sensor index, flow hash) for this packet's flow."""
        h = affinity.flow_hash(fwd.meta, fwd.frame)
        if self._down:
            self._revive(fwd.now)
        return (int(self._ring.lookup(h)) if len(self.sensors) > 1 and self._ring else 0), h

    def set_health(self, i: int, up: bool, now: float, until: float | None = None) -> None:
        """Mark sensor ``i`` up or down; down lasts until ``until`` (default: the hold-down)."""
        sensor = self.sensors[i]
        if up == sensor.up and (up or i in self._down):
            return
        if up:
            self._down.pop(i, None)
        else:
            if now - sensor.since > HOLDDOWN_MAX and sensor.up:
                sensor.failures = 0
            sensor.failures += 1
            hold = min(HOLDDOWN_MAX, HOLDDOWN_MIN * 2 ** (sensor.failures - 1))
            probed = bool(sensor.settings.probe_port)
            self._down[i] = until if until is not None else (float("inf") if probed else now + hold)
            log.warning("sensor %s:%d down (%s)", *sensor.address, sensor.last_error or "probe failed")
        sensor.up, sensor.since = up, now
        if self._ring is not None:
            self._ring.set_down(str(j) for j in self._down)

    def _revive(self, now: float) -> None:
        for i, until in list(self._down.items()):
            if now >= until:
                self.set_health(i, True, now)

    async def flush(self) -> None:
        return None  # nothing is buffered in user space

    async def close(self) -> None:
        for sensor in self.sensors:
            sensor.close()

    def state(self) -> dict[str, Any]:
        return {
            "packets": sum(s.packets for s in self.sensors),
            "dropped": {reason: sum(s.dropped[reason] for s in self.sensors) for reason in SENSOR_DROPS},
            "gso_sends": sum(s.gso_sends for s in self.sensors),
            "gso_fallbacks": sum(s.gso_fallbacks for s in self.sensors),
            "sensors": [s.state() for s in self.sensors],
        }
