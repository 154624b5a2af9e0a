"""The collector inside the lab (``nodeagent.lab``): start ``nodeagent collect`` in a host namespace.

Used by ``bench/bench_remote.py`` and ``tests/e2e/test_remote_*.py``. Like the lab's agent, it runs
the shipped entry point as a real process; it is ready when its ``/status`` answers.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodeagent.lab.netns import LabError
from nodeagent.lab.podmirror import ENV, NODEAGENT, tail
from nodeagent.lab.topology import Host, Lab
from nodeagent.settings import COLLECTOR_PORT

STATUS_PORT = 9478


@dataclasses.dataclass
class LabCollector:
    lab: Lab
    host: Host
    proc: subprocess.Popen[bytes]
    log: Path

    def status(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host.ip, STATUS_PORT, timeout=3)
        conn.sock = self.lab.ns.connect(self.host.ns, self.host.ip, STATUS_PORT)
        try:
            conn.request("GET", "/status")
            resp = conn.getresponse()
            if resp.status != 200:
                raise LabError(f"collector /status answered {resp.status}")
            return json.loads(resp.read())  # type: ignore[no-any-return]
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise LabError(f"collector exited with {self.proc.returncode}: {tail(self.log)}")
            try:
                return self.status()
            except (OSError, LabError, ValueError):
                if time.monotonic() > deadline:
                    raise LabError(f"collector not ready after {timeout}s: {tail(self.log)}") from None
                time.sleep(0.1)

    def stop(self) -> int:
        return self.lab.ns.stop(self.proc, timeout=10.0)


def start_collector(lab: Lab, host: Host, logdir: Path, *, cert: str, key: str, client_ca: str | None,
                    pcap_dir: Path | None = None, extra: Sequence[str] = ()) -> LabCollector:
    """``client_ca``: the CA of the agents' certificates (mutual TLS, the default of ``nodeagent
    collect``); None runs it with ``--insecure-no-client-auth``."""
    auth = ["--client-ca", client_ca] if client_ca else ["--insecure-no-client-auth"]
    cmd = [*NODEAGENT, "collect", "--cert", cert, "--key", key, *auth,
           "--listen", f"{host.ip}:{COLLECTOR_PORT}", "--status", f"{host.ip}:{STATUS_PORT}"]
    if pcap_dir is not None:
        pcap_dir.mkdir(parents=True, exist_ok=True)
        cmd += ["--pcap-dir", str(pcap_dir)]
    log = logdir / f"collector-{host.name}.log"
    collector = LabCollector(lab, host, lab.ns.spawn(host.ns, [*cmd, *extra], log=log, env=ENV), log)
    collector.wait_ready()
    return collector
