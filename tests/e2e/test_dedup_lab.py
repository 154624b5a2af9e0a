"""Dedup in the lab: two monitored pods' traffic reaches the agent twice and leaves it once.

Same node: ``client`` and ``web`` are both monitored on one node; client talks to web directly and
through a ClusterIP (nftables DNAT in the node namespace, as kube-proxy does). Every packet between
them is mirrored by both sidecars. With the default rule (client vantage) the agent's pcap must
hold each packet of the client's ground truth exactly once, and nothing of web's view of those
flows (no connection split across two address pairs); web's other packets (its own neighbour
discovery, probes) come from web's vantage.

Across nodes: ``client`` on node 1 and ``web`` on node 2, each node with its agent, each agent told
about the other pod with ``--peer``. The two agents' pcaps together must hold every packet of the
ground truth exactly once.

IPv4 only: a pod is known to the agent by one address today (``PodInfo.ip``), so the vantage rule
cannot pair the IPv6 copies of a dual-stack pod (see the pipeline report). Namespaces ``pmpl-*``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from nodeagent.lab import capture, podmirror
from nodeagent.lab.topology import TUNNEL_PORT, Lab, Pod
from nodeagent.lab.traffic import HTTP_PORT
from nodeagent.lab.workload import Workload
from tests.books import assert_balanced

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]

WHOLE = {"cutoff": {"enabled": False}}
"""Compare payload bytes: the encrypted-flow cutoff is tested in unit tests."""
VIP = "10.96.0.10"


def http_via_vip(lab: Lab, client: Pod, count: int) -> None:
    code = ("import urllib.request\n"
            f"for _ in range({count}):\n"
            f"    assert len(urllib.request.urlopen('http://{VIP}:80/', timeout=5).read()) > 0\n")
    lab.ns.exec(client.ns, [sys.executable, "-c", code], timeout=60)


def udp_to_closed_port(lab: Lab, client: Pod, server: Pod, count: int) -> None:
    """Datagrams the server answers with ICMP port unreachable: packets without a flow (dedup)."""
    code = ("import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range({count}):\n"
            f"    s.sendto(b'closed %d' % i, ('{server.ip}', 9))\n")
    lab.ns.exec(client.ns, [sys.executable, "-c", code], timeout=30)


def truth_dumps(lab: Lab, tmp: Path, pods: list[Pod], agent_ips: list[str]) -> dict[str, Any]:
    tunnel = " and ".join(f"not (ip dst host {ip} and ip proto 17)" for ip in agent_ips)
    return {p.name: capture.start_tcpdump(lab, p.ns, "eth0", tmp / f"truth-{p.name}.pcap", tunnel)
            for p in pods}


def stop_truth(lab: Lab, tmp: Path, dumps: dict[str, Any]) -> dict[str, capture.Traffic]:
    out = {}
    for name, proc in dumps.items():
        path = tmp / f"truth-{name}.pcap"
        capture.stop_tcpdump(lab, proc, path)
        assert capture.captured_all(path), "the ground truth itself lost packets"
        out[name] = capture.decode(path)
    return out


def pcap_traffic(directory: Path) -> capture.Traffic:
    traffic = capture.Traffic()
    for f in sorted(directory.glob("*.pcap")):
        traffic.add(capture.decode(f))
    return traffic


def involves(key: tuple[str, ...], ip: str) -> bool:
    return ip in key[1:5]


def test_same_node_pair_with_clusterip_is_forwarded_once_from_the_client_vantage(
    lab: Lab, tmp_path: Path
) -> None:
    node = lab.add_node()
    client, web = lab.add_pod(node, "client"), lab.add_pod(node, "web")
    lab.add_agent(node)
    lab.add_cluster_ip(node, VIP, 80, web, HTTP_PORT)
    agent = podmirror.start_agent(lab, node, tmp_path, pcap_dir=tmp_path / "pcap", config=WHOLE)
    sidecars = {p.name: podmirror.start_sidecar(lab, p, tmp_path, extra=["--tunnel-mtu", "1600"])
                for p in (client, web)}
    for p in (client, web):
        podmirror.wait_mirroring(lab, agent, p, sidecars[p.name])
    work = Workload(lab, tmp_path)
    work.start_servers(web, iperf=False)
    agent.wait_quiet()
    dumps = truth_dumps(lab, tmp_path, [client, web], [agent.ip])
    result = work.client(client, web, rounds=2, ipv6=False)
    http_via_vip(lab, client, 3)
    udp_to_closed_port(lab, client, web, 3)
    status = agent.wait_quiet()
    truth = stop_truth(lab, tmp_path, dumps)
    for p in (client, web):
        assert lab.ns.stop(sidecars[p.name], timeout=10) == 0
    assert agent.stop() == 0
    got = pcap_traffic(tmp_path / "pcap")

    assert result["errors"] == 0
    # Expected: all of the client's view, plus web's packets that do not involve the client.
    expected = capture.Traffic()
    expected.add(truth["client"])
    web_only = capture.Traffic()
    web_only.packets.update({k: n for k, n in truth["web"].packets.items() if not involves(k, client.ip)})
    web_only.tcp_bytes.update({k: n for k, n in truth["web"].tcp_bytes.items() if not involves(k, client.ip)})
    expected.add(web_only)
    assert capture.diff(expected, got) == {}
    vip_flows = [k for k in truth["client"].tcp_bytes if VIP in k]
    assert vip_flows, "no traffic through the ClusterIP in the ground truth"
    # No connection split: web's view of client flows (web's pod address and port) never appears
    # unless it is also the client's view (direct flows have the same addresses at both ends).
    seen = list(got.tcp_bytes) + list(got.packets)
    between = {k for k in seen if involves(k, client.ip) and involves(k, web.ip)}
    split = between - set(expected.tcp_bytes) - set(expected.packets)
    assert split == set()
    drops = status["drops"]
    assert truth["client"].count("icmp") > 0, "no ICMP error in the ground truth"
    assert drops["other_vantage"] > 0 and drops["duplicate"] > 0  # flows, then ICMP errors
    assert_balanced(status)
    assert status["saved_bytes"]["dedup"] > 0


def test_cross_node_pair_is_forwarded_by_exactly_one_node(lab: Lab, tmp_path: Path) -> None:
    n1, n2 = lab.add_node(), lab.add_node()
    client, web = lab.add_pod(n1, "client"), lab.add_pod(n2, "web")
    lab.add_agent(n1)
    lab.add_agent(n2)
    agents = [podmirror.start_agent(lab, n, tmp_path, pcap_dir=tmp_path / f"pcap{n.index}", config=WHOLE,
                                    extra=["--peer", f"{other.ip},{other.key}"])
              for n, other in ((n1, web), (n2, client))]
    sidecars = {p.name: podmirror.start_sidecar(lab, p, tmp_path, extra=["--tunnel-mtu", "1600"])
                for p in (client, web)}
    for agent, p in zip(agents, (client, web), strict=True):
        podmirror.wait_mirroring(lab, agent, p, sidecars[p.name])
    work = Workload(lab, tmp_path)
    work.start_servers(web, iperf=False)
    for agent in agents:
        agent.wait_quiet()
    dumps = truth_dumps(lab, tmp_path, [client, web], [a.ip for a in agents])
    result = work.client(client, web, rounds=2, ipv6=False)
    statuses = [agent.wait_quiet() for agent in agents]
    truth = stop_truth(lab, tmp_path, dumps)
    for p in (client, web):
        assert lab.ns.stop(sidecars[p.name], timeout=10) == 0
    assert all(agent.stop() == 0 for agent in agents)
    got = pcap_traffic(tmp_path / "pcap1")
    got.add(pcap_traffic(tmp_path / "pcap2"))

    assert result["errors"] == 0
    expected = truth["client"].union(truth["web"])
    assert capture.diff(expected, got) == {}
    assert statuses[1]["drops"]["not_owner"] > 0  # web's node leaves the client's flows to node 1
    assert statuses[0]["drops"]["not_owner"] == 0
    assert TUNNEL_PORT == 14789
