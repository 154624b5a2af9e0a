"""Push-down in the lab: filters pushed to the sidecar keep filtered packets off the tunnel entirely.

One node, a monitored ``client`` and an unmonitored ``web``; the agent excludes DNS (``ports: [53]``)
and the sidecar polls ``/v1/pushdown`` (``--rules-url``). Once the sidecar logs that the program is
installed, the workload runs. The tunnel, captured at the agent's eth0 and unwrapped, must carry no
DNS although the pod's ground truth has it, and must carry everything else; the agent counts no
filtered drop (nothing filtered ever reached it) and shows the sidecar's mode. Both sidecar modes:
the tc classifier (kernel) and the socket filter (sniff). Namespaces ``pmpl-*``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.lab import capture, podmirror
from nodeagent.lab.topology import TUNNEL_PORT, Lab
from nodeagent.lab.workload import Workload

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]

CONFIG = {"cutoff": {"enabled": False}, "filters": {"rules": [{"name": "no-dns", "action": "exclude",
                                                               "ports": [53]}]}}


def wait_installed(log: Path) -> None:
    text = podmirror.wait_log(log, "push-down version", what="the sidecar's pushed program")
    assert "installed" in text


def is_dns(key: tuple[str, ...]) -> bool:
    return key[0] == "udp" and "53" in (key[2], key[4])


@pytest.mark.parametrize("mode", ["kernel", "sniff"])
def test_pushed_filter_keeps_dns_off_the_tunnel(lab: Lab, tmp_path: Path, mode: str) -> None:
    node = lab.add_node()
    client, web = lab.add_pod(node, "client"), lab.add_pod(node, "web")
    lab.add_agent(node)
    agent = podmirror.start_agent(lab, node, tmp_path, pods=[client], config=CONFIG,
                                  pcap_dir=tmp_path / "pcap")
    assert agent.node.agent is not None
    wire = capture.start_tcpdump(lab, agent.node.agent.ns, "eth0", tmp_path / "wire.pcap",
                                 f"udp dst port {TUNNEL_PORT}")
    sidecar = podmirror.start_sidecar(lab, client, tmp_path, mode=mode, rules=True,
                                      extra=["--tunnel-mtu", "1600"])
    podmirror.wait_mirroring(lab, agent, client, sidecar)
    wait_installed(tmp_path / f"sidecar-{client.name}.log")
    work = Workload(lab, tmp_path)
    work.start_servers(web, iperf=False)
    truth_path = tmp_path / "truth.pcap"
    truth_dump = capture.start_tcpdump(lab, client.ns, "eth0", truth_path,
                                       f"not (ip dst host {agent.ip} and ip proto 17)")
    before = agent.status()
    result = work.client(client, web, rounds=2)
    capture.stop_tcpdump(lab, truth_dump, truth_path)
    after = agent.status()
    capture.stop_tcpdump(lab, wire, tmp_path / "wire.pcap")
    assert lab.ns.stop(sidecar, timeout=10) == 0
    assert agent.stop() == 0

    assert result["errors"] == 0 and result["dns_ok"] == 4
    capture.strip_vxlan(tmp_path / "wire.pcap", tmp_path / "wire-inner.pcap")
    tunnel, truth = capture.decode(tmp_path / "wire-inner.pcap"), capture.decode(truth_path)
    forwarded = capture.Traffic()
    for f in sorted((tmp_path / "pcap").glob("*.pcap")):
        forwarded.add(capture.decode(f))
    assert [k for k in truth.packets if is_dns(k)], "no DNS in the ground truth"
    assert [k for k in tunnel.packets if is_dns(k)] == []
    # Everything else still arrives (compared in the agent's pcap: in sniff mode a GSO super-packet
    # crosses as one IP-fragmented datagram, which the wire capture cannot unwrap).
    for key, nbytes in truth.tcp_bytes.items():
        assert forwarded.tcp_bytes[key] == nbytes
    assert after["drops"]["filtered"] == before["drops"]["filtered"]
    assert after["pods"][client.key]["mode"] == mode
