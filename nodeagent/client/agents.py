"""Which agents to talk to: through the Kubernetes API, or given as URLs.

With Kubernetes (the user's kubeconfig, or the in-cluster account): the selected pods (``-n``,
``-l``, names) and their nodes (``spec.nodeName``); the agent pods (namespace ``podmirror``, label
``app.kubernetes.io/name=podmirror-agent``) and, per node, the one Running there; each agent is
reached **directly** at its pod address: the capture port is the container port named
``capture`` (9479 by default), the status port the one named ``status`` (9477). So the client runs
where pod addresses are routable (a node, a pod, a VPN into the cluster network); elsewhere use
``kubectl port-forward`` and ``--agent URL``. The apiserver's pod proxy is not used for capture:
it strips the user's credentials (the agent could not authorize per namespace) and its permission
(``pods/proxy``) reaches every port of every pod in the namespace.

The TLS name checked on an agent's capture certificate is ``SERVER_NAME`` (one certificate for
every agent, ``deploy/overlays/capture``), whatever its pod address.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from nodeagent.settings import CAPTURE_PORT, STATUS_PORT

AGENT_NAMESPACE = "podmirror"
AGENT_SELECTOR = "app.kubernetes.io/name=podmirror-agent"
SERVER_NAME = "podmirror-agent.podmirror.svc"


class DiscoveryError(RuntimeError):
    """The API could not say where the agents are (the message says what is missing)."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    node: str
    """The node's name (or the URL's host without Kubernetes)."""
    host: str
    capture_port: int = CAPTURE_PORT
    status_port: int = STATUS_PORT
    name: str = ""
    """The agent pod's name ("" without Kubernetes)."""
    ready: bool = True
    scheme: str = "https"

    def _netloc(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    @property
    def capture_url(self) -> str:
        return f"https://{self._netloc(self.capture_port)}"

    @property
    def status_url(self) -> str:
        return f"{self.scheme}://{self._netloc(self.status_port)}"


def from_url(url: str, default_port: int) -> Endpoint:
    """``https://10.1.0.2:9479`` (capture) or ``http://10.1.0.2:9477`` (status) -> an endpoint."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if not parts.hostname:
        raise ValueError(f"--agent {url!r} is not a URL")
    port = parts.port or default_port
    return Endpoint(node=parts.hostname, host=parts.hostname, capture_port=port, status_port=port,
                    scheme=parts.scheme)


def api_client(kubeconfig: str | None, context: str | None) -> Any:
    """The kubernetes client for ``kubeconfig`` (default: $KUBECONFIG, ~/.kube/config, in-cluster)."""
    import kubernetes.client
    import kubernetes.config

    try:
        return kubernetes.config.new_client_from_config(
            config_file=kubeconfig, context=context)
    except (kubernetes.config.ConfigException, OSError, TypeError) as exc:
        if kubeconfig:
            raise DiscoveryError(f"kubeconfig {kubeconfig}: {exc}") from None
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException as exc:
        raise DiscoveryError(f"no kubeconfig and not in a cluster ({exc}); or use --agent URL") from None
    return kubernetes.client.ApiClient(configuration)


def bearer_token(client: Any) -> str | None:
    """The token the kubeconfig authenticates with (None: client certificates or nothing)."""
    value = (client.configuration.api_key or {}).get("authorization") or ""
    scheme, _, token = str(value).partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _list(core: Any, namespace: str | None, **kwargs: Any) -> list[dict[str, Any]]:
    import kubernetes.client

    try:
        if namespace:
            response = core.list_namespaced_pod(namespace, _preload_content=False, **kwargs)
        else:
            response = core.list_pod_for_all_namespaces(_preload_content=False, **kwargs)
    except kubernetes.client.exceptions.ApiException as exc:
        raise DiscoveryError(f"listing pods in {namespace or 'all namespaces'}: {exc.status} {exc.reason}") \
            from None
    return list(json.loads(response.data).get("items") or [])


def selected_pods(core: Any, namespace: str | None, selector: str,
                  names: Sequence[str]) -> list[dict[str, str]]:
    """The pods a capture selects: ``names`` in ``namespace``, or those the selector picks."""
    items = _list(core, namespace, label_selector=selector or None)
    if names:
        items = [p for p in items if p["metadata"]["name"] in set(names)]
        found = {p["metadata"]["name"] for p in items}
        missing = [n for n in names if n not in found]
        if missing:
            raise DiscoveryError(f"no pod {', '.join(missing)} in namespace {namespace}")
    return [{"namespace": p["metadata"]["namespace"], "name": p["metadata"]["name"],
             "node": (p.get("spec") or {}).get("nodeName") or ""} for p in items]


def agents(core: Any, namespace: str = AGENT_NAMESPACE,
           selector: str = AGENT_SELECTOR) -> dict[str, Endpoint]:
    """Node name -> its agent (a Running agent pod with an address; the Ready one when several)."""
    out: dict[str, Endpoint] = {}
    for pod in _list(core, namespace, label_selector=selector):
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        node, ip = spec.get("nodeName") or "", status.get("podIP") or ""
        if not node or not ip or status.get("phase") != "Running":
            continue
        ports = {p.get("name"): p.get("containerPort") for c in spec.get("containers") or []
                 for p in c.get("ports") or []}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
        endpoint = Endpoint(node, ip, int(ports.get("capture") or CAPTURE_PORT),
                            int(ports.get("status") or STATUS_PORT), pod["metadata"]["name"], ready, "http")
        if node not in out or (ready and not out[node].ready):
            out[node] = endpoint
    return out


def say(message: str, quiet: bool = False) -> None:
    """Progress and diagnostics go to stderr (stdout may carry a pcapng stream)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
