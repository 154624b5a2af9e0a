"""podmirror on a real node, installed as a user installs it: ``kubectl apply -k deploy/overlays/local``.

One module, in order (each test builds on the state the previous ones left, as a user's session
would): the install runs as the image's user; a labelled namespace gets a server Deployment
(kernel mode: the webhook grants NET_ADMIN) behind a ClusterIP Service and a client pod (auto mode,
no NET_ADMIN: it sniffs), each with exactly one sidecar; the agent's ``/status`` shows both with
their modes and balanced books; the client's requests through the Service (kube-proxy's DNAT, real)
are in the agent's pcap once each, as tshark decodes them; rolling the agent restarts no
application pod and the tunnels are received again within seconds; deleting the client removes it
from the agent's pod table; an unlabelled namespace gets no sidecar; a webhook outage blocks no pod;
``kubectl delete -k`` leaves no podmirror link, qdisc or filter in any pod's network namespace; and
``scripts/cluster.sh down`` leaves nothing of the node on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar_lite.identity import vni_for_address
from tests.cluster.conftest import ROOT, Cluster, cni_netns, eventually, sysctls

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

OVERLAY = str(ROOT / "deploy" / "overlays" / "local")
SIDECAR = "podmirror-sidecar"
IMAGE = "podmirror:dev"
RUN = f"pmtest-{uuid.uuid4().hex[:6]}"
NS, PLAIN_NS = RUN, f"{RUN}-plain"
REQUESTS = 5
@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Iterator[Cluster]:
    cluster.kubectl("apply", "-k", OVERLAY)
    for kind in ("daemonset/podmirror-agent", "deployment/podmirror-webhook"):
        cluster.kubectl("-n", "podmirror", "rollout", "status", kind, "--timeout=180s", timeout=200)
    yield cluster
    if not cluster.is_down:
        cluster.kubectl("delete", "-k", OVERLAY, "--ignore-not-found", "--wait=false", timeout=120)


def pod(name: str, namespace: str) -> dict[str, Any]:
    """A pod that sleeps in the podmirror image (never pulled)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"terminationGracePeriodSeconds": 3,
                     "containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "Never",
                                     "command": ["sleep", "infinity"]}]}}


def workload_manifests() -> list[dict[str, Any]]:
    server = {"name": "web", "image": IMAGE, "imagePullPolicy": "Never",
              "command": ["python3", "-m", "http.server", "8080"],
              "ports": [{"name": "http", "containerPort": 8080}],
              "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 2}}
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NS, "labels": {"podmirror.io/monitor": "enabled"}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": NS},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"},
                                            "annotations": {"podmirror.io/mode": "kernel"}},
                               "spec": {"terminationGracePeriodSeconds": 3, "containers": [server]}}}},
    ]


@pytest.fixture(scope="module")
def workload(installed: Cluster) -> Iterator[dict[str, Any]]:
    k = installed
    namespace, *rest = workload_manifests()
    k.apply(namespace)
    eventually(lambda: k.get("-n", NS, "serviceaccount", "default"), 60, "the namespace's default account")
    # The webhook's pod is Ready before the API server can reach it (its Service's endpoints, its
    # caBundle patch): until then failurePolicy Ignore admits pods without a sidecar.
    eventually(lambda: injects(k), 90, "the webhook injecting into a server-side dry run")
    k.apply(rest)
    k.kubectl("-n", NS, "rollout", "status", "deployment/web", "--timeout=120s", timeout=150)
    k.apply(pod("client", NS))  # no mode annotation: auto, and the webhook grants no NET_ADMIN
    k.kubectl("-n", NS, "wait", "--for=condition=Ready", "pod/client", "--timeout=120s", timeout=150)
    (web,) = k.get("-n", NS, "pods", "-l", "app=web")["items"]
    client = k.get("-n", NS, "pod", "client")
    found = {"web": web, "client": client, "service_ip": k.service_ip(NS, "web")}
    yield found
    for namespace in ([] if k.is_down else [NS, PLAIN_NS]):
        k.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")


