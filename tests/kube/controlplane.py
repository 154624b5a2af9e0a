"""A real, throwaway control plane for the ``apiserver`` tier: etcd + kube-apiserver on loopback.

etcd (Debian's ``etcd-server``) and the kube-apiserver that ``.ci/apiserver.sh`` builds
(``$PODMIRROR_APISERVER``, else ``/var/cache/podmirror/kube-apiserver``) listen on random
127.0.0.1 ports, with data in a temporary directory removed afterwards. Authentication: static
tokens, for an admin in ``system:masters`` (which may impersonate, for ``kubectl auth can-i --as``)
and for podmirror's service accounts (``SERVICE_ACCOUNTS``);
authorization: RBAC, as in a real cluster. No controller-manager or scheduler runs: tests set
``spec.nodeName`` and patch ``status`` themselves, and the ServiceAccount admission plugin is off
(it would wait for the token controller to create each namespace's ``default`` account).
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

TOKEN = "podmirror-test-admin-token"
SERVICE_ACCOUNTS = {
    "system:serviceaccount:podmirror:podmirror-agent": "podmirror-agent-test-token",
    "system:serviceaccount:podmirror:podmirror-webhook": "podmirror-webhook-test-token",
}
"""Static tokens whose users are exactly these service accounts' names and groups: with no
controller-manager to mint tokens, this is how the tests act *as* the shipped service accounts."""
DEFAULT_BINARY = "/var/cache/podmirror/kube-apiserver"


def apiserver_binary() -> str | None:
    path = os.environ.get("PODMIRROR_APISERVER") or DEFAULT_BINARY
    return path if os.access(path, os.X_OK) else None


def missing() -> str | None:
    """Why the tier cannot run here, or None."""
    if apiserver_binary() is None:
        return "no kube-apiserver binary (build it with .ci/apiserver.sh or set PODMIRROR_APISERVER)"
    if shutil.which("etcd") is None:
        return "no etcd (Debian package etcd-server)"
    return None


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
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn("etcd", ["etcd", "--data-dir", os.path.join(self.workdir, "etcd"),
                             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                             "--log-level", "error"])
        key_file = self._service_account_key()
        tokens = os.path.join(self.workdir, "tokens.csv")
        with open(tokens, "w") as handle:
            handle.write(f"{TOKEN},admin,admin-uid,system:masters\n")
            for account, token in SERVICE_ACCOUNTS.items():
                namespace = account.split(":")[2]
                groups = f"system:serviceaccounts,system:serviceaccounts:{namespace},system:authenticated"
                handle.write(f'{token},{account},{account}-uid,"{groups}"\n')
        self._spawn("kube-apiserver", [
            str(apiserver_binary()), "--etcd-servers", etcd_url, "--bind-address", "127.0.0.1",
            "--advertise-address", "127.0.0.1", "--secure-port", str(api_port),
            "--cert-dir", os.path.join(self.workdir, "certs"), "--token-auth-file", tokens,
            "--authorization-mode", "RBAC", "--service-account-key-file", key_file,
            "--service-account-signing-key-file", key_file,
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", "10.96.0.0/16", "--disable-admission-plugins", "ServiceAccount",
            "--enable-priority-and-fairness=false", "--v", "0", *self.extra_args])
        self.url = f"https://127.0.0.1:{api_port}"
        self._wait_ready(deadline=time.monotonic() + 90)
        self.kubeconfig = self.kubeconfig_for(TOKEN, "admin")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")  # noqa: SIM115 (closed by the child's exit)
        self._procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL))
        log.close()

    def _service_account_key(self) -> str:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = os.path.join(self.workdir, "sa.key")
        with open(path, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
        return path

    def kubeconfig_for(self, token: str, name: str) -> str:
        """A kubeconfig that verifies the apiserver (its self-made CA) and sends ``token``."""
        path = os.path.join(self.workdir, f"{name}.kubeconfig")
        ca = os.path.join(self.workdir, "certs", "apiserver.crt")  # leaf + the CA that signed it
        with open(path, "w") as handle:
            handle.write(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{self.url}", certificate-authority: "{ca}"}}
users:
- name: {name}
  user: {{token: "{token}"}}
contexts:
- name: test
  context: {{cluster: test, user: {name}}}
current-context: test
""")
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


def create_running_pod(core: Any, namespace: str, name: str, *, node: str, ip: str,
                       labels: dict[str, str] | None = None,
                       annotations: dict[str, str] | None = None) -> None:
    """Create a pod bound to ``node`` and give it ``ip``, as kubelet would (no kubelet runs here).

    ``core`` is a ``kubernetes.client.CoreV1Api``. The status subresource is patched through the
    client because ``kubectl patch --subresource=status`` needs kubectl >= 1.24.
    """
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]}})
    core.patch_namespaced_pod_status(name, namespace, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})


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
