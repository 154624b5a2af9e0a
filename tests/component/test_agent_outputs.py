"""Outputs on loopback: pcap files read by capinfos/tshark, rotation and disk bound, VXLAN to sensors."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from nodeagent.adapters.pcap_out import PcapOutput
from nodeagent.pods.index import PodInfo
from nodeagent.settings import PcapSettings
from nodeagent.verdict import Direction, Forward
from nodeagent.wire import headers, pcap, vxlan
from tests.component.agent_kit import (
    KNOWN,
    make_settings,
    running,
    send_tunnel,
    sender,
    tcp_frame,
    tunnel_port,
    udp_frame,
    with_partial_checksum,
)
from tests.waiting import wait_for

needs_tshark = pytest.mark.skipif(
    shutil.which("tshark") is None or shutil.which("capinfos") is None,
    reason="needs tshark and capinfos (Debian package tshark)",
)


def _sensor_socket(host: str = "127.0.0.3") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(5)
    return sock


def _pcaps(directory) -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".pcap"))


@needs_tshark
async def test_pcap_files_are_read_by_capinfos_and_tshark(tmp_path):
    frames = [tcp_frame(f"packet {i}".encode(), sport=40000 + i) for i in range(25)]
    before = time.time()
    async with running(make_settings(outputs={"pcap": {"dir": str(tmp_path)}})) as agent:
        good = sender(KNOWN)
        for frame in frames:
            send_tunnel(good, tunnel_port(agent), frame)
        await wait_for(lambda: agent.stats.total.forwarded == 25)
        good.close()
    after = time.time()  # the agent flushed and closed its files on stop
    files = _pcaps(tmp_path)
    assert len(files) == 1
    info = subprocess.run(
        ["capinfos", "-M", "-c", "-E", "-T", "-r", files[0]], capture_output=True, text=True, check=True
    ).stdout
    assert info.split()[-2:] == ["Ethernet", "25"] or "25" in info.split()
    fields = subprocess.run(
        [
            "tshark",
            "-r",
            files[0],
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "tcp.srcport",
            "-e",
            "frame.len",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    rows = [line.split("\t") for line in fields if line]
    assert [int(r[1]) for r in rows] == list(range(40000, 40025))
    assert all(before <= float(r[0]) <= after for r in rows)  # wall-clock time of reception
    assert [int(r[2]) for r in rows] == [len(f) for f in frames]


async def test_pcap_microseconds_and_sliced_orig_len(tmp_path):
    settings = make_settings(
        outputs={"pcap": {"dir": str(tmp_path), "precision": "us"}},
        filters={"rules": [{"action": "include", "snaplen": 64}]},
    )
    async with running(settings) as agent:
        good = sender(KNOWN)
        send_tunnel(good, tunnel_port(agent), tcp_frame(b"y" * 500))
        await wait_for(lambda: agent.stats.total.forwarded == 1)
        good.close()
    nanos, records = pcap.read(Path(_pcaps(tmp_path)[0]).read_bytes())
    assert not nanos and len(records) == 1
    assert len(records[0].data) == 64 and records[0].orig_len == len(tcp_frame(b"y" * 500))


async def test_pcap_rotates_by_size_and_deletes_oldest_to_stay_under_the_bound(tmp_path):
    pcap_settings = {"dir": str(tmp_path), "max_bytes": 4000, "max_total_bytes": 12000}
    async with running(make_settings(outputs={"pcap": pcap_settings})) as agent:
        good = sender(KNOWN)
        frame = udp_frame(b"z" * 200)
        for _ in range(10):
            send_tunnel(good, tunnel_port(agent), frame, count=20)
            await wait_for(lambda: agent.stats.total.received % 20 == 0)
        await wait_for(lambda: agent.stats.total.forwarded == 200)
        good.close()
    state = agent.fanout.state()["pcap"]  # after stop: the last buffers are written
    files = _pcaps(tmp_path)
    sizes = [os.path.getsize(f) for f in files]
    assert all(size <= 4000 for size in sizes)
    assert sum(sizes) <= 12000
    assert state["files_deleted"] > 0 and state["files_opened"] == state["files_deleted"] + len(files)
    for path in files:  # every kept file is whole and readable
        _, records = pcap.read(Path(path).read_bytes())
        assert records and all(r.data == frame for r in records)
    record = pcap.RECORD_SIZE + len(frame)
    assert state["dropped"] == {"queue_full": 0, "write_error": 0, "internal_error": 0}
    assert state["packets"] == 200 and state["bytes"] == 200 * record


async def test_pcap_rotates_by_time(tmp_path):
    async with running(make_settings(outputs={"pcap": {"dir": str(tmp_path), "max_seconds": 0.5}})) as agent:
        good = sender(KNOWN)
        send_tunnel(good, tunnel_port(agent), tcp_frame())
        await wait_for(lambda: agent.stats.total.forwarded == 1)
        await wait_for(lambda: agent.fanout.state()["pcap"]["files_opened"] == 1)
        await wait_for(lambda: len(_pcaps(tmp_path)) == 1, what="first file written")
        # the file is closed by age even without traffic; the next packet opens a second file
        await wait_for(lambda: agent.fanout.outputs[0]._file_bytes == 0, timeout=5, what="rotation by age")
        send_tunnel(good, tunnel_port(agent), tcp_frame())
        await wait_for(lambda: agent.stats.total.forwarded == 2)
        good.close()
    assert len(_pcaps(tmp_path)) == 2


async def test_vxlan_to_sensor_keeps_the_sender_vni_or_uses_the_sensor_vni():
    keep, fixed = _sensor_socket("127.0.0.3"), _sensor_socket("127.0.0.4")
    for sensor, sensor_cfg in ((keep, {}), (fixed, {"vni": 99})):
        host, port = sensor.getsockname()
        settings = make_settings(outputs={"sensors": [{"host": host, "port": port, **sensor_cfg}]})
        async with running(settings) as agent:
            good = sender(KNOWN)
            frame = tcp_frame(b"to the sensor")
            send_tunnel(good, tunnel_port(agent), frame, vni=5)
            data = await asyncio.to_thread(sensor.recv, 70000)
            good.close()
            decoded = vxlan.decode(data)
            assert bytes(decoded.inner) == frame
            assert decoded.vni == sensor_cfg.get("vni", 5)
            state = agent.fanout.state()["vxlan"]
            assert state["sensors"][0]["packets"] == 1
        sensor.close()


async def test_vxlan_errors_are_counted_per_sensor_when_the_sensor_is_gone():
    gone = _sensor_socket()
    host, port = gone.getsockname()
    gone.close()  # nothing listens: the kernel answers ICMP port unreachable
    async with running(make_settings(outputs={"sensors": [f"{host}:{port}"]})) as agent:
        good = sender(KNOWN)
        for _ in range(5):
            send_tunnel(good, tunnel_port(agent), tcp_frame())
            await wait_for(lambda: agent.stats.total.received % 1 == 0)
        await wait_for(lambda: agent.stats.total.forwarded == 5)
        good.close()
        sensor_state = agent.fanout.state()["vxlan"]["sensors"][0]
    assert sensor_state["dropped"]["unreachable"] >= 1 and sensor_state["last_error"] == "ECONNREFUSED"
    assert sensor_state["packets"] + sum(sensor_state["dropped"].values()) == 5  # each packet once


async def test_gso_super_packet_reaches_the_sensor_as_valid_mss_segments():
    sensor = _sensor_socket()
    payload = bytes(range(256)) * 40  # 10,240 bytes
    super_packet = with_partial_checksum(tcp_frame(payload, seq=7000, flags="FPA"))
    async with running(
        make_settings(outputs={"sensors": [":".join(map(str, sensor.getsockname()))]})
    ) as agent:
        good = sender(KNOWN)
        send_tunnel(good, tunnel_port(agent), super_packet)
        segments = [bytes(vxlan.decode(await asyncio.to_thread(sensor.recv, 70000)).inner) for _ in range(8)]
        good.close()
        norm = agent.normalizer.state()
    assert norm["segmented"] == 1 and norm["segments"] == 8
    assert all(len(s) <= 1514 for s in segments)
    rebuilt = b"".join(bytes(Ether(s)[TCP].payload) for s in segments)
    assert rebuilt == payload
    for segment in segments:
        parsed = Ether(segment)
        claimed = parsed[TCP].chksum
        del parsed[TCP].chksum
        assert Ether(bytes(parsed))[TCP].chksum == claimed  # scapy recomputes the same checksum
    assert [Ether(s)[TCP].seq for s in segments] == [7000 + i * 1460 for i in range(8)]
    sensor.close()


async def test_partial_udp_checksum_is_completed_for_the_pcap(tmp_path):
    frame = with_partial_checksum(udp_frame(b"dns?"))
    async with running(make_settings(outputs={"pcap": {"dir": str(tmp_path)}})) as agent:
        good = sender(KNOWN)
        send_tunnel(good, tunnel_port(agent), frame)
        await wait_for(lambda: agent.stats.total.forwarded == 1)
        good.close()
        assert agent.normalizer.fixed == 1
    _, records = pcap.read(Path(_pcaps(tmp_path)[0]).read_bytes())
    assert records[0].data == udp_frame(b"dns?")  # what the NIC would have put on the wire
    assert headers.decode(records[0].data).dport == 53


async def test_a_stalled_disk_drops_and_counts_instead_of_growing_or_blocking(tmp_path):
    """The writer thread is held; the loop keeps taking packets, bounded by max_pending buffers."""
    out = PcapOutput(PcapSettings(dir=str(tmp_path), buffer_bytes=1000))
    out.max_pending = 4
    release = threading.Event()
    write = out._writer.write

    def slow_write(data, rotate, packets):
        release.wait(10)
        write(data, rotate, packets)

    out._writer.write = slow_write  # type: ignore[method-assign]
    await out.open()
    frame = memoryview(udp_frame(b"s" * 200))
    fwd = Forward(
        frame,
        headers.decode(frame),
        5,
        PodInfo(ip="10.0.0.5", vni=5, namespace="a", name="b"),
        Direction.EGRESS,
        len(frame),
        0.0,
    )
    started = time.monotonic()
    for _ in range(200):
        out.offer(fwd)
    assert time.monotonic() - started < 1.0  # never waited for the disk
    state = out.state()
    assert state["dropped"]["queue_full"] > 0
    assert state["packets"] + state["dropped"]["queue_full"] == 200
    assert state["pending_buffers"] <= 4
    release.set()
    await out.close()
    _, records = pcap.read(Path(_pcaps(tmp_path)[0]).read_bytes())
    assert len(records) == state["packets"]


async def test_a_failed_write_counts_its_records_as_write_errors(tmp_path):
    """A real failure: the directory is gone when the writer opens its first file."""
    directory = tmp_path / "gone"
    out = PcapOutput(PcapSettings(dir=str(directory)))
    await out.open()
    directory.rmdir()
    frame = memoryview(udp_frame(b"w" * 100))
    fwd = Forward(frame, headers.decode(frame), 5, PodInfo(ip="10.0.0.5", vni=5, namespace="a", name="b"),
                  Direction.EGRESS, len(frame), 0.0)
    for _ in range(10):
        out.offer(fwd)
    await out.close()
    state = out.state()
    assert state["packets"] == 10 and state["dropped"] == {"queue_full": 0, "write_error": 10}
    assert "No such file" in state["last_error"]


@needs_tshark
async def test_tshark_verifies_every_checksum_of_a_normalized_super_packet(tmp_path):
    """What sensors see: segments no larger than 1514 bytes whose IP and TCP checksums verify."""
    payload = bytes(range(256)) * 60  # 15,360 bytes in one GSO super-packet
    frames = [
        with_partial_checksum(tcp_frame(payload, seq=1, flags="PA")),
        with_partial_checksum(udp_frame(b"answer")),
    ]
    async with running(make_settings(outputs={"pcap": {"dir": str(tmp_path)}})) as agent:
        good = sender(KNOWN)
        for frame in frames:
            send_tunnel(good, tunnel_port(agent), frame)
        await wait_for(lambda: agent.stats.total.forwarded == 2)
        good.close()
    fields = ["frame.len", "ip.checksum.status", "tcp.checksum.status", "udp.checksum.status"]
    out = subprocess.run(
        [
            "tshark",
            "-r",
            _pcaps(tmp_path)[0],
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
            "-T",
            "fields",
            *[a for f in fields for a in ("-e", f)],
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == 11 + 1  # 15,360 / 1,460 -> 11 segments, then the datagram
    assert all(int(r[0]) <= 1514 for r in rows)
    assert all(r[1] == "1" for r in rows)  # 1 = good
    assert all(r[2] == "1" for r in rows[:-1]) and rows[-1][3] == "1"


@needs_tshark
async def test_without_normalization_tshark_flags_the_partial_checksum(tmp_path):
    """The control for the test above: the mirrored copy as it arrives is rejected by a checker."""
    settings = make_settings(
        outputs={"pcap": {"dir": str(tmp_path)}}, normalize={"segment": False, "fix_checksums": False}
    )
    async with running(settings) as agent:
        good = sender(KNOWN)
        send_tunnel(good, tunnel_port(agent), with_partial_checksum(tcp_frame(b"x" * 3000)))
        await wait_for(lambda: agent.stats.total.forwarded == 1)
        good.close()
    out = subprocess.run(
        [
            "tshark",
            "-r",
            _pcaps(tmp_path)[0],
            "-o",
            "tcp.check_checksum:TRUE",
            "-T",
            "fields",
            "-e",
            "frame.len",
            "-e",
            "tcp.checksum.status",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [str(len(tcp_frame(b"x" * 3000))), "0"]  # 0 = bad
