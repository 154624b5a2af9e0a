"""A real, throwaway control plane for the ``apiserver`` tier: etcd + kube-apiserver on loopback.

etcd (Debian's ``etcd-server``) and the kube-apiserver that ``.ci/apiserver.sh`` builds
(``$PODMIRROR_APISERVER``, else ``/var/cache/podmirror/kube-apiserver``) listen on random
127.0.0.1 ports, with data in a temporary directory removed afterwards. Authentication: static
tokens, for an admin in ``system:masters`` (which may impersonate, for ``kubectl auth can-i --as``)
and for podmirror's service accounts (``SERVICE_ACCOUNTS``);
authorization: RBAC, as in a real cluster. No controller-manager or scheduler runs: tests set
``spec.nodeName`` and patch ``status`` themselves, and the ServiceAccount admission plugin is off
(it would wait for the token controller to create each namespace's ``default`` account).
Binary lookup, command lines, token file and kubeconfig come from ``nodeagent.lab.kubelab``, which
runs the same control plane inside the lab (``nodeagent lab --pod-table apiserver``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from nodeagent.lab.kubelab import (
    DEFAULT_BINARY,
    apiserver_binary,
    apiserver_command,
    etcd_command,
    kubeconfig_text,
    missing,
    write_service_account_key,
    write_token_file,
)

__all__ = ["DEFAULT_BINARY", "SERVICE_ACCOUNTS", "TOKEN", "ControlPlane", "apiserver_binary",
           "create_running_pod", "missing", "running"]

TOKEN = "podmirror-test-admin-token"
SERVICE_ACCOUNTS = {
    "system:serviceaccount:podmirror:podmirror-agent": "podmirror-agent-test-token",
    "system:serviceaccount:podmirror:podmirror-webhook": "podmirror-webhook-test-token",
}
"""Static tokens whose users are exactly these service accounts' names and groups: with no
controller-manager to mint tokens, this is how the tests act *as* the shipped service accounts."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ControlPlane:
    def __init__(self, workdir: str, extra_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.url = ""
        self.kubeconfig = ""
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        self._spawn("etcd", etcd_command(os.path.join(self.workdir, "etcd"), etcd_port, peer_port))
        key_file = write_service_account_key(os.path.join(self.workdir, "sa.key"))
        tokens = write_token_file(os.path.join(self.workdir, "tokens.csv"), TOKEN, SERVICE_ACCOUNTS)
        self._spawn("kube-apiserver", apiserver_command(self.workdir, etcd_port, api_port, tokens, key_file,
                                                        self.extra_args))
        self.url = f"https://127.0.0.1:{api_port}"
        self._wait_ready(deadline=time.monotonic() + 90)
        self.kubeconfig = self.kubeconfig_for(TOKEN, "admin")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")  # noqa: SIM115 (closed by the child's exit)
        self._procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL))
        log.close()

    def kubeconfig_for(self, token: str, name: str) -> str:
        """A kubeconfig that verifies the apiserver (its self-made CA) and sends ``token``."""
        path = os.path.join(self.workdir, f"{name}.kubeconfig")
        ca = os.path.join(self.workdir, "certs", "apiserver.crt")  # leaf + the CA that signed it
        with open(path, "w") as handle:
            handle.write(kubeconfig_text(self.url, ca, token, name))
        return path

    def _wait_ready(self, deadline: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
        while True:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"control plane process exited: {proc.args[0]}; see {self.workdir}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(request, context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready; logs in {self.workdir}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()


def running_pod(name: str, node: str, labels: dict[str, str] | None = None,
                annotations: dict[str, str] | None = None, *, sidecar: bool | None = None) -> dict[str, Any]:
    """A pod bound to ``node``; ``sidecar`` (None: when labelled monitored, as the webhook does)
    adds the injected container."""
    if sidecar is None:
        sidecar = (labels or {}).get("podmirror.io/monitored") == "true"
    containers = [{"name": "app", "image": "app"}]
    if sidecar:
        containers.append({"name": "podmirror-sidecar", "image": "podmirror"})
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"nodeName": node, "containers": containers}}


def running_status(pod: dict[str, Any], ip: str) -> dict[str, Any]:
    """What kubelet would report: Running with ``ip``, every container Ready."""
    statuses = [{"name": c["name"], "ready": True, "restartCount": 0, "image": c["image"], "imageID": "",
                 "state": {"running": {}}} for c in pod["spec"]["containers"]]
    return {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "containerStatuses": statuses}}


def create_running_pod(core: Any, namespace: str, name: str, *, node: str, ip: str,
                       labels: dict[str, str] | None = None,
                       annotations: dict[str, str] | None = None) -> None:
    """Create a pod bound to ``node`` and give it ``ip``, as kubelet would (no kubelet runs here).

    ``core`` is a ``kubernetes.client.CoreV1Api``. The status subresource is patched through the
    client because ``kubectl patch --subresource=status`` needs kubectl >= 1.24.
    """
    pod = running_pod(name, node, labels, annotations)
    core.create_namespaced_pod(namespace, pod)
    core.patch_namespaced_pod_status(name, namespace, running_status(pod, ip))


@contextlib.contextmanager
def running(extra_args: Sequence[str] = ()) -> Iterator[ControlPlane]:
    """A started control plane; ``extra_args`` go to kube-apiserver."""
    workdir = tempfile.mkdtemp(prefix="pmk8-cp-")
    plane = ControlPlane(workdir, extra_args)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
