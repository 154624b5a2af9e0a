"""The image ``scripts/image.sh`` writes: it is what the Dockerfile describes, and it runs.

The Dockerfile is the way to build where a registry exists; ``scripts/image.sh`` builds the same
contents without one. What can be compared without building the Dockerfile is compared: the final
stage's Debian release and packages, USER, ENV, CMD, EXPOSE, and the shared slimming script. Then the
archive's layer is unpacked and its entry points run inside it (a private mount and PID namespace,
``chroot`` as the image's user, the image's environment only).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import IMAGE_ARCHIVE, ROOT

DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH in debian:bookworm-slim's config: what ``ENV PATH=...:$PATH`` extends."""
SITE = "opt/podmirror/lib/python3.11/site-packages"

_missing = ("needs root (chroot into the image)" if os.geteuid() != 0 else
            None if IMAGE_ARCHIVE.is_file() else
            f"no image at {IMAGE_ARCHIVE} (build it with: scripts/image.sh --no-import)")
pytestmark = [pytest.mark.cluster, pytest.mark.skipif(_missing is not None, reason=_missing or "")]


def dockerfile_final_stage() -> dict[str, Any]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    stage = joined.split("\nFROM ")[-1]
    lines = [line.strip() for line in stage.splitlines() if line.strip() and not line.startswith("#")]
    out: dict[str, Any] = {"from": lines[0].split()[0], "env": {}, "packages": [], "run": []}
    for line in lines[1:]:
        word, _, rest = line.partition(" ")
        if word == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                out["env"][name] = value.replace("$PATH", DEBIAN_PATH)
        elif word == "USER":
            out["user"] = rest.strip()
        elif word == "CMD":
            out["cmd"] = json.loads(rest)
        elif word == "EXPOSE":
            out["expose"] = set(rest.split())
        elif word == "RUN":
            out["run"].append(rest)
            match = re.search(r"apt-get install -y --no-install-recommends ([^&]+)", rest)
            if match:
                out["packages"] += match.group(1).split()
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    """(the image's config, its unpacked root filesystem)."""
    root = tmp_path_factory.mktemp("podmirror-image")
    with tarfile.open(IMAGE_ARCHIVE) as archive:
        (manifest,) = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(archive.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        (layer,) = manifest["Layers"]
        archive.extract(layer, root / "layer", filter="tar")
    rootfs = root / "rootfs"
    rootfs.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xzf", str(root / "layer" / layer), "-C", str(rootfs)],
                   check=True, timeout=300)
    yield config, rootfs
    subprocess.run(["rm", "-rf", str(root)], check=True)


def run_inside(config: dict[str, Any], rootfs: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` in the image: its user, its environment and nothing else; /proc of its own."""
    user = config["config"]["User"]
    env = ["HOME=/", *config["config"]["Env"]]
    script = 'mount -t proc proc "$0/proc" && exec chroot --userspec="$1" "$0" /usr/bin/env -i "${@:2}"'
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "bash", "-c", script, str(rootfs), user,
                           *env, *argv], capture_output=True, text=True, timeout=120)


def test_the_image_is_what_the_dockerfile_describes(image: tuple[dict[str, Any], Path]) -> None:
    config, rootfs = image
    docker = dockerfile_final_stage()
    runtime = config["config"]
    assert runtime["User"] == docker["user"] == "65532:65532"
    assert dict(e.split("=", 1) for e in runtime["Env"]) == {"PATH": DEBIAN_PATH, **docker["env"]}
    assert runtime["Cmd"] == docker["cmd"] == ["nodeagent", "run"]
    assert set(runtime["ExposedPorts"]) == docker["expose"]
    # the same Debian release and packages, the same slimming
    assert docker["from"] == "debian:bookworm-slim"
    assert "VERSION_CODENAME=bookworm" in (rootfs / "etc/os-release").read_text()
    status = (rootfs / "var/lib/dpkg/status").read_text()
    installed = set(re.findall(r"^Package: (\S+)$", status, re.M))
    assert set(docker["packages"]) <= installed, set(docker["packages"]) - installed
    assert "slim-venv.sh" in (ROOT / "Dockerfile").read_text()
    assert not (rootfs / SITE / "kubernetes" / "aio").exists()
    # no pip, no apt in the image
    assert not (rootfs / "opt/podmirror/bin/pip").exists() and not (rootfs / "usr/bin/apt-get").exists()


def test_entry_points_run_inside_the_image_as_its_user(image: tuple[dict[str, Any], Path]) -> None:
    config, rootfs = image
    for argv in (["nodeagent", "--help"], ["sidecar-lite", "--help"], ["nodeagent", "collect", "--help"]):
        result = run_inside(config, rootfs, *argv)
        assert result.returncode == 0 and "usage:" in result.stdout, (argv, result.stderr)
    identity = run_inside(config, rootfs, "id", "-u")
    assert identity.stdout.strip() == "65532", identity.stderr  # the Dockerfile's USER


def test_every_native_library_loads_and_imports_work_inside_the_image(
        image: tuple[dict[str, Any], Path]) -> None:
    """The slimming (kubernetes/aio, tests, debug sections) and the package list leave nothing broken:
    every shared library of the installed wheels finds its dependencies (numpy needs libstdc++6), and
    what the agent, the webhook and the collector import, imports."""
    config, rootfs = image
    libraries = [str(p.relative_to(rootfs)) for p in (rootfs / SITE).rglob("*.so*") if p.is_file()]
    assert libraries
    ldd = run_inside(config, rootfs, "sh", "-c", 'for f in "$@"; do ldd "/$f"; done', "sh", *libraries)
    assert ldd.returncode == 0 and "not found" not in ldd.stdout, ldd.stdout + ldd.stderr
    code = ("import numpy, zstandard, yaml, kubernetes.client, cryptography.x509, scapy.all\n"
            "import nodeagent.app, nodeagent.webhook.server, nodeagent.collector.main, sidecar_lite.kernel\n"
            "assert yaml.__with_libyaml__ and zstandard.backend == 'cext'\n"
            "print(numpy.frombuffer(zstandard.decompress(zstandard.compress(bytes(8))), 'u1').sum())")
    result = run_inside(config, rootfs, "python3", "-c", code)
    assert result.returncode == 0 and result.stdout.strip() == "0", result.stderr
