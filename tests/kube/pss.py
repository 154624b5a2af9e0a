"""The Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards, the
rules PodSecurity admission enforces from Kubernetes 1.22) evaluated on a pod, for the tests.

``violations(pod, level)`` lists what keeps ``pod`` out of ``level`` ("baseline" or "restricted",
each including the one below); ``level_of(pod)`` is the strictest level the pod meets. Written from
the documented controls, independently of ``nodeagent.webhook.inject``; the controls no podmirror
object can touch (Windows host processes) are left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

BASELINE_ADD = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                          "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
SAFE_SYSCTLS = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                          "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                          "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                          "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                          "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                "persistentVolumeClaim", "projected", "secret"})
LEVELS = ("privileged", "baseline", "restricted")


def _containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(field) or []


def _baseline(pod: Mapping[str, Any]) -> Iterator[str]:
    spec = pod.get("spec") or {}
    psc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"spec.{field}"
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            yield f"volume {volume.get('name')}: hostPath"
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield "pod seccompProfile Unconfined"
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"sysctl {sysctl.get('name')}"
    yield from _selinux(psc.get("seLinuxOptions"), "pod")
    for key, value in ((pod.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            yield f"apparmor {key}"
    for c in _containers(spec):
        name, sc = c.get("name"), c.get("securityContext") or {}
        if sc.get("privileged"):
            yield f"{name}: privileged"
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_ADD:
            yield f"{name}: adds {sorted(added - BASELINE_ADD)}"
        if any(p.get("hostPort") for p in c.get("ports") or []):
            yield f"{name}: hostPort"
        if sc.get("procMount", "Default") != "Default":
            yield f"{name}: procMount"
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield f"{name}: seccompProfile Unconfined"
        yield from _selinux(sc.get("seLinuxOptions"), str(name))


def _selinux(options: Mapping[str, Any] | None, where: str) -> Iterator[str]:
    if options and (options.get("user") or options.get("role")
                    or options.get("type", "") not in SELINUX_TYPES):
        yield f"{where}: seLinuxOptions"


def _restricted(pod: Mapping[str, Any]) -> Iterator[str]:
    spec = pod.get("spec") or {}
    psc = spec.get("securityContext") or {}
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            yield f"volume {volume.get('name')}: {sorted(kinds)}"
    if psc.get("runAsUser") == 0:
        yield "pod runAsUser 0"
    for c in _containers(spec):
        name, sc = c.get("name"), c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            yield f"{name}: allowPrivilegeEscalation not false"
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            yield f"{name}: runAsNonRoot not true"
        if sc.get("runAsUser") == 0:
            yield f"{name}: runAsUser 0"
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield f"{name}: seccompProfile {seccomp}"
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield f"{name}: does not drop ALL"
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            yield f"{name}: adds {sorted(set(caps['add']) - {'NET_BIND_SERVICE'})}"


def violations(pod: Mapping[str, Any], level: str) -> list[str]:
    if level == "privileged":
        return []
    found = list(_baseline(pod))
    if level == "restricted":
        found += list(_restricted(pod))
    return found


def level_of(pod: Mapping[str, Any]) -> str:
    """The strictest level ``pod`` meets."""
    return [level for level in LEVELS if not violations(pod, level)][-1]
