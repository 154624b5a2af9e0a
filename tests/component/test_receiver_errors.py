"""receiver: a datagram whose processing raises (a bug) is counted as ``internal_error`` and the
receiver goes on with the next datagrams, in both drain loops (recvmmsg and recvfrom_into)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from nodeagent.adapters.droplog import DropLog
from nodeagent.adapters.receiver import Receiver
from nodeagent.pipeline import Pipeline
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.settings import ListenSettings
from nodeagent.stats import Stats
from nodeagent.verdict import Forward
from nodeagent.wire import vxlan
from tests.books import assert_balanced

POD = PodInfo(ip="127.0.0.1", vni=7, namespace="default", name="web", ips=("10.0.0.1",))


class _ExplodesOnTcp:
    """A cutoff stage with a bug: it raises on TCP packets, passes the rest."""

    evictions = 0

    def apply(self, meta, frame, vantage, now):  # type: ignore[no-untyped-def]
        if meta.proto == 6:
            raise RuntimeError("bug in a stage")
        return 0

    def __len__(self) -> int:
        return 0


def _datagram(l4: object) -> bytes:
    return vxlan.encode(7, bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / l4 / b"x"))


@pytest.mark.parametrize("recvmmsg", [True, False])
async def test_a_raising_datagram_is_counted_and_the_next_ones_still_processed(
    recvmmsg: bool, caplog: pytest.LogCaptureFixture
) -> None:
    stats = Stats()
    pipeline = Pipeline(pods=PodIndex([POD]), stats=stats, cutoff=_ExplodesOnTcp())  # type: ignore[arg-type]
    forwarded: list[Forward] = []
    receiver = Receiver(ListenSettings(host="127.0.0.1", port=0, recvmmsg=recvmmsg), pipeline,
                        forwarded.append, DropLog(60.0), stats)
    receiver.start(asyncio.get_running_loop())
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert receiver.address is not None
        with caplog.at_level(logging.ERROR, logger="nodeagent.adapters"):
            for l4 in (UDP(dport=53), TCP(dport=80), UDP(dport=53), TCP(dport=80), UDP(dport=53)):
                tx.sendto(_datagram(l4), receiver.address)
            async with asyncio.timeout(5):
                while stats.snapshot()["received"] < 5:
                    await asyncio.sleep(0.01)
        snap = stats.snapshot()
        assert snap["received"] == 5 and snap["forwarded"] == 3 and len(forwarded) == 3
        assert snap["drops"]["internal_error"] == 2
        assert_balanced(snap)
        assert snap["pipeline_received"] == 5
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1, "one traceback per interval, each failure counted"
    finally:
        tx.close()
        receiver.stop()
