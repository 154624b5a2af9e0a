"""Plain integer counters: what the pipeline received, forwarded and dropped, in total and per pod.

Written only from the event loop's thread; read at any time by ``/status`` and ``/metrics``.
The invariant ``received == forwarded + sum(drops)`` holds between any two calls, because each
packet is counted as received and as its outcome in the same synchronous ``Pipeline.process``.
"""

from __future__ import annotations

from typing import Any

from nodeagent.verdict import Drop

UNKNOWN_POD = "-"
"""Per-pod key for datagrams whose sender is not a known pod."""


class Counters:
    __slots__ = ("received", "received_bytes", "forwarded", "forwarded_bytes", "drops", "drop_bytes",
                 "last_seen")

    def __init__(self) -> None:
        self.received = self.received_bytes = self.forwarded = self.forwarded_bytes = 0
        self.drops: dict[Drop, int] = dict.fromkeys(Drop, 0)
        self.drop_bytes: dict[Drop, int] = dict.fromkeys(Drop, 0)
        self.last_seen: float | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "received_bytes": self.received_bytes,
            "forwarded": self.forwarded,
            "forwarded_bytes": self.forwarded_bytes,
            "drops": {reason.value: n for reason, n in self.drops.items()},
            "drop_bytes": {reason.value: n for reason, n in self.drop_bytes.items()},
        }


class Stats:
    """Totals and per-pod counters. ``saved_bytes`` counts bytes not sent, per mechanism."""

    def __init__(self) -> None:
        self.total = Counters()
        self.pods: dict[str, Counters] = {}
        self.saved_bytes: dict[str, int] = {}

    def pod(self, key: str) -> Counters:
        counters = self.pods.get(key)
        if counters is None:
            counters = self.pods[key] = Counters()
        return counters

    def receive(self, pod: Counters, nbytes: int, now: float) -> None:
        self.total.received += 1
        self.total.received_bytes += nbytes
        pod.received += 1
        pod.received_bytes += nbytes
        pod.last_seen = now

    def forward(self, pod: Counters, nbytes: int) -> None:
        self.total.forwarded += 1
        self.total.forwarded_bytes += nbytes
        pod.forwarded += 1
        pod.forwarded_bytes += nbytes

    def drop(self, pod: Counters, reason: Drop, nbytes: int) -> None:
        self.total.drops[reason] += 1
        self.total.drop_bytes[reason] += nbytes
        pod.drops[reason] += 1
        pod.drop_bytes[reason] += nbytes

    def save(self, mechanism: str, nbytes: int) -> None:
        self.saved_bytes[mechanism] = self.saved_bytes.get(mechanism, 0) + nbytes

    def snapshot(self) -> dict[str, Any]:
        total = self.total.snapshot()
        total["pods"] = {key: counters.snapshot() for key, counters in self.pods.items()}
        total["saved_bytes"] = dict(self.saved_bytes)
        return total
