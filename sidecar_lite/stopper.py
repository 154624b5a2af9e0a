"""SIGTERM/SIGINT -> a stop flag that also wakes a waiting loop (no sleeping through a signal).

``signal.set_wakeup_fd`` writes a byte to a socketpair when a signal arrives, so ``wait`` is a
``select`` on it with a timeout: it returns at once on a signal and otherwise after ``timeout``.
"""

from __future__ import annotations

import select
import signal
import socket
from types import FrameType


class Stopper:
    def __init__(self) -> None:
        self.stopped = False
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def install(self) -> None:
        signal.set_wakeup_fd(self._w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True

    def is_set(self) -> bool:
        return self.stopped

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when stop was requested."""
        if not self.stopped:
            select.select([self._r], [], [], max(0.0, timeout))
            try:
                self._r.recv(64)
            except BlockingIOError:
                pass
        return self.stopped

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._r.close()
        self._w.close()
