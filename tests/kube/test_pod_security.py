"""Which Pod Security level a pod with the injected sidecar meets, per mode, checked two ways:

- the current Pod Security Standards (what PodSecurity admission enforces from Kubernetes 1.22),
  evaluated on the injected spec by ``tests/kube/pss.py``;
- a real kube-apiserver v1.20 (the ``apiserver`` tier), which has no PodSecurity admission but has
  PodSecurityPolicy: the privileged, baseline and restricted policies as Kubernetes documented
  them for 1.20 are created, each usable by one user, and the injected pods are created with
  ``--dry-run=server`` as each user: admitted or forbidden by the apiserver itself.

The two disagree on one point, and the README says so: the 1.20-era baseline allowed the runtime's
default capability set, NET_RAW included, so a sniffing sidecar that adds NET_RAW was "baseline"
then; today's baseline lets no pod add NET_RAW, so it is "privileged" unless injected with
``--sniff-capabilities runtime-default`` (drop the other defaults, add nothing)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from nodeagent.webhook.inject import SIDECAR_NAME, InjectConfig, inject_template
from tests.kube import controlplane, pss

APP: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "app", "annotations": {"podmirror.io/monitor": "true"}},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "image": "app", "securityContext": {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
    },
}
"""An application that meets "restricted" on its own: the sidecar alone decides the level."""
EXPECTED = {  # (mode, sniff_capabilities) -> (today's standard, the 1.20 PodSecurityPolicies)
    ("kernel", "add"): ("privileged", "privileged"),
    ("sniff", "add"): ("privileged", "baseline"),
    ("auto", "add"): ("privileged", "baseline"),
    ("sniff", "runtime-default"): ("baseline", "baseline"),
    ("auto", "runtime-default"): ("baseline", "baseline"),
    ("kernel", "runtime-default"): ("privileged", "privileged"),
}


def injected(mode: str, sniff_capabilities: str) -> dict[str, Any]:
    pod = copy.deepcopy(APP)
    pod["metadata"]["annotations"]["podmirror.io/mode"] = mode
    out, warnings = inject_template(pod, InjectConfig(sniff_capabilities=sniff_capabilities))
    assert not warnings and out["spec"]["containers"][-1]["name"] == SIDECAR_NAME
    return out


def test_the_evaluator_tells_the_levels_apart() -> None:
    """The evaluator can fail: the app alone is restricted, and each change moves it down."""
    assert pss.level_of(APP) == "restricted"
    pod = copy.deepcopy(APP)
    pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert pss.level_of(pod) == "restricted"
    pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["CHOWN"]
    assert pss.level_of(pod) == "baseline"
    pod["spec"]["hostNetwork"] = True
    assert pss.level_of(pod) == "privileged"


@pytest.mark.parametrize("mode, caps", sorted(EXPECTED))
def test_the_current_standard_level_of_each_mode(mode: str, caps: str) -> None:
    pod = injected(mode, caps)
    assert pss.level_of(pod) == EXPECTED[mode, caps][0], pss.violations(pod, "baseline")
    restricted = pss.violations(pod, "restricted")
    assert f"{SIDECAR_NAME}: runAsNonRoot not true" in restricted   # root: see test_sidecar_privileges


# ---- the real apiserver, with PodSecurityPolicy admission ----------------------------------------

_missing = controlplane.missing() or (None if shutil.which("kubectl") else "needs kubectl")
CORE_VOLUMES = ["configMap", "emptyDir", "projected", "secret", "downwardAPI", "persistentVolumeClaim"]
DEFAULT_CAPS = ["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"]
"""The 1.20-era baseline: the container runtime's default set (Docker's, containerd's)."""
SECCOMP = "seccomp.security.alpha.kubernetes.io/allowedProfileNames"


def _policy(level: str) -> dict[str, Any]:
    """The 1.20 documentation's three levels as PodSecurityPolicies (written from its rules)."""
    spec: dict[str, Any] = {"privileged": False, "hostNetwork": False, "hostIPC": False, "hostPID": False,
                            "runAsUser": {"rule": "RunAsAny"}, "seLinux": {"rule": "RunAsAny"},
                            "supplementalGroups": {"rule": "RunAsAny"}, "fsGroup": {"rule": "RunAsAny"}}
    profiles = "runtime/default,docker/default"
    if level == "privileged":
        spec.update(privileged=True, hostNetwork=True, hostIPC=True, hostPID=True,
                    allowedCapabilities=["*"], volumes=["*"], hostPorts=[{"min": 0, "max": 65535}])
        profiles = "*"
    elif level == "baseline":
        spec.update(allowedCapabilities=DEFAULT_CAPS, volumes=[*CORE_VOLUMES, "csi", "nfs", "iscsi"])
        profiles += ",unconfined"
    else:
        spec.update(allowPrivilegeEscalation=False, requiredDropCapabilities=["ALL"],
                    volumes=[*CORE_VOLUMES, "csi"], runAsUser={"rule": "MustRunAsNonRoot"},
                    supplementalGroups={"rule": "MustRunAs", "ranges": [{"min": 1, "max": 65535}]},
                    fsGroup={"rule": "MustRunAs", "ranges": [{"min": 1, "max": 65535}]})
    return {"apiVersion": "policy/v1beta1", "kind": "PodSecurityPolicy",
            "metadata": {"name": f"pm-{level}", "annotations": {SECCOMP: profiles}}, "spec": spec}


def _grants(level: str) -> list[dict[str, Any]]:
    """User ``pss-<level>`` may create pods in namespace ``pss`` and use only its policy."""
    user = {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": f"pss-{level}"}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": f"pss-{level}"},
         "rules": [{"apiGroups": ["policy"], "resources": ["podsecuritypolicies"], "verbs": ["use"],
                    "resourceNames": [f"pm-{level}"]},
                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"pss-{level}", "namespace": "pss"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"pss-{level}"},
         "subjects": [user]},
    ]


@pytest.fixture(scope="module")
def psp_plane() -> Iterator[controlplane.ControlPlane]:
    with controlplane.running(["--enable-admission-plugins", "PodSecurityPolicy"]) as plane:
        objs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pss"}}]
        for level in pss.LEVELS:
            objs += [_policy(level), *_grants(level)]
        _kubectl(plane, "apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
        yield plane


def _kubectl(plane: controlplane.ControlPlane, *args: str,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["kubectl", "--kubeconfig", plane.kubeconfig, *args], input=stdin,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 or "forbidden" in done.stderr.lower(), done.stderr
    return done


def admitted_levels(plane: controlplane.ControlPlane, pod: dict[str, Any]) -> list[str]:
    """The levels whose user the apiserver lets create ``pod`` (server-side dry run)."""
    out = []
    for level in pss.LEVELS:
        done = _kubectl(plane, "--as", f"pss-{level}", "-n", "pss", "create", "--dry-run=server",
                        "-o", "json", "-f", "-", stdin=json.dumps(pod))
        if done.returncode == 0:
            out.append(level)
    return out


@pytest.mark.apiserver
@pytest.mark.kube
@pytest.mark.skipif(_missing is not None, reason=_missing or "")
def test_podsecuritypolicy_levels_of_each_mode_on_a_real_1_20_apiserver(
        psp_plane: controlplane.ControlPlane) -> None:
    assert admitted_levels(psp_plane, APP) == list(pss.LEVELS)   # the control: restricted admits the app
    for (mode, caps), (_, expected) in sorted(EXPECTED.items()):
        levels = admitted_levels(psp_plane, injected(mode, caps))
        strictest = levels[-1] if levels else None
        assert strictest == expected, (mode, caps, levels)
        assert "restricted" not in levels