def injects(k: Cluster) -> bool:
    """Whether a pod created now in the monitored namespace gets the sidecar (a server-side dry run:
    admission runs, webhooks included, nothing is stored)."""
    probe = pod("probe", NS)
    out = k.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(probe))
    return bool(sidecars(json.loads(out)))


def key(obj: dict[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def sidecars(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in obj["spec"]["containers"] if c["name"] == SIDECAR]


def balanced(counters: dict[str, Any]) -> bool:
    return bool(counters["received"] == counters["forwarded"] + sum(counters["drops"].values()))


def client_requests(k: Cluster, url: str, count: int) -> None:
    """``count`` GETs from inside the client pod (its network namespace, its sidecar mirroring)."""
    code = (f"import urllib.request as u\nfor i in range({count}):\n"
            f"    assert u.urlopen('{url}%d' % i, timeout=5).status == 200\n")
    k.kubectl("-n", NS, "exec", "client", "-c", "app", "--", "python3", "-c", code)


def pcap_requests(k: Cluster, token: str, tmp: str) -> list[tuple[str, str, str, str]]:
    """(src, dst, dport, uri) of every HTTP request carrying ``token`` in the agent's pcap files."""
    agent = k.agent_pod()["metadata"]["name"]
    files = k.kubectl("-n", "podmirror", "exec", agent, "--", "ls", "/var/lib/podmirror/pcap").split()
    found = []
    for name in files:
        path = os.path.join(tmp, name)
        with open(path, "wb") as handle:
            subprocess.run(["kubectl", "-n", "podmirror", "exec", agent, "--", "cat",
                            f"/var/lib/podmirror/pcap/{name}"], stdout=handle, check=True, env=k.env,
                           timeout=60)
        # the newest file is being written: a record cut short at its end is not an error here
        out = subprocess.run(["tshark", "-r", path, "-Y", "http.request", "-T", "fields", "-e", "ip.src",
                              "-e", "ip.dst", "-e", "tcp.dstport", "-e", "http.request.uri"],
                             capture_output=True, text=True, timeout=60).stdout
        found += [tuple(line.split("\t")) for line in out.splitlines() if token in line]
    return found  # type: ignore[return-value]


# -- the install -----------------------------------------------------------------------------------
def test_install_runs_agent_and_webhook_as_the_image_user(installed: Cluster) -> None:
    k = installed
    ds = k.get("-n", "podmirror", "daemonset", "podmirror-agent")
    assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == 1
    config = k.get("mutatingwebhookconfiguration", "podmirror-injector")
    assert all(hook["clientConfig"].get("caBundle") for hook in config["webhooks"])  # patched by its own CA
    for workload in ("daemonset/podmirror-agent", "deployment/podmirror-webhook"):
        uid = k.kubectl("-n", "podmirror", "exec", workload, "--", "id", "-u").strip()
        assert uid == "65532", f"{workload} runs as {uid}"  # the image's user (Dockerfile USER)
    assert k.agent_status()["kube"]["synced"] is True


# -- injection, status, the pcap ---------------------------------------------------------------------
def test_webhook_injects_one_sidecar_kernel_where_net_admin_sniff_where_not(workload: dict[str, Any],
                                                                            installed: Cluster) -> None:
    web, client = workload["web"], workload["client"]
    (web_sidecar,), (client_sidecar,) = sidecars(web), sidecars(client)
    assert web_sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert client_sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    for sidecar in (web_sidecar, client_sidecar):
        assert sidecar["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert web_sidecar["image"] == client_sidecar["image"] == IMAGE
    assert client_sidecar["imagePullPolicy"] == "Never"
    for obj in (web, client):
        assert obj["metadata"]["labels"]["podmirror.io/monitored"] == "true"

    def modes() -> dict[str, str]:
        pods = installed.agent_status()["pods"]
        return {name: pods[key(obj)]["mode"] for name, obj in (("web", web), ("client", client))
                if "mode" in pods.get(key(obj), {})}
    assert eventually(lambda: len(modes()) == 2 and modes(), 60, "both pods in /status with a mode") == {
        "web": "kernel", "client": "sniff"}


def test_each_sidecar_runs_with_exactly_its_one_capability_no_new_privileges_and_seccomp(
        workload: dict[str, Any], installed: Cluster) -> None:
    """What containerd and runc made of the injected securityContext, read from the running sidecar
    (``/proc/1/status`` of its container): CAP_NET_ADMIN (bit 12) for kernel mode, CAP_NET_RAW
    (bit 13) for sniffing, nothing else; no_new_privs; a seccomp filter (RuntimeDefault)."""
    expected = {"web": 1 << 12, "client": 1 << 13}
    for name, caps in expected.items():
        obj = workload[name]
        text = installed.kubectl("-n", obj["metadata"]["namespace"], "exec", obj["metadata"]["name"], "-c",
                                 "podmirror-sidecar", "--", "python3", "-c",
                                 "print(open('/proc/1/status').read())")
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        assert int(fields["CapEff"], 16) == int(fields["CapPrm"], 16) == caps, (name, fields)
        assert int(fields["CapBnd"], 16) == caps and int(fields["CapAmb"], 16) == 0, (name, fields)
        assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2", (name, fields)
        assert fields["Uid"].split()[0] == "0", (name, fields)  # root: tests/netns/test_sidecar_privileges.py


def test_service_flows_once_and_the_pcap_holds_the_clients_requests(
        workload: dict[str, Any], installed: Cluster, tmp_path: Any) -> None:
    k, token = installed, uuid.uuid4().hex[:10]
    client_ip, service_ip = workload["client"]["status"]["podIP"], workload["service_ip"]
    unknown = k.agent_status()["drops"]["unknown_sender"]
    client_requests(k, f"http://{service_ip}/?pm={token}-", REQUESTS)
    expected = {(client_ip, service_ip, "80", f"/?pm={token}-{i}") for i in range(REQUESTS)}

    def complete() -> list[tuple[str, str, str, str]]:
        found = pcap_requests(k, token, str(tmp_path))
        return found if set(found) >= expected else []
    found = eventually(complete, 30, "the client's requests in the agent's pcap", interval=1)
    # Once each, from the client's side of kube-proxy's DNAT (ClusterIP:80); the server pod's copy of
    # the same connection (pod IP:8080) was received too, and dropped as the other vantage.
    assert sorted(found) == sorted(expected)
    status = k.agent_status()
    web = status["pods"][key(workload["web"])]
    assert web["received"] > 0 and web["drops"]["other_vantage"] > 0
    assert balanced(status) and all(balanced(c) for c in status["pods"].values())
    # The tunnels reach the agent through the Service (kube-proxy's DNAT) with the pods' own source
    # addresses: nothing masqueraded them, or the sender check would have dropped them.
    assert status["drops"]["unknown_sender"] == unknown
    assert status["received"] == sum(c["received"] for c in status["pods"].values())


# -- the agent rolled, the client deleted ------------------------------------------------------------
def test_rolling_the_agent_restarts_no_application_pod_and_tunnels_return(workload: dict[str, Any],
                                                                          installed: Cluster) -> None:
    k = installed

    def app_pods() -> dict[str, Any]:
        items = k.get("-n", NS, "pods")["items"]
        return {p["metadata"]["uid"]: sorted((c["name"], c["containerID"], c["restartCount"])
                                             for c in p["status"]["containerStatuses"]) for p in items}
    before, old_agent = app_pods(), k.agent_pod()["metadata"]["uid"]
    k.kubectl("-n", "podmirror", "rollout", "restart", "daemonset/podmirror-agent")
    k.kubectl("-n", "podmirror", "rollout", "status", "daemonset/podmirror-agent", "--timeout=120s",
              timeout=150)
    assert k.agent_pod()["metadata"]["uid"] != old_agent
    rolled = time.monotonic()
    url = f"http://{workload['service_ip']}/?pm=after-roll-"

    def both_received() -> bool:
        client_requests(k, url, 1)
        pods = k.agent_status()["pods"]
        return all(pods.get(key(workload[name]), {}).get("received", 0) > 0 for name in ("web", "client"))
    eventually(both_received, 30, "both sidecars' tunnels at the new agent", interval=1)
    print(f"tunnels received by the new agent {time.monotonic() - rolled:.1f} s after the roll")
    assert app_pods() == before  # same pods, same containers, no restart


def test_deleting_the_client_removes_it_from_the_agent_table(workload: dict[str, Any],
                                                            installed: Cluster) -> None:
    """Read from /status: push-down answers a pod only about itself (this test is not the pod), and
    the same 403 whether the address is a pod or not, so it is no oracle of the table."""
    k, ip = installed, workload["client"]["status"]["podIP"]
    pushdown = (f"http://{k.service_ip('podmirror', 'podmirror-agent')}:9476/v1/pushdown"
                f"?ip={ip}&vni={vni_for_address(ip)}&mode=sniff")

    def answer() -> int:
        try:
            with urllib.request.urlopen(pushdown, timeout=5) as answered:
                return int(answered.status)
        except urllib.error.HTTPError as exc:
            return exc.code
    assert answer() == 403 and k.agent_status()["kube"]["local"] == 2
    k.kubectl("-n", NS, "delete", "pod", "client", "--wait=true", timeout=120)
    eventually(lambda: k.agent_status()["kube"]["local"] == 1, 30, "the agent forgets the deleted client")
    status = k.agent_status()
    assert status["kube"]["local"] == 1 and status["senders"] == 1 and answer() == 403


# -- what must not be injected or blocked ------------------------------------------------------------
def test_a_pod_in_an_unlabelled_namespace_gets_no_sidecar(installed: Cluster) -> None:
    k = installed
    k.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PLAIN_NS}}])
    eventually(lambda: k.get("-n", PLAIN_NS, "serviceaccount", "default"), 60, "the default account")
    k.apply(pod("plain", PLAIN_NS))
    created = k.get("-n", PLAIN_NS, "pod", "plain")
    assert [c["name"] for c in created["spec"]["containers"]] == ["app"]
    assert "podmirror.io/monitored" not in created["metadata"].get("labels", {})


