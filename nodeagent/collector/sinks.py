"""Where the collector delivers records: pcapng files, VXLAN to a sensor, a local interface.

Each sink has ``deliver(records, agent)``, ``close()`` and ``state()``. Delivery is synchronous on
the loop: records arrive in batches of up to ``batch_bytes`` and each sink does one buffered file
write or one ``sendto`` per record (non-blocking sockets; a full socket buffer is counted, never
waited on). Rotation opens and deletes files on the loop: one open/unlink per rotation, measured
well under a millisecond on local disk.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from nodeagent.transport import affinity
from nodeagent.transport.records import Record
from nodeagent.verdict import OutputDrop, send_failure
from nodeagent.wire import Malformed, headers, pcapng, vxlan

SINK_DROPS = (OutputDrop.QUEUE_FULL, OutputDrop.UNREACHABLE, OutputDrop.SEND_ERROR)
"""What a sending sink can lose a record to (``verdict.send_failure`` of the errno)."""
_DIRECTION_FLAGS = {1: pcapng.FLAG_OUTBOUND, 2: pcapng.FLAG_INBOUND}   # egress leaves the pod


class Sink(Protocol):
    def deliver(self, records: Sequence[Record], agent: str) -> None: ...
    def close(self) -> None: ...
    def state(self) -> dict[str, Any]: ...


def _flow(frame: bytes) -> int:
    try:
        return affinity.flow_hash(headers.decode(frame), frame)
    except Malformed:
        return 0


class PcapngSink:
    """Rotating pcapng files ``<prefix>-<n>.pcapng`` in ``directory``, by size and by age; at most
    ``max_files`` kept (oldest deleted first), so disk use is bounded by about
    ``max_files * max_bytes``."""

    def __init__(self, directory: str, *, max_bytes: int = 100 * 2**20, max_seconds: float = 300.0,
                 max_files: int = 10, prefix: str = "podmirror", clock: Any = time.monotonic) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory, self.max_bytes, self.max_seconds = directory, max_bytes, max_seconds
        self.max_files, self.prefix, self._clock = max_files, prefix, clock
        self._writer = pcapng.Writer()
        self._files: list[str] = []
        self._serial = 0
        self._fh: Any = None
        self._size = 0
        self._opened = 0.0
        self.packets = self.rotations = 0

    @property
    def files(self) -> list[str]:
        return list(self._files)

    def _open(self) -> None:
        self._close_file()
        self._serial += 1
        path = os.path.join(self.directory, f"{self.prefix}-{int(time.time())}-{self._serial:05d}.pcapng")
        self._fh = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 (closed by rotation/close)
        self._files.append(path)
        head = self._writer.start()
        self._fh.write(head)
        self._size, self._opened = len(head), self._clock()
        while len(self._files) > self.max_files:
            with contextlib.suppress(OSError):
                os.unlink(self._files.pop(0))
        self.rotations += 1

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def deliver(self, records: Sequence[Record], agent: str) -> None:
        if (self._fh is None or self._size >= self.max_bytes
                or self._clock() - self._opened >= self.max_seconds):
            self._open()
        encode, write = self._writer.encode, self._fh.write
        for r in records:
            # One interface per (agent, pod): a pod name claimed by two agents stays two interfaces,
            # each naming the agent (its certificate) that delivered it.
            data = encode(f"{agent}\n{r.pod}", f"pod {r.pod} vni {r.vni} via {agent}", r.ts_ns, r.frame,
                          r.wire_len, _DIRECTION_FLAGS.get(r.direction, 0), name=r.pod)
            write(data)
            self._size += len(data)
        self._fh.flush()   # one write(2) per batch: the ACK that follows means "in the file"
        self.packets += len(records)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        self._close_file()

    def state(self) -> dict[str, Any]:
        return {"kind": "pcapng", "directory": self.directory, "packets": self.packets,
                "files": len(self._files), "rotations": self.rotations}


class VxlanSink:
    """VXLAN to a sensor (UDP 4789 by default). The VNI is the sender's unless ``vni`` is set. The
    outer source port follows the symmetric flow hash: a pool of sockets, each bound to its own
    ephemeral port, is indexed by the hash, so one flow always leaves from one port."""

    def __init__(self, host: str, port: int = 4789, *, vni: int | None = None, pool: int = 16) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.addr = (host, port)
        self.vni = vni
        self._socks = []
        for _ in range(pool):
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            self._socks.append(s)
        self.packets = 0
        self.dropped = dict.fromkeys(SINK_DROPS, 0)
        self.last_error = ""

    def deliver(self, records: Sequence[Record], agent: str) -> None:
        socks, n, addr = self._socks, len(self._socks), self.addr
        for r in records:
            vni = r.vni if self.vni is None else self.vni
            try:
                socks[_flow(r.frame) % n].sendto(vxlan.header(vni) + r.frame, addr)
                self.packets += 1
            except OSError as exc:      # ENOBUFS, ECONNREFUSED from an earlier ICMP: count, go on
                self.dropped[send_failure(exc.errno)] += 1
                self.last_error = str(exc)

    def close(self) -> None:
        for s in self._socks:
            s.close()

    def state(self) -> dict[str, Any]:
        return {"kind": "vxlan", "sensor": f"{self.addr[0]}:{self.addr[1]}", "packets": self.packets,
                "dropped": dict(self.dropped), "last_error": self.last_error}


class InterfaceSink:
    """Frames written to a local interface that a sensor sniffs. Without ``existing``, a veth pair
    ``name``/``name``-peer is created with pyroute2 (and removed on close); the sensor captures on
    the peer (or on ``name``: outgoing frames are seen there too). Needs CAP_NET_ADMIN/NET_RAW."""

    def __init__(self, name: str, *, create: bool = True) -> None:
        self.name, self.peer = name, f"{name[:10]}-s"
        self._created = False
        if create:
            self._create()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self._sock.setblocking(False)
        self._sock.bind((name, 0))
        self.packets = 0
        self.dropped = dict.fromkeys(SINK_DROPS, 0)
        self.last_error = ""

    def _create(self) -> None:
        _in_thread(self._create_link)

    def _create_link(self) -> None:
        with _iproute() as ipr:
            if ipr.link_lookup(ifname=self.name):
                return
            ipr.link("add", ifname=self.name, kind="veth", peer=self.peer)
            self._created = True
            for ifname in (self.name, self.peer):
                # No IPv6 link-local, router solicitations or MLD of our own on the sensor's wire.
                with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6",
                                                        "w") as f:
                    f.write("1")
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.link("set", index=idx, state="up", mtu=65535)

    def deliver(self, records: Sequence[Record], agent: str) -> None:
        send = self._sock.send
        for r in records:
            try:
                send(r.frame)
                self.packets += 1
            except OSError as exc:
                self.dropped[send_failure(exc.errno)] += 1
                self.last_error = str(exc)

    def close(self) -> None:
        self._sock.close()
        if self._created:
            _in_thread(self._delete_link)
            self._created = False

    def _delete_link(self) -> None:
        with _iproute() as ipr, contextlib.suppress(Exception):
            ipr.link("del", ifname=self.name)

    def state(self) -> dict[str, Any]:
        return {"kind": "interface", "interface": self.name, "peer": self.peer, "packets": self.packets,
                "dropped": dict(self.dropped), "last_error": self.last_error}


def _iproute() -> Any:
    from pyroute2 import IPRoute  # only the interface sink needs it

    return IPRoute()


def _in_thread(fn: Any) -> None:
    """Run a short pyroute2 call in a fresh thread: pyroute2 0.9's synchronous ``IPRoute`` drives
    its own asyncio loop and refuses to start inside a running one (the collector's)."""
    errors: list[BaseException] = []

    def call() -> None:
        try:
            fn()
        except BaseException as exc:   # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=call, name="pyroute2")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
