"""Sidecar injection: what to add to a pod, as a new pod template and as a JSON Patch (RFC 6902).

Pure: dicts in (API JSON, camelCase), dicts out. Shared by the admission webhook (``server``) and
the offline ``nodeagent inject`` command, so both inject exactly the same sidecar.

Decision (``wants_injection``), first match wins: excluded namespace (kube-system, podmirror's
own) or host network -> no; annotation ``podmirror.io/monitor: "false"`` -> no; ``"true"`` -> yes;
namespace labelled ``podmirror.io/monitor=enabled`` -> yes; else no.

What is added:
- a container ``podmirror-sidecar`` (idempotent: a pod that has it is left alone), its
  environment (agent discovery, ``PODMIRROR_VNI=auto``, pod identity from the downward API), small
  resources, and the security context of its mode (``security_context``): every capability
  dropped but the one the mode needs, ``kernel`` NET_ADMIN (tc and a VXLAN device in the pod's
  namespace), ``sniff`` and ``auto`` NET_RAW (an AF_PACKET socket; ``auto`` without NET_ADMIN
  sniffs), no privilege escalation, the runtime's default seccomp profile, a read-only root.
  It runs as UID 0 because capabilities of a non-root process are not effective after execve:
  Kubernetes sets no ambient capabilities, and file capabilities (which would work, within the
  container's set, even with ``allowPrivilegeEscalation: false``) are not in the image;
  ``tests/netns/test_sidecar_privileges.py`` measures all three with runc.
  Pod Security levels: ``kernel`` needs "privileged" (NET_ADMIN); ``sniff``/``auto`` meet the
  1.20-era "baseline" PodSecurityPolicy (NET_RAW is in its default set) but not the current Pod
  Security Standards' "baseline", which lets no pod *add* NET_RAW, unless injected with
  ``sniff_capabilities="runtime-default"``; none meets "restricted" (root, and a capability
  added). ``tests/kube/test_pod_security.py`` checks each against the injected spec.
- a readiness probe, ``sidecar-lite --check-tunnel``: the container is Ready only while the pod's
  agent receives its tunnel; agents on other nodes count the pod as a monitored peer only then
  (``pods.kube``). The trade-off: the pod itself is Ready only while mirroring works.
- the label ``podmirror.io/monitored=true``: the agent's watch selects on it (labels can be
  selected server-side, annotations cannot).
- with ``podmirror.io/containers: a,b``: containers share the pod's network namespace, so a
  container cannot be mirrored alone; the selection becomes the declared ports of those
  containers, written to ``podmirror.io/ports`` (``8080/TCP,53/UDP``), which the agent reads into
  ``PodInfo.ports`` and filters on. Undeclared ports cannot be attributed and are warned about.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from nodeagent.pods.kube import (
    CONTAINERS_ANNOTATION,
    MODE_ANNOTATION,
    MONITOR_ANNOTATION,
    MONITORED_LABEL,
    PORTS_ANNOTATION,
    SIDECAR_CONTAINER,
)

SIDECAR_NAME = SIDECAR_CONTAINER
MODES = ("auto", "kernel", "sniff")
CAPABILITY = {"kernel": "NET_ADMIN", "sniff": "NET_RAW", "auto": "NET_RAW"}
"""The one capability each mode keeps (``auto`` as injected has no NET_ADMIN, so it sniffs)."""
SNIFF_CAPABILITIES = ("add", "runtime-default")
RUNTIME_DEFAULT_BUT_NET_RAW = ("AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                               "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT")
"""containerd's and Docker's default capability set without NET_RAW: dropping these (and adding
nothing) leaves a sniffer exactly NET_RAW on those runtimes while the pod stays within the current
Pod Security Standards' "baseline", which forbids *adding* NET_RAW (CRI-O's default set lacks
NET_RAW: there, only ``add`` works)."""
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
Obj = dict[str, Any]
READINESS_PROBE: Obj = {"exec": {"command": ["sidecar-lite", "--check-tunnel"]},
                        "initialDelaySeconds": 3, "periodSeconds": 10, "timeoutSeconds": 5,
                        "failureThreshold": 3}
"""Ready only while the pod's agent receives its tunnel (``pods.kube``: other nodes trust that)."""


