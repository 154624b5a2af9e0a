"""The cluster tier: podmirror installed with kubectl on a real one-node Kubernetes.

The node is ``scripts/cluster.sh`` (Kubernetes 1.20 built from Debian's source, containerd, CNI
bridge, kube-proxy in iptables mode); the image is ``scripts/image.sh``'s, imported into the node's
containerd; the install is ``kubectl apply -k deploy/overlays/local``, as a user types it.

``cluster`` (module): takes the machine's cluster lock (one cluster per machine; another test run
waits), brings the node up unless it already runs, imports the image, and at the end brings the
node down again if it started it, also when a test failed. The slow builds are not done here:
``scripts/test.sh`` runs them (cached) before pytest, and without them the tier skips, saying
which command builds what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path(os.environ.get("PODMIRROR_CACHE", "/var/cache/podmirror"))
IMAGE_ARCHIVE = CACHE / "image" / "podmirror-dev.tar"
NODE_BINARIES = ("kube-apiserver", "kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler")
LOCK = "/run/lock/podmirror-cluster.lock"
LOCK_WAIT = 240.0
T = TypeVar("T")


def missing() -> str | None:
    """Why the node cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (scripts/cluster.sh runs a Kubernetes node)"
    absent = [b for b in NODE_BINARIES if not os.access(CACHE / b, os.X_OK)]
    if absent:
        return f"no {', '.join(absent)} in {CACHE} (build them with: scripts/cluster.sh build)"
    if not IMAGE_ARCHIVE.is_file():
        return f"no podmirror image at {IMAGE_ARCHIVE} (build it with: scripts/image.sh --no-import)"
    tools = [t for t in ("containerd", "runc", "etcd", "kubectl", "iptables", "tshark", "ip", "tc")
             if shutil.which(t) is None]
    if tools:
        return f"needs {', '.join(tools)} (scripts/cluster.sh up installs the Debian packages)"
    return None


def eventually(check: Callable[[], T], timeout: float, what: str, interval: float = 0.5,
               describe: Callable[[], Any] | None = None) -> T:
    """Poll ``check`` until it returns something truthy (returned) or ``timeout`` s pass (fail, with
    the last result and, when given, what ``describe`` says of the state then)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (AssertionError, subprocess.CalledProcessError, OSError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            state = ""
            if describe is not None:
                try:
                    state = f"; state: {describe()!r}"
                except (subprocess.CalledProcessError, OSError, KeyError, ValueError) as exc:
                    state = f"; state unknown: {exc!r}"
            raise AssertionError(f"not within {timeout:.0f} s: {what} (last: {last!r}{state})")
        time.sleep(interval)


SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.conf.all.route_localnet", "net.bridge.bridge-nf-call-iptables",
           "kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "vm.panic_on_oom")


def sysctls() -> dict[str, str]:
    return {name: subprocess.run(["sysctl", "-n", name], capture_output=True, text=True).stdout.strip()
            for name in SYSCTLS}


def cni_netns() -> list[str]:
    """The pod network namespaces a CRI runtime made (``cni-<uuid>``)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("cni-")]


class Cluster:
    """The running node: kubectl with its kubeconfig, and the agent's status over its Service.

    ``machine_before``: the machine's network namespaces and sysctls before this session brought
    the node up (None when the node ran already: it is left running)."""

    def __init__(self, kubeconfig: str, machine_before: dict[str, Any] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.machine_before = machine_before
        self.is_down = False
        """Set once a test brought the node down: nothing is left to clean up in it."""
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, "PODMIRROR_CLUSTER_LOCKED": "1"}

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        result = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                                timeout=timeout, env=self.env)
        if result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, ["kubectl", *args], result.stdout,
                                                result.stderr)
        return result.stdout

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]]) -> None:
        items = manifest if isinstance(manifest, list) else [manifest]
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": items}))

    def script(self, *argv: str, timeout: float = 900, progress: Callable[[str], None] | None = None) -> str:
        """Run ``scripts/<argv>``; its stdout is returned, its stderr (the scripts' progress lines)
        handed line by line to ``progress`` as it comes, and kept for the failure message."""
        with subprocess.Popen([str(ROOT / "scripts" / argv[0]), *argv[1:]], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=self.env) as proc:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            stdout: list[str] = []
            reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read() if proc.stdout else ""))
            reader.start()
            stderr = []
            try:
                for line in proc.stderr or ():
                    stderr.append(line)
                    if progress is not None:
                        progress(line.rstrip("\n"))
                rc = proc.wait()
                reader.join()
            finally:
                timer.cancel()
        assert rc == 0, f"{' '.join(argv)} failed (rc {rc}):\n{''.join(stderr)[-4000:]}"
        return "".join(stdout)

    def service_ip(self, namespace: str, name: str) -> str:
        return str(self.get("-n", namespace, "service", name)["spec"]["clusterIP"])

    def agent_status(self) -> dict[str, Any]:
        """``/status`` of the agent, through its Service's ClusterIP (kube-proxy's DNAT from the node)."""
        url = f"http://{self.service_ip('podmirror', 'podmirror-agent')}:9477/status"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return dict(json.load(answer))

    def agent_pod(self) -> dict[str, Any]:
        pods = [p for p in self.get("-n", "podmirror", "pods", "-l",
                                    "app.kubernetes.io/name=podmirror-agent")["items"]
                if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"]
        assert len(pods) == 1, f"{len(pods)} running agent pods"
        return pods[0]


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """The lock scripts/cluster.sh takes: this run owns the machine's cluster while it holds it."""
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "w") as handle:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another run holds the machine's cluster ({LOCK}) "
                                f"for more than {LOCK_WAIT:.0f} s")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _running(kubeconfig: str) -> bool:
    status = subprocess.run([str(ROOT / "scripts" / "cluster.sh"), "status"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "KUBECONFIG": kubeconfig})
    return status.returncode == 0


def terminal_progress(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a set-up progress line on the terminal now, past pytest's output capture: bringing
    the node up takes half a minute, and a run that sits silent meanwhile looks hung."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()

    def say(line: str) -> None:
        text = f"[cluster tier {time.monotonic() - started:5.1f} s] {line}"
        if capture is None:
            print(text, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(text, flush=True)
    return say


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    say = terminal_progress(request)
    with machine_lock():
        probe = Cluster("")
        was_running = _running("")
        before = None if was_running else {"netns": cni_netns(), "sysctls": sysctls()}
        try:
            say("bringing the node up (scripts/cluster.sh up)" if not was_running else "node already up")
            lines = probe.script("cluster.sh", "up", progress=say).strip().splitlines()
            assert lines and lines[-1].startswith("KUBECONFIG="), lines[-3:]
            running = Cluster(lines[-1].split("=", 1)[1], before)
            say("importing the podmirror image (scripts/image.sh)")
            running.script("image.sh", progress=say)  # cached parts reused; imports podmirror:dev
            say("ready: running the tier's tests")
            yield running
        finally:
            if not was_running:
                say("bringing the node down (scripts/cluster.sh down)")
                probe.script("cluster.sh", "down", progress=say)
