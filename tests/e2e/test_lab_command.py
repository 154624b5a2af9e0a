"""``nodeagent lab`` itself: a short run succeeds, summarizes, and leaves no namespace; so does Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeagent.lab import netns
from nodeagent.lab.podmirror import ENV, SOURCE_ROOT

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]


def start_lab(out: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = out / "lab.out"
    with log.open("wb") as f:
        cmd = [sys.executable, "-m", "nodeagent", "lab", "--output", str(out), *args]
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=SOURCE_ROOT,
                                env={**os.environ, **ENV})
    return proc, log


def tag_of(text: str) -> str:
    match = re.search(r"namespaces (pmlab-[0-9a-f]+-)\*", text)
    assert match, text
    return match.group(1)


def test_short_lab_run_summarizes_and_cleans_up(tmp_path: Path) -> None:
    proc, log = start_lab(tmp_path, "--duration", "2", "--iperf-seconds", "1")
    assert proc.wait(timeout=120) == 0, log.read_text()
    text = log.read_text()
    assert "== podmirror lab summary ==" in text
    for pod in ("default/web", "default/client", "default/egress"):
        row = re.search(rf"^{pod}\s+\S+\s+(\d+)\s+(\d+)", text, re.M)
        assert row and int(row.group(1)) > 0, f"no packets from {pod} at the agent:\n{text}"
    assert "sidecars exited [0], agent exited 0" in text
    assert "node-side veth MTU raised to 1600" in text
    pcaps = sorted((tmp_path / "pcap").glob("*.pcap"))
    assert pcaps
    info = subprocess.run(["capinfos", "-c", str(pcaps[0])], capture_output=True, text=True, check=True)
    assert re.search(r"Number of packets:\s+[1-9]", info.stdout)
    assert netns.leftovers(tag_of(text)) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_removes_every_namespace(tmp_path: Path, sig: signal.Signals) -> None:
    proc, log = start_lab(tmp_path, "--duration", "60")
    deadline = time.monotonic() + 60
    while "traffic for" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    tag = re.search(r"namespaces (pmlab-[0-9a-f]+-)\*", log.read_text())
    assert tag and netns.leftovers(tag.group(1)), "the lab should be up while traffic runs"
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 130, log.read_text()
    assert netns.leftovers(tag.group(1)) == []