@dataclasses.dataclass(frozen=True)
class InjectConfig:
    image: str = "podmirror:0.1.0"
    agent: str = "podmirror-agent.podmirror.svc.cluster.local:14789"
    """PODMIRROR_AGENT: the agent Service (``internalTrafficPolicy: Local``) and its tunnel port."""
    rules_url: str = "http://{agent_host}:9476/v1/pushdown"
    """PODMIRROR_RULES_URL: the agent's push-down listener (port 9476, not the status port 9477); the
    sidecar substitutes the agent it found (the node-local Service, the node's address, or the
    labelled agent pod)."""
    discovery: str = "service"
    """PODMIRROR_DISCOVERY: ``service``, ``node-ip`` (agent on hostNetwork) or ``label``."""
    agent_label: str = "podmirror-agent"
    """With ``label`` discovery: the agent pods' ``run`` label value (``SENSOR``, docs/datapath.md)."""
    agent_namespace: str = "podmirror"
    image_pull_policy: str | None = None
    """The sidecar's ``imagePullPolicy`` (``Never`` for an image imported into the node, as
    ``deploy/overlays/local``); None leaves Kubernetes' default."""
    default_mode: str = "auto"
    sniff_capabilities: str = "add"
    """``add``: sniff and auto drop ALL and add NET_RAW (any runtime; Pod Security "privileged" under
    today's standard). ``runtime-default``: they drop every other capability of the runtime's
    default set and add none (containerd, Docker; Pod Security "baseline")."""
    excluded_namespaces: tuple[str, ...] = ("kube-system", "podmirror")
    requests: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"cpu": "10m", "memory": "24Mi"})
    limits: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"cpu": "200m", "memory": "64Mi"})

    def __post_init__(self) -> None:
        if self.default_mode not in MODES:
            raise ValueError(f"default mode must be one of {MODES}, not {self.default_mode!r}")
        if self.sniff_capabilities not in SNIFF_CAPABILITIES:
            raise ValueError(f"sniff capabilities must be one of {SNIFF_CAPABILITIES}, "
                             f"not {self.sniff_capabilities!r}")
        if self.image_pull_policy not in (None, *PULL_POLICIES):
            raise ValueError(f"image pull policy must be one of {PULL_POLICIES}, "
                             f"not {self.image_pull_policy!r}")


def wants_injection(pod: Mapping[str, Any], namespace: str, *, namespace_enabled: bool,
                    config: InjectConfig) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if namespace in config.excluded_namespaces or (pod.get("spec") or {}).get("hostNetwork"):
        return False
    choice = annotations.get(MONITOR_ANNOTATION)
    if choice in ("true", "false"):
        return bool(choice == "true")
    return namespace_enabled


def is_injected(pod: Mapping[str, Any]) -> bool:
    containers = (pod.get("spec") or {}).get("containers") or []
    return any(c.get("name") == SIDECAR_NAME for c in containers)


