"""Network-namespace primitives for the lab: create, run inside, spawn inside, connect inside, remove.

Model: a ``Namespaces`` registry owns every namespace it created (names start with one unique
``tag``) and every process it spawned. ``close()`` kills the processes (SIGTERM to the process
group, then SIGKILL), kills anything else still living in its namespaces (``ip netns pids``) and
deletes the namespaces, which also removes every veth, address, route, qdisc and nftables table in
them. ``close()`` is idempotent and is also registered with ``atexit``, so a crash or an unhandled
exception leaves nothing behind. The lab may use the ``ip``/``tc``/``nft`` binaries (the sidecar may
not): this module is the only place that runs them.

Sockets inside a namespace (``connect``) are made in the calling thread after ``setns(2)`` into the
namespace and back: a socket keeps the namespace it was created in, so the test or the runner can
talk HTTP to the agent's status endpoint without a subprocess per request.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

CLONE_NEWNET = 0x40000000
OWNERS = Path("/run/podmirror-lab")
"""One file per live lab, named by its tag, holding the owner's PID (for ``reap_stale``)."""
_libc = ctypes.CDLL(None, use_errno=True)
_setns_lock = threading.Lock()


class LabError(RuntimeError):
    """A lab step failed: the message names the command and its output."""


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and return its output (text)."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)!r} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    return proc


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Switch the calling thread into namespace ``ns`` for the block, then back."""
    with _setns_lock, open("/proc/thread-self/ns/net", "rb") as home, \
            open(f"/run/netns/{ns}", "rb") as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise LabError(f"setns({ns}): {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            _libc.setns(home.fileno(), CLONE_NEWNET)


class Namespaces:
    """The namespaces and processes of one lab; everything it made goes away in ``close()``."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.names: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._closed = False
        atexit.register(self.close)
        OWNERS.mkdir(parents=True, exist_ok=True)
        (OWNERS / tag).write_text(str(os.getpid()))

    def create(self, short: str) -> str:
        name = f"{self.tag}{short}"
        run(["ip", "netns", "add", name])
        self.names.append(name)
        # No duplicate address detection: addresses are usable at once (no sleeps in the lab).
        self.sysctl(name, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0",
                           "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"})
        self.ip(name, "link", "set", "lo", "up")
        return name

    def exec(self, ns: str, cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout, input=input)

    def ip(self, ns: str, *args: str) -> str:
        return run(["ip", "-n", ns, *args]).stdout

    def snmp(self, ns: str) -> dict[str, dict[str, int]]:
        """The namespace's ``/proc/net/snmp`` by group: ``snmp(ns)["Udp"]["RcvbufErrors"]``."""
        rows = [line.split() for line in self.exec(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()]
        return {names[0].rstrip(":"): dict(zip(names[1:], map(int, values[1:]), strict=True))
                for names, values in zip(rows[::2], rows[1::2], strict=True)}

    def sysctl(self, ns: str, values: dict[str, str]) -> None:
        self.exec(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])

    def spawn(self, ns: str, cmd: Sequence[str], *, log: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``ns`` in its own process group, output to ``log``; ``close()`` stops it."""
        with open(log or os.devnull, "wb") as out:   # the child keeps its own descriptor
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Signal the process group, wait, SIGKILL after ``timeout`` seconds; return the exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def connect(self, ns: str, host: str, port: int, timeout: float = 2.0) -> socket.socket:
        """A TCP connection made from inside ``ns``."""
        with inside(ns):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self.procs):
            self.stop(proc, timeout=3.0)
        for name in reversed(self.names):
            self._kill_leftovers(name)
            run(["ip", "netns", "del", name], check=False)
        (OWNERS / self.tag).unlink(missing_ok=True)
        atexit.unregister(self.close)

    def _kill_leftovers(self, ns: str) -> None:
        pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 3.0
        while pids and time.monotonic() < deadline:
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            time.sleep(0.05)


def leftovers(prefix: str) -> list[str]:
    """Namespaces whose name starts with ``prefix`` (tests assert this is empty after a lab)."""
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def _owner_alive(tag: str) -> bool:
    try:
        os.kill(int((OWNERS / tag).read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def reap_stale(prefix: str) -> list[str]:
    """Remove the namespaces of labs whose owner died without cleaning up (SIGKILL, power loss).

    A lab's tag is ``<prefix>-<hex>-``; labs whose owner process is alive are left alone, so
    this is safe while other labs run."""
    stale = [ns for ns in leftovers(prefix) if not _owner_alive(ns[:len(prefix) + 8])]
    for name in stale:
        for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", name], check=False)
    for tag in {ns[:len(prefix) + 8] for ns in stale}:
        (OWNERS / tag).unlink(missing_ok=True)
    return stale
