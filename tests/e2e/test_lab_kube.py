"""The lab's Kubernetes mode: the agent takes its pod table from a real kube-apiserver.

The lab's own steps (``runner.build/start/drive/summarize/finish``) run in-process on a lab whose
namespaces are ``pmlk-<random>-``, so the test reads the agent's ``/status`` while the agent still
runs, and the API through the lab's ``kubectl``. What must hold: the agent, authenticated with a
real token of the shipped ``podmirror-agent`` ServiceAccount and nothing but deploy/'s RBAC, lists
the node's pods (created by kubectl, bound to the node) as its senders and the other node's pod as
a peer; every pod's mirrored traffic is received and forwarded; no tunnel is an unknown sender;
the summary names the pod table; nothing is left behind.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodeagent.lab import kubelab, netns, runner
from nodeagent.lab.podmirror import ENV, SOURCE_ROOT
from nodeagent.lab.topology import Lab
from nodeagent.pods.kube import MONITOR_ANNOTATION, MONITORED_LABEL
from tests.books import assert_balanced

LAB_PODS = {"default/web", "default/client", "default/egress"}
_missing = kubelab.missing() or (None if shutil.which("kubectl") else "needs kubectl")


def lab_args(out: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    runner.configure(parser)
    return parser.parse_args(["--pod-table", "apiserver", "--duration", "2", "--iperf-seconds", "1",
                              "--output", str(out)])


def jwt_subject(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


def api_pods(r: runner.Run) -> dict[str, Any]:
    assert r.kube is not None
    items = json.loads(r.kube.kubectl("get", "pods", "--all-namespaces", "-o", "json"))["items"]
    return {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in items}


@pytest.mark.needs_root
@pytest.mark.apiserver
@pytest.mark.kube
@pytest.mark.usefixtures("podmirror_ready")
@pytest.mark.skipif(_missing is not None, reason=_missing or "")
def test_lab_agent_learns_its_pods_from_the_apiserver(lab: Lab, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    args = lab_args(tmp_path)
    try:
        r = runner.build(lab, args, tmp_path)
        runner.start(r, args)
        runner.drive(r, args)
        assert r.agent is not None and r.kube is not None
        status, stored = r.agent.status(), api_pods(r)
        runner.summarize(r, args)
        runner.finish(r)
    finally:
        lab.close()   # before the etcd data can go; the fixture's close is then a no-op
        kubelab.remove_data(tmp_path)
    assert netns.leftovers(lab.tag) == [], "namespaces left behind"
    assert not (tmp_path / "kube" / "etcd").exists()

    # The pods are API objects as kubectl made them: labelled, annotated, bound, with their IPs.
    for key in LAB_PODS:
        pod = stored[key]
        assert pod["metadata"]["labels"][MONITORED_LABEL] == "true"
        assert pod["metadata"]["annotations"][MONITOR_ANNOTATION] == "true"
        assert pod["spec"]["nodeName"] == "node1" and pod["status"]["podIP"].startswith("10.1.0.")
    # The agent authenticated as the shipped service account, not as the admin.
    conf = (tmp_path / "kube" / "agent.kubeconfig").read_text()
    token = conf.split("token:")[1].split('"')[1]
    assert jwt_subject(token) == "system:serviceaccount:podmirror:podmirror-agent"
    assert kubelab.ADMIN_TOKEN not in conf

    # Its pod table came from the API: this node's pods are senders, the other node's pod a peer.
    kube = status["kube"]
    assert kube["synced"] is True and kube["local"] == 3 and kube["peers"] == 1, kube
    assert status["senders"] == 3 and set(status["pods"]) == LAB_PODS, status["pods"].keys()
    for key in LAB_PODS:
        counters = status["pods"][key]
        assert counters["received"] > 0 and counters["forwarded"] > 0, (key, counters)
        assert counters["mode"] == "kernel", (key, counters)
    assert status["drops"].get("unknown_sender", 0) == 0, status["drops"]
    assert_balanced(status)

    text = capsys.readouterr().out
    assert "pod table: apiserver" in text and "synced=True, senders 3, peers 1" in text, text
    assert "agent exited 0" in text, text


@pytest.mark.needs_root
def test_apiserver_mode_without_the_binary_says_how_to_build_it(tmp_path: Path) -> None:
    """Checked before any namespace exists (after the lab's root check)."""
    env = {**os.environ, **ENV, "PODMIRROR_APISERVER": str(tmp_path / "no-such-apiserver")}
    proc = subprocess.run([sys.executable, "-m", "nodeagent", "lab", "--pod-table", "apiserver",
                           "--output", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=SOURCE_ROOT, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert ".ci/apiserver.sh" in proc.stderr and "kube-apiserver" in proc.stderr
    assert not (tmp_path / "out").exists()
