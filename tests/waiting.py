"""The tests' one way to wait: poll a condition until a deadline, never sleep and hope.

``poll`` for plain code (subprocesses, namespaces), ``wait_for`` inside a test's event loop (it
sleeps with ``asyncio.sleep``, so the agent under test keeps running). Both return the
predicate's first truthy value and fail the test with ``what`` when ``timeout`` seconds pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class _Deadline:
    def __init__(self, timeout: float, what: str) -> None:
        self.timeout, self.what = timeout, what
        self.end = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise AssertionError(f"timed out after {self.timeout} s waiting for {self.what}")


def poll(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
         interval: float = 0.02) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value."""
    deadline = _Deadline(timeout, what)
    while not (value := predicate()):
        deadline.check()
        time.sleep(interval)
    return value


async def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
                   interval: float = 0.01) -> T:
    """``poll`` on the running event loop."""
    deadline = _Deadline(timeout, what)
    while not (value := predicate()):
        deadline.check()
        await asyncio.sleep(interval)
    return value
