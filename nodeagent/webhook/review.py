"""AdmissionReview (admission.k8s.io/v1) request -> response, for pod CREATE. Pure.

Two webhook entries call us (see ``deploy/base/webhook.yaml``): one for namespaces labelled
``podmirror.io/monitor=enabled`` (``namespace_enabled=True``: inject unless the pod opts out) and
one for every other namespace except kube-system and podmirror's own (inject only pods annotated
``podmirror.io/monitor: "true"``). The namespace label is thus known from which entry called, and
the webhook needs no read access to namespaces.

Invariant: the answer is always ``allowed: true`` with the request's ``uid``; a pod we do not
understand is admitted unchanged, with a warning.
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


def respond(review: Mapping[str, Any], config: InjectConfig, *, namespace_enabled: bool) -> dict[str, Any]:
    request = review.get("request")
    if not isinstance(request, Mapping) or not request.get("uid"):
        raise BadReview("AdmissionReview without request.uid")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    pod = request.get("object") or {}
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
    is_pod_create = (request.get("kind") or {}).get("kind") == "Pod" and request.get("operation") == "CREATE"
    if is_pod_create and wants_injection(pod, namespace, namespace_enabled=namespace_enabled,
                                         config=config):
        try:
            ops, warnings = patch_for(pod, config)
        except (KeyError, TypeError, AttributeError) as exc:  # malformed pod: admit it unchanged
            ops, warnings = [], [f"podmirror: not injected: {exc!r}"]
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
        if warnings:
            response["warnings"] = warnings
    return {"apiVersion": review.get("apiVersion", API_VERSION), "kind": "AdmissionReview",
            "response": response}
