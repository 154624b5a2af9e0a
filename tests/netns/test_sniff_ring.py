"""Sniff mode's two I/O paths against tcpdump ground truth, and the ring's losses counted.

``--sniff-io ring`` (TPACKET_V3 ring + sendmmsg, the default) and ``--sniff-io socket`` (one
recvfrom/sendto per frame) must mirror the same traffic exactly once. A ring that overflows (the
sidecar stopped with SIGSTOP while the pod sends) must count every frame it lost
(``kernel_drops``, PACKET_STATISTICS), so that what the interface carried equals what was
mirrored plus what was counted lost.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.podlab import (
    NODE_IP,
    GroundTruth,
    PodLab,
    compare,
    describe,
    is_tunnel,
    make_podlab,
    split_tcp_payload,
)

pytestmark = pytest.mark.needs_root


@pytest.fixture
def podlab(tmp_path: Path) -> Iterator[PodLab]:
    yield from make_podlab(tmp_path)


def _counters(log: Path) -> dict[str, int]:
    line = [ln for ln in log.read_text().splitlines() if "sniff mode stopped:" in ln][-1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.split("stopped:", 1)[1])}


@pytest.mark.parametrize("io", ["ring", "socket"])
def test_both_sniff_paths_mirror_every_packet_exactly_once(podlab: PodLab, io: str) -> None:
    proc, log = podlab.start_sidecar("sniff", "--sniff-io", io)
    expected = "TPACKET_V3 ring + sendmmsg" if io == "ring" else "recvfrom + sendto"
    assert expected in log.read_text()
    podlab.wait_quiet()
    truth = GroundTruth(podlab)
    podlab.drive_mix()
    podlab.wait_quiet()
    frames, records = truth.stop()
    mirrored = [r.inner for r in records]
    truth_rest, truth_streams, _ = split_tcp_payload(frames)
    rest, streams, _ = split_tcp_payload(mirrored)
    missing, extra = compare(truth_rest, rest)
    assert (missing, extra) == (0, 0), (
        f"missing {describe(list((Counter(truth_rest) - Counter(rest)).elements()))} "
        f"extra {describe(list((Counter(rest) - Counter(truth_rest)).elements()))}")
    assert streams == truth_streams
    assert not any(is_tunnel(f) for f in mirrored)
    assert podlab.stop_sidecar(proc) == 0, log.read_text()
    counters = _counters(log)
    assert counters["kernel_drops"] == 0 and counters["send_errors"] == 0
    assert counters["sent"] == counters["captured_in"] + counters["captured_out"]


def test_a_burst_leaves_the_ring_in_blocks_and_reaches_the_receiver_whole(podlab: PodLab) -> None:
    proc, log = podlab.start_sidecar("sniff", "--sniff-io", "ring")
    podlab.wait_quiet()
    start = len(podlab.records())
    podlab.client("udp", NODE_IP, 53, count=400, size=300)
    podlab.wait_quiet()
    burst = [r for r in podlab.records()[start:] if len(r.inner) == 342]
    assert podlab.stop_sidecar(proc) == 0, log.read_text()
    c = _counters(log)
    assert len(burst) == 800 and c["kernel_drops"] == 0, c  # 400 queries, 400 answers, each once
    assert c["blocks"] < c["captured_in"] + c["captured_out"], "frames left the ring in blocks"


def test_a_ring_that_overflows_counts_every_frame_it_lost(podlab: PodLab) -> None:
    proc, log = podlab.start_sidecar("sniff", "--sniff-io", "ring")
    podlab.client("udp", NODE_IP, 53, count=3)
    podlab.wait_quiet()
    os.kill(proc.pid, signal.SIGSTOP)  # the ring (8 MiB) fills; the kernel then drops and counts
    try:
        podlab.client("udp", NODE_IP, 53, count=8000, size=1400)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    podlab.wait_quiet()
    assert podlab.stop_sidecar(proc) == 0, log.read_text()
    c = _counters(log)
    assert c["kernel_drops"] > 1000, c
    captured = c["captured_in"] + c["captured_out"]
    assert c["sent"] + c["send_errors"] == captured
    # Every frame is mirrored or counted lost: the probes' 6 and the burst's 16,000 (8,000 queries,
    # 8,000 answers), and at most a few neighbour frames (ARP, IPv6 neighbour discovery) besides.
    assert 6 + 16000 <= captured + c["kernel_drops"] <= 6 + 16000 + 10, c
