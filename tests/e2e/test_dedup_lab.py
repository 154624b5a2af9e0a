"""Across nodes, and against a declared pod without a sidecar: two lab tests beside the matrix of
``test_fidelity`` (one node), with the agent's defaults (cutoff on: TLS is compared within its budget).

Across nodes: ``client`` on node 1 and ``web`` on node 2, each node with its agent, each agent told
about the other pod with ``--peer IP+IP6,NS/NAME``. The two agents' pcaps together must hold every
packet of the ground truth exactly once, over both families (dual-stack pods), and the node of the
preferred end (the client's) must own each connection.

A declared sender without a sidecar: ``intruder`` is declared on the node (``--sender``) but runs no
sidecar, and talks to the monitored ``web``; by the client rule the intruder's vantage would own
those connections, but its tunnel never delivers, so ``web``'s copies must all reach the sensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodeagent.lab import capture, podmirror
from nodeagent.lab.topology import TUNNEL_PORT, Lab, Pod
from nodeagent.lab.traffic import TLS_PORT
from nodeagent.lab.workload import Workload
from tests.books import assert_balanced

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]

BUDGET = 16384


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


def is_tls(key: tuple[str, ...]) -> bool:
    return key[0] == "tcp" and str(TLS_PORT) in (key[2], key[4])


def same_with_cutoff(expected: capture.Traffic, got: capture.Traffic) -> None:
    """Exactly once, with encrypted flows (cut past the default budget) compared within bounds."""
    plain, plain_got = capture.Traffic(), capture.Traffic()
    for src, dst in ((expected, plain), (got, plain_got)):
        dst.tcp_bytes.update({k: n for k, n in src.tcp_bytes.items() if not is_tls(k)})
        dst.packets.update({k: n for k, n in src.packets.items() if not is_tls(k)})
    assert capture.diff(plain, plain_got) == {}
    tls = {k: n for k, n in expected.tcp_bytes.items() if is_tls(k)}
    assert tls, "no TLS in the ground truth"
    for k, n in tls.items():
        assert min(n, BUDGET) <= got.tcp_bytes.get(k, 0) <= n, (k, n, got.tcp_bytes.get(k, 0))


def test_cross_node_pair_is_forwarded_by_exactly_one_node(lab: Lab, tmp_path: Path) -> None:
    n1, n2 = lab.add_node(), lab.add_node()
    client, web = lab.add_pod(n1, "client"), lab.add_pod(n2, "web")
    for pod in (client, web):
        lab.ns.sysctl(pod.ns, {"net.ipv6.conf.eth0.router_solicitations": "0"})  # see test_fidelity
    lab.add_agent(n1)
    lab.add_agent(n2)
    agents = [podmirror.start_agent(lab, n, tmp_path, pcap_dir=tmp_path / f"pcap{n.index}", peers=[other])
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
    result = work.client(client, web, rounds=2)
    statuses = [agent.wait_quiet() for agent in agents]
    truth = stop_truth(lab, tmp_path, dumps)
    for p in (client, web):
        assert lab.ns.stop(sidecars[p.name], timeout=10) == 0
    assert all(agent.stop() == 0 for agent in agents)
    got = pcap_traffic(tmp_path / "pcap1")
    got.add(pcap_traffic(tmp_path / "pcap2"))

    assert result["errors"] == 0
    expected = truth["client"].union(truth["web"])
    same_with_cutoff(expected, got)
    assert any(":" in k[1] for k in expected.tcp_bytes), "no IPv6 TCP between the nodes"
    assert statuses[1]["drops"]["not_owner"] > 0  # web's node leaves the client's connections to node 1
    assert statuses[0]["drops"]["not_owner"] == 0
    for st in statuses:
        assert_balanced(st)
    assert TUNNEL_PORT == 14789


def test_a_declared_pod_without_a_sidecar_cannot_blind_the_sensor_to_its_peer(lab: Lab,
                                                                              tmp_path: Path) -> None:
    node = lab.add_node()
    intruder, web = lab.add_pod(node, "intruder"), lab.add_pod(node, "web")
    lab.ns.sysctl(web.ns, {"net.ipv6.conf.eth0.router_solicitations": "0"})
    lab.add_agent(node)
    agent = podmirror.start_agent(lab, node, tmp_path, pcap_dir=tmp_path / "pcap", pods=[intruder, web])
    sidecar = podmirror.start_sidecar(lab, web, tmp_path, extra=["--tunnel-mtu", "1600"])
    podmirror.wait_mirroring(lab, agent, web, sidecar)
    work = Workload(lab, tmp_path)
    work.start_servers(web, iperf=False)
    agent.wait_quiet()
    dumps = truth_dumps(lab, tmp_path, [web], [agent.ip])
    result = work.client(intruder, web, rounds=2)
    status = agent.wait_quiet()
    truth = stop_truth(lab, tmp_path, dumps)
    assert lab.ns.stop(sidecar, timeout=10) == 0
    assert agent.stop() == 0
    got = pcap_traffic(tmp_path / "pcap")

    assert result["errors"] == 0
    same_with_cutoff(truth["web"], got)
    assert status["drops"]["other_vantage"] == 0 and status["held"] == 0
    assert status["pods"]["default/intruder"]["received"] == 0
    assert_balanced(status)
