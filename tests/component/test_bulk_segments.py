"""Bulk TCP (docs/datapath.md, "MTU, GSO and checksums"): a GSO super-packet's segments reach each
output in one ``offer_segments`` call; VXLAN sends them with UDP GSO (one datagram per segment on
the wire, fallback when refused), pcap appends them in one go (same records as one ``offer`` per
segment), the receiver yields to the loop past its byte budget. Real loopback sockets, no root."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from nodeagent import settings as settings_mod
from nodeagent.adapters import receiver as receiver_mod
from nodeagent.adapters.outputs import Fanout
from nodeagent.adapters.pcap_out import PcapOutput
from nodeagent.adapters.vxlan_out import VxlanOutput
from nodeagent.verdict import Direction, Forward
from nodeagent.wire import headers, pcap, vxlan
from nodeagent.wire.normalize import Normalizer
from tests.component.agent_kit import (
    KNOWN,
    make_settings,
    running,
    send_tunnel,
    sender,
    tcp_frame,
    tunnel_port,
    with_partial_checksum,
)
from tests.waiting import wait_for

PAYLOAD = bytes(i % 253 for i in range(20_000))
"""14 segments of 1460 bytes: 13 full and a last one of 1020."""


def _forward(frame: bytes, vni: int = 5) -> Forward:
    view = memoryview(frame)
    return Forward(view, headers.decode(view), vni, None, Direction.EGRESS, len(frame), 1.0)  # type: ignore[arg-type]


def _super(seq: int = 1) -> bytes:
    return with_partial_checksum(tcp_frame(PAYLOAD, seq=seq, flags="PA"))


def _segments(frame: bytes) -> list[bytes]:
    """The reference: what the normalizer makes of the frame (its own tests check it against scapy)."""
    out = Normalizer().apply(memoryview(frame), headers.decode(frame), len(frame))
    assert out is not None and len(out) == 14
    return [bytes(f) for f in out]


class Recorder:
    def __init__(self, name: str, many: bool) -> None:
        self.name, self.frames, self.calls = name, [], 0
        if many:
            self.offer_segments = self._many

    def offer(self, fwd: Forward) -> None:
        assert fwd.wire_len == len(fwd.frame)
        self.frames.append(bytes(fwd.frame))

    def _many(self, fwd: Forward, frames: list[memoryview]) -> None:
        self.calls += 1
        self.frames.extend(bytes(f) for f in frames)


class Broken:
    name = "broken"

    def offer(self, fwd: Forward) -> None:
        raise RuntimeError("bug")

    def offer_segments(self, fwd: Forward, frames: list[memoryview]) -> None:
        raise RuntimeError("bug")


def test_fanout_hands_segments_in_one_call_or_one_offer_each():
    frame = _super()
    many, single, broken = Recorder("many", True), Recorder("single", False), Broken()
    fanout = Fanout([many, broken, single], Normalizer())  # type: ignore[list-item]
    fanout.offer(_forward(frame))
    assert many.calls == 1 and many.frames == _segments(frame)
    assert single.frames == _segments(frame)
    assert fanout.failed == {"broken": len(_segments(frame))}  # the packets of the call that raised
    old = Recorder("many", True)
    Fanout([old], Normalizer(), segments=False).offer(_forward(frame))  # type: ignore[list-item]
    assert old.calls == 0 and old.frames == _segments(frame)


def _sensor_socket() -> socket.socket:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    return sink


async def _vxlan_send(
    sink: socket.socket, frames: list[bytes], *, gso: bool, refuse_gso: bool
) -> tuple[list[bytes], Any]:
    sensor = {"host": "127.0.0.1", "port": sink.getsockname()[1], "gso": gso}
    cfg = settings_mod.load({"outputs": {"sensors": [sensor]}})
    out = VxlanOutput(cfg.outputs.sensors)
    await out.open()
    try:
        if refuse_gso:  # SO_NO_CHECK: the kernel refuses UDP GSO on such a socket with EINVAL
            for sock in out.sensors[0].socks:
                sock.setsockopt(socket.SOL_SOCKET, 11, 1)
        fanout = Fanout([out], Normalizer())
        for frame in frames:
            fanout.offer(_forward(frame, vni=0x123456))
        got = [sink.recv(65536) for _ in range(14 * len(frames))]
        return got, out.state()
    finally:
        await out.close()


@pytest.mark.parametrize(("gso", "refuse_gso"), [(True, False), (True, True), (False, False)])
async def test_vxlan_sends_one_datagram_per_segment_with_or_without_gso(gso, refuse_gso):
    frames = [_super(1), _super(1 + len(PAYLOAD))]
    sink = _sensor_socket()
    try:
        got, state = await _vxlan_send(sink, frames, gso=gso, refuse_gso=refuse_gso)
        sink.setblocking(False)
        with pytest.raises(BlockingIOError):
            sink.recv(65536)  # nothing more: no super-datagram leaked through unsplit
    finally:
        sink.close()
    expected = [vxlan.header(0x123456) + s for f in frames for s in _segments(f)]
    assert got == expected
    assert state["packets"] == 28
    sensor = state["sensors"][0]
    assert sensor["bytes"] == sum(len(d) for d in expected)
    paths = tuple(sensor[k] for k in ("gso", "gso_fallbacks", "gso_sends", "mmsg_sends"))
    if refuse_gso:  # the first super-packet's GSO send is refused, then both go by sendmmsg
        assert paths == (False, 1, 0, 2)
    else:
        assert paths == ((True, 0, 2, 0) if gso else (False, 0, 0, 2))


async def test_vxlan_read_only_segments_go_one_sendmsg_each():
    """Frames ctypes cannot address (bytes) still go out whole, one ``sendmsg`` each."""
    sink = _sensor_socket()
    cfg = settings_mod.load({"outputs": {"sensors": [f"127.0.0.1:{sink.getsockname()[1]}"]}})
    out = VxlanOutput(cfg.outputs.sensors)
    await out.open()
    try:
        segments = [memoryview(s) for s in _segments(_super())]
        out.offer_segments(_forward(_super()), segments)
        got = [sink.recv(65536) for _ in segments]
    finally:
        await out.close()
        sink.close()
    assert got == [vxlan.header(5) + bytes(s) for s in segments]
    assert out.state()["sensors"][0]["mmsg_sends"] == 0 and out.state()["packets"] == 14


@pytest.mark.parametrize("max_bytes", [1 << 20, 40_000])
async def test_pcap_records_of_segments_equal_one_offer_each(tmp_path, max_bytes):
    frames = [_super(1 + i * len(PAYLOAD)) for i in range(3)]
    cfg = settings_mod.load({"outputs": {"pcap": {"dir": str(tmp_path), "max_bytes": max_bytes}}})
    out = PcapOutput(cfg.outputs.pcap)
    await out.open()
    fanout = Fanout([out], Normalizer())
    for frame in frames:
        fanout.offer(_forward(frame))
    await out.close()
    files = sorted(tmp_path.glob("*.pcap"))
    records = [r for path in files for r in pcap.read(path.read_bytes())[1]]
    assert [bytes(r.data) for r in records] == [s for f in frames for s in _segments(f)]
    assert all(r.orig_len == len(r.data) for r in records)
    assert out.state()["packets"] == 42 and out.state()["bytes"] == sum(p.stat().st_size - 24 for p in files)
    assert all(p.stat().st_size <= max_bytes for p in files)
    assert len(files) == (1 if max_bytes > 200_000 else -(-sum(16 + len(r.data) for r in records) // 37_000))


@pytest.mark.parametrize(("recvmmsg", "count", "wakeups"), [(False, 8, 4), (True, 40, 2)])
async def test_receiver_yields_to_the_loop_past_its_byte_budget(monkeypatch, recvmmsg, count, wakeups):
    """All datagrams are queued before the first wake-up (sent synchronously): without the budget
    one wake-up would take them all. With 60 KB: two 30 KB datagrams per wake-up one at a time,
    or one recvmmsg call (32 datagrams) per wake-up."""
    monkeypatch.setattr(receiver_mod, "WAKEUP_BYTES", 60_000)
    cfg = make_settings(normalize={"segment": False, "fix_checksums": False}, listen={"recvmmsg": recvmmsg})
    async with running(cfg) as agent:
        sock = sender(KNOWN)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        send_tunnel(sock, tunnel_port(agent), tcp_frame(b"x" * 30_000), count=count)
        sock.close()
        await wait_for(lambda: agent.stats.total.forwarded == count, what="all datagrams forwarded")
        assert agent.receiver.wakeups == wakeups
