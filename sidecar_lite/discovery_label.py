"""The reference sidecar's discovery, made node-local: the agent pod on *this* node whose label has
a value (docs/datapath.md "The reference sidecar").

``SENSOR=<value>`` selects pods with ``<PODMIRROR_LABEL_KEY>=<value>`` (key ``run`` by default, as
the reference sidecar used) in one namespace (``PODMIRROR_AGENT_NAMESPACE``, default the pod's own)
and on this node (field selector ``spec.nodeName=NODE_NAME``). It needs a namespaced Role allowing
``list pods`` in that namespace, instead of the cluster-wide ``view`` binding the reference sidecar
needed. Among several running
candidates the one with the smallest name wins, so restarts pick the same agent.

This is the only sidecar module that imports ``kubernetes``, and only when this mode is chosen.
It raises ``NoAgent``; ``discovery.resolve``, its one caller, turns that into ``DiscoveryError`` (so
the import goes one way: ``discovery`` -> ``discovery_label``).
"""

from __future__ import annotations

from typing import Any

from sidecar_lite.settings import Settings


class NoAgent(RuntimeError):
    """No running agent pod with the label on this node can be found now; the caller retries."""


def find_agent(settings: Settings) -> str:
    from kubernetes import client, config  # heavy: imported only in label mode

    if not settings.pod.node_name:
        raise NoAgent("label discovery needs NODE_NAME (downward API spec.nodeName)")
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=settings.kubeconfig)
    namespace = settings.agent_namespace or "default"
    try:
        pods = client.CoreV1Api().list_namespaced_pod(
            namespace,
            label_selector=f"{settings.label_key}={settings.label_value}",
            field_selector=f"spec.nodeName={settings.pod.node_name}",
            _request_timeout=10,
        )
    except Exception as exc:  # API errors, refused connections, timeouts: the caller retries
        raise NoAgent(f"listing pods in {namespace}: {exc}") from exc
    return choose(pods.items, settings)


def choose(items: list[Any], settings: Settings) -> str:
    """The address of the first running candidate by name (pure over the API objects)."""
    ready = sorted(
        (p for p in items if p.status and p.status.phase == "Running" and p.status.pod_ip),
        key=lambda p: p.metadata.name,
    )
    if not ready:
        raise NoAgent(
            f"no running pod with {settings.label_key}={settings.label_value} on node "
            f"{settings.pod.node_name} in namespace {settings.agent_namespace}"
        )
    return str(ready[0].status.pod_ip)
