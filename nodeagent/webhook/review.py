"""AdmissionReview (admission.k8s.io/v1) request -> response, for pod CREATE. Pure.

Two webhook entries call us (see ``deploy/base/webhook.yaml``): one for namespaces labelled
``podmirror.io/monitor=enabled`` (``namespace_enabled=True``: inject unless the pod opts out) and
one for every other namespace except kube-system and podmirror's own (inject only pods annotated
``podmirror.io/monitor: "true"``). The namespace label is thus known from which entry called, and
the webhook needs no read access to namespaces.

Invariant: the answer is always ``allowed: true`` with the request's ``uid``; a pod we do not
understand is admitted unchanged, with a warning. A body that is not an AdmissionReview with a
string ``request.uid`` raises ``BadReview`` (the server answers 400); nothing else escapes, whatever
the pod holds (``tests/fuzz/fuzz_admission.py``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from nodeagent.webhook.inject import InjectConfig, patch_for, wants_injection

API_VERSION = "admission.k8s.io/v1"


class BadReview(ValueError):
    """The body is not an AdmissionReview we can answer (no request or uid)."""


def respond(review: Any, config: InjectConfig, *, namespace_enabled: bool) -> dict[str, Any]:
    request = review.get("request") if isinstance(review, Mapping) else None
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("AdmissionReview without request.uid")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    try:
        ops, warnings = _injection(request, config, namespace_enabled)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a pod we do not understand
        ops, warnings = [], [f"podmirror: not injected: {exc!r}"[:500]]
    if ops:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    if warnings:
        response["warnings"] = warnings
    api_version = review.get("apiVersion")
    return {"apiVersion": api_version if isinstance(api_version, str) else API_VERSION,
            "kind": "AdmissionReview", "response": response}


def _injection(request: Mapping[str, Any], config: InjectConfig,
               namespace_enabled: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The patch and warnings for a pod CREATE that asks for a sidecar; nothing for anything else."""
    kind = request.get("kind")
    if not (isinstance(kind, Mapping) and kind.get("kind") == "Pod" and request.get("operation") == "CREATE"):
        return [], []
    pod = request.get("object")
    if not isinstance(pod, Mapping) or not isinstance(pod.get("metadata") or {}, Mapping):
        raise TypeError("request.object is not a pod")
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
    if not isinstance(namespace, str):
        raise TypeError("the namespace is not a string")
    if not wants_injection(pod, namespace, namespace_enabled=namespace_enabled, config=config):
        return [], []
    return patch_for(pod, config)
