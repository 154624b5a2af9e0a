"""The ``Output`` protocol and ``Fanout``, which hands each forwarded packet to every output.

Contract for an output (pcap files, VXLAN to sensors, batched transport, ...):

- ``offer(fwd)`` is called on the event loop for every packet and **never blocks**. ``fwd.frame``
  is a view into the receiver's reused buffer: it is valid only during the call, so an output that
  keeps the bytes copies them (``bytes(fwd.frame)``) or writes them into its own buffer at once.
  An output that cannot take a packet (queue full, send error) counts it in its own ``state()``
  under ``dropped`` {``verdict.OutputDrop`` reason: packets}, listing every reason it can emit;
  the pipeline already counted the packet as forwarded, so the invariant
  ``received == forwarded + sum(drops) + held`` is untouched by output trouble (the per-output counters
  say what each output really delivered). ``Fanout`` adds ``internal_error`` to every output's
  ``dropped``: the packets of the calls in which the output raised.
- ``open()`` runs before the receiver is bound; ``run()`` is the output's background work (timers,
  reconnects), a root task under the agent's supervisor: returning is fine, raising stops the agent.
- ``flush()`` pushes buffered data out (SIGTERM calls it); ``close()`` releases everything.
- ``state()`` is a JSON-able dict shown under ``/status`` ``outputs.<name>``; integer values in it
  also become ``podmirror_output_*`` gauges in ``/metrics``.

``Fanout`` normalizes each frame for sensors first (``wire/normalize.py``: GSO super-packets
re-segmented, partial checksums completed), once, then offers the result to every output.

Segments (optional, for bulk TCP): an output may also define ``offer_segments(fwd, frames)``.
A GSO super-packet becomes ~45 MSS-sized segments; such an output receives all of them in ONE
call (``fwd`` describes the super-packet: pod, VNI, direction, time, the flow in ``meta``;
``frames`` are its normalized segments, each a whole frame of ``wire_len == len(frame)``, in
order, all but the last of one length, views valid only during the call). It then pays its
per-packet overhead (flow hash, clock, checks) once per super-packet and can batch the I/O
(UDP GSO, one buffer append). An output without it gets one ``offer`` per segment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from nodeagent.verdict import Forward, OutputDrop
from nodeagent.wire.normalize import Normalizer

log = logging.getLogger(__name__)
_new = tuple.__new__


@runtime_checkable
class Output(Protocol):
    name: str
    """Unique key under ``/status`` ``outputs`` and the ``output`` label in ``/metrics``."""

    async def open(self) -> None: ...

    async def run(self) -> None: ...

    def offer(self, fwd: Forward) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...

    def state(self) -> dict[str, Any]: ...


class Fanout:
    """Normalize once, then offer to every output. An output that raises is counted, not fatal."""

    def __init__(
        self, outputs: Sequence[Output], normalizer: Normalizer | None, *, segments: bool = True
    ) -> None:
        self.outputs: list[Output] = []
        self.normalizer = normalizer
        self.segments = segments
        """Hand a super-packet's segments in one ``offer_segments`` call where an output has it
        (False: one ``offer`` per segment everywhere; the bench's before/after switch)."""
        self.failed: dict[str, int] = {}
        """Output name -> packets of the ``offer``/``offer_segments`` calls that raised."""
        self._many: list[tuple[Output, Callable[[Forward, list[memoryview]], None] | None]] = []
        for output in outputs:
            self.add(output)

    def add(self, output: Output) -> None:
        if any(o.name == output.name for o in self.outputs):
            raise ValueError(f"two outputs named {output.name!r}")
        self.outputs.append(output)
        many = getattr(output, "offer_segments", None) if self.segments else None
        self._many.append((output, many))

    def offer(self, fwd: Forward) -> None:
        if not self.outputs:
            return  # nothing consumes the frame: no reason to normalize it
        normalizer = self.normalizer
        if normalizer is None:
            self._offer_all(fwd)
            return
        frames = normalizer.apply(fwd.frame, fwd.meta, fwd.wire_len)
        if frames is None:
            self._offer_all(fwd)
            return
        if len(frames) == 1:
            # tuple.__new__ instead of NamedTuple._replace: 1.1 -> 0.2 us per packet (measured with
            # bench/bench_pipeline.py's mix, where most forwarded frames get their checksum completed).
            frame = frames[0]
            self._offer_all(_new(Forward, (memoryview(frame), fwd.meta, fwd.vni, fwd.pod, fwd.direction,
                                           len(frame), fwd.now)))
            return
        self._offer_segments(fwd, [memoryview(f) for f in frames])

    def _offer_segments(self, fwd: Forward, frames: list[memoryview]) -> None:
        singles: list[Forward] | None = None
        for output, many in self._many:
            taken = 0  # segments the output took before it raised (one call for offer_segments)
            try:
                if many is not None:
                    many(fwd, frames)
                    continue
                if singles is None:
                    singles = [fwd._replace(frame=f, wire_len=len(f)) for f in frames]
                for single in singles:
                    output.offer(single)
                    taken += 1
            except Exception:  # as in _offer_all: counted, logged once, the others go on
                self._failed(output, len(frames) - taken)

    def _offer_all(self, fwd: Forward) -> None:
        for output in self.outputs:
            try:
                output.offer(fwd)
            except Exception:  # an output's bug must not stop the others: counted, logged once
                self._failed(output, 1)

    def _failed(self, output: Output, packets: int) -> None:
        count = self.failed.get(output.name, 0)
        self.failed[output.name] = count + packets
        if count == 0:
            log.exception("output %s failed to take a packet (further failures only counted)", output.name)

    def state(self) -> dict[str, Any]:
        out = {o.name: o.state() for o in self.outputs}
        for name, state in out.items():
            state.setdefault("dropped", {})[OutputDrop.INTERNAL_ERROR] = self.failed.get(name, 0)
        return out
