"""``nodeagent run`` on loopback as a process, for the benchmarks: start, read, measure, stop.

``LoopbackAgent(args)`` starts ``python -m nodeagent run --listen 127.0.0.1:0 --status 127.0.0.1:0
ARGS`` (a user's command line, so ``--workers`` and the outputs are the shipped ones), logs to a
file in its own temporary directory, and finds its tunnel port and status address in that log.
Then: ``status()`` (``/status``), ``count()`` (datagrams and bytes received), ``cpu()`` (CPU
seconds of the agent and all its worker processes), ``stop()`` (SIGTERM, exit code).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodeagent.lab import measure

SOURCE_ROOT = Path(__file__).resolve().parents[2]


class LoopbackAgent:
    def __init__(self, args: Sequence[str], *, timeout: float = 90.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pmlo-"))
        self.log = self.dir / "agent.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nodeagent", "run", "--listen", "127.0.0.1:0",
                 "--status", "127.0.0.1:0", *args], stdout=out, stderr=subprocess.STDOUT, cwd=SOURCE_ROOT)
        deadline = time.monotonic() + timeout
        while "status on http://" not in (text := self.log.read_text(errors="replace")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nodeagent run did not start: {text[-2000:]}")
            time.sleep(0.1)
        self.target = ("127.0.0.1", int(re.findall(r"receiving tunnels on 127\.0\.0\.1:(\d+)", text)[0]))
        self.url = "http://" + re.findall(r"status on http://([\d.:]+)/status", text)[0] + "/status"

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            document: dict[str, Any] = json.loads(answer.read())
        return document

    def count(self) -> tuple[int, int]:
        st = self.status()
        return st["received"], st["received_bytes"]

    def cpu(self) -> float:
        return sum(measure.cpu_seconds(p) for p in (self.proc.pid, *measure.children(self.proc.pid)))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode
