"""Live capture across two lab nodes: ``nodeagent capture`` merges both agents' streams.

Topology (namespaces ``pme2e-*``): node 1 with pods ``web`` and ``other``, node 2 with pod ``db``,
each node with its agent (pcap output, capture listener with mutual TLS, the other node's pod as
``--peer``), and an ``ops`` host behind the fabric where the operator runs ``nodeagent capture
--agent ... --agent ...`` for ``default/web`` and ``default/db``. Traffic: HTTP, DNS, TLS and ping
from web to db (across nodes: one node forwards each flow), UDP from db and from other to an
outside host. The merged pcapng must hold exactly what the two agents' pcap outputs got of web's
and db's traffic during the capture, none of other's, on interfaces named after the pods, in
timestamp order; a request without credentials is refused with 401.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from nodeagent.lab import capture, podmirror
from nodeagent.lab.topology import Lab, Pod
from nodeagent.lab.workload import Workload
from tests.component.capture_kit import make_certs, tshark_fields
from tests.waiting import poll

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]

WHOLE = {"cutoff": {"enabled": False}}
KINDS = ("udp", "icmp", "tcp")


def udp_out(lab: Lab, pod: Pod, host: str, count: int) -> None:
    code = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range({count}):\n    s.sendto(b'to-ext %d' % i, ('{host}', 7777))\n")
    lab.ns.exec(pod.ns, [sys.executable, "-c", code], timeout=30)


def settle(path: Path, quiet: float, timeout: float = 20.0) -> None:
    """Poll until ``path`` has not grown for ``quiet`` seconds."""
    deadline, size, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = path.stat().st_size if path.exists() else 0
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} kept growing for {timeout}s")


def ours(traffic: capture.Traffic, ips: set[str]) -> capture.Traffic:
    """IPv4 packets of the test's own traffic that involve one of ``ips`` (no probes to port 9,
    no neighbour discovery, whose timing the test does not control)."""
    out = capture.Traffic()
    out.packets.update({k: n for k, n in traffic.packets.items()
                        if k[0] in KINDS and ips & set(k[1:5]) and "9" not in (k[2], k[4])})
    out.tcp_bytes.update({k: n for k, n in traffic.tcp_bytes.items() if ips & set(k[1:5])})
    return out


def test_nodeagent_capture_merges_two_nodes_exactly(lab: Lab, tmp_path: Path) -> None:
    node1, node2 = lab.add_node(), lab.add_node()
    web, other = lab.add_pod(node1, "web"), lab.add_pod(node1, "other")
    db = lab.add_pod(node2, "db")
    ops, ext = lab.add_host("ops"), lab.add_host("ext")
    certs = make_certs(tmp_path, "10.1.0.2", "10.2.0.2")
    agents = []
    for node, peer in ((node1, db), (node2, web)):
        lab.add_agent(node)
        assert node.agent is not None
        extra = ["--peer", f"{peer.ip},{peer.key}", "--capture", f"{node.agent.ip}:9479",
                 "--capture-cert", certs.cert, "--capture-key", certs.key, "--capture-client-ca", certs.ca]
        agents.append(podmirror.start_agent(lab, node, tmp_path, pcap_dir=tmp_path / f"pcap{node.index}",
                                            config=WHOLE, extra=extra))
    sidecars = {p.name: podmirror.start_sidecar(lab, p, tmp_path, extra=["--tunnel-mtu", "1600"])
                for p in (web, other, db)}
    for p, agent in ((web, agents[0]), (other, agents[0]), (db, agents[1])):
        podmirror.wait_mirroring(lab, agent, p, sidecars[p.name])
    work = Workload(lab, tmp_path)
    work.start_servers(db, iperf=False)
    for agent in agents:
        agent.wait_quiet()

    refused = lab.ns.exec(ops.ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                                   certs.ca, "https://10.1.0.2:9479/v1/capture?pod=default/web"], check=False)
    assert refused.stdout == "401"

    out = tmp_path / "merged.pcapng"
    cmd = [*podmirror.NODEAGENT, "capture", "--agent", "https://10.1.0.2:9479", "--agent",
           "https://10.2.0.2:9479", "--cacert", certs.ca, "--cert", certs.client_cert, "--key",
           certs.client_key, "-n", "default", "web", "db", "-w", str(out)]
    proc = lab.ns.spawn(ops.ns, cmd, log=tmp_path / "capture.log", env=podmirror.ENV)
    poll(lambda: proc.poll() is not None
         or all(a.status()["outputs"].get("capture", {}).get("sessions") == 1 for a in agents),
         20, "a capture session at each agent")
    assert proc.poll() is None, podmirror.tail(tmp_path / "capture.log")
    before = [a.status()["forwarded"] for a in agents]

    result = work.client(web, db, rounds=2, ipv6=False)
    udp_out(lab, db, ext.ip, 20)
    udp_out(lab, other, ext.ip, 20)
    after = [a.wait_quiet()["forwarded"] for a in agents]
    # every record handed to the socket
    poll(lambda: all(all(s["delivered"] == s["received"] for s in a.status()["outputs"]["capture"]["open"])
                     for a in agents), 20, "the agents' streams to drain")
    settle(out, 1.0)  # the merge holds each packet 0.5 s before writing it
    assert lab.ns.stop(proc, sig=signal.SIGINT, timeout=15) == 0, podmirror.tail(tmp_path / "capture.log")
    for agent in agents:
        assert agent.stop() == 0
    assert result["errors"] == 0
    assert all(b < a for b, a in zip(before, after, strict=True)), "both nodes forwarded traffic"

    got = capture.decode(out)
    sensor = capture.Traffic()
    for index in (1, 2):
        for f in sorted((tmp_path / f"pcap{index}").glob("*.pcap")):
            sensor.add(capture.decode(f))
    expected = ours(sensor, {web.ip, db.ip})
    assert expected.packets and expected.tcp_bytes, "no traffic of web and db at the outputs"
    assert capture.diff(expected, ours(got, {web.ip, db.ip})) == {}
    assert ours(got, {other.ip}).packets == {}, "another pod's packets in the capture"
    rows = tshark_fields(out, "frame.interface_name", "frame.interface_description", "frame.time_epoch")
    assert {r[0] for r in rows} == {"default/web", "default/db"}
    times = [float(r[2]) for r in rows]
    assert times == sorted(times), "the merged stream is not in timestamp order"
    log = (tmp_path / "capture.log").read_text()
    assert "streaming from 2 agents" in log and "packets written" in log
