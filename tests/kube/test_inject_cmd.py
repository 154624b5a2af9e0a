"""``nodeagent inject``: multi-document YAML in, every pod template injected, the rest untouched."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys
from typing import Any

import yaml

from nodeagent.webhook.inject import SIDECAR_NAME, InjectConfig
from nodeagent.webhook.inject_cmd import inject_stream
from tests.kube.patching import validate

MIXED = pathlib.Path(__file__).resolve().parents[1] / "data" / "manifests" / "mixed.yaml"
TEMPLATE = {"Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"),
            "DaemonSet": ("spec", "template"), "Job": ("spec", "template"),
            "CronJob": ("spec", "jobTemplate", "spec", "template"), "Pod": ()}


def template_of(doc: dict[str, Any]) -> dict[str, Any]:
    for key in TEMPLATE[doc["kind"]]:
        doc = doc[key]
    return doc


def names(template: dict[str, Any]) -> list[str]:
    return [c["name"] for c in template["spec"]["containers"]]


def run_inject(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    out = io.StringIO()
    warnings = inject_stream(io.StringIO(text), out, InjectConfig())
    return list(yaml.safe_load_all(out.getvalue())), warnings


def test_every_workload_kind_is_injected_and_other_objects_pass_unchanged() -> None:
    before = list(yaml.safe_load_all(MIXED.read_text()))
    after, warnings = run_inject(MIXED.read_text())
    assert [d["kind"] for d in after] == [d["kind"] for d in before]
    for old, new in zip(before, after, strict=True):
        if new["kind"] in TEMPLATE:
            assert names(template_of(new)) == [*names(template_of(old)), SIDECAR_NAME]
            assert template_of(new)["metadata"]["labels"]["podmirror.io/monitored"] == "true"
        elif new["kind"] == "List":
            pod, service = new["items"]
            assert names(pod)[-1] == SIDECAR_NAME and service == old["items"][1]
        else:
            assert new == old
        for obj in new["items"] if new["kind"] == "List" else [new]:
            validate(obj)
    assert warnings == []  # the selected container 'web' declares its port


def test_annotations_choose_ports_and_mode() -> None:
    after, _ = run_inject(MIXED.read_text())
    web = template_of(after[1])
    assert web["metadata"]["annotations"]["podmirror.io/ports"] == "80/TCP"
    db_sidecar = template_of(after[2])["spec"]["containers"][-1]
    assert db_sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}


def test_injecting_twice_changes_nothing() -> None:
    once, _ = run_inject(MIXED.read_text())
    twice, _ = run_inject(yaml.safe_dump_all(once))
    assert twice == once


def test_cli_reads_stdin_and_writes_stdout() -> None:
    result = subprocess.run([sys.executable, "-m", "nodeagent", "inject", "-f", "-", "--image", "pm:9"],
                            input=MIXED.read_text(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert template_of(docs[4])["spec"]["containers"][-1]["image"] == "pm:9"
    missing = subprocess.run([sys.executable, "-m", "nodeagent", "inject", "-f", "/nonexistent.yaml"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "nonexistent" in missing.stderr
