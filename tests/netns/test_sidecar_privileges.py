"""What the injected sidecar's securityContext gives a process, measured with runc (Debian's, the
runtime containerd drives) on this kernel: why the sidecar runs as UID 0 with one capability.

Each case runs a container whose OCI process is what containerd's CRI plugin writes for a
Kubernetes ``securityContext``: ``capabilities: {drop: [ALL], add: [X]}`` becomes X in the bounding,
effective and permitted sets (no inheritable since containerd 1.6.2, CVE-2022-24769; no ambient:
Kubernetes cannot ask for ambient capabilities, KEP-2763), ``allowPrivilegeEscalation: false``
becomes ``noNewPrivileges``, ``runAsUser`` the UID. The host's /usr is bound read-only as the root
filesystem; the container has its own network namespace, so nothing it does reaches the host.

Measured: as injected (UID 0) the sniff sidecar has exactly CAP_NET_RAW (an AF_PACKET socket
works, a VXLAN device cannot be made) and the kernel one exactly CAP_NET_ADMIN (the reverse);
as any other UID the same capabilities are not effective after ``execve`` (CapEff 0: AF_PACKET is
refused). Ambient capabilities would make them effective (Kubernetes cannot set them). File
capabilities on the interpreter *do* work under ``noNewPrivileges``, within the container's
permitted set (the kernel caps a gain at what the process already had): a non-root sidecar is
possible with an image whose python3 carries ``cap_net_raw+ep`` (a copy for the sidecar alone: in
a container that dropped every capability, as the agent's and the webhook's do, the kernel refuses
to execute such a binary). The image carries none today, so the sidecar runs as UID 0; either way
Pod Security "restricted" stays out of reach (it allows adding no capability but NET_BIND_SERVICE).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (Debian package runc)"),
]

CAP_NET_ADMIN, CAP_NET_RAW = 1 << 12, 1 << 13
PROBE = """
import socket, subprocess, sys
caps = {l.split(':')[0]: int(l.split()[1], 16) for l in open('/proc/self/status') if l.startswith('Cap')}
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).bind(('lo', 0))
    packet = True
except PermissionError:
    packet = False
vxlan = subprocess.run(['/usr/bin/ip', 'link', 'add', 'pmsec0', 'type', 'vxlan', 'id', '5', 'remote',
                        '127.0.0.1', 'dstport', '14789'], capture_output=True).returncode == 0
print(__import__('json').dumps({'eff': caps['CapEff'], 'packet': packet, 'vxlan': vxlan}))
"""


def run_container(tmp: Path, *, uid: int, cap: str | None, ambient: bool = False, no_new_privs: bool = True,
                  file_caps: bool = False) -> dict[str, object]:
    """Run ``PROBE`` in a runc container with the process that securityContext would give;
    ``file_caps``: with a copy of python3 carrying ``cap_net_raw+ep`` as a file capability."""
    bundle = tmp / f"bundle-{secrets.token_hex(3)}"
    rootfs = bundle / "rootfs"
    for sub in ("usr", "proc", "dev", "tmp", "probe"):
        (rootfs / sub).mkdir(parents=True, mode=0o755)
    for link in ("bin", "lib", "lib64", "sbin"):
        (rootfs / link).symlink_to(f"usr/{link}")
    python = "/usr/bin/python3"
    if file_caps:
        shutil.copy2(os.path.realpath(python), rootfs / "probe" / "python3")
        subprocess.run(["setcap", "cap_net_raw+ep", str(rootfs / "probe" / "python3")], check=True)
        python = "/probe/python3"
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": "rootfs", "readonly": True}
    config["mounts"] += [
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
    ]
    process = config["process"]
    process.update(terminal=False, args=[python, "-c", PROBE], noNewPrivileges=no_new_privs,
                   user={"uid": uid, "gid": uid})
    caps = [f"CAP_{cap}"] if cap else []
    process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps,
                               **({"inheritable": caps, "ambient": caps} if ambient else {})}
    (bundle / "config.json").write_text(json.dumps(config))
    name = f"pmsec-{secrets.token_hex(4)}"
    state = tmp / "runc-state"
    try:
        done = subprocess.run(["runc", "--root", str(state), "run", "--bundle", str(bundle), name],
                              capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "--force", name], capture_output=True)
    if done.returncode and "operation not permitted" in done.stderr:
        return {"exec": "refused"}       # execve(2) itself failed with EPERM
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_as_injected_each_mode_has_exactly_its_one_capability(tmp_path: Path) -> None:
    sniff = run_container(tmp_path, uid=0, cap="NET_RAW")
    assert sniff == {"eff": CAP_NET_RAW, "packet": True, "vxlan": False}
    kernel = run_container(tmp_path, uid=0, cap="NET_ADMIN")
    assert kernel == {"eff": CAP_NET_ADMIN, "packet": False, "vxlan": True}


def test_as_a_non_root_user_the_capability_is_not_effective(tmp_path: Path) -> None:
    assert run_container(tmp_path, uid=65532, cap="NET_RAW") == {"eff": 0, "packet": False, "vxlan": False}
    # What would make it work, and why neither is available to the sidecar:
    ambient = run_container(tmp_path, uid=65532, cap="NET_RAW", ambient=True)   # not in Kubernetes
    assert ambient["eff"] == CAP_NET_RAW and ambient["packet"] is True


@pytest.mark.skipif(shutil.which("setcap") is None, reason="needs setcap (Debian package libcap2-bin)")
def test_file_capabilities_work_under_no_new_privs_only_within_the_containers_set(tmp_path: Path) -> None:
    """A python3 with ``cap_net_raw+ep`` as a file capability, run as UID 65532 with
    ``noNewPrivileges`` (``allowPrivilegeEscalation: false``): effective when the container was
    given NET_RAW; in a container that dropped every capability (the agent's, the webhook's, which
    share the image) the kernel refuses to execute it at all (EPERM: an effective-bit binary whose
    capabilities cannot all be granted), so such an interpreter could only be a copy of its own."""
    given = run_container(tmp_path, uid=65532, cap="NET_RAW", file_caps=True)
    assert given["eff"] == CAP_NET_RAW and given["packet"] is True
    assert run_container(tmp_path, uid=65532, cap=None, file_caps=True) == {"exec": "refused"}
