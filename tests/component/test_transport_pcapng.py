"""The collector's pcapng files: what was sent, with pod identity and direction; tshark reads them."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from nodeagent.adapters.transport_out import TransportOutput
from nodeagent.collector.server import Collector
from nodeagent.collector.sinks import PcapngSink
from nodeagent.settings import TransportSettings
from nodeagent.tls import server_context
from tests.component.transport_kit import Certs, forward, frame, pcapng_packets, stop_output
from tests.waiting import wait_for

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")


async def _send(tmp_path: Path, sink: PcapngSink, frames: list[bytes]) -> None:
    certs = Certs(tmp_path)
    collector = Collector([sink], server_context(certs.cert_file, certs.key_file, certs.ca_file))
    _, port = await collector.start("127.0.0.1", 0)
    out = TransportOutput([("127.0.0.1", port)], certs.agent_context(),
                          TransportSettings(max_delay=0.01, batch_bytes=16 * 1024))
    runner = asyncio.create_task(out.run(), name="transport")
    loop = asyncio.get_running_loop()
    try:
        for raw in frames:
            out.offer(forward(raw, loop.time()))
        await wait_for(lambda: out.state()["delivered"] == len(frames), 10, "delivery")
    finally:
        await stop_output(out, runner)
        await collector.stop()


@needs_tshark
async def test_pcapng_holds_the_sent_frames_with_pod_identity_and_direction(tmp_path: Path) -> None:
    frames = [frame(5000 + i, 80, reply=bool(i % 2), payload=bytes([i]) * (40 + i)) for i in range(60)]
    sink = PcapngSink(str(tmp_path / "out"))
    await _send(tmp_path, sink, frames)
    (path,) = sink.files
    assert [f for _, f in pcapng_packets(Path(path))] == frames
    fields = subprocess.run(
        ["tshark", "-r", path, "-T", "fields", "-e", "frame.interface_name",
         "-e", "frame.interface_description", "-e", "frame.len", "-e", "frame.packet_flags_direction"],
        check=True, capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert len(fields) == len(frames)
    rows = [line.split("\t") for line in fields]
    assert {r[0] for r in rows[0::2]} == {"shop/client"} and {r[0] for r in rows[1::2]} == {"shop/server"}
    assert rows[0][1].startswith("pod shop/client vni 5")
    assert [int(r[2]) for r in rows] == [len(f) for f in frames]
    assert {int(r[3], 0) for r in rows} == {2}      # 2 = outbound: each pod's own egress
    info = subprocess.run(["capinfos", "-c", "-M", path], check=True, capture_output=True, text=True,
                          timeout=60).stdout
    assert f"{len(frames)}" in info


async def test_pcapng_files_rotate_by_size_and_stay_bounded(tmp_path: Path) -> None:
    frames = [frame(6000 + i, 80, payload=bytes([i % 256]) * 900) for i in range(300)]
    sink = PcapngSink(str(tmp_path / "out"), max_bytes=20_000, max_files=3)
    await _send(tmp_path, sink, frames)
    files = sorted((tmp_path / "out").glob("*.pcapng"))
    assert len(files) == 3 and sink.rotations > 3          # rotated, and only 3 kept
    kept = [f for p in files for _, f in pcapng_packets(p)]
    assert kept == frames[len(frames) - len(kept):]        # the newest packets, in order