def test_pod_creation_is_not_blocked_while_the_webhook_is_down(workload: dict[str, Any],
                                                                installed: Cluster) -> None:
    k = installed
    k.kubectl("-n", "podmirror", "scale", "deployment/podmirror-webhook", "--replicas=0")
    try:
        eventually(lambda: not k.get("-n", "podmirror", "pods", "-l",
                                     "app.kubernetes.io/name=podmirror-webhook")["items"],
                   60, "the webhook's pod gone")
        start = time.monotonic()
        k.apply(pod("while-webhook-down", NS))
        took = time.monotonic() - start
        created = k.get("-n", NS, "pod", "while-webhook-down")
        assert [c["name"] for c in created["spec"]["containers"]] == ["app"]  # admitted, not injected
        assert took < 10, f"creating the pod took {took:.1f} s"
    finally:
        k.kubectl("-n", "podmirror", "scale", "deployment/podmirror-webhook", "--replicas=1")
        k.kubectl("-n", "podmirror", "rollout", "status", "deployment/podmirror-webhook", "--timeout=120s",
                  timeout=150)


# -- uninstall ----------------------------------------------------------------------------------------
def netns_of(ip: str) -> str:
    for ns in cni_netns():
        addrs = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"],
                               capture_output=True, text=True).stdout
        if f" {ip}/" in addrs:
            return ns
    raise AssertionError(f"no pod network namespace has {ip}")


