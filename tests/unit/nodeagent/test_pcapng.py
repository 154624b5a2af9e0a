"""The one pcapng encoder, read back by our reader and by independent decoders (tshark, capinfos)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nodeagent.capture.stream import StreamEncoder
from nodeagent.transport.records import Record
from nodeagent.wire import Malformed, pcapng
from tests.component.agent_kit import tcp_frame

T0 = 1_700_000_000_123_456_789


def records() -> list[Record]:
    return [Record(T0 + i * 1000, 100 + i, "shop/web" if i % 2 else "shop/db", 5 + i % 2, 1 + i % 2,
                   tcp_frame(b"payload %d" % i, seq=i + 1)) for i in range(6)]


def stream() -> bytes:
    enc = StreamEncoder("node1")
    body = enc.start() + enc.records(records())
    body += enc.statistics({"shop/web": 3, "shop/db": 4}, {"shop/db": 1}, T0 + 10**9, T0)
    end = T0 + 2 * 10**9
    return body + enc.statistics({"shop/web": 3, "shop/db": 4}, {"shop/db": 1}, end, T0, final=True)


def test_reader_reads_back_packets_interfaces_and_statistics() -> None:
    reader = pcapng.Reader()
    data = stream()
    cut = len(pcapng.section_header("podmirror agent node1")) + 5
    reader.feed(data[:cut])  # a partial block waits for the rest
    assert [b.kind for b in reader.blocks()] == [pcapng.SHB]
    reader.feed(data[cut:])
    blocks = list(reader.blocks())
    assert reader.pending == 0
    ifaces = [pcapng.read_interface(b.body) for b in blocks if b.kind == pcapng.IDB]
    packets = [pcapng.read_packet(b.body) for b in blocks if b.kind == pcapng.EPB]
    stats = [pcapng.read_statistics(b.body) for b in blocks if b.kind == pcapng.ISB]
    assert [i.name for i in ifaces] == ["shop/db", "shop/web"]
    assert [p.frame for p in packets] == [r.frame for r in records()]
    assert [p.ts_ns for p in packets] == [r.ts_ns for r in records()]
    assert packets[0].flags == pcapng.FLAG_OUTBOUND and packets[1].flags == pcapng.FLAG_INBOUND
    assert packets[1].comment == "shop/web ingress"
    # only the changed pod between calls; every pod at the end
    assert [(ifaces[s.iface].name, s.received, s.dropped) for s in stats] == [
        ("shop/db", 4, 1), ("shop/db", 4, 1), ("shop/web", 3, 0)]


def test_tshark_and_capinfos_decode_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "s.pcapng"
    path.write_bytes(stream())
    info = subprocess.run(["capinfos", "-M", str(path)], capture_output=True, text=True, check=True).stdout
    assert "pcapng" in info and "Number of packets:   6" in info
    assert "Number of interfaces in file: 2" in info
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=|",
                          "-e", "frame.interface_name", "-e", "frame.comment", "-e", "frame.len",
                          "-e", "frame.cap_len", "-e", "frame.time_epoch", "-e", "tcp.seq_raw"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    first = out[0].split("|")
    assert first[:2] == ["shop/db", "shop/db egress"]
    assert first[2] == "100" or int(first[2]) >= int(first[3])  # wire_len kept (at least the frame)
    assert first[4].startswith("1700000000.123456789")
    assert [line.split("|")[5] for line in out] == [str(i + 1) for i in range(6)]
    # the statistics block: tshark shows interface drops in its capture-file summary
    stats = subprocess.run(["capinfos", "-I", str(path)], capture_output=True, text=True).stdout
    assert "shop/db" in stats


BIG_ENDIAN_SHB = b"\x0a\x0d\x0d\x0a\x08\x00\x00\x00" + b"\x4d\x3c\x2b\x1a" * 5


@pytest.mark.parametrize("data", [b"\x00" * 28, BIG_ENDIAN_SHB])
def test_reader_refuses_what_is_not_a_little_endian_section(data: bytes) -> None:
    reader = pcapng.Reader()
    reader.feed(data)
    with pytest.raises(Malformed):
        list(reader.blocks())


def test_reader_refuses_a_giant_block_instead_of_buffering_it() -> None:
    reader = pcapng.Reader()
    reader.feed(pcapng.section_header() + pcapng.EPB.to_bytes(4, "little") + (1 << 30).to_bytes(4, "little"))
    with pytest.raises(Malformed, match="block length"):
        list(reader.blocks())
