"""The collector inside the lab (``nodeagent.lab``): start ``nodeagent collect`` in a host namespace.

Used by ``bench/bench_remote.py`` and ``tests/e2e/test_remote_*.py``. Like the lab's agent, it runs
the shipped entry point as a real process; it is ready when its ``/status`` answers.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nodeagent.lab.podmirror import ENV, NODEAGENT, Served, pcap_flags
from nodeagent.lab.topology import Host, Lab
from nodeagent.settings import COLLECTOR_PORT

STATUS_PORT = 9478


@dataclasses.dataclass
class LabCollector(Served):
    lab: Lab
    host: Host
    proc: subprocess.Popen[bytes]
    log: Path
    program = "collector"

    def endpoint(self) -> tuple[str, str, int]:
        return self.host.ns, self.host.ip, STATUS_PORT


def start_collector(lab: Lab, host: Host, logdir: Path, *, cert: str, key: str, client_ca: str | None,
                    pcap_dir: Path | None = None, extra: Sequence[str] = ()) -> LabCollector:
    """``client_ca``: the CA of the agents' certificates (mutual TLS, the default of ``nodeagent
    collect``); None runs it with ``--insecure-no-client-auth``."""
    auth = ["--client-ca", client_ca] if client_ca else ["--insecure-no-client-auth"]
    cmd = [*NODEAGENT, "collect", "--cert", cert, "--key", key, *auth,
           "--listen", f"{host.ip}:{COLLECTOR_PORT}", "--status", f"{host.ip}:{STATUS_PORT}",
           *pcap_flags(pcap_dir)]
    log = logdir / f"collector-{host.name}.log"
    collector = LabCollector(lab, host, lab.ns.spawn(host.ns, [*cmd, *extra], log=log, env=ENV), log)
    collector.wait_ready()
    return collector