def podmirror_state(ns: str) -> list[str]:
    """What podmirror's sidecar leaves in a network namespace: pm-* links, clsact, tc filters."""
    links = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    found = [f"link {link['ifname']}" for link in links if link["ifname"].startswith("pm-")]
    for link in links:
        name = link["ifname"]
        qdiscs = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", name], capture_output=True,
                                text=True).stdout
        found += [f"{name}: {line}" for line in qdiscs.splitlines() if "clsact" in line or "ingress" in line]
        for hook in ("ingress", "egress"):
            filters = subprocess.run(["tc", "-n", ns, "filter", "show", "dev", name, hook],
                                     capture_output=True, text=True).stdout
            found += [f"{name} {hook}: {line}" for line in filters.splitlines() if line.strip()]
    return found


def test_delete_k_leaves_no_podmirror_state_in_any_pod_namespace(workload: dict[str, Any],
                                                                 installed: Cluster) -> None:
    k = installed
    (web,) = k.get("-n", NS, "pods", "-l", "app=web")["items"]
    ns = netns_of(web["status"]["podIP"])
    assert any(s.startswith("link pm-") for s in podmirror_state(ns))  # the kernel-mode sidecar's device
    # A context manager: whatever fails below, the log stream's pipe is closed and the process
    # reaped here (a pipe left to the garbage collector fails a later test with a ResourceWarning).
    with subprocess.Popen(["kubectl", "-n", NS, "logs", "-f", web["metadata"]["name"], "-c", SIDECAR],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=k.env) as logs:
        try:
            k.kubectl("delete", "-k", OVERLAY, "--timeout=120s", timeout=150)
            assert not k.get("mutatingwebhookconfigurations")["items"]
            # The workload's pods are replaced: without the webhook, the new ones have no sidecar; the
            # old one's sidecar got SIGTERM and removed what it had made in the pod's namespace.
            k.kubectl("-n", NS, "rollout", "restart", "deployment/web")
            k.kubectl("-n", NS, "rollout", "status", "deployment/web", "--timeout=120s", timeout=150)
            # The old pod ends after its 3 s grace period, once the kubelet has stopped its containers
            # and torn down its sandbox; on a busy 2-core machine that took more than 60 s once.
            eventually(lambda: not old_pod(k, web), 120, "the old web pod gone",
                       describe=lambda: old_pod(k, web))
            out, _ = logs.communicate(timeout=30)
        finally:
            logs.kill()
    assert "kernel mode: removed pm-" in out, out[-2000:]
    (new_web,) = k.get("-n", NS, "pods", "-l", "app=web")["items"]
    assert not sidecars(new_web)
    left = {ns: podmirror_state(ns) for ns in cni_netns()}
    assert left and not any(left.values()), left


