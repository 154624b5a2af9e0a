"""VXLAN output: re-encapsulate each forwarded frame to remote sensors on UDP (4789 by default).

One *connected*, non-blocking UDP socket per sensor: ``send`` never blocks, and a connected socket
is the only kind to which the kernel reports ICMP port/host unreachable (as ECONNREFUSED or
EHOSTUNREACH on a later send), so a sensor that is down is visible per sensor in ``state()``.
Header and frame go out in one ``sendmsg`` with two buffers: no concatenation copy.

The VNI is the sender's (the pod's identity travels to the sensor) unless the sensor's settings
fix one. Today every sensor gets every packet; ``Sensor`` objects are kept in a list so that issue
5's flow affinity (a symmetric 5-tuple hash choosing one sensor per flow) can replace ``offer``'s
loop with a choice without touching the per-sensor accounting.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from typing import Any

from nodeagent.settings import SensorSettings
from nodeagent.verdict import Forward
from nodeagent.wire import vxlan

log = logging.getLogger(__name__)

SNDBUF = 4 << 20


class Sensor:
    """One remote sensor: its socket and its counters."""

    def __init__(self, settings: SensorSettings) -> None:
        self.settings = settings
        self.address = (settings.host, settings.port)
        self.vni = settings.vni if isinstance(settings.vni, int) else None
        self.sock: socket.socket | None = None
        self.packets = self.bytes = 0
        self.errors: dict[str, int] = {}
        self.last_error = ""
        self._headers: dict[int, bytes] = {}

    def open(self) -> None:
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        sock.connect(self.address)
        self.sock = sock

    def send(self, fwd: Forward) -> None:
        vni = fwd.vni if self.vni is None else self.vni
        header = self._headers.get(vni)
        if header is None:
            header = self._headers[vni] = vxlan.header(vni)
        try:
            assert self.sock is not None
            self.bytes += self.sock.sendmsg((header, fwd.frame))
            self.packets += 1
        except OSError as exc:
            self._count(exc)

    def _count(self, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
        count = self.errors.get(name, 0)
        self.errors[name] = count + 1
        self.last_error = name
        if count == 0:
            log.warning("VXLAN to sensor %s:%d: %s (further errors of this kind only counted)",
                        self.address[0], self.address[1], exc.strerror)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def state(self) -> dict[str, Any]:
        return {"address": f"{self.address[0]}:{self.address[1]}", "vni": self.vni,
                "packets": self.packets, "bytes": self.bytes, "errors": dict(self.errors),
                "last_error": self.last_error}


class VxlanOutput:
    """The ``Output`` sending to every configured sensor (see ``adapters/outputs.py``)."""

    def __init__(self, sensors: Sequence[SensorSettings], name: str = "vxlan") -> None:
        self.name = name
        self.sensors = [Sensor(s) for s in sensors]

    async def open(self) -> None:
        for sensor in self.sensors:
            sensor.open()

    async def run(self) -> None:
        return None

    def offer(self, fwd: Forward) -> None:
        for sensor in self.sensors:
            sensor.send(fwd)

    async def flush(self) -> None:
        return None  # nothing is buffered in user space

    async def close(self) -> None:
        for sensor in self.sensors:
            sensor.close()

    def state(self) -> dict[str, Any]:
        return {
            "packets": sum(s.packets for s in self.sensors),
            "errors": sum(sum(s.errors.values()) for s in self.sensors),
            "sensors": [s.state() for s in self.sensors],
        }
