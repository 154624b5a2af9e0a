"""The sidecar's namespace tests' lab: one pod, its node with a stand-in agent, and tools to compare.

Built on the product lab's namespace registry (``nodeagent.lab.netns.Namespaces``: unique tag
``pmsc-<hex>-``, everything removed on close, also after a failure). Topology::

    pod ns: eth0 10.77.0.2/24 fd77::2/64  <-- veth -->  node ns: vpod 10.77.0.1/24 fd77::1/64
                                                                  agent receiver  UDP 10.77.0.1:14789
                                                                  echo servers    UDP :53 :5353, TCP :8080

The receiver is a plain UDP socket (so IP fragments arrive reassembled) that appends each datagram
to a record file: ``RECORD`` (receive time, outer source address, length) then the VXLAN payload.
"""

from __future__ import annotations

import collections
import secrets
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.lab import netns
from tests.waiting import poll

PY = sys.executable
POD_IP, NODE_IP, POD6, NODE6 = "10.77.0.2", "10.77.0.1", "fd77::2", "fd77::1"
PORT = 14789
RECORD = struct.Struct("!d4sI")

RECEIVER = r"""
import signal, socket, struct, sys, time
out = open(sys.argv[1], "ab", buffering=0)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
sock.bind((sys.argv[2], int(sys.argv[3])))
sock.settimeout(0.2)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
buf = bytearray(70000)
print("ready", flush=True)
while not stop:
    try:
        n, addr = sock.recvfrom_into(buf)
    except (TimeoutError, InterruptedError):
        continue
    out.write(struct.pack("!d4sI", time.time(), socket.inet_aton(addr[0]), n) + bytes(buf[:n]))
"""

SERVERS = r"""
import socket, sys, threading
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], port))
    while True:
        data, addr = s.recvfrom(2048); s.sendto(data, addr)
def tcp(port):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((sys.argv[1], port)); l.listen()
    while True:
        c, _ = l.accept()
        with c:
            while data := c.recv(65536):
                c.sendall(data)
for target, port in ((udp, 53), (udp, 5353), (tcp, 8080)):
    threading.Thread(target=target, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import socket, struct, sys
kind, host, port, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def csum(b):
    b += b"\0" * (len(b) % 2); s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16; return ~s & 0xFFFF
if kind in ("ping", "ping6"):  # ping(8) is not installed everywhere: raw ICMP echo, one reply each
    v6 = kind == "ping6"
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.settimeout(2)
    for seq in range(count):
        t = 128 if v6 else 8
        body = struct.pack("!HH", 0x4242, seq) + b"p" * size
        msg = struct.pack("!BBH", t, 0, 0) + body
        if not v6:  # the kernel fills ICMPv6 checksums on raw sockets, not ICMPv4 ones
            msg = struct.pack("!BBH", t, 0, csum(msg)) + body
        s.sendto(msg, (host, 0))
        while True:
            data = s.recv(4096)
            data = data if v6 else data[(data[0] & 15) * 4:]
            if data[0] == (129 if v6 else 0) and data[6:8] == struct.pack("!H", seq):
                break
elif kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    for i in range(count):
        s.sendto(b"%04d" % i + b"q" * (size - 4), (host, port)); s.recvfrom(4096)
else:
    c = socket.create_connection((host, port), timeout=5)
    data = bytes(range(256)) * (size // 256)
    for i in range(count):
        c.sendall(data); got = 0
        while got < len(data):
            got += len(c.recv(65536))
    c.close()
"""

PUSHDOWN = r"""
import http.server, sys
path = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(path, "rb").read()
        print(self.path, flush=True)
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], 9477), H).serve_forever()
"""


@dataclass
class Record:
    ts: float
    source: str
    payload: bytes

    @property
    def vni(self) -> int:
        return int.from_bytes(self.payload[4:7], "big")

    @property
    def inner(self) -> bytes:
        return self.payload[8:]


