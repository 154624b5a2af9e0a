"""Reconnect delays: exponential backoff with "equal jitter" (pure; the caller sleeps).

A delay is drawn in [base/2, base], the base doubling up to ``maximum``; ``reset`` after a
success. Jitter spreads the reconnects of many agents after a collector comes back.
"""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with "equal jitter": delay in [base/2, base], base doubling to max."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self.initial, self.maximum, self._rng = initial, maximum, rng
        self._base = initial

    def next(self) -> float:
        base, self._base = self._base, min(self._base * 2, self.maximum)
        return base / 2 + self._rng.random() * base / 2

    def reset(self) -> None:
        self._base = self.initial
