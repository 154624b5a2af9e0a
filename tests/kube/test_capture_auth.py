"""Capture authorization against a real kube-apiserver: TokenReview names the reader, then
SubjectAccessReview ``get pods/capture`` in each namespace the capture selects, with the shipped
RBAC of ``deploy/overlays/capture`` (the agent's account may review; readers get the ClusterRole)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import kubernetes.config
import pytest

from nodeagent.capture.filter import parse
from nodeagent.web.capture_auth import Denied, Gate, KubeReviewer
from tests.kube import controlplane

pytestmark = [pytest.mark.apiserver, pytest.mark.kube,
              pytest.mark.skipif(bool(controlplane.missing()), reason=str(controlplane.missing()))]
RBAC = Path(__file__).resolve().parents[2] / "deploy" / "overlays" / "capture" / "rbac.yaml"
AGENT = "system:serviceaccount:podmirror:podmirror-agent"
READER = "system:serviceaccount:podmirror:podmirror-webhook"
"""A user with a static token and no capture right until the test binds one."""


@pytest.fixture(scope="module")
def plane() -> Iterator[controlplane.ControlPlane]:
    with controlplane.running() as running:
        admin = running.kubeconfig_for(controlplane.TOKEN, "admin")
        subprocess.run(["kubectl", "--kubeconfig", admin, "apply", "-f", str(RBAC)], check=True,
                       capture_output=True, timeout=60)
        yield running


def gate(plane: controlplane.ControlPlane) -> Gate:
    conf = plane.kubeconfig_for(controlplane.SERVICE_ACCOUNTS[AGENT], "agent")
    client = kubernetes.config.new_client_from_config(config_file=conf)  # type: ignore[no-untyped-call]
    return Gate(kube=KubeReviewer(client, ttl=0.0))


async def check(g: Gate, token: str, *query: tuple[str, str]) -> str:
    try:
        return (await g.check(f"Bearer {token}", None, parse(query))).user
    except Denied as exc:
        return f"{exc.status} {exc}"


async def test_tokens_are_reviewed_and_capture_needs_get_pods_capture_in_the_namespace(
        plane: controlplane.ControlPlane) -> None:
    g = gate(plane)
    reader = controlplane.SERVICE_ACCOUNTS[READER]
    assert (await check(g, "not-a-token-anyone-issued", ("pod", "shop/web"))).startswith("401")
    denied = await check(g, reader, ("pod", "shop/web"))
    assert denied.startswith("403") and "pods/capture in namespace 'shop'" in denied
    admin = plane.kubeconfig_for(controlplane.TOKEN, "admin")
    subprocess.run(["kubectl", "--kubeconfig", admin, "create", "namespace", "shop"], check=True,
                   capture_output=True, timeout=30)
    subprocess.run(["kubectl", "--kubeconfig", admin, "-n", "shop", "create", "rolebinding", "reader-capture",
                    "--clusterrole=podmirror-capture", f"--user={READER}"], check=True, capture_output=True,
                   timeout=30)
    assert await check(g, reader, ("pod", "shop/web")) == READER
    assert await check(g, reader, ("namespace", "shop"), ("selector", "app=web")) == READER
    assert (await check(g, reader, ("namespace", "dev"))).startswith("403")
    assert (await check(g, reader)).startswith("403")  # every pod of the node: needs a cluster-wide grant
    assert (await check(g, reader, ("pod", "shop/web"), ("pod", "dev/db"))).startswith("403")
    assert g.kube is not None and g.kube.state()["errors"] == 0
