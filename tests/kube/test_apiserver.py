"""The real kube-apiserver tier (v1.20 from Debian's source, built by .ci/apiserver.sh) with etcd.

One control plane for the module (~8 s to start), and one more with the watch cache off and etcd
compacted every second, for a real 410. What it proves, beyond the fake API:
- the watcher's list/watch/resume against real semantics, authenticated as the shipped agent
  service account (so RBAC allows exactly what the code calls);
- ``kubectl auth can-i --as`` over the shipped RBAC: what the code uses, and nothing more;
- ``kubectl apply --dry-run=server`` accepts every manifest; the fields a 1.20 server drops are
  computed, not assumed, and must be exactly the known list below;
- the apiserver calls ``nodeagent webhook`` over TLS (self-made CA, caBundle patched by the
  webhook as its own service account) and stores pods with the sidecar injected;
- ``nodeagent run --kubeconfig FILE --node-name NAME`` (the lab's mode) takes its senders and
  peers from the apiserver and exits 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import kubernetes.config
import pytest
import yaml

from nodeagent.adapters.kube import Gone, KubeWatcher, PodStream, WatchSpec, watch_specs
from nodeagent.pods.index import PodIndex
from nodeagent.pods.kube import LOCAL, PodTable
from nodeagent.webhook.inject import SIDECAR_NAME
from tests.kube import controlplane
from tests.waiting import wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
AGENT = "system:serviceaccount:podmirror:podmirror-agent"
WEBHOOK = "system:serviceaccount:podmirror:podmirror-webhook"
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
DROPPED_BY_1_20 = {
    # Service.spec.internalTrafficPolicy is alpha in 1.21 and GA in 1.26: a 1.20 server drops it
    # (and would route the tunnel cluster-wide: podmirror needs >= 1.26, or hostNetwork discovery).
    ("Service", "podmirror-agent", "spec.internalTrafficPolicy"),
}

_missing = controlplane.missing() or (None if shutil.which("kubectl") else "needs kubectl")
pytestmark = [pytest.mark.apiserver, pytest.mark.kube,
              pytest.mark.skipif(_missing is not None, reason=_missing or "")]


@pytest.fixture(scope="module")
def plane() -> Iterator[controlplane.ControlPlane]:
    with controlplane.running() as running:
        yield running


def kubectl(plane: controlplane.ControlPlane, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["kubectl", "--kubeconfig", plane.kubeconfig, *args], input=stdin,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def built(path: str = "deploy") -> list[dict[str, Any]]:
    result = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True,
                            timeout=60, check=True)
    return list(yaml.safe_load_all(result.stdout))


@pytest.fixture(scope="module")
def installed(plane: controlplane.ControlPlane) -> controlplane.ControlPlane:
    """Namespaces, service accounts and RBAC of deploy/ applied for real."""
    objs = [o for o in built() if o["kind"] in RBAC_KINDS]
    kubectl(plane, "apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
    return plane


def admin(plane: controlplane.ControlPlane) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=plane.kubeconfig)


CAN_I = [
    (AGENT, ["list", "pods", "--all-namespaces"], True),
    (AGENT, ["watch", "pods", "--all-namespaces"], True),
    (AGENT, ["get", "pods", "-n", "default"], False),
    (AGENT, ["create", "pods", "-n", "default"], False),
    (AGENT, ["list", "secrets", "--all-namespaces"], False),
    (AGENT, ["list", "nodes"], False),
    (AGENT, ["list", "namespaces"], False),
    (WEBHOOK, ["get", "mutatingwebhookconfigurations/podmirror-injector"], True),
    (WEBHOOK, ["patch", "mutatingwebhookconfigurations/podmirror-injector"], True),
    (WEBHOOK, ["patch", "mutatingwebhookconfigurations/someone-else"], False),
    (WEBHOOK, ["delete", "mutatingwebhookconfigurations/podmirror-injector"], False),
    (WEBHOOK, ["list", "mutatingwebhookconfigurations"], False),
    (WEBHOOK, ["list", "pods", "--all-namespaces"], False),
    (WEBHOOK, ["get", "secrets", "-n", "podmirror"], False),
    ("system:serviceaccount:shop:default", ["list", "pods", "-n", "podmirror"], False),  # no label discovery
    ("system:serviceaccount:shop:default", ["list", "pods", "-n", "shop"], False),
]
LABEL_DISCOVERY = [  # deploy/overlays/label-discovery: what its sidecars use, and nothing more
    ("system:serviceaccount:shop:default", ["list", "pods", "-n", "podmirror"], True),
    ("system:serviceaccount:shop:default", ["get", "pods", "-n", "podmirror"], True),
    ("system:serviceaccount:shop:default", ["list", "pods", "-n", "shop"], False),
    ("system:serviceaccount:shop:default", ["watch", "pods", "-n", "podmirror"], False),
    ("system:serviceaccount:shop:default", ["list", "secrets", "-n", "podmirror"], False),
]


def can_i(plane: controlplane.ControlPlane, checks: list[tuple[str, list[str], bool]]) -> list[Any]:
    """The checks ``kubectl auth can-i --as`` answers otherwise than expected."""
    wrong = []
    for user, verb_resource, expected in checks:
        namespace = user.split(":")[2]
        result = subprocess.run(
            ["kubectl", "--kubeconfig", plane.kubeconfig, "auth", "can-i", *verb_resource, "--as", user,
             "--as-group", "system:serviceaccounts", "--as-group", f"system:serviceaccounts:{namespace}"],
            capture_output=True, text=True, timeout=60)
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), result.stderr  # an error is neither a grant nor a denial
        if (answer == "yes") != expected:
            wrong.append((user, verb_resource, answer))
    return wrong


def test_rbac_grants_what_the_code_uses_and_nothing_more(installed: controlplane.ControlPlane) -> None:
    assert not can_i(installed, CAN_I)


def test_label_discovery_overlay_grants_listing_agent_pods_only() -> None:
    """On its own control plane: the overlay's RoleBinding must not leak into the other tests."""
    with controlplane.running() as plane:
        objs = [o for o in built("deploy/overlays/label-discovery") if o["kind"] in RBAC_KINDS]
        kubectl(plane, "apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
        assert not can_i(plane, LABEL_DISCOVERY)


def _paths(obj: Any, prefix: str = "") -> set[str]:
    """Paths of the scalar leaves (an empty map or list, which a server omits, is no field)."""
    if isinstance(obj, dict):
        return set().union(*(_paths(v, f"{prefix}.{k}".lstrip(".")) for k, v in obj.items()))
    if isinstance(obj, list):
        return set().union(*(_paths(v, f"{prefix}[{i}]") for i, v in enumerate(obj)))
    return {prefix}


@pytest.mark.parametrize("path", ["deploy", "deploy/overlays/zeek", "deploy/overlays/label-discovery"])
# (cert-manager's needs its CRDs)
def test_server_dry_run_accepts_every_manifest_and_drops_only_known_fields(
        installed: controlplane.ControlPlane, path: str) -> None:
    objs = built(path)
    out = kubectl(installed, "apply", "--dry-run=server", "--validate=false", "-o", "json", "-f", "-",
                  stdin=yaml.safe_dump_all(objs))
    answered = json.loads(out)
    answered = answered["items"] if answered.get("kind") == "List" else [answered]
    assert len(answered) == len(objs)
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in answered}
    dropped = set()
    for obj in objs:
        key = (obj["kind"], obj["metadata"]["name"])
        for path in _paths(obj) - _paths(by_key[key]):
            # a cluster-scoped object's namespace (set by old kustomize) is not a dropped field
            if path and path != "metadata.namespace":
                dropped.add((*key, path))
    assert dropped == DROPPED_BY_1_20


