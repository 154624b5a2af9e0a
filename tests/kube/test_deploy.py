"""deploy/: kustomize builds, every object validates against the Kubernetes 1.32 schemas
(``kubernetes-validate --strict``), and the objects say what the issue asks (probes, Service
policy, webhook safety, least-privilege RBAC, a config the agent accepts)."""

from __future__ import annotations

import functools
import pathlib
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from nodeagent import settings
from nodeagent.webhook.inject import SIDECAR_NAME, InjectConfig
from nodeagent.webhook.inject_cmd import inject_object
from tests.kube.patching import validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = ["deploy", "deploy/base", "deploy/example", "deploy/overlays/zeek",
                  "deploy/overlays/cert-manager", "deploy/overlays/label-discovery",
                  "deploy/overlays/capture", "deploy/overlays/local"]
CRD_GROUPS = ("cert-manager.io/",)
"""Custom resources: no schema in kubernetes-validate; their fields are checked below instead."""
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="needs kubectl (Debian kubernetes-client) for `kubectl kustomize`")


@functools.cache
def build(path: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(yaml.safe_load_all(result.stdout))


def find(objs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_builds_and_every_object_validates_strictly(path: str) -> None:
    objs = build(path)
    assert objs
    for obj in objs:
        if not obj["apiVersion"].startswith(CRD_GROUPS):
            validate(obj)


def test_everything_is_base_plus_example() -> None:
    def names(objs: tuple[dict[str, Any], ...]) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in objs}

    assert names(build("deploy")) == names(build("deploy/base")) | names(build("deploy/example"))


def test_agent_daemonset_probes_status_port_runs_everywhere_unprivileged() -> None:
    ds = find(build("deploy/base"), "DaemonSet", "podmirror-agent")
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    ports = {p["name"]: p for p in agent["ports"]}
    assert ports["status"]["containerPort"] == 9477 and ports["tunnel"] == {
        "name": "tunnel", "containerPort": 14789, "protocol": "UDP"}
    assert ports["pushdown"]["containerPort"] == 9476
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "status"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "status"}
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True and "hostNetwork" not in pod
    assert {"operator": "Exists"} in pod["tolerations"]
    assert "--node-name" in agent["args"] and agent["resources"]["limits"]


def test_agent_config_map_is_a_config_the_agent_accepts() -> None:
    for path in ("deploy/base", "deploy/overlays/zeek"):
        (cm,) = [o for o in build(path) if o["kind"] == "ConfigMap"]
        loaded = settings.load(yaml.safe_load(cm["data"]["config.yaml"]))
        assert loaded.listen.port == settings.TUNNEL_PORT and loaded.status.port == settings.STATUS_PORT
        assert loaded.pushdown.port == settings.PUSHDOWN_PORT
        ds = find(build(path), "DaemonSet", "podmirror-agent")
        volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]  # hashed name followed


def test_agent_service_is_node_local_with_tunnel_and_status_ports() -> None:
    svc = find(build("deploy/base"), "Service", "podmirror-agent")
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    assert {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == {
        (14789, "UDP"), (9477, "TCP"), (9476, "TCP")}
    (webhook,) = find(build("deploy/base"), "Deployment", "podmirror-webhook")["spec"]["template"]["spec"][
        "containers"]
    rules_url = webhook["args"][webhook["args"].index("--rules-url") + 1]
    assert rules_url.endswith("PORT_PUSHDOWN)/v1/pushdown")   # the sidecars' URL: the push-down port


def test_webhook_can_never_block_pods_and_skips_system_namespaces() -> None:
    config = find(build("deploy/base"), "MutatingWebhookConfiguration", "podmirror-injector")
    paths = set()
    for hook in config["webhooks"]:
        assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] <= 5
        assert hook["sideEffects"] == "None" and hook["clientConfig"]["service"]["namespace"] == "podmirror"
        excluded = [e for e in hook["namespaceSelector"]["matchExpressions"]
                    if e["key"] == "kubernetes.io/metadata.name"]
        assert excluded == [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                             "values": ["kube-system", "podmirror"]}]
        paths.add(hook["clientConfig"]["service"]["path"])
    assert paths == {"/mutate", "/mutate/enabled-namespace"}  # the routes nodeagent webhook serves


