"""``nodeagent inject -f FILE|-``: add the sidecar to manifests offline, as the webhook would.

Like ``linkerd inject``: reads one or more YAML documents, injects the pod template of every Pod,
Deployment, ReplicaSet, StatefulSet, DaemonSet, Job and CronJob (and of the items of a List),
and writes all documents back in order; every other object is passed through unchanged. The
webhook's ``inject.inject_template`` does the work, so offline and admission-time injection agree;
a pod injected here is left alone by the webhook (idempotent).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import yaml

from nodeagent.webhook.cli import add_inject_options, inject_config
from nodeagent.webhook.inject import InjectConfig, inject_template

TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def inject_object(obj: Any, config: InjectConfig, warnings: list[str]) -> Any:
    """``obj`` with its pod template injected; unknown kinds and non-objects come back unchanged."""
    if not isinstance(obj, dict):
        return obj
    kind = obj.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List") and "items" in obj):
        return {**obj, "items": [inject_object(item, config, warnings) for item in obj["items"] or []]}
    path = TEMPLATE_PATHS.get(kind) if isinstance(kind, str) else None
    if path is None:
        return obj
    if not path:
        injected, more = inject_template(obj, config)
        warnings += more
        return injected
    result = dict(obj)
    parent = result
    for key in path[:-1]:
        parent[key] = dict(parent.get(key) or {})
        parent = parent[key]
    parent[path[-1]], more = inject_template(parent.get(path[-1]) or {}, config)
    warnings += more
    return result


def inject_stream(source: TextIO, sink: TextIO, config: InjectConfig) -> list[str]:
    warnings: list[str] = []
    docs = [inject_object(doc, config, warnings) for doc in yaml.safe_load_all(source)]
    yaml.safe_dump_all([d for d in docs if d is not None], sink, sort_keys=False, explicit_start=True)
    return warnings


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("inject", help="add the podmirror sidecar to manifests (offline)")
    p.add_argument("-f", "--filename", required=True, help="YAML file, or - for standard input")
    add_inject_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = inject_config(args)
    try:
        if args.filename == "-":
            warnings = inject_stream(sys.stdin, sys.stdout, config)
        else:
            with open(args.filename, encoding="utf-8") as source:
                warnings = inject_stream(source, sys.stdout, config)
    except (OSError, yaml.YAMLError) as exc:
        print(f"nodeagent inject: {exc}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