@dataclass
class PodLab:
    ns: netns.Namespaces
    pod: str
    node: str
    tmp: Path
    receiver_file: Path
    sidecars: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_sidecar(
        self, mode: str, *extra: str, log_name: str = "sidecar.log", wrapper: tuple[str, ...] = ()
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / log_name
        cmd = [*wrapper, PY, "-m", "sidecar_lite", "--agent", f"{NODE_IP}:{PORT}", "--vni", "auto",
               "--interface", "eth0", "--mode", mode, *extra]
        proc = self.ns.spawn(self.pod, cmd, log=log)
        self.sidecars.append(proc)
        poll(lambda: "mirroring eth0" in log.read_text() or proc.poll() is not None, 15, "sidecar start")
        assert proc.poll() is None, log.read_text()
        return proc, log

    def stop_sidecar(self, proc: subprocess.Popen[bytes]) -> int:
        return self.ns.stop(proc, signal.SIGTERM, timeout=15)

    def records(self, since: float = 0.0, until: float = float("inf")) -> list[Record]:
        return [r for r in read_records(self.receiver_file) if since <= r.ts <= until]

    def wait_quiet(self, idle: float = 0.4, timeout: float = 10) -> None:
        """Wait until the receiver has seen nothing new for ``idle`` seconds."""
        state = {"size": -1, "since": time.monotonic()}

        def quiet() -> bool:
            size = self.receiver_file.stat().st_size
            if size != state["size"]:
                state["size"], state["since"] = size, time.monotonic()
            return time.monotonic() - state["since"] >= idle

        poll(quiet, timeout, "receiver quiet", interval=0.05)

    def client(self, kind: str, host: str, port: int, count: int = 3, size: int = 64) -> None:
        self.ns.exec(self.pod, [PY, "-c", CLIENT, kind, host, str(port), str(count), str(size)])

    def drive_mix(self) -> None:
        """ARP, ICMP, IPv6 (ND + ICMPv6), UDP DNS-like, TCP: one of each kind, small."""
        self.ns.ip(self.pod, "neigh", "flush", "dev", "eth0")
        self.client("ping", NODE_IP, 0, count=3)
        self.client("ping6", NODE6, 0, count=3)
        self.client("udp", NODE_IP, 53, count=3)
        self.client("tcp", NODE_IP, 8080, count=2, size=8192)


def read_records(path: Path) -> list[Record]:
    data = path.read_bytes()
    out, offset = [], 0
    while offset + RECORD.size <= len(data):
        ts, src, size = RECORD.unpack_from(data, offset)
        offset += RECORD.size
        if offset + size > len(data):
            break
        out.append(Record(ts, ".".join(map(str, src)), data[offset : offset + size]))
        offset += size
    return out


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """Frames of a classic pcap file (tcpdump -w), microsecond or nanosecond."""
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    out, offset = [], 24
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        offset += 16
        out.append((sec + frac * scale, data[offset : offset + caplen]))
        offset += caplen
    return out


class GroundTruth:
    """tcpdump in the pod, excluding only the tunnel (the same definition the sidecar uses)."""

    FILTER = f"not (ip and udp and dst host {NODE_IP} and (dst port {PORT} or ip[6:2] & 0x1fff != 0))"

    def __init__(self, pl: PodLab, name: str = "truth.pcap") -> None:
        self.pl, self.path = pl, pl.tmp / name
        err = pl.tmp / (name + ".err")
        cmd = ["tcpdump", "-i", "eth0", "-s", "0", "-U", "--immediate-mode", "-n", "-w", str(self.path),
               self.FILTER]
        self.proc = pl.ns.spawn(pl.pod, cmd, log=err)
        poll(lambda: "listening on" in err.read_text(), 10, "tcpdump listening")
        self.started = time.time()

    EDGE = 1.0
    """How far from an edge of the window a frame and its mirrored copy may fall on opposite sides."""

    def stop(self) -> tuple[list[bytes], list[Record]]:
        """The pod's frames captured in the window and the mirrored copies received in it.

        The window runs from tcpdump's start to 0.4 s of quiet at the receiver. The pod also sends on
        its own (router solicitations, MLD reports, ARP probes); a frame sent at an edge of the window
        is kept on both sides or on neither: a frame captured just before the end is matched with its
        copy received just after it, and a copy received just after the start with its frame captured
        just before it. Anything else missing or extra stays missing or extra."""
        self.pl.wait_quiet()
        self.stopped = time.time()
        self.pl.ns.stop(self.proc)
        self.pl.wait_quiet()   # copies of frames captured just before the end have arrived
        captured = read_pcap(self.path)
        frames = [f for ts, f in captured if self.started <= ts <= self.stopped]
        records = self.pl.records(self.started, self.stopped)
        short = collections.Counter(frames) - collections.Counter(r.inner for r in records)
        for late in self.pl.records(self.stopped, self.stopped + self.EDGE):
            if late.ts > self.stopped and short[late.inner] > 0:
                short[late.inner] -= 1
                records.append(late)
        over = collections.Counter(r.inner for r in records) - collections.Counter(frames)
        early = collections.Counter(f for ts, f in captured if self.started - self.EDGE <= ts < self.started)
        kept = []
        for record in records:
            if record.ts <= self.started + self.EDGE and over[record.inner] > 0 and early[record.inner] > 0:
                over[record.inner] -= 1
                early[record.inner] -= 1
                continue
            kept.append(record)
        return frames, kept


def compare(truth: list[bytes], mirrored: list[bytes]) -> tuple[int, int]:
    """(missing, extra) between two multisets of frames."""
    t, m = collections.Counter(truth), collections.Counter(mirrored)
    return sum((t - m).values()), sum((m - t).values())


Flow = tuple[bytes, bytes, int, int]


def split_tcp_payload(frames: list[bytes]) -> tuple[list[bytes], dict[Flow, dict[int, int]], dict[Flow, int]]:
    """(frames without TCP payload, per-flow {seq: byte}, per-flow payload byte total).

    The kernel may segment a GSO super-packet on the way into the tunnel, so TCP data is compared
    as bytes at sequence numbers (and their total, which exposes duplicates), everything else
    frame by frame.
    """
    rest: list[bytes] = []
    streams: dict[Flow, dict[int, int]] = collections.defaultdict(dict)
    totals: collections.Counter[Flow] = collections.Counter()
    for f in frames:
        if f[12:14] != b"\x08\x00" or f[23] != 6:
            rest.append(f)
            continue
        ihl = (f[14] & 0x0F) * 4
        tcp = 14 + ihl
        end = 14 + int.from_bytes(f[16:18], "big")
        payload = f[tcp + (f[tcp + 12] >> 4) * 4 : end]
        if not payload:
            rest.append(f)
            continue
        flow = (
            f[26:30],
            f[30:34],
            int.from_bytes(f[tcp : tcp + 2], "big"),
            int.from_bytes(f[tcp + 2 : tcp + 4], "big"),
        )
        seq = int.from_bytes(f[tcp + 4 : tcp + 8], "big")
        stream = streams[flow]
        for i, byte in enumerate(payload):
            stream[seq + i] = byte
        totals[flow] += len(payload)
    return rest, dict(streams), dict(totals)


def describe(frames: list[bytes]) -> list[str]:
    """Short one-line summaries (ethertype, protocol, length) for assertion messages."""
    out = []
    for f in frames:
        kind = f[12:14].hex()
        proto = f[23] if kind == "0800" else f[20] if kind == "86dd" else -1
        out.append(f"{kind}/{proto}/{len(f)}")
    return out


def write_pcap(path: Path, frames: list[bytes]) -> None:
    """A classic pcap of Ethernet frames, to look at a failure with tshark."""
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for frame in frames:
            f.write(struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame)


def is_tunnel(frame: bytes) -> bool:
    """An inner frame that is a piece of our own tunnel: a VXLAN datagram to the agent (double
    encapsulation) or a non-first IP fragment of one (the leak docs/datapath.md describes)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return False
    if frame[30:34] != bytes(map(int, NODE_IP.split("."))):
        return False
    if int.from_bytes(frame[20:22], "big") & 0x1FFF:
        return True
    at = 14 + (frame[14] & 0x0F) * 4
    return int.from_bytes(frame[at + 2 : at + 4], "big") == PORT


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def snapshot(pl: PodLab) -> str:
    """The pod namespace's network state that teardown must restore."""
    commands = [["ip", "-d", "link"], ["tc", "qdisc"], ["ip", "route"], ["ip", "-6", "route"]]
    commands += [["tc", "filter", "show", "dev", "eth0", hook] for hook in ("ingress", "egress")]
    return "\n".join(pl.ns.exec(pl.pod, cmd).stdout for cmd in commands)


def make_podlab(tmp_path: Path) -> Iterator[PodLab]:
    """Generator for a test module's fixture: ``yield from make_podlab(tmp_path)``."""
    ns = netns.Namespaces(f"pmsc-{secrets.token_hex(3)}-")
    try:
        yield _build(ns, tmp_path)
    finally:
        ns.close()
    assert netns.leftovers(ns.tag) == [], "namespaces left behind"


def _build(ns: netns.Namespaces, tmp_path: Path) -> PodLab:
    pod, node = ns.create("pod"), ns.create("node")
    ns.ip(pod, "link", "add", "eth0", "type", "veth", "peer", "name", "vpod", "netns", node)
    for name, ifname, addresses in ((pod, "eth0", (f"{POD_IP}/24", f"{POD6}/64")),
                                    (node, "vpod", (f"{NODE_IP}/24", f"{NODE6}/64"))):
        # No router solicitations, and MLD report repeats within a millisecond of the address
        # being added, so no spontaneous frame lands inside a test's capture window.
        ns.sysctl(name, {f"net.ipv6.conf.{ifname}.accept_ra": "0",
                         f"net.ipv6.conf.{ifname}.accept_dad": "0",
                         f"net.ipv6.conf.{ifname}.mldv2_unsolicited_report_interval": "1"})
        for cidr in addresses:
            ns.ip(name, "addr", "add", cidr, "dev", ifname, *(["nodad"] if ":" in cidr else []))
        ns.ip(name, "link", "set", ifname, "up")
    ns.ip(pod, "route", "add", "default", "via", NODE_IP)
    receiver_file = tmp_path / "received.bin"
    receiver_file.touch()
    for script, args, log in ((RECEIVER, [str(receiver_file), NODE_IP, str(PORT)], tmp_path / "receiver.log"),
                              (SERVERS, [NODE_IP], tmp_path / "servers.log")):
        proc = ns.spawn(node, [PY, "-c", script, *args], log=log)
        poll(lambda log=log, proc=proc: "ready" in log.read_text() or proc.poll() is not None, 10,
             f"{log.stem} ready")
        assert proc.poll() is None, log.read_text()
    return PodLab(ns, pod, node, tmp_path, receiver_file)
