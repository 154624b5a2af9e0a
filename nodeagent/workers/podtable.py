"""The supervisor's pod table, shared with the workers: every change pushed to them at once.

The node has one pod table (static senders and peers, or the one Kubernetes watch), kept by the
supervisor; each worker has a copy. ``SharedPodIndex`` is a ``PodIndex`` that, on any change,
schedules one call of ``on_change`` (the pool's push of the additions and removals) in the next
loop turn: a relist of thousands of pods is one message, and a worker receives it before any
later message on its channel (a ``status`` request included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from nodeagent.pods.index import PodIndex, PodInfo


class SharedPodIndex(PodIndex):
    """The supervisor's pod table: each change schedules one push of the changes to the workers
    (coalesced: a relist of thousands of pods is one message), in the loop turn after it, so a
    worker has the pod before any later message on its channel (a ``status`` request included)."""

    def __init__(self, pods: Iterable[PodInfo] = ()) -> None:
        self.on_change: Callable[[], None] | None = None
        self._scheduled = False
        super().__init__(pods)

    def add(self, pod: PodInfo) -> None:
        super().add(pod)
        self._changed()

    def remove(self, ip: str) -> PodInfo | None:
        pod = super().remove(ip)
        self._changed()
        return pod

    def replace_all(self, pods: Iterable[PodInfo]) -> None:
        super().replace_all(pods)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._push)

    def _push(self) -> None:
        self._scheduled = False
        if self.on_change is not None:
            self.on_change()
