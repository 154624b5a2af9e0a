"""Test helpers: apply our JSON Patches (RFC 6902 ``add`` only, all the injector emits) and validate
objects against the Kubernetes 1.32 schemas (``kubernetes-validate --strict``)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import kubernetes_validate

SCHEMA_VERSION = "1.32"


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] == "add", op
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), op["value"])
        else:
            target[last] = op["value"]
    return doc


def response_patch(review_response: dict[str, Any]) -> list[dict[str, Any]]:
    patch = review_response["response"].get("patch")
    return json.loads(base64.b64decode(patch)) if patch else []


def validate(obj: dict[str, Any]) -> None:
    """Raise AssertionError with the first line of the schema error, if any."""
    try:
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        raise AssertionError(f"{name}: {str(exc).splitlines()[0]}") from None
