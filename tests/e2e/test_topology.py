"""The lab's topology on its own (no podmirror): routing, workloads, ClusterIP DNAT, two nodes, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.lab import netns
from nodeagent.lab.podmirror import ENV, SOURCE_ROOT
from nodeagent.lab.topology import Lab
from nodeagent.lab.traffic import HTTP_PORT, ping
from nodeagent.lab.workload import Workload

pytestmark = pytest.mark.needs_root


def test_pods_reach_each_other_and_remote_hosts_over_ipv4_and_ipv6(lab: Lab, tmp_path: Path) -> None:
    node = lab.add_node()
    client, web = lab.add_pod(node, "client"), lab.add_pod(node, "web")
    lab.add_agent(node)
    ext = lab.add_host("ext")
    work = Workload(lab, tmp_path)
    work.start_servers(web, iperf=False)
    work.start_servers(ext, iperf=False)

    inside = work.client(client, web, rounds=1)
    outside = work.client(client, ext, rounds=1)

    for result in (inside, outside):
        assert result["errors"] == 0
        assert result["http_bytes"] == 2 * 20_000 and result["tls_bytes"] == 2 * 20_000
        assert result["dns_ok"] == 2 and result["ping_replies"] == 4
    assert lab.counters(node.ns, "uplink")["tx_packets"] > 0


def test_node_mtu_applies_to_node_side_veths_only(lab: Lab) -> None:
    node = lab.add_node()
    pod = lab.add_pod(node, "p")
    agent = lab.add_agent(node)
    assert "mtu 1600" in lab.ns.ip(node.ns, "link", "show", pod.host_veth)
    assert "mtu 1500" in lab.ns.ip(pod.ns, "link", "show", "eth0")
    assert "mtu 1600" in lab.ns.ip(agent.ns, "link", "show", "eth0")


def test_cluster_ip_is_dnatted_in_the_node_namespace(lab: Lab, tmp_path: Path) -> None:
    node = lab.add_node()
    client, web = lab.add_pod(node, "client"), lab.add_pod(node, "web")
    Workload(lab, tmp_path).start_servers(web, iperf=False)
    lab.add_cluster_ip(node, "10.96.0.10", 80, web, HTTP_PORT)

    sock = lab.ns.connect(client.ns, "10.96.0.10", 80)
    with sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(12) == b"HTTP/1.0 200"


def test_two_nodes_route_pods_to_each_other(lab: Lab) -> None:
    a = lab.add_pod(lab.add_node(), "a")
    b = lab.add_pod(lab.add_node(), "b")
    with netns.inside(a.ns):
        assert ping(b.ip, 1, 77) == 1
        assert ping(b.ip6, 1, 78) == 1


def test_close_removes_every_namespace_and_process(lab: Lab, tmp_path: Path) -> None:
    node = lab.add_node()
    web = lab.add_pod(node, "web")
    Workload(lab, tmp_path).start_servers(web)
    names = list(lab.ns.names)
    procs = list(lab.ns.procs)
    assert len(netns.leftovers(lab.tag)) == len(names) == 3
    lab.close()   # the fixture closes it again: close is idempotent
    assert netns.leftovers(lab.tag) == []
    assert all(p.poll() is not None for p in procs)


def test_reap_stale_removes_a_killed_labs_namespaces_and_spares_live_ones(lab: Lab) -> None:
    lab.add_node()
    code = ("import os; from nodeagent.lab.topology import Lab; lab = Lab('pme2e'); lab.add_node(); "
            "print(lab.tag, flush=True); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=SOURCE_ROOT, env={**os.environ, **ENV})
    dead = proc.stdout.strip()
    assert proc.returncode == -9 and len(netns.leftovers(dead)) == 2

    removed = netns.reap_stale("pme2e")

    # Labs killed earlier on this machine (an interrupted run) are stale too and go with it.
    assert {f"{dead}{n}" for n in ("fabric", "node1")} <= set(removed)
    assert netns.leftovers(dead) == []
    assert len(netns.leftovers(lab.tag)) == 2, "a live lab must be left alone"
