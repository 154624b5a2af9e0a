"""Two workers in the lab: every packet between two monitored pods still leaves the agent once.

Same topology as the dedup lab test: ``client`` and ``web`` monitored on one node, talking directly
and through a ClusterIP (nftables DNAT in the node namespace, as kube-proxy does), each packet
mirrored by both sidecars. The agent runs ``--workers 2``: the kernel steers each flow's copies
(client's view before DNAT, web's view after, both directions) to one worker, and packets without
ports (ICMP errors, pings, ARP) to worker 0, so vantage and per-packet dedup stay exact. The two
workers' pcap files together must hold the client's ground truth exactly once plus web's traffic
that does not involve the client, and both workers must have taken part.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nodeagent.lab import capture, podmirror
from nodeagent.lab.topology import Lab, Pod
from nodeagent.lab.traffic import HTTP_PORT
from nodeagent.lab.workload import Workload

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]

VIP = "10.96.0.10"
WHOLE = {"cutoff": {"enabled": False}}
"""Payload bytes are compared: the encrypted-flow cutoff (its own unit tests) would cut TLS."""


def _http_via_vip(lab: Lab, client: Pod, count: int) -> None:
    code = ("import urllib.request\n"
            f"for _ in range({count}):\n"
            f"    assert len(urllib.request.urlopen('http://{VIP}:80/', timeout=5).read()) > 0\n")
    lab.ns.exec(client.ns, [sys.executable, "-c", code], timeout=60)


def _udp_to_closed_port(lab: Lab, client: Pod, server: Pod, count: int) -> None:
    code = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range({count}):\n"
            f"    s.sendto(b'closed %d' % i, ('{server.ip}', 9))\n")
    lab.ns.exec(client.ns, [sys.executable, "-c", code], timeout=30)


def _involves(key: tuple[str, ...], ip: str) -> bool:
    return ip in key[1:5]


def test_two_workers_forward_each_packet_of_a_dnated_pair_once(lab: Lab, tmp_path: Path) -> None:
    node = lab.add_node()
    client, server = lab.add_pod(node, "client"), lab.add_pod(node, "web")
    lab.add_agent(node)
    lab.add_cluster_ip(node, VIP, 80, server, HTTP_PORT)
    agent = podmirror.start_agent(lab, node, tmp_path, pcap_dir=tmp_path / "pcap", config=WHOLE,
                                  extra=["--workers", "2"])
    sidecars = {p.name: podmirror.start_sidecar(lab, p, tmp_path, extra=["--tunnel-mtu", "1600"])
                for p in (client, server)}
    for p in (client, server):
        podmirror.wait_mirroring(lab, agent, p, sidecars[p.name])
    work = Workload(lab, tmp_path)
    work.start_servers(server, iperf=False)
    agent.wait_quiet()
    dumps = {p.name: capture.start_tcpdump(lab, p.ns, "eth0", tmp_path / f"truth-{p.name}.pcap",
                                           f"not (ip dst host {agent.ip} and ip proto 17)")
             for p in (client, server)}
    result = work.client(client, server, rounds=2, ipv6=False)
    _http_via_vip(lab, client, 20)
    _udp_to_closed_port(lab, client, server, 3)
    status = agent.wait_quiet()
    truth = {}
    for name, proc in dumps.items():
        path = tmp_path / f"truth-{name}.pcap"
        capture.stop_tcpdump(lab, proc, path)
        assert capture.captured_all(path), "the ground truth itself lost packets"
        truth[name] = capture.decode(path)
    for p in (client, server):
        assert lab.ns.stop(sidecars[p.name], timeout=10) == 0
    assert agent.stop() == 0
    files = sorted((tmp_path / "pcap").glob("*.pcap"))
    got = capture.Traffic()
    for f in files:
        got.add(capture.decode(f))

    assert result["errors"] == 0
    expected = capture.Traffic()
    expected.add(truth["client"])
    web_only = capture.Traffic()
    web = truth["web"]
    web_only.packets.update({k: n for k, n in web.packets.items() if not _involves(k, client.ip)})
    web_only.tcp_bytes.update({k: n for k, n in web.tcp_bytes.items() if not _involves(k, client.ip)})
    expected.add(web_only)
    assert capture.diff(expected, got) == {}
    assert [k for k in truth["client"].tcp_bytes if VIP in k], "no traffic through the ClusterIP"
    workers = status["workers"]
    assert len(workers) == 2 and all(w["forwarded"] > 0 for w in workers), workers
    assert {f.name.split("-")[1] for f in files} == {"w0", "w1"}
    assert status["received"] == status["forwarded"] + sum(status["drops"].values())
    assert status["drops"]["other_vantage"] > 0 and status["drops"]["duplicate"] > 0
