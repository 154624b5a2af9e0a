"""``nodeagent run`` as a process: flags, SIGTERM flushes and exits 0, bad configuration exits 2."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeagent.wire import pcap
from tests.component.agent_kit import KNOWN, UNKNOWN, http_get, send_tunnel, sender, tcp_frame
from tests.waiting import poll

ROOT = Path(__file__).resolve().parents[2]


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nodeagent", "run", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _addresses(proc: subprocess.Popen[str], timeout: float = 15.0) -> tuple[int, tuple[str, int]]:
    """Tunnel port and status address, read from the agent's startup log lines."""
    deadline = time.monotonic() + timeout
    tunnel = status = None
    assert proc.stderr is not None
    while (tunnel is None or status is None) and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if m := re.search(r"receiving tunnels on 127\.0\.0\.1:(\d+)", line):
            tunnel = int(m.group(1))
        if m := re.search(r"status on http://127\.0\.0\.1:(\d+)/status", line):
            status = ("127.0.0.1", int(m.group(1)))
    assert tunnel is not None and status is not None, "agent did not start"
    return tunnel, status


def _status(address: tuple[str, int]) -> dict:
    code, body = http_get(address, "/status")
    assert code == 200
    return json.loads(body)


def test_sigterm_flushes_the_pcap_and_exits_0(tmp_path):
    proc = _start(
        "--listen",
        "127.0.0.1:0",
        "--status",
        "127.0.0.1:0",
        "--pushdown",
        "127.0.0.1:0",
        "--sender",
        f"{KNOWN}+10.0.0.5,5,default/web",
        "--sender",
        "10.0.0.6,auto,default/db",
        "--pcap-dir",
        str(tmp_path),
    )
    try:
        port, address = _addresses(proc)
        good, stranger = sender(KNOWN), sender(UNKNOWN)
        send_tunnel(good, port, tcp_frame(), count=30)
        send_tunnel(stranger, port, tcp_frame(), count=5)
        poll(lambda: _status(address)["received"] == 35)
        status = _status(address)
        assert status["forwarded"] == 30 and status["drops"]["unknown_sender"] == 5
        assert "default/db" in status["pods"]
        proc.send_signal(signal.SIGTERM)  # at once: the records are still in the agent's buffer
        assert proc.wait(timeout=15) == 0
        good.close()
        stranger.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    files = sorted(tmp_path.glob("*.pcap"))
    records = [r for f in files for r in pcap.read(f.read_bytes())[1]]
    assert len(records) == 30


def test_config_file_with_flag_overrides(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("listen: 127.0.0.1:1\nstatus: 127.0.0.1:0\n"
                      f"senders: ['{KNOWN}+10.0.0.5,7,default/web']\n")
    proc = _start("--config", str(config), "--listen", "127.0.0.1:0")
    try:
        port, address = _addresses(proc)
        good = sender(KNOWN)
        send_tunnel(good, port, tcp_frame(), vni=7, count=3)
        poll(lambda: _status(address)["forwarded"] == 3)
        good.close()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize(
    "config, flags, message",
    [
        ("outputs:\n  pcap:\n    dir: /tmp\n    max_bytes: 0\n", [], "outputs.pcap.max_bytes must be > 0"),
        (
            "senders:\n  - ip: 10.0.0.5\n    vni: 5\n    namespace: default\n",
            [],
            "senders[0].name is required",
        ),
        ("listen: {port: 70000}\n", [], "listen.port must be in 0..65535"),
        ("", ["--sender", "10.0.0.5,5"], "senders[0] must be IP[+IP...],VNI,NAMESPACE/NAME"),
        ("", ["--sensor", "sensor.local"], "outputs.sensors[0] must be an IP address"),
        ("", ["--listen", "127.0.0.1:port"], "--listen has a bad port"),
        ("- a list\n", [], "--config must hold a mapping"),
    ],
)
def test_bad_configuration_exits_2_naming_the_field(tmp_path, config, flags, message):
    path = tmp_path / "agent.yaml"
    path.write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "nodeagent", "run", "--config", str(path), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_taken_listen_port_exits_1():
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "nodeagent",
                "run",
                "--listen",
                f"127.0.0.1:{busy.getsockname()[1]}",
                "--status",
                "127.0.0.1:0",
                "--pushdown",
                "127.0.0.1:0",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        busy.close()
    assert result.returncode == 1
    assert "Address already in use" in result.stderr
