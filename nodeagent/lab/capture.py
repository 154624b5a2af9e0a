"""Ground truth and what arrived: tcpdump inside namespaces, tshark to decode, and a comparison model.

Model of "the same packet" across vantages (the pod's eth0, the agent's pcap, the remote sensor):

- TCP payload is compared as **bytes per flow direction** (src, sport, dst, dport): the kernel
  hands GSO super-packets (up to 64 KB) to tcpdump and to the mirror, and the agent re-segments
  them for sensors, so packet counts legitimately differ while payload bytes may not.
- TCP packets without payload (SYN, ACK, FIN, RST) and every other packet (UDP, ICMP, ICMPv6,
  ARP) are compared **one by one** on fields no hop rewrites: addresses, protocol, ports, lengths,
  the IPv4 identification, ICMP type, TCP flags, sequence and acknowledgement numbers. TTL, MACs
  and checksums are ignored (the node decrements the TTL, the agent completes partial checksums).

``Traffic.missing``/``duplicated``/``extra`` then say exactly what was lost or seen twice.
VXLAN captures (the sensor's UDP 4789) are unwrapped with ``strip_vxlan`` before decoding.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from nodeagent.lab.netns import LabError, run
from nodeagent.lab.topology import Lab

FIELDS = ("frame.len", "eth.type", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.proto", "ipv6.nxt",
          "ip.id", "ip.len", "ipv6.plen", "tcp.srcport", "tcp.dstport", "tcp.len", "tcp.flags",
          "tcp.seq_raw", "tcp.ack_raw", "udp.srcport", "udp.dstport", "udp.length", "icmp.type",
          "icmpv6.type", "arp.opcode", "arp.src.proto_ipv4", "arp.dst.proto_ipv4", "ip.frag_offset",
          "ip.flags.mf")
Key = tuple[str, ...]


@dataclasses.dataclass
class Traffic:
    """What one capture holds, in the comparison model above."""

    tcp_bytes: collections.Counter[Key] = dataclasses.field(default_factory=collections.Counter)
    packets: collections.Counter[Key] = dataclasses.field(default_factory=collections.Counter)
    frames: int = 0

    def add(self, other: Traffic) -> None:
        self.tcp_bytes.update(other.tcp_bytes)
        self.packets.update(other.packets)
        self.frames += other.frames

    def union(self, other: Traffic) -> Traffic:
        """Both vantages merged, a packet seen at both counted once (two pods of one flow)."""
        out = Traffic(frames=self.frames + other.frames)
        out.tcp_bytes = self.tcp_bytes | other.tcp_bytes
        out.packets = self.packets | other.packets
        return out

    def kinds(self) -> collections.Counter[str]:
        out = collections.Counter[str]()
        for k, n in self.packets.items():
            out[k[0]] += n
        return out

    def count(self, kind: str) -> int:
        return sum(n for k, n in self.packets.items() if k[0] == kind)


def diff(expected: Traffic, got: Traffic) -> dict[str, object]:
    """Empty when ``got`` has every packet of ``expected`` exactly once and every TCP byte."""
    missing = expected.packets - got.packets
    # Only packets of the expected window can be "seen twice"; a capture that runs longer than the
    # ground truth legitimately holds more (repeated MLD reports before the window, for example).
    dup = {k: n for k, n in got.packets.items() if n > expected.packets.get(k, 0) > 0}
    tcp = {k: (expected.tcp_bytes[k], got.tcp_bytes.get(k, 0)) for k in expected.tcp_bytes
           if got.tcp_bytes.get(k, 0) != expected.tcp_bytes[k]}
    out: dict[str, object] = {}
    if missing:
        out["missing"] = dict(list(missing.items())[:10]) | {"total": sum(missing.values())}
    if dup:
        out["duplicated"] = dict(list(dup.items())[:10])
    if tcp:
        out["tcp_bytes (expected, got)"] = tcp
    return out


def start_tcpdump(lab: Lab, ns: str, dev: str, path: Path, bpf: str = "",
                  timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """tcpdump writing ``path`` (full frames, packet-buffered); returns once it is listening."""
    log = path.with_suffix(".log")
    # --immediate-mode: without it libpcap's TPACKET_V3 ring hands packets over only when a block
    # fills or its 1 s timeout expires, so a capture that looks idle may still hold packets.
    # -B 128 MiB: a test's whole capture fits the kernel's buffer, so a tcpdump that the test's own load
    # starves of CPU still loses nothing (32 MiB dropped 129 of 35,845 packets at a sensor once).
    cmd = ["tcpdump", "-i", dev, "-s", "0", "-U", "--immediate-mode", "-n", "-B", "131072", "-w", str(path)]
    cmd += [bpf] if bpf else []
    proc = lab.ns.spawn(ns, cmd, log=log)
    deadline = time.monotonic() + timeout
    while "listening on" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"tcpdump in {ns} did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    return proc


def stop_tcpdump(lab: Lab, proc: subprocess.Popen[bytes], path: Path | None = None,
                 settle: float = 0.3, timeout: float = 15.0) -> None:
    """Stop tcpdump once it has written everything it received.

    SIGINT makes libpcap leave whatever is still in its ring buffer unread ("received by filter"
    but not "captured"); with ``path``, wait until the file has stopped growing first (-U writes
    each packet as it is read)."""
    if path is not None:
        deadline, size, since = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < deadline:
            now_size = path.stat().st_size if path.exists() else 0
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= settle:
                break
            time.sleep(0.05)
    lab.ns.stop(proc, sig=signal.SIGINT)


def captured_all(path: Path) -> bool:
    """True when tcpdump's log says every packet that passed its filter was written."""
    text = path.with_suffix(".log").read_text(errors="replace")
    counts: dict[str, str] = {}
    for line in text.splitlines():
        if " packets " in line:
            number, what = line.split(" packets ", 1)
            counts[what] = number
    complete = counts.get("captured") == counts.get("received by filter")
    return complete and counts.get("dropped by kernel") == "0"


def window(start: float, end: float) -> str:
    """A display filter for ``decode``: the frames captured from ``start`` to ``end`` (wall clock)."""
    return f"frame.time_epoch >= {start:.6f} and frame.time_epoch <= {end:.6f}"


def decode(path: Path, display_filter: str = "") -> Traffic:
    """Decode an Ethernet pcap with tshark into the comparison model (only the frames that match
    ``display_filter``, when given: e.g. ``window(start, end)``)."""
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"]
    if display_filter:
        cmd += ["-Y", display_filter]
    for name in FIELDS:
        cmd += ["-e", name]
    out = run(cmd, timeout=120).stdout
    traffic = Traffic()
    for line in out.splitlines():
        row = dict(zip(FIELDS, line.split("\t"), strict=False))
        traffic.frames += 1
        _classify(row, traffic)
    return traffic


def _classify(r: dict[str, str], t: Traffic) -> None:
    src, dst = r["ip.src"] or r["ipv6.src"], r["ip.dst"] or r["ipv6.dst"]
    length = r["ip.len"] or r["ipv6.plen"]
    if r["arp.opcode"]:
        t.packets[("arp", r["arp.src.proto_ipv4"], r["arp.dst.proto_ipv4"], r["arp.opcode"])] += 1
    elif r["ip.frag_offset"] not in ("", "0"):
        t.packets[("fragment", src, dst, r["ip.id"], r["ip.frag_offset"], length)] += 1
    elif r["tcp.srcport"]:
        flow = (src, r["tcp.srcport"], dst, r["tcp.dstport"])
        if int(r["tcp.len"] or 0) > 0:
            t.tcp_bytes[("tcp", *flow)] += int(r["tcp.len"])
        else:
            t.packets[("tcp", *flow, r["tcp.flags"], r["tcp.seq_raw"], r["tcp.ack_raw"])] += 1
    elif r["udp.srcport"]:
        t.packets[("udp", src, r["udp.srcport"], dst, r["udp.dstport"], r["ip.id"], r["udp.length"])] += 1
    elif r["icmp.type"] or r["icmpv6.type"]:
        kind = "icmp" if r["icmp.type"] else "icmpv6"
        t.packets[(kind, src, dst, r["icmp.type"] or r["icmpv6.type"], r["ip.id"], length)] += 1
    else:
        t.packets[("other", r["eth.type"], src, dst, r["ip.proto"] or r["ipv6.nxt"], length)] += 1


