"""The lab's Kubernetes mode (``nodeagent lab --pod-table apiserver``): a real control plane for the agent.

Model: etcd and the real kube-apiserver (v1.20, built by ``.ci/apiserver.sh``) run **inside the node
agent's namespace, on 127.0.0.1** (fixed ports: that loopback belongs to the lab alone). The agent
reaches the API exactly as an agent pod reaches its cluster's API, over TCP with TLS, and nothing
else in the lab can, so no lab address or route is added for it and nothing listens on the host.
``kubectl`` runs in the same namespace (``ip netns exec``) with an admin token; the two calls kubectl
< 1.24 lacks (TokenRequest, the status subresource; Debian ships 1.20) go over HTTPS from Python.

What the mode proves, step by step:
- RBAC: the Namespace, ServiceAccounts and (Cluster)Roles/Bindings of ``deploy/`` are applied
  as shipped (``kubectl kustomize deploy/``), nothing else, and the agent authenticates with a real
  ServiceAccount token for ``podmirror/podmirror-agent`` (the TokenRequest API):
  if the shipped RBAC lacked a verb the agent uses, the agent would never sync and the lab fails.
- Pods: each lab pod becomes a Pod object created with ``kubectl`` (label
  ``podmirror.io/monitored=true``, annotation ``podmirror.io/monitor: "true"``, ``spec.nodeName`` =
  the lab node's name, an ``app`` and a ``podmirror-sidecar`` container); no kubelet runs, so
  ``status.podIP``/``podIPs`` (both families), phase Running and Ready containers are patched
  through the status subresource, as kubelet would. One more monitored pod on another node (``PEER``),
  with an address that exists nowhere, shows the node's field selector at work: a peer, not a sender.
- The agent runs with ``--kubeconfig FILE --node-name NAME`` and no ``--sender``.

The control plane's processes are lab processes (``Namespaces.spawn``): ``Lab.close()`` stops them
with everything else. etcd's data lives in ``<output>/kube/etcd`` and ``remove_data`` deletes it
(about 120 MB: etcd preallocates its WAL); certificates, kubeconfigs and logs stay for inspection.
The helpers above the lab part (binary lookup, command lines, token file, kubeconfig) are shared
with the ``apiserver`` test tier (``tests/kube/controlplane.py``).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nodeagent.lab.netns import LabError, Namespaces
from nodeagent.lab.topology import Lab, Node, Pod
from nodeagent.pods.kube import MONITOR_ANNOTATION, MONITORED_LABEL

DEFAULT_BINARY = "/var/cache/podmirror/kube-apiserver"
RBAC_KINDS = frozenset({"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                        "RoleBinding"})
AGENT_ACCOUNT = ("podmirror", "podmirror-agent")
ETCD_PORT, ETCD_PEER_PORT, API_PORT = 2379, 2380, 6443
ADMIN_TOKEN = "podmirror-lab-admin-token"
PEER = {"namespace": "default", "name": "remote-db", "node": "node-remote", "ip": "10.99.0.10"}
"""A monitored pod on another node: the agent lists it as a peer (cross-node rule), never as a sender."""
READY_TIMEOUT = 90.0


# -- shared with the apiserver test tier ------------------------------------------------------------
def apiserver_binary() -> str | None:
    path = os.environ.get("PODMIRROR_APISERVER") or DEFAULT_BINARY
    return path if os.access(path, os.X_OK) else None


def missing() -> str | None:
    """Why a control plane cannot run here, or None."""
    if apiserver_binary() is None:
        return "no kube-apiserver binary (build it with .ci/apiserver.sh or set PODMIRROR_APISERVER)"
    if shutil.which("etcd") is None:
        return "no etcd (Debian package etcd-server)"
    return None


def etcd_command(datadir: str, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return ["etcd", "--data-dir", datadir, "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}", "--log-level", "error"]


def apiserver_command(workdir: str, etcd_port: int, port: int, tokens: str, key_file: str,
                      extra: Sequence[str] = ()) -> list[str]:
    """kube-apiserver on 127.0.0.1:``port``: static tokens, RBAC, a self-signed serving certificate
    in ``<workdir>/certs``. The ServiceAccount admission plugin is off: it would wait for the token
    controller (no controller-manager runs) to create each namespace's ``default`` account."""
    return [str(apiserver_binary()), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(port),
            "--cert-dir", os.path.join(workdir, "certs"), "--token-auth-file", tokens,
            "--authorization-mode", "RBAC", "--service-account-key-file", key_file,
            "--service-account-signing-key-file", key_file,
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", "10.96.0.0/16", "--disable-admission-plugins", "ServiceAccount",
            "--enable-priority-and-fairness=false", "--v", "0", *extra]


