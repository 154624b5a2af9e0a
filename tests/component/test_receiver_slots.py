"""receiver: ``BatchReader``'s precomputed slots (the drain loop's offsets) match its
``size``/``source`` accessors on real loopback datagrams."""

from __future__ import annotations

import select
import socket
import time

import pytest

from nodeagent.adapters.mmsg import BatchReader


def test_batch_reader_slots_match_size_and_source():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        try:
            reader = BatchReader(rx.fileno(), count=4)
        except OSError:
            pytest.skip("recvmmsg is not available")
        for size in (10, 20, 30):
            tx.sendto(b"x" * size, rx.getsockname())
        got, deadline = 0, time.monotonic() + 5
        while got < 3 and time.monotonic() < deadline:
            select.select([rx], [], [], 0.1)
            n = reader.recv()
            for i in range(n):
                start, at, w = reader.slots[i]
                assert start == i * 65536 and reader.lens[at] == reader.size(i) == 10 * (got + 1)
                assert reader.source(i) == "127.0.0.1"
                assert reader.sources4[reader.name_words[w + 1]] == "127.0.0.1"
                got += 1
        assert got == 3
    finally:
        rx.close()
        tx.close()
