"""Target ``admission``: an AdmissionReview as the apiserver would send it (any pod a tenant can
write), through ``webhook.review.respond`` for both webhook entries.

The input mutates a review recorded from a real apiserver (``tests/data/admission``) or, one time
in eight, is parsed as JSON text. Checks: only ``BadReview`` escapes (the server answers 400 for it
and for unparsable JSON; anything else would be a 500, and the apiserver would then start the pod
without its sidecar); every answer is ``allowed`` with the request's uid; a patch is base64 JSON
that applies to the pod and yields a pod with exactly one sidecar.
"""

from __future__ import annotations

import base64
import json
import pathlib

import atheris

from tests.fuzz import harness

with harness.instrumented():
    from nodeagent.webhook.inject import SIDECAR_NAME, InjectConfig
    from nodeagent.webhook.review import BadReview, respond

from tests.kube.patching import apply_patch

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "admission"
REVIEWS = [json.loads(p.read_text()) for p in sorted(DATA.glob("*.json"))]
CONFIGS = (InjectConfig(), InjectConfig(default_mode="kernel", sniff_capabilities="runtime-default"))
WORDS = ("apiVersion", "kind", "request", "uid", "object", "metadata", "annotations", "labels", "spec",
         "containers", "name", "ports", "containerPort", "protocol", "hostNetwork", "namespace",
         "operation", "CREATE", "UPDATE", "Pod", "true", "false", "podmirror.io/monitor", "podmirror.io/mode",
         "podmirror.io/containers", "podmirror.io/ports", "kernel", "sniff", "auto", "TCP", "UDP",
         SIDECAR_NAME, "app", "web", "kube-system", "podmirror", "initContainers", "image")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    config = CONFIGS[fdp.ConsumeIntInRange(0, 1)]
    enabled = fdp.ConsumeBool()
    if fdp.ConsumeIntInRange(0, 7) == 0:
        try:
            review = json.loads(fdp.ConsumeBytes(fdp.remaining_bytes()))
        except (ValueError, RecursionError):
            return      # the server's request.json() answers 400 for these
    else:
        review = harness.mutate(fdp, REVIEWS[fdp.ConsumeIntInRange(0, len(REVIEWS) - 1)], WORDS, edits=6)
    try:
        answer = respond(review, config, namespace_enabled=enabled)
    except BadReview:
        return
    response = answer["response"]
    assert response["allowed"] is True and response["uid"] == review["request"]["uid"]
    if "patch" in response:
        ops = json.loads(base64.b64decode(response["patch"]))
        pod = apply_patch(review["request"]["object"], ops)
        names = [c.get("name") for c in pod["spec"]["containers"]]
        assert names.count(SIDECAR_NAME) == 1, names


if __name__ == "__main__":
    harness.main(test_one_input)
