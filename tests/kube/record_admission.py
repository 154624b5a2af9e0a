"""Record real AdmissionReview requests from kube-apiserver into ``tests/data/admission/``.

Run (needs the apiserver tier's binaries): ``.venv/bin/python -m tests.kube.record_admission``.
A throwaway control plane calls a recording HTTPS endpoint (admits everything, patches nothing)
for each pod below; each request body is saved as ``<case>.json``. The webhook unit tests replay
them, so the fixtures are what an apiserver really sends, not what we think it sends.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import pathlib
from typing import Any

import kubernetes.client
import kubernetes.config
from aiohttp import web

from nodeagent.webhook import certs, server
from tests.kube import controlplane

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "admission"

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "annotated_pod": ("shop", {"metadata": {"name": "web", "annotations": {"podmirror.io/monitor": "true"},
                                            "labels": {"app": "web"}},
                               "spec": {"containers": [{"name": "web", "image": "nginx",
                                                        "ports": [{"containerPort": 80}]}]}}),
    "kernel_mode_containers": ("shop", {
        "metadata": {"generateName": "api-", "annotations": {
            "podmirror.io/monitor": "true", "podmirror.io/mode": "kernel",
            "podmirror.io/containers": "api,metrics"}},
        "spec": {"containers": [
            {"name": "api", "image": "api", "ports": [{"containerPort": 8080},
                                                        {"containerPort": 8081, "protocol": "UDP"}]},
            {"name": "metrics", "image": "m", "ports": [{"containerPort": 9090, "name": "metrics"}]},
            {"name": "cache", "image": "redis", "ports": [{"containerPort": 6379}]}]}}),
    "plain_pod_in_enabled_namespace": ("monitored", {
        "metadata": {"name": "worker"}, "spec": {"containers": [{"name": "w", "image": "busybox"}]}}),
    "opted_out_pod": ("monitored", {
        "metadata": {"name": "batch", "annotations": {"podmirror.io/monitor": "false"}},
        "spec": {"containers": [{"name": "b", "image": "busybox"}]}}),
    "kube_system_pod": ("kube-system", {
        "metadata": {"name": "dns", "annotations": {"podmirror.io/monitor": "true"}},
        "spec": {"containers": [{"name": "dns", "image": "coredns"}]}}),
}


async def record() -> None:
    made = certs.make(["localhost"], datetime.datetime.now(datetime.UTC), ip_addresses=("127.0.0.1",))
    seen: list[dict[str, Any]] = []

    async def capture(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        return web.json_response({"apiVersion": body["apiVersion"], "kind": "AdmissionReview",
                                  "response": {"uid": body["request"]["uid"], "allowed": True}})

    app = web.Application()
    app.router.add_post("/record", capture)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server.ssl_context(made.cert_pem, made.key_pem))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        with controlplane.running() as plane:
            await asyncio.to_thread(_create_all, plane.kubeconfig, port, made.ca_pem, seen)
    finally:
        await runner.cleanup()


def _create_all(kubeconfig: str, port: int, ca_pem: bytes, seen: list[dict[str, Any]]) -> None:
    client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    core = kubernetes.client.CoreV1Api(client)
    hooks = kubernetes.client.AdmissionregistrationV1Api(client)
    hooks.create_mutating_webhook_configuration({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "recorder"},
        "webhooks": [{"name": "recorder.podmirror.io", "admissionReviewVersions": ["v1"],
                      "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 5,
                      "clientConfig": {"url": f"https://127.0.0.1:{port}/record",
                                       "caBundle": base64.b64encode(ca_pem).decode()},
                      "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                 "resources": ["pods"]}]}]})
    for name, labels in (("shop", {}), ("monitored", {"podmirror.io/monitor": "enabled"})):
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
    for case, (namespace, pod) in CASES.items():
        before = len(seen)
        core.create_namespaced_pod(namespace, {"apiVersion": "v1", "kind": "Pod", **pod})
        assert len(seen) == before + 1, f"{case}: the apiserver did not call the webhook"
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{case}.json").write_text(json.dumps(seen[-1], indent=1, sort_keys=True) + "\n")
        print(f"recorded {case}")
    client.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    asyncio.run(record())