def write_service_account_key(path: str) -> str:
    """The key that signs (and verifies) ServiceAccount tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return path


def write_token_file(path: str, admin_token: str, service_accounts: Mapping[str, str] | None = None) -> str:
    """``--token-auth-file``: an admin in ``system:masters``, and static tokens whose users carry the
    names and groups of ``service_accounts`` ({"system:serviceaccount:NS:NAME": token})."""
    with open(path, "w") as handle:
        handle.write(f"{admin_token},admin,admin-uid,system:masters\n")
        for account, token in (service_accounts or {}).items():
            namespace = account.split(":")[2]
            groups = f"system:serviceaccounts,system:serviceaccounts:{namespace},system:authenticated"
            handle.write(f'{token},{account},{account}-uid,"{groups}"\n')
    return path


def kubeconfig_text(url: str, ca: str, token: str, name: str) -> str:
    """A kubeconfig that verifies the apiserver with ``ca`` and sends ``token``."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster: {{server: "{url}", certificate-authority: "{ca}"}}
users:
- name: {name}
  user: {{token: "{token}"}}
contexts:
- name: {name}
  context: {{cluster: {name}, user: {name}}}
current-context: {name}
"""


# -- the lab's control plane --------------------------------------------------------------------------
@dataclasses.dataclass
class KubeLab:
    """A running control plane in namespace ``ns``; ``agent_args`` start the agent against it."""

    ns: Namespaces
    netns: str
    workdir: Path
    node_name: str
    url: str = f"https://127.0.0.1:{API_PORT}"
    pods: list[str] = dataclasses.field(default_factory=list)
    agent_args: list[str] = dataclasses.field(default_factory=list)
    ready_after: float = 0.0
    """Seconds from starting etcd to the apiserver's ``/readyz`` answering 200."""

    @property
    def ca(self) -> str:
        return str(self.workdir / "certs" / "apiserver.crt")  # the leaf and the CA that signed it

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.ns.exec(self.netns, ["kubectl", "--kubeconfig", self.admin, *args], input=input,
                            timeout=60.0).stdout

    @property
    def admin(self) -> str:
        return str(self.workdir / "admin.kubeconfig")


def kubectl_hint(kube: KubeLab) -> str:
    """The command line a user types to talk to the lab's API as admin (``--keep``)."""
    return f"ip netns exec {kube.netns} kubectl --kubeconfig {kube.admin}"


def deploy_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "deploy"


def setup(lab: Lab, node: Node, out: Path) -> KubeLab:
    """Control plane in the node's agent namespace, shipped RBAC, the node's pods; agent kubeconfig."""
    if node.agent is None:
        raise LabError("the Kubernetes mode needs the node's agent namespace")
    kube = KubeLab(lab.ns, node.agent.ns, out / "kube", f"node{node.index}")
    t0 = time.monotonic()
    start_control_plane(kube)
    kube.ready_after = time.monotonic() - t0
    install_rbac(kube)
    publish_pods(kube, node.pods)
    conf = kube.workdir / "agent.kubeconfig"
    conf.write_text(kubeconfig_text(kube.url, kube.ca, agent_token(kube), "podmirror-agent"))
    kube.agent_args = ["--kubeconfig", str(conf), "--node-name", kube.node_name]
    return kube


def start_control_plane(kube: KubeLab) -> None:
    kube.workdir.mkdir(parents=True, exist_ok=True)
    work = str(kube.workdir)
    tokens = write_token_file(os.path.join(work, "tokens.csv"), ADMIN_TOKEN)
    key = write_service_account_key(os.path.join(work, "sa.key"))
    (kube.workdir / "admin.kubeconfig").write_text(kubeconfig_text(kube.url, kube.ca, ADMIN_TOKEN, "admin"))
    etcd = kube.ns.spawn(kube.netns, etcd_command(os.path.join(work, "etcd"), ETCD_PORT, ETCD_PEER_PORT),
                         log=kube.workdir / "etcd.log")
    api = kube.ns.spawn(kube.netns, apiserver_command(work, ETCD_PORT, API_PORT, tokens, key),
                        log=kube.workdir / "kube-apiserver.log")
    wait_ready(kube, [etcd, api], time.monotonic() + READY_TIMEOUT)


def wait_ready(kube: KubeLab, procs: Sequence[subprocess.Popen[bytes]], deadline: float) -> None:
    """Poll ``/readyz`` from inside the namespace until it answers 200 (a process exit is fatal)."""
    while not _ready(kube):
        for proc in procs:
            if proc.poll() is not None:
                raise LabError(f"control plane process exited ({proc.returncode}); logs in {kube.workdir}")
        if time.monotonic() > deadline:
            raise LabError(f"kube-apiserver not ready after {READY_TIMEOUT:.0f}s; logs in {kube.workdir}")
        time.sleep(0.2)


def _ready(kube: KubeLab) -> bool:
    try:
        return request(kube, "GET", "/readyz")[0] == 200
    except OSError:  # not listening yet, or its certificate not written yet
        return False