def test_rbac_is_least_privilege() -> None:
    objs = build("deploy/base")
    assert find(objs, "ClusterRole", "podmirror-agent")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    assert find(objs, "ClusterRole", "podmirror-webhook")["rules"] == [
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
         "resourceNames": ["podmirror-injector"], "verbs": ["get", "patch"]}]
    # Every ClusterRole rule that names a resource kind names its objects, except the agent's
    # list/watch (which a resourceNames cannot restrict); no RoleBinding to all service accounts.
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding")]
    bindings = [o for o in objs if o["kind"].endswith("Binding")]
    assert all(s["kind"] == "ServiceAccount" for b in bindings for s in b["subjects"])


def test_capture_overlay_opens_only_the_capture_port_beyond_the_base_policy() -> None:
    objs = build("deploy/overlays/capture")
    extra = find(objs, "NetworkPolicy", "podmirror-agent-capture")["spec"]
    assert [p for rule in extra["ingress"] for p in rule["ports"]] == [{"protocol": "TCP", "port": 9479}]
    assert find(objs, "NetworkPolicy", "podmirror-agent")["spec"] == find(
        build("deploy/base"), "NetworkPolicy", "podmirror-agent")["spec"]


def test_label_discovery_overlay_adds_the_namespaced_grant_and_the_webhook_flag() -> None:
    objs = build("deploy/overlays/label-discovery")
    role = find(objs, "Role", "podmirror-agent-discovery")
    assert role["metadata"]["namespace"] == "podmirror" and role["rules"][0]["verbs"] == ["get", "list"]
    binding = find(objs, "RoleBinding", "podmirror-agent-discovery")
    assert binding["metadata"]["namespace"] == "podmirror"
    assert binding["subjects"] == [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                                    "name": "system:serviceaccounts"}]
    (webhook,) = find(objs, "Deployment", "podmirror-webhook")["spec"]["template"]["spec"]["containers"]
    assert webhook["args"][-2:] == ["--discovery", "label"]