CHECKSUM_FIELDS = ("frame.len", "icmp.type", "icmpv6.type", "tcp.checksum", "tcp.checksum_calculated",
                   "ip.checksum.status", "tcp.checksum.status", "udp.checksum.status",
                   "icmpv6.checksum.status")
BAD = "0"
"""Wireshark's checksum status: 0 bad, 1 good, 2 unverified."""


def sensor_fitness(path: Path) -> dict[str, int]:
    """What a sensor would reject in an Ethernet pcap: bad checksums and the largest frame.

    Locally generated TCP/UDP carries only the pseudo-header sum (CHECKSUM_PARTIAL) on veth;
    Zeek drops such packets and truncates frames past its 9216-byte snap length. ICMP errors are
    skipped: they quote the offending packet as the node received it, partial checksum included,
    and no sensor verifies the quote."""
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f",
           "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]
    for name in CHECKSUM_FIELDS:
        cmd += ["-e", name]
    out = {"frames": 0, "bad_checksums": 0, "tcp_ffff": 0, "max_frame": 0}
    for line in run(cmd, timeout=120).stdout.splitlines():
        row = dict(zip(CHECKSUM_FIELDS, line.split("\t"), strict=False))
        out["frames"] += 1
        out["max_frame"] = max(out["max_frame"], int(row["frame.len"]))
        if row["icmp.type"] in ("3", "11", "12") or row["icmpv6.type"] in ("1", "2", "3", "4"):
            continue
        if _is_tcp_ffff(row):
            out["tcp_ffff"] += 1
        elif BAD in (row[k] for k in CHECKSUM_FIELDS[5:]):
            out["bad_checksums"] += 1
    return out


def _is_tcp_ffff(row: dict[str, str]) -> bool:
    """A TCP checksum of 0xffff where 0x0000 was computed: the same value in ones' complement, so
    Zeek and Suricata (which sum the segment including the field) accept it; Wireshark warns
    (RFC 1624 prefers 0x0000). Counted apart from truly bad checksums."""
    return row["tcp.checksum"] == "0xffff" and row["tcp.checksum_calculated"] == "0x0000"


# -- pcap plumbing (the sensor's VXLAN capture -> inner Ethernet frames) -----------------------
PCAP_HEADER = struct.Struct("<IHHiIII")
RECORD = struct.Struct("<IIII")


def read_pcap(path: Path) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(global header, [(record header, frame)]) of a little-endian pcap file."""
    data = path.read_bytes()
    head, off, records = data[:PCAP_HEADER.size], PCAP_HEADER.size, []
    while off + RECORD.size <= len(data):
        incl = RECORD.unpack_from(data, off)[2]
        records.append((data[off:off + RECORD.size], data[off + RECORD.size:off + RECORD.size + incl]))
        off += RECORD.size + incl
    return head, records


def strip_vxlan(src: Path, dst: Path) -> dict[str, int]:
    """Write the inner frames of the VXLAN datagrams in ``src`` (IPv4 outer) to ``dst``.

    Returns counts: ``frames`` written, ``fragments`` (outer IP fragments, not reassembled here),
    ``vnis`` seen, and ``nested`` (inner frames that are themselves VXLAN: a mirror loop)."""
    head, records = read_pcap(src)
    out, counts, vnis = [head], collections.Counter[str](), set()
    for rec, frame in records:
        ihl = (frame[14] & 0x0F) * 4
        if struct.unpack_from("!H", frame, 20)[0] & 0x3FFF:   # MF flag or an offset
            counts["fragments"] += 1
            continue
        inner = frame[14 + ihl + 8 + 8:]
        vnis.add(int.from_bytes(frame[14 + ihl + 12:14 + ihl + 15], "big"))
        if _is_vxlan(inner):
            counts["nested"] += 1
        sec, frac, _, orig = RECORD.unpack(rec)
        out.append(RECORD.pack(sec, frac, len(inner), orig - (len(frame) - len(inner))) + inner)
        counts["frames"] += 1
    dst.write_bytes(b"".join(out))
    return dict(counts) | {"vnis": len(vnis)}


@dataclasses.dataclass(frozen=True)
class Inner:
    """One frame a VXLAN sensor received: its VNI and the inner packet's addressing (text)."""

    vni: int
    proto: str
    """tcp, udp, or the IP protocol number / EtherType as text."""
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    length: int
    """TCP payload bytes (0 for the rest)."""


