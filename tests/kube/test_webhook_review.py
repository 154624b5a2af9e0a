"""The webhook's pure core on AdmissionReview requests recorded from a real kube-apiserver
(tests/data/admission, made by ``python -m tests.kube.record_admission``)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from nodeagent.pods import kube
from nodeagent.webhook.inject import SIDECAR_NAME, InjectConfig, patch_for, sidecar_container
from nodeagent.webhook.review import BadReview, respond
from sidecar_lite import settings as sidecar_settings
from tests.kube.patching import apply_patch, response_patch, validate

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "admission"
CONFIG = InjectConfig(image="registry.example/podmirror:1.0")


def review(case: str) -> dict[str, Any]:
    return json.loads((DATA / f"{case}.json").read_text())


def injected(case: str, *, namespace_enabled: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    req = review(case)
    answer = respond(req, CONFIG, namespace_enabled=namespace_enabled)
    assert answer["response"]["uid"] == req["request"]["uid"]
    assert answer["response"]["allowed"] is True
    return apply_patch(req["request"]["object"], response_patch(answer)), answer


def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == SIDECAR_NAME]
    return container


def test_annotated_pod_gets_sidecar_label_env_and_a_valid_spec() -> None:
    pod, answer = injected("annotated_pod")
    assert answer["response"]["patchType"] == "JSONPatch"
    assert pod["metadata"]["labels"] == {"app": "web", kube.MONITORED_LABEL: "true"}
    container = sidecar(pod)
    env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env["PODMIRROR_AGENT"].endswith(":14789") and env["PODMIRROR_VNI"] == "auto"
    assert env["PODMIRROR_MODE"] == "auto" and env["PODMIRROR_DISCOVERY"] == "service"
    assert env["PODMIRROR_RULES_URL"].endswith(":9476/v1/pushdown")  # the push-down listener
    assert (env["POD_IP"], env["NODE_NAME"], env["NODE_IP"]) == ("status.podIP", "spec.nodeName",
                                                                 "status.hostIP")
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}  # auto, as injected: sniffs
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert container["resources"]["limits"] == {"cpu": "200m", "memory": "64Mi"}
    # Ready only while the pod's agent receives its tunnel: what other nodes' agents trust.
    assert container["readinessProbe"]["exec"]["command"] == ["sidecar-lite", "--check-tunnel"]
    validate(pod)


def test_kernel_mode_adds_net_admin_and_containers_become_declared_ports() -> None:
    pod, answer = injected("kernel_mode_containers")
    assert sidecar(pod)["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert pod["metadata"]["annotations"][kube.PORTS_ANNOTATION] == "8080/TCP,8081/UDP,9090/TCP"
    assert "warnings" not in answer["response"]
    validate(pod)
    pod["status"] = {"podIP": "10.9.0.4"}
    info = kube.pod_info(pod, node="")
    assert info is not None and info.ports == (8080, 8081, 9090)  # what the agent reads back


def test_enabled_namespace_injects_plain_pods_but_not_opted_out_ones() -> None:
    pod, _ = injected("plain_pod_in_enabled_namespace", namespace_enabled=True)
    assert sidecar(pod)
    plain, answer = injected("plain_pod_in_enabled_namespace", namespace_enabled=False)
    assert "patch" not in answer["response"]
    opted_out, answer = injected("opted_out_pod", namespace_enabled=True)
    assert "patch" not in answer["response"]


def test_excluded_namespace_is_never_injected_even_when_annotated() -> None:
    _, answer = injected("kube_system_pod", namespace_enabled=True)
    assert "patch" not in answer["response"] and answer["response"]["allowed"] is True


def test_injection_is_idempotent() -> None:
    pod, _ = injected("annotated_pod")
    assert patch_for(pod, CONFIG) == ([], [])
    req = review("annotated_pod")
    req["request"]["object"] = pod
    assert "patch" not in respond(req, CONFIG, namespace_enabled=False)["response"]


def test_missing_containers_and_bad_mode_are_warned_not_denied() -> None:
    req = review("kernel_mode_containers")
    annotations = req["request"]["object"]["metadata"]["annotations"]
    annotations["podmirror.io/containers"] = "ghost"
    annotations["podmirror.io/mode"] = "turbo"
    answer = respond(req, CONFIG, namespace_enabled=False)
    warnings = answer["response"]["warnings"]
    assert any("ghost" in w for w in warnings) and any("turbo" in w for w in warnings)
    pod = apply_patch(req["request"]["object"], response_patch(answer))
    assert sidecar(pod)["securityContext"]["capabilities"]["add"] == ["NET_RAW"]  # the default mode


def test_escaped_keys_patch_existing_labels_in_place() -> None:
    req = review("annotated_pod")
    ops = response_patch(respond(req, CONFIG, namespace_enabled=False))
    assert {"op": "add", "path": "/metadata/labels/podmirror.io~1monitored", "value": "true"} in ops


@pytest.mark.parametrize("body", [{"kind": "AdmissionReview"}, None, [], 7, {"request": {"uid": 5}},
                                  {"request": []}])
def test_not_a_review_is_rejected(body: Any) -> None:
    """Found by tests/fuzz (admission): a JSON body that is not an object was a 500."""
    with pytest.raises(BadReview):
        respond(body, CONFIG, namespace_enabled=False)


@pytest.mark.parametrize("mangle, injected_ok", [
    (lambda pod: pod.pop("metadata"), True),                      # the patch makes /metadata first
    (lambda pod: pod.__setitem__("metadata", None), True),
    (lambda pod: pod["spec"].pop("containers"), False),           # nowhere to add the sidecar
    (lambda pod: pod.__setitem__("spec", []), False),
    (lambda pod: pod["metadata"].__setitem__("labels", "x"), False),
    (lambda pod: pod["metadata"].__setitem__("labels", False), False),
    (lambda pod: pod["metadata"].__setitem__("labels", {}), True),
])
def test_a_pod_we_do_not_understand_is_admitted_unchanged_or_patched_validly(mangle: Any,
                                                                           injected_ok: bool) -> None:
    """Found by tests/fuzz (admission): such pods made a patch that did not apply, or a 500."""
    req = review("plain_pod_in_enabled_namespace")
    mangle(req["request"]["object"])
    answer = respond(req, CONFIG, namespace_enabled=True)["response"]
    assert answer["allowed"] is True
    if injected_ok:
        pod = apply_patch(req["request"]["object"], response_patch({"response": answer}))
        assert sidecar(pod)["name"] == SIDECAR_NAME and pod["metadata"]["labels"][kube.MONITORED_LABEL]
    else:
        assert "patch" not in answer and "not injected" in answer["warnings"][0]


@pytest.mark.parametrize("discovery", ["service", "node-ip", "label"])
def test_injected_environment_is_what_the_sidecar_parses(discovery: str) -> None:
    container = sidecar_container(InjectConfig(discovery=discovery), "sniff")
    downward = {"status.podIP": "10.244.1.7", "metadata.name": "web", "metadata.namespace": "shop",
                "spec.nodeName": "node-a", "status.hostIP": "192.168.0.10"}
    env = {e["name"]: e.get("value") or downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
           for e in container["env"]}
    parsed = sidecar_settings.parse([], env)
    assert parsed.discovery == discovery and parsed.vni is None  # auto: vni_for_address(POD_IP)
    assert parsed.agent_port == 14789 and parsed.pod.ip == "10.244.1.7" and parsed.mode == "sniff"
    expected_host = {"service": "podmirror-agent.podmirror.svc.cluster.local", "node-ip": "192.168.0.10",
                     "label": None}[discovery]
    assert parsed.agent_host == expected_host
    if discovery == "label":
        assert (parsed.label_key, parsed.label_value, parsed.agent_namespace) == (
            "run", "podmirror-agent", "podmirror")  # the label the agent DaemonSet's pods carry


def test_image_pull_policy_is_written_only_when_configured() -> None:
    assert "imagePullPolicy" not in sidecar_container(InjectConfig(), "sniff")
    assert sidecar_container(InjectConfig(image_pull_policy="Never"), "kernel")["imagePullPolicy"] == "Never"
    with pytest.raises(ValueError, match="pull policy"):
        InjectConfig(image_pull_policy="never")
