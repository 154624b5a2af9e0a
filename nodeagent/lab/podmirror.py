"""Start podmirror itself inside a lab: the node agent in its namespace, a sidecar in each pod.

Both run as real processes through their console scripts, exactly as a user runs them
(``nodeagent run ...``, ``sidecar-lite ...``, the README's command-line contracts), so the lab
and the end-to-end tests exercise the shipped entry points. Readiness is observed, never assumed:
the agent is ready when ``/status`` answers; a sidecar is mirroring when a probe datagram sent
from its pod shows up in the agent's per-pod counters.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodeagent.lab.netns import LabError, inside
from nodeagent.lab.topology import PUSHDOWN_PORT, STATUS_PORT, TUNNEL_PORT, Host, Lab, Node, Pod

SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""Where ``nodeagent`` and ``sidecar_lite`` are importable from (a checkout or site-packages)."""
ENV = {"PYTHONPATH": str(SOURCE_ROOT), "PYTHONUNBUFFERED": "1"}
NODEAGENT = [sys.executable, "-m", "nodeagent"]
SIDECAR = [sys.executable, "-m", "sidecar_lite"]


class Served:
    """A podmirror process in a lab namespace that serves ``/status`` over HTTP (the node agent,
    the collector): GET from inside its namespace, readiness, stop. Subclasses say where."""

    lab: Lab
    proc: subprocess.Popen[bytes]
    log: Path
    program = "nodeagent"
    """Named in errors."""

    def endpoint(self) -> tuple[str, str, int]:
        """(namespace, address, port) of the status endpoint."""
        raise NotImplementedError

    def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` from the status endpoint, from inside the process's namespace."""
        ns, ip, port = self.endpoint()
        conn = http.client.HTTPConnection(ip, port, timeout=3)
        conn.sock = self.lab.ns.connect(ns, ip, port)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        if code != 200:
            raise LabError(f"{self.program} /status answered {code}")
        data: dict[str, Any] = json.loads(body)
        return data

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise LabError(f"{self.program} exited with {self.proc.returncode}: {tail(self.log)}")
            try:
                return self.status()
            except (OSError, LabError, ValueError):
                if time.monotonic() > deadline:
                    raise LabError(f"{self.program} status not ready after {timeout}s: {tail(self.log)}") \
                        from None
                time.sleep(0.1)

    def stop(self) -> int:
        return self.lab.ns.stop(self.proc, timeout=10.0)


@dataclasses.dataclass
class Agent(Served):
    lab: Lab
    node: Node
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def ip(self) -> str:
        assert self.node.agent is not None
        return self.node.agent.ip

    def endpoint(self) -> tuple[str, str, int]:
        assert self.node.agent is not None
        return self.node.agent.ns, self.ip, STATUS_PORT

    def pod(self, pod: Pod) -> dict[str, Any]:
        pods: dict[str, dict[str, Any]] = self.status().get("pods", {})
        return pods.get(pod.key, {})

    def wait_quiet(self, settle: float = 0.5, timeout: float = 20.0) -> dict[str, Any]:
        """Poll ``/status`` until ``received`` has not moved for ``settle`` seconds; that status."""
        deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < deadline:
            st = self.status()
            if st["received"] != last:
                last, since = st["received"], time.monotonic()
            elif time.monotonic() - since >= settle:
                return st
            time.sleep(0.1)
        raise LabError(f"the agent kept receiving for {timeout}s: a mirror loop?")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_agent(lab: Lab, node: Node, logdir: Path, *, sensors: Sequence[Host | str] = (),
                pcap_dir: Path | None = None, pods: Sequence[Pod] | None = None,
                config: dict[str, Any] | None = None, extra: Sequence[str] = (),
                peers: Sequence[Pod] = (), name: str = "") -> Agent:
    """``nodeagent run`` in the node's agent namespace, with a ``--sender`` per pod of the node and a
    ``--peer`` per pod of ``peers``, each with both its addresses (``IP+IP6``).

    ``config`` (the configuration file's content) is written next to the log and passed with
    ``--config``; the flags override it, as the command-line contract says. ``name`` tells two
    agents run one after the other on one node apart (their config and log files)."""
    agent_ns = node.agent or lab.add_agent(node)
    cmd = [*NODEAGENT, "run", "--listen", f"{agent_ns.ip}:{TUNNEL_PORT}",
           "--status", f"{agent_ns.ip}:{STATUS_PORT}", "--pushdown", f"{agent_ns.ip}:{PUSHDOWN_PORT}"]
    if config is not None:
        path = logdir / f"agent-node{node.index}{name}.json"
        path.write_text(json.dumps(config))
        cmd += ["--config", str(path)]
    for pod in node.pods if pods is None else pods:
        cmd += ["--sender", f"{pod.ip}+{pod.ip6},{pod.vni},{pod.key}"]
    for pod in peers:
        cmd += ["--peer", f"{pod.ip}+{pod.ip6},{pod.key}"]
    for sensor in sensors:
        cmd += ["--sensor", sensor.ip if isinstance(sensor, Host) else sensor]
    cmd += pcap_flags(pcap_dir)
    log = logdir / f"agent-node{node.index}{name}.log"
    agent = Agent(lab, node, lab.ns.spawn(agent_ns.ns, [*cmd, *extra], log=log, env=ENV), log)
    agent.wait_ready()
    return agent


def pcap_flags(pcap_dir: Path | None) -> list[str]:
    """``--pcap-dir`` for a directory made now (None: no pcap output)."""
    if pcap_dir is None:
        return []
    pcap_dir.mkdir(parents=True, exist_ok=True)
    return ["--pcap-dir", str(pcap_dir)]


def start_sidecar(lab: Lab, pod: Pod, logdir: Path, *, mode: str = "kernel", vni: str = "auto",
                  rules: bool = False, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """``sidecar-lite`` in the pod's namespace, with the downward-API environment a pod would have.

    ``rules``: poll the agent's push-down endpoint (``/v1/pushdown``; the agent then shows the pod's mode).
    Off by default in tests: the poll is pod traffic too, at times the test does not choose."""
    agent = pod.node.agent
    if agent is None:
        raise LabError("start the node's agent before its sidecars")
    cmd = [*SIDECAR, "--agent", f"{agent.ip}:{TUNNEL_PORT}", "--vni", vni,
           "--interface", "eth0", "--mode", mode, *extra]
    if rules:
        cmd += ["--rules-url", f"http://{agent.ip}:{PUSHDOWN_PORT}/v1/pushdown"]
    env = {"POD_IP": pod.ip, "POD_NAME": pod.name, "POD_NAMESPACE": pod.namespace,
           "NODE_NAME": f"node{pod.node.index}", "NODE_IP": pod.node.uplink_ip, **ENV}
    log = logdir / f"sidecar-{pod.name}.log"
    return lab.ns.spawn(pod.ns, cmd, log=log, env=env)


def sidecar_sent(lab: Lab, pod: Pod, log: Path) -> int:
    """Datagrams the pod's sidecar sent to its agent: the kernel-mode VXLAN device's ``tx_packets``
    (read while it runs), or a stopped sniff-mode sidecar's final ``sent=`` counter (its log)."""
    sent = lab.tunnel_tx_packets(pod)
    if sent is not None:
        return sent
    text = log.read_text(errors="replace")
    marker = "sniff mode stopped:"
    if marker not in text:
        raise LabError(f"{pod.key}: no kernel-mode tunnel and no final sniff counters in {log.name}")
    counters = dict(item.split("=", 1) for item in text.rsplit(marker, 1)[1].split("\n", 1)[0].split())
    return int(counters["sent"])


def probe(lab: Lab, pod: Pod) -> None:
    """One UDP datagram from the pod to its gateway's discard port: cheap, always mirrored."""
    with inside(pod.ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.sendto(b"podmirror-lab-probe", (pod.node.gateway, 9))


def wait_log(log: Path, needle: str, timeout: float = 20.0, what: str = "") -> str:
    """Poll ``log`` until it contains ``needle``; its text. LabError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return text
        if time.monotonic() > deadline:
            raise LabError(f"{what or repr(needle)} not in {log.name} after {timeout}s: {tail(log)}")
        time.sleep(0.1)


def wait_mirroring(lab: Lab, agent: Agent, pod: Pod, sidecar: subprocess.Popen[bytes],
                   timeout: float = 20.0) -> None:
    """Probe from ``pod`` until the agent counts packets from it (the sidecar is mirroring)."""
    deadline = time.monotonic() + timeout
    while not agent.pod(pod).get("received", 0):
        if sidecar.poll() is not None:
            raise LabError(f"sidecar of {pod.key} exited with {sidecar.returncode}")
        if time.monotonic() > deadline:
            raise LabError(f"no mirrored packet from {pod.key} reached the agent within {timeout}s")
        probe(lab, pod)
        time.sleep(0.2)