def _field(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def security_context(mode: str, sniff_capabilities: str = "add") -> Obj:
    """The sidecar's ``securityContext`` for ``mode`` (see the module docstring for why root)."""
    capabilities: Obj = {"drop": ["ALL"], "add": [CAPABILITY[mode]]}
    if mode != "kernel" and sniff_capabilities == "runtime-default":
        capabilities = {"drop": list(RUNTIME_DEFAULT_BUT_NET_RAW)}
    return {"runAsUser": 0, "runAsNonRoot": False, "privileged": False, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": capabilities,
            "seccompProfile": {"type": "RuntimeDefault"}}


def sidecar_container(config: InjectConfig, mode: str) -> Obj:
    security = security_context(mode, config.sniff_capabilities)
    env = [
        {"name": "PODMIRROR_AGENT", "value": config.agent},
        {"name": "PODMIRROR_VNI", "value": "auto"},
        {"name": "PODMIRROR_INTERFACE", "value": "eth0"},
        {"name": "PODMIRROR_MODE", "value": mode},
        {"name": "PODMIRROR_DISCOVERY", "value": config.discovery},
        {"name": "PODMIRROR_RULES_URL", "value": config.rules_url},
        _field("POD_IP", "status.podIP"),
        _field("POD_NAME", "metadata.name"),
        _field("POD_NAMESPACE", "metadata.namespace"),
        _field("NODE_NAME", "spec.nodeName"),
        _field("NODE_IP", "status.hostIP"),
    ]
    if config.discovery == "label":
        env += [{"name": "SENSOR", "value": config.agent_label},
                {"name": "PODMIRROR_AGENT_NAMESPACE", "value": config.agent_namespace}]
    container: Obj = {"name": SIDECAR_NAME, "image": config.image, "command": ["sidecar-lite"], "env": env,
                      "resources": {"requests": dict(config.requests), "limits": dict(config.limits)},
                      "readinessProbe": copy.deepcopy(READINESS_PROBE), "securityContext": security}
    if config.image_pull_policy:
        container["imagePullPolicy"] = config.image_pull_policy
    return container


def selected_ports(spec: Mapping[str, Any], names: str) -> tuple[str, list[str]]:
    """``podmirror.io/containers`` -> (``podmirror.io/ports`` value, warnings)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    containers = {c.get("name"): c for c in spec.get("containers") or []}
    ports, warnings = [], []
    for name in wanted:
        if name not in containers:
            warnings.append(f"podmirror: container {name!r} named in {CONTAINERS_ANNOTATION} not found")
            continue
        declared = containers[name].get("ports") or []
        if not declared:
            warnings.append(f"podmirror: container {name!r} declares no ports; its traffic cannot be "
                            "told apart from the pod's other containers")
        for port in declared:
            item = f"{port['containerPort']}/{port.get('protocol', 'TCP')}"
            if item not in ports:
                ports.append(item)
    return ",".join(ports), warnings


def _mode(annotations: Mapping[str, str], config: InjectConfig) -> tuple[str, list[str]]:
    mode = annotations.get(MODE_ANNOTATION, config.default_mode)
    if mode in MODES:
        return mode, []
    return config.default_mode, [f"podmirror: unknown {MODE_ANNOTATION} {mode!r}; "
                                 f"using {config.default_mode!r}"]


def inject_template(template: Mapping[str, Any], config: InjectConfig) -> tuple[Obj, list[str]]:
    """A copy of a pod (or pod template) with the sidecar, label and ports annotation added."""
    result: Obj = copy.deepcopy(dict(template))
    if is_injected(result):
        return result, []
    meta = result["metadata"] = result.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    mode, warnings = _mode(annotations, config)
    meta["labels"] = {**(meta.get("labels") or {}), MONITORED_LABEL: "true"}
    spec = result["spec"] = result.get("spec") or {}
    if CONTAINERS_ANNOTATION in annotations:
        ports, more = selected_ports(spec, annotations[CONTAINERS_ANNOTATION])
        warnings += more
        meta["annotations"] = {**annotations, PORTS_ANNOTATION: ports}
    spec["containers"] = [*(spec.get("containers") or []), sidecar_container(config, mode)]
    return result, warnings


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")  # RFC 6901 pointer escaping


def patch_for(pod: Mapping[str, Any], config: InjectConfig) -> tuple[list[Obj], list[str]]:
    """The JSON Patch turning ``pod`` into ``inject_template(pod)``: only additions, so it applies
    cleanly even if another webhook changed unrelated fields."""
    if is_injected(pod):
        return [], []
    if not isinstance((pod.get("spec") or {}).get("containers"), list):
        raise TypeError("spec.containers is not a list")   # no path to add the sidecar to
    injected, warnings = inject_template(pod, config)
    meta, new_meta = pod.get("metadata") or {}, injected["metadata"]
    ops: list[Obj] = []
    if not isinstance(pod.get("metadata"), Mapping):
        ops.append({"op": "add", "path": "/metadata", "value": {}})   # absent or null: make it
    for field, keys in (("labels", [MONITORED_LABEL]), ("annotations", [PORTS_ANNOTATION])):
        new, current = new_meta.get(field) or {}, meta.get(field)
        if current is not None and not isinstance(current, Mapping):
            raise TypeError(f"metadata.{field} is not a map")   # no path to add a key under
        present = [k for k in keys if k in new and (current or {}).get(k) != new[k]]
        if present and current is None:
            ops.append({"op": "add", "path": f"/metadata/{field}", "value": {k: new[k] for k in present}})
        else:
            ops += [{"op": "add", "path": f"/metadata/{field}/{_escape(k)}", "value": new[k]}
                    for k in present]
    ops.append({"op": "add", "path": "/spec/containers/-", "value": injected["spec"]["containers"][-1]})
    return ops, warnings