def test_network_policies_admit_only_what_each_port_is_for() -> None:
    objs = build("deploy/base")
    agent = find(objs, "NetworkPolicy", "podmirror-agent")["spec"]
    assert agent["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "podmirror-agent"}}
    assert agent["policyTypes"] == ["Ingress"]
    by_port = {(p["protocol"], p["port"]): rule["from"] for rule in agent["ingress"] for p in rule["ports"]}
    monitored = [{"namespaceSelector": {},
                  "podSelector": {"matchLabels": {"podmirror.io/monitored": "true"}}}]
    assert by_port == {
        ("UDP", 14789): monitored, ("TCP", 9476): monitored,   # sidecars: tunnel and push-down
        ("TCP", 9477): [{"namespaceSelector": {"matchLabels": {"podmirror.io/metrics": "allowed"}}}],
    }
    ds = find(objs, "DaemonSet", "podmirror-agent")["spec"]["template"]
    assert ds["metadata"]["labels"]["app.kubernetes.io/name"] == "podmirror-agent"
    webhook = find(objs, "NetworkPolicy", "podmirror-webhook")["spec"]
    assert webhook["policyTypes"] == ["Ingress", "Egress"]
    assert [p["port"] for rule in webhook["ingress"] for p in rule["ports"]] == [8443]
    assert {p["port"] for rule in webhook["egress"] for p in rule["ports"]} == {443, 6443}
    (container,) = find(objs, "Deployment", "podmirror-webhook")["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [8443]


def test_zeek_overlay_adds_zeek_beside_the_agent_fed_over_loopback() -> None:
    ds = find(build("deploy/overlays/zeek"), "DaemonSet", "podmirror-agent")
    containers = {c["name"]: c for c in ds["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"agent", "zeek"} and "lo" in containers["zeek"]["command"]
    (cm,) = [o for o in build("deploy/overlays/zeek") if o["kind"] == "ConfigMap"]
    assert yaml.safe_load(cm["data"]["config.yaml"])["outputs"]["sensors"] == ["127.0.0.1:4789"]


def test_example_workload_injected_offline_still_validates() -> None:
    workload = find(build("deploy/example"), "Deployment", "shop")
    warnings: list[str] = []
    injected = inject_object(workload, InjectConfig(), warnings)
    template = injected["spec"]["template"]
    assert template["spec"]["containers"][-1]["name"] == SIDECAR_NAME
    assert template["metadata"]["annotations"]["podmirror.io/ports"] == "8080/TCP" and not warnings
    validate(injected)


def test_cert_manager_overlay_serves_the_issued_secret_and_drops_the_patch_grant() -> None:
    objs = build("deploy/overlays/cert-manager")
    assert all(objs)  # no empty documents (old kustomize renders deleted objects so)
    assert find(objs, "ClusterRole", "podmirror-webhook")["rules"] == []  # no caBundle patching to allow
    cert = find(objs, "Certificate", "podmirror-webhook")
    assert "podmirror-webhook.podmirror.svc" in cert["spec"]["dnsNames"]
    config = find(objs, "MutatingWebhookConfiguration", "podmirror-injector")
    annotations = config["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == "podmirror/podmirror-webhook"
    (webhook,) = find(objs, "Deployment", "podmirror-webhook")["spec"]["template"]["spec"]["containers"]
    assert "--tls-cert" in webhook["args"] and "--webhook-config" not in webhook["args"]
    mounts = {m["name"]: m["mountPath"] for m in webhook["volumeMounts"]}
    assert mounts["tls"] + "/tls.crt" in webhook["args"] and mounts["tmp"] == "/tmp"


def test_webhook_has_a_memory_tmp_for_its_certificate_with_a_read_only_root() -> None:
    """Found on a real node: with readOnlyRootFilesystem the webhook could not write the serving
    certificate Python's ssl needs as files ("No usable temporary directory found")."""
    pod = find(build("deploy/base"), "Deployment", "podmirror-webhook")["spec"]["template"]["spec"]
    (webhook,) = pod["containers"]
    assert webhook["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in webhook["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"] == "/tmp" and volumes["tmp"]["emptyDir"]["medium"] == "Memory"


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("path", ["deploy/base", "deploy/overlays/cert-manager", "deploy/overlays/local"])
def test_webhook_gives_sidecars_the_agent_service_address_without_dns(path: str) -> None:
    """The sidecar's agent is the agent Service's ClusterIP and ports, from the variables Kubernetes
    sets in the webhook's container for the Services of its namespace: no cluster DNS needed (the
    local cluster has none). The variables must name the Service and its ports as they are."""
    objs = build(path)
    svc = find(objs, "Service", "podmirror-agent")
    deployment = find(objs, "Deployment", "podmirror-webhook")
    assert deployment["metadata"]["namespace"] == svc["metadata"]["namespace"]
    (webhook,) = deployment["spec"]["template"]["spec"]["containers"]
    prefix = svc["metadata"]["name"].upper().replace("-", "_") + "_SERVICE_"
    ports = {p["name"].upper(): p["port"] for p in svc["spec"]["ports"]}
    assert _arg(webhook["args"], "--agent") == f"$({prefix}HOST):$({prefix}PORT_TUNNEL)"
    assert _arg(webhook["args"], "--rules-url") == f"http://{{agent_host}}:$({prefix}PORT_PUSHDOWN)/v1/pushdown"
    assert ports == {"TUNNEL": 14789, "STATUS": 9477, "PUSHDOWN": 9476}
    assert deployment["spec"]["template"]["spec"].get("enableServiceLinks", True) is True


def test_local_overlay_is_the_base_with_the_local_image_never_pulled() -> None:
    base, local = build("deploy/base"), build("deploy/overlays/local")
    assert {(o["kind"], o["metadata"]["name"]) for o in local} == {
        (o["kind"], o["metadata"]["name"]) for o in base}
    containers = [c for o in local if o["kind"] in ("DaemonSet", "Deployment")
                  for c in o["spec"]["template"]["spec"]["containers"]]
    assert {(c["image"], c["imagePullPolicy"]) for c in containers} == {("podmirror:dev", "Never")}
    (webhook,) = find(local, "Deployment", "podmirror-webhook")["spec"]["template"]["spec"]["containers"]
    assert _arg(webhook["args"], "--image") == "podmirror:dev"
    assert _arg(webhook["args"], "--image-pull-policy") == "Never"
    # Kubernetes 1.20 (scripts/cluster.sh) does not know the field: kubectl's validation refuses it.
    svc = find(local, "Service", "podmirror-agent")
    assert "internalTrafficPolicy" not in svc["spec"]
    assert {k: v for k, v in find(base, "Service", "podmirror-agent")["spec"].items()
            if k != "internalTrafficPolicy"} == svc["spec"]
