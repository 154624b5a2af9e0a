"""nslab: throwaway network namespaces for root tests, with a cleanup registry.

Usage (everything created through a Lab is removed by ``close()``, also after a failure)::

    with nslab.Lab("pmsc-") as lab:              # your team's unique prefix
        pod, node = lab.netns("pod"), lab.netns("node")
        lab.veth(pod, "eth0", node, "veth-pod")  # a veth pair between two namespaces
        lab.addr(pod, "eth0", "10.1.0.2/24")     # brings the link up too
        lab.addr(node, "veth-pod", "10.1.0.1/24")
        lab.run(pod, "ip", "route", "add", "default", "via", "10.1.0.1")
        out = lab.run(pod, "ping", "-c1", "10.1.0.1").stdout
        proc = lab.popen(pod, "tcpdump", "-i", "eth0", "-w", path)   # terminated at close()
        lab.stop(proc)                           # SIGTERM, wait, (SIGKILL after a deadline)

Namespaces are named ``<prefix><hint>-<random>`` (max 15+ chars is fine: netns names are files).
``lab.exec_prefix(ns)`` gives ``["ip", "netns", "exec", name]`` to build your own command lines.
``wait_for(predicate, timeout)`` polls a condition with a deadline (no sleep-and-hope).
Tests use iproute2 binaries here freely; only the product code must not.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any


class Netns(str):
    """A namespace name (a str, so it can be passed anywhere a name is expected)."""


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Lab:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.namespaces: list[Netns] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._cleanups: list[Callable[[], None]] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ---------------------------------------------------------------------------

    def netns(self, hint: str) -> Netns:
        name = Netns(f"{self.prefix}{hint}-{secrets.token_hex(3)}")
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        return name

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str, mtu: int | None = None) -> None:
        """A veth pair ``a_if`` in ``a`` <-> ``b_if`` in ``b`` (created in ``a``, peer moved)."""
        cmd = ["ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b]
        self.run(a, *cmd)
        if mtu:
            self.run(a, "ip", "link", "set", a_if, "mtu", str(mtu))
            self.run(b, "ip", "link", "set", b_if, "mtu", str(mtu))

    def addr(self, ns: Netns, ifname: str, cidr: str) -> None:
        self.run(ns, "ip", "addr", "add", cidr, "dev", ifname, *(["nodad"] if ":" in cidr else []))
        self.run(ns, "ip", "link", "set", ifname, "up")

    def defer(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` at close(), before namespaces are deleted (last registered runs first)."""
        self._cleanups.append(cleanup)

    # -- running ----------------------------------------------------------------------------

    @staticmethod
    def exec_prefix(ns: Netns) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def run(self, ns: Netns, *cmd: str, check: bool = True, timeout: float = 30,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside ``ns`` and wait; stdout/stderr captured as text."""
        return subprocess.run(self.exec_prefix(ns) + list(cmd), check=check, timeout=timeout,
                              capture_output=True, text=True, input=input.decode() if input else None)

    def popen(self, ns: Netns, *cmd: str, env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside ``ns`` in the background; stopped at close() if still running.

        File objects passed as stdout/stderr are closed in this process right away (the child
        keeps its copy), so tests need not track them.
        """
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(self.exec_prefix(ns) + list(cmd), env=full_env, **kwargs)
        for key in ("stdout", "stderr"):
            if hasattr(kwargs.get(key), "close"):
                kwargs[key].close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 10) -> int:
        """Signal ``proc`` (default SIGTERM) and wait for it; SIGKILL after ``timeout``."""
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        return int(proc.returncode)

    def close(self) -> None:
        errors: list[BaseException] = []
        for proc in reversed(self.procs):
            try:
                self.stop(proc, timeout=5)
            except Exception as exc:  # keep cleaning: one stuck process must not leak namespaces
                errors.append(exc)
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:
                errors.append(exc)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self.namespaces.clear()
        self.procs.clear()
        if errors:
            raise errors[0]


def leftover_namespaces(prefix: str) -> list[str]:
    """Names of namespaces starting with ``prefix`` (to assert a suite leaves none behind)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def run_all(lab: Lab, ns: Netns, commands: Sequence[Sequence[str]]) -> None:
    """Run several commands in ``ns`` (setup scripts), each checked."""
    for cmd in commands:
        lab.run(ns, *cmd)
