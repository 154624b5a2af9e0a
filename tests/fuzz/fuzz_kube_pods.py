"""Target ``kube_pods``: pod objects as the Kubernetes watch delivers them (every field a tenant
writes: labels, annotations such as ``podmirror.io/ports``, addresses), applied to the agent's pod
table (``nodeagent.pods.kube.PodTable``) as ADDED, MODIFIED and DELETED events.

The input mutates a monitored pod, keeping the types the apiserver enforces (string maps, string
addresses). Checks: nothing escapes (any pod, however written, is taken in or left out, never
stops the watch); the index then maps each pod's address to a pod, and holds no more pods than
events were applied.
"""

from __future__ import annotations

import copy
from typing import Any

import atheris

from tests.fuzz import harness

with harness.instrumented():
    from nodeagent.pods.index import PodIndex
    from nodeagent.pods.kube import LOCAL, PEERS, PodTable

POD: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "shop", "labels": {"podmirror.io/monitored": "true"},
                 "annotations": {"podmirror.io/ports": "8080/TCP,53/UDP"}},
    "spec": {"nodeName": "node-a"},
    "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]},
}
TEXT = ("10.0.0.5", "10.0.0.6", "fd00::5", "::ffff:10.0.0.5", "0.0.0.0", "255.255.255.255", "node-a",
        "node-b", "true", "false", "8080/TCP", "0", "65536", "Running", "Succeeded", "Failed", "web", "db")
EVENTS = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")


def _text(fdp: atheris.FuzzedDataProvider) -> str:
    return harness.word(fdp, TEXT)


def _pod(fdp: atheris.FuzzedDataProvider) -> dict[str, Any]:
    pod: dict[str, Any] = copy.deepcopy(POD)
    meta, status = pod["metadata"], pod["status"]
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        field = fdp.ConsumeIntInRange(0, 7)
        if field == 0:
            meta["name"] = _text(fdp)
        elif field == 1:
            meta["labels"][_text(fdp)] = _text(fdp)
        elif field == 2:
            key = harness.word(fdp, ("podmirror.io/ports", "podmirror.io/monitor"))
            meta["annotations"][key] = _text(fdp)
        elif field == 3:
            status["podIP"] = _text(fdp)
        elif field == 4:
            status["podIPs"] = [{"ip": _text(fdp)} for _ in range(fdp.ConsumeIntInRange(0, 3))]
        elif field == 5:
            pod["spec"]["nodeName"] = _text(fdp)
        elif field == 6:
            status["phase"] = _text(fdp)
        else:
            pod["spec"]["hostNetwork"] = fdp.ConsumeBool()
    return pod


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    index = PodIndex()
    table = PodTable(index, node="node-a")
    for step in range(fdp.ConsumeIntInRange(1, 8)):
        source = (LOCAL, PEERS)[fdp.ConsumeIntInRange(0, 1)]
        table.apply(source, EVENTS[fdp.ConsumeIntInRange(0, 3)], _pod(fdp), float(step))
    for pod in index.all():
        assert index.sender(pod.ip) in (pod, None) and index.by_addr(pod.addr) is not None
    assert len(index) <= 8


if __name__ == "__main__":
    harness.main(test_one_input)