def request(kube: KubeLab, method: str, path: str, body: Any = None,
            content_type: str = "application/json") -> tuple[int, bytes]:
    """One admin request to the API, over TLS verified with its CA, from inside the namespace.

    For what kubectl < 1.24 (Debian's is 1.20) cannot do: TokenRequest and the status subresource."""
    context = ssl.create_default_context(cafile=kube.ca)
    plain = kube.ns.connect(kube.netns, "127.0.0.1", API_PORT)
    try:
        sock = context.wrap_socket(plain, server_hostname="127.0.0.1")
    except OSError:  # handshake failed: the plain socket is still ours to close
        plain.close()
        raise
    conn = http.client.HTTPConnection("127.0.0.1", API_PORT, timeout=10)
    conn.sock = sock
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": content_type}
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def call(kube: KubeLab, method: str, path: str, body: Any, content_type: str = "application/json") -> Any:
    code, data = request(kube, method, path, body, content_type)
    if code >= 300:
        raise LabError(f"{method} {path}: {code} {data[:300]!r}")
    return json.loads(data)


def install_rbac(kube: KubeLab) -> None:
    """Apply the RBAC objects of ``deploy/`` exactly as shipped (and only those: no webhook, no DaemonSet)."""
    if not (deploy_dir() / "kustomization.yaml").exists():
        raise LabError(f"--pod-table apiserver applies the RBAC of deploy/, not found at {deploy_dir()}")
    built = kube.kubectl("kustomize", str(deploy_dir()))
    objs = [o for o in yaml.safe_load_all(built) if o and o.get("kind") in RBAC_KINDS]
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))


def agent_token(kube: KubeLab) -> str:
    """A real ServiceAccount token for the agent's account (TokenRequest API), valid for a day."""
    namespace, name = AGENT_ACCOUNT
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400}}
    answer = call(kube, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
    return str(answer["status"]["token"])


SIDECAR_CONTAINER = "podmirror-sidecar"
"""The injected container: the agent counts a pod as monitored only when it has one (``pods.kube``)."""


def pod_manifest(namespace: str, name: str, node_name: str) -> dict[str, Any]:
    containers = [{"name": "app", "image": "podmirror-lab/app"},
                  {"name": SIDECAR_CONTAINER, "image": "podmirror-lab/sidecar"}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {MONITORED_LABEL: "true"},
                         "annotations": {MONITOR_ANNOTATION: "true"}},
            "spec": {"nodeName": node_name, "containers": containers}}


def pod_status(ips: Sequence[str]) -> dict[str, Any]:
    """What kubelet reports for a running pod: its addresses, every container Ready (no kubelet here:
    the lab's sidecars do run, and their tunnel reaches the agent)."""
    statuses = [{"name": name, "ready": True, "restartCount": 0, "image": f"podmirror-lab/{name}",
                 "imageID": "", "state": {"running": {}}} for name in ("app", SIDECAR_CONTAINER)]
    return {"status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips],
                       "containerStatuses": statuses}}


def publish_pods(kube: KubeLab, pods: Sequence[Pod]) -> None:
    """Create the node's pods (and the peer) with kubectl, then give each its addresses (both
    families) and Ready containers as kubelet would."""
    entries: list[tuple[str, str, str, tuple[str, ...]]] = [
        (p.namespace, p.name, kube.node_name, (p.ip, p.ip6)) for p in pods]
    entries.append((PEER["namespace"], PEER["name"], PEER["node"], (PEER["ip"],)))
    namespaces = sorted({ns for ns, *_ in entries} - {"default"})
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces]
    docs += [pod_manifest(ns, name, node) for ns, name, node, _ in entries]
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    for ns, name, _, ips in entries:
        call(kube, "PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", pod_status(ips),
             "application/merge-patch+json")
    kube.pods = [f"{ns}/{name}" for ns, name, node, _ in entries if node == kube.node_name]


def synced(kube: KubeLab, status: Mapping[str, Any]) -> bool:
    """The agent has listed the API and knows every pod of the node as a sender."""
    return bool(status.get("kube", {}).get("synced")) and set(kube.pods) <= set(status.get("pods", {}))


def summary_line(kube: KubeLab | None, status: Mapping[str, Any]) -> str:
    """Which pod table the agent used, for the lab's summary."""
    if kube is None:
        return "pod table: static (a --sender flag per pod)"
    k = status.get("kube", {})
    return (f"pod table: apiserver (kube-apiserver {kube.url} in the agent's namespace, ready in "
            f"{kube.ready_after:.1f}s; agent as "
            f"{'/'.join(AGENT_ACCOUNT)} with deploy/ RBAC; node {kube.node_name}: synced={k.get('synced')}, "
            f"senders {status.get('senders')}, peers {k.get('peers')})")


def remove_data(out: Path) -> None:
    """Delete etcd's data (after the lab stopped etcd); the rest of ``<output>/kube`` stays."""
    shutil.rmtree(out / "kube" / "etcd", ignore_errors=True)
