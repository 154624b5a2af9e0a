"""Target ``pipeline``: a datagram from a known sender through every stage the agent runs by default
plus filters and a container selection (``nodeagent.pipeline``: VXLAN, headers, containers,
vantage, filters, dedup with its digest, cutoff), then normalization of what is forwarded.

Checks: ``process`` returns one ``Forward`` or one ``Drop`` and never raises (a raise would be an
``internal_error`` in the agent); ``received == forwarded + sum(drops)`` after every datagram; a
forwarded frame is never longer than the datagram; its normalization obeys the ``wire`` bounds.
Each input is a fresh pipeline fed up to four datagrams (the stages keep per-flow state), each
framed as ``sender:u8 length:u16`` (``sender`` also advances the clock), so real datagrams seed it.
"""

from __future__ import annotations

import math
import struct

from tests.fuzz import harness

with harness.instrumented():
    from nodeagent import settings
    from nodeagent.pods.index import PodIndex
    from nodeagent.stats import Stats
    from nodeagent.verdict import Drop, Forward
    from nodeagent.wire import normalize
    from nodeagent.workers.worker import build_pipeline, static_pods

SENDERS = ("10.0.0.5", "10.0.0.9")
SETTINGS = settings.load({
    "senders": ["10.0.0.5,5,shop/web", "10.0.0.9,9,shop/db,5432+53"],
    "peers": ["10.1.0.7,shop/cache"],
    "filters": {"rules": [{"action": "exclude", "ports": [9999]},
                          {"action": "include", "protocol": "tcp", "snaplen": 200, "ports": [8443]}]},
})
NORMALIZER = normalize.Normalizer()
FRAME = struct.Struct("!BH")


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """``(sender byte, datagram)`` pairs, at most four; a short tail is the last datagram."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data) and len(out) < 4:
        head = data[at:at + FRAME.size].ljust(FRAME.size, b"\0")
        who, size = FRAME.unpack(head)
        at += FRAME.size
        out.append((who, data[at:at + size]))
        at += size
    return out


def test_one_input(data: bytes) -> None:
    stats = Stats()
    pipeline = build_pipeline(SETTINGS, PodIndex(static_pods(SETTINGS)), stats)
    now = 0.0
    for who, datagram in frames(data):
        now += (who >> 1) / 50
        verdict = pipeline.process(datagram, SENDERS[who & 1], now)
        total = stats.total
        assert total.received == total.forwarded + sum(total.drops.values())
        if isinstance(verdict, Forward):
            assert len(verdict.frame) <= len(datagram) and verdict.wire_len <= len(datagram)
            out = NORMALIZER.apply(verdict.frame, verdict.meta, verdict.wire_len)
            if out is not None:
                assert len(out) <= max(1, math.ceil(len(verdict.frame) / normalize.MIN_MSS))
        else:
            assert isinstance(verdict, Drop)
    assert stats.total.received == len(frames(data))


if __name__ == "__main__":
    harness.main(test_one_input)