def _pod(name: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    return controlplane.running_pod(name, node, labels)


async def test_watcher_follows_real_list_and_watch_as_the_agent_account(
        installed: controlplane.ControlPlane) -> None:
    mon = {"podmirror.io/monitored": "true"}
    with admin(installed) as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": "watched"}})

        def create(name: str, node: str, ip: str, labels: dict[str, str]) -> None:
            pod = _pod(name, node, labels)
            core.create_namespaced_pod("watched", pod)
            core.patch_namespaced_pod_status(name, "watched", controlplane.running_status(pod, ip))

        await asyncio.to_thread(create, "before", "node-a", "10.0.0.1", mon)
        agent_conf = installed.kubeconfig_for(controlplane.SERVICE_ACCOUNTS[AGENT], "agent")
        with kubernetes.config.new_client_from_config(config_file=agent_conf) as agent_client:
            index = PodIndex()
            watcher = KubeWatcher(PodTable(index, node="node-a"), kubernetes.client.CoreV1Api(agent_client),
                                  watch_specs("node-a"), timeout=2)  # short: resumes several times
            task = asyncio.create_task(watcher.run(), name="kube-watch")
            try:
                await asyncio.wait_for(watcher.synced.wait(), 20)
                assert index.sender("10.0.0.1") is not None
                await asyncio.to_thread(create, "after", "node-a", "10.0.0.2", mon)
                await asyncio.to_thread(create, "peer", "node-b", "10.0.1.1", mon)
                await asyncio.to_thread(create, "ignored", "node-b", "10.0.1.2", {})
                await wait_for(lambda: index.sender("10.0.0.2") and index.by_addr(bytes([10, 0, 1, 1])), 20)
                # both watches time out (2 s) and resume from their last version before the changes
                await wait_for(lambda: watcher.snapshot()["resumes"] >= 2, 20)
                await asyncio.to_thread(core.delete_namespaced_pod, "before", "watched",
                                        grace_period_seconds=0)
                await asyncio.to_thread(core.patch_namespaced_pod, "peer", "watched",
                                        {"metadata": {"labels": {"podmirror.io/monitored": "false"}}})
                await wait_for(lambda: index.sender("10.0.0.1") is None
                                 and index.by_addr(bytes([10, 0, 1, 1])) is None, 20)
                assert sorted(p.key for p in index.all()) == ["watched/after"]
                assert watcher.snapshot()["errors"] == 0  # never forbidden, never failed
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def webhook(installed: controlplane.ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    """The shipped webhook configuration pointed at a local ``nodeagent webhook`` process, which
    makes its CA and patches the caBundle as the webhook service account."""
    port = _free_port()
    (config,) = [o for o in built("deploy/base") if o["kind"] == "MutatingWebhookConfiguration"]
    config["metadata"].pop("namespace", None)
    for hook in config["webhooks"]:
        path = hook["clientConfig"].pop("service")["path"]
        hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}{path}"
    client = admin(installed)
    hooks = kubernetes.client.AdmissionregistrationV1Api(client)
    hooks.create_mutating_webhook_configuration(config)
    conf = installed.kubeconfig_for(controlplane.SERVICE_ACCOUNTS[WEBHOOK], "webhook")
    log = open(os.path.join(installed.workdir, "webhook.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "nodeagent", "webhook", "--listen", f"127.0.0.1:{port}",
                             "--ip-san", "127.0.0.1", "--webhook-config", "podmirror-injector",
                             "--kubeconfig", conf, "--image", "podmirror:test"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not all(h.client_config.ca_bundle for h in
                      hooks.read_mutating_webhook_configuration("podmirror-injector").webhooks):
            assert proc.poll() is None and time.monotonic() < deadline, "webhook did not patch caBundle"
            time.sleep(0.1)
        while True:  # listening?
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "webhook did not listen"
            time.sleep(0.05)
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
        hooks.delete_mutating_webhook_configuration("podmirror-injector")
        client.close()


def test_apiserver_calls_the_webhook_over_tls_and_stores_injected_pods(
        webhook: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(webhook)
    core.create_namespace({"metadata": {"name": "apps"}})
    core.create_namespace({"metadata": {"name": "mon", "labels": {"podmirror.io/monitor": "enabled"}}})

    def stored(namespace: str, name: str, annotations: dict[str, str] | None = None) -> list[str]:
        pod = _pod(name, "node-a", {})
        pod["metadata"]["annotations"] = annotations or {}
        created = core.create_namespaced_pod(namespace, pod)
        return [c.name for c in created.spec.containers]

    annotated = {"podmirror.io/monitor": "true", "podmirror.io/mode": "kernel"}
    assert stored("apps", "asked", annotated) == ["app", SIDECAR_NAME]
    assert stored("apps", "not-asked") == ["app"]
    assert stored("mon", "by-namespace") == ["app", SIDECAR_NAME]
    assert stored("mon", "opted-out", {"podmirror.io/monitor": "false"}) == ["app"]
    assert stored("kube-system", "system", annotated) == ["app"]
    pod = core.read_namespaced_pod("asked", "apps")
    assert pod.metadata.labels["podmirror.io/monitored"] == "true"
    (sidecar,) = [c for c in pod.spec.containers if c.name == SIDECAR_NAME]
    assert sidecar.image == "podmirror:test" and sidecar.security_context.capabilities.add == ["NET_ADMIN"]
    assert sidecar.security_context.capabilities.drop == ["ALL"]
    assert sidecar.security_context.seccomp_profile.type == "RuntimeDefault"
    # idempotent at admission too: a pod injected offline is admitted as it is
    offline = webhook.sanitize_for_serialization(pod)
    offline["metadata"] = {"name": "again", "labels": offline["metadata"]["labels"],
                           "annotations": offline["metadata"]["annotations"]}
    again = core.create_namespaced_pod("apps", offline)
    assert [c.name for c in again.spec.containers] == ["app", SIDECAR_NAME]


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def test_nodeagent_run_takes_its_pod_table_from_the_apiserver(installed: controlplane.ControlPlane) -> None:
    """The lab's mode: ``nodeagent run --kubeconfig FILE --node-name NAME``, as the agent account."""
    with admin(installed) as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": "lab"}})
        mon = {"podmirror.io/monitored": "true"}
        controlplane.create_running_pod(core, "lab", "web", node="lab-node", ip="10.0.0.5", labels=mon)
        controlplane.create_running_pod(core, "lab", "db", node="other", ip="10.0.1.5", labels=mon)
        port = _free_port()
        conf = installed.kubeconfig_for(controlplane.SERVICE_ACCOUNTS[AGENT], "lab-agent")
        log = open(os.path.join(installed.workdir, "agent.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "nodeagent", "run", "--listen", "127.0.0.1:0",
                                 "--status", f"127.0.0.1:{port}", "--pushdown", "127.0.0.1:0",
                                 "--node-name", "lab-node",
                                 "--kubeconfig", conf], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            deadline, status = time.monotonic() + 30, {}
            while not status.get("kube", {}).get("synced"):
                assert proc.poll() is None and time.monotonic() < deadline, "agent did not sync"
                try:
                    status = _get_json(f"http://127.0.0.1:{port}/status")
                except OSError:
                    time.sleep(0.1)
            assert status["senders"] == 1 and "lab/web" in status["pods"]
            monitored = core.list_pod_for_all_namespaces(label_selector="podmirror.io/monitored=true").items
            peers = [p for p in monitored if p.status.pod_ip and p.spec.node_name != "lab-node"]
            assert status["kube"]["peers"] == len(peers) >= 1 and "lab/db" not in status["pods"]
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
            log.close()
        assert code == 0  # SIGTERM: flush and exit 0


def test_a_compacted_resource_version_is_recognised_as_gone() -> None:
    """The real apiserver's 410 (watch served from etcd, compacted every second) is what
    ``PodStream`` turns into a relist; the fake API tier tests the relist itself."""
    with controlplane.running(["--watch-cache=false", "--etcd-compaction-interval=1s"]) as plane:
        with admin(plane) as client:
            core = kubernetes.client.CoreV1Api(client)
            core.create_namespace({"metadata": {"name": "churn"}})
            first = core.create_namespaced_pod("churn", _pod("p", "node-z", {})).metadata.resource_version
            stream = PodStream(core, WatchSpec(LOCAL, field_selector="spec.nodeName=node-z"),
                               lambda *event: None, timeout=1)
            deadline = time.monotonic() + 30
            with pytest.raises(Gone, match="too old"):
                for i in itertools.count():  # each change is a new revision; compaction follows
                    assert time.monotonic() < deadline, "never compacted"
                    core.patch_namespaced_pod("p", "churn", {"metadata": {"labels": {"i": str(i)}}})
                    stream._watch(first)  # returns after its 1 s timeout until `first` is compacted