def inner_packets(path: Path) -> list[Inner]:
    """The inner packets of the VXLAN datagrams (IPv4 outer, UDP) in ``path``, with their VNI."""
    out = []
    for _, frame in read_pcap(path)[1]:
        ihl = (frame[14] & 0x0F) * 4
        if struct.unpack_from("!H", frame, 20)[0] & 0x3FFF:
            continue  # an outer fragment
        vni = int.from_bytes(frame[14 + ihl + 12 : 14 + ihl + 15], "big")
        out.append(_inner(vni, frame[14 + ihl + 16 :]))
    return out


def _inner(vni: int, frame: bytes) -> Inner:
    ethertype, l3 = struct.unpack_from("!H", frame, 12)[0], 14
    while ethertype in (0x8100, 0x88A8):
        ethertype, l3 = struct.unpack_from("!H", frame, l3 + 2)[0], l3 + 4
    if ethertype == 0x0800:
        proto, l4 = frame[l3 + 9], l3 + (frame[l3] & 0x0F) * 4
        end = l3 + struct.unpack_from("!H", frame, l3 + 2)[0]
        src, dst = socket.inet_ntop(socket.AF_INET, frame[l3 + 12 : l3 + 16]), \
            socket.inet_ntop(socket.AF_INET, frame[l3 + 16 : l3 + 20])
        fragment = struct.unpack_from("!H", frame, l3 + 6)[0] & 0x1FFF
    elif ethertype == 0x86DD:
        proto, l4 = frame[l3 + 6], l3 + 40
        end = l4 + struct.unpack_from("!H", frame, l3 + 4)[0]
        src, dst = socket.inet_ntop(socket.AF_INET6, frame[l3 + 8 : l3 + 24]), \
            socket.inet_ntop(socket.AF_INET6, frame[l3 + 24 : l3 + 40])
        fragment = 0
    else:
        return Inner(vni, f"0x{ethertype:04x}", "", 0, "", 0, 0, 0)
    if proto not in (6, 17) or fragment:
        return Inner(vni, str(proto), src, 0, dst, 0, 0, 0)
    sport, dport = struct.unpack_from("!HH", frame, l4)
    if proto == 17:
        return Inner(vni, "udp", src, sport, dst, dport, 0, 0)
    seq = struct.unpack_from("!I", frame, l4 + 4)[0]
    return Inner(vni, "tcp", src, sport, dst, dport, seq, end - l4 - (frame[l4 + 12] >> 4) * 4)


def source_macs(path: Path) -> collections.Counter[str]:
    """Frames per Ethernet source address in an Ethernet pcap (who put each frame on the wire)."""
    return collections.Counter(frame[6:12].hex(":") for _, frame in read_pcap(path)[1])


def _is_vxlan(frame: bytes) -> bool:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return False
    ihl = (frame[14] & 0x0F) * 4
    return struct.unpack_from("!H", frame, 14 + ihl + 2)[0] in (4789, 14789)