def old_pod(k: Cluster, web: dict[str, Any]) -> list[dict[str, Any]]:
    """``web``'s pod while it still exists: its phase, deletion time and container states."""
    return [{"phase": p["status"].get("phase"), "deletionTimestamp": p["metadata"].get("deletionTimestamp"),
             "containers": [(c["name"], c.get("state")) for c in p["status"].get("containerStatuses", [])]}
            for p in k.get("-n", NS, "pods", "-l", "app=web")["items"]
            if p["metadata"]["uid"] == web["metadata"]["uid"]]


def test_down_leaves_nothing_of_the_node(cluster: Cluster) -> None:
    before = cluster.machine_before
    if before is None:
        pytest.skip("the cluster ran before this session: left running")
    cluster.script("cluster.sh", "down")
    cluster.is_down = True
    procs = subprocess.run(["pgrep", "-a", "-f", "podmirror-cluster"],
                           capture_output=True, text=True).stdout
    assert not procs, procs
    assert set(cni_netns()) <= set(before["netns"])
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert not [line for line in rules.splitlines() if "KUBE-" in line or "PM-" in line]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert "pm-cni0" not in links
    with open("/proc/self/mounts") as handle:
        mounts = handle.read()
    assert "podmirror-cluster" not in mounts and "/var/lib/kubelet" not in mounts
    for path in ("/var/lib/podmirror-cluster", "/run/podmirror-cluster"):
        assert not os.path.exists(path), path
    assert sysctls() == before["sysctls"]
