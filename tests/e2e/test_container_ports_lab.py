"""Container selection in the lab: a container selection keeps only the selected containers' ports.

One node, an unmonitored ``client`` and a monitored ``web`` whose selected container declares only
the HTTP port (static sender with a 4th field, as ``podmirror.io/ports`` gives the agent in a
cluster). The client runs HTTP, TLS, DNS and ping against ``web`` (IPv4). Compared with tcpdump
ground truth on web's eth0, the agent's pcap holds every HTTP byte and nothing of TLS, DNS or ping.

- pushed (the sidecar polls ``/v1/pushdown``): TLS and DNS never even cross the tunnel (captured at
  the agent's eth0, unwrapped); the pushed program keeps every ICMP, so the agent's
  ``other_container`` count grows by exactly the ping packets of the ground truth.
- not pushed: the agent alone drops the other containers' traffic (``other_container`` > 0).

Kernel mode only (the push-down's two installers are covered by ``test_pushdown_lab``). Namespaces
``pmpt-*``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nodeagent.lab import capture, podmirror
from nodeagent.lab.topology import TUNNEL_PORT, Lab, Pod
from nodeagent.lab.traffic import DNS_PORT, HTTP_PORT, TLS_PORT
from nodeagent.lab.workload import Workload

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]

CONFIG = {"cutoff": {"enabled": False}, "dedup": {"enabled": False}}
OTHER = {str(TLS_PORT), str(DNS_PORT)}


def wait_installed(log: Path) -> None:
    podmirror.wait_log(log, "installed", what="the sidecar's pushed program")


def wait_http_mirrored(lab: Lab, agent: podmirror.Agent, client: Pod, web: Pod,
                       timeout: float = 20.0) -> None:
    """Connect to web's selected port until the agent counts a forwarded packet of web."""
    deadline = time.monotonic() + timeout
    while not agent.pod(web).get("forwarded", 0):
        if time.monotonic() > deadline:
            raise AssertionError(f"no HTTP packet of {web.key} was forwarded within {timeout}s")
        lab.ns.connect(client.ns, web.ip, HTTP_PORT).close()
        time.sleep(0.2)


def settled(agent: podmirror.Agent, pod: Pod, quiet: float = 0.5, timeout: float = 10.0) -> dict:  # type: ignore[type-arg]
    """The pod's counters once they stop changing: the tunnel may still carry the last packets."""
    deadline = time.monotonic() + timeout
    last, since = agent.pod(pod), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        now = agent.pod(pod)
        if now["received"] != last["received"]:
            last, since = now, time.monotonic()
    return last


def other_ports(traffic: capture.Traffic) -> list[tuple[str, ...]]:
    keys = [*traffic.packets, *traffic.tcp_bytes]
    return [k for k in keys if k[0] in ("tcp", "udp") and OTHER & {k[2], k[4]}]


@pytest.mark.parametrize("pushed", [True, False], ids=["pushed", "agent-only"])
def test_only_the_selected_containers_port_reaches_the_outputs(
    lab: Lab, tmp_path: Path, pushed: bool
) -> None:
    node = lab.add_node()
    client, web = lab.add_pod(node, "client"), lab.add_pod(node, "web")
    lab.add_agent(node)
    agent = podmirror.start_agent(lab, node, tmp_path, pods=[], config=CONFIG, pcap_dir=tmp_path / "pcap",
                                  extra=["--sender", f"{web.ip},{web.vni},{web.key},{HTTP_PORT}"])
    assert agent.node.agent is not None
    wire = capture.start_tcpdump(lab, agent.node.agent.ns, "eth0", tmp_path / "wire.pcap",
                                 f"udp dst port {TUNNEL_PORT}")
    sidecar = podmirror.start_sidecar(lab, web, tmp_path, mode="kernel", rules=pushed,
                                      extra=["--tunnel-mtu", "1600"])
    work = Workload(lab, tmp_path)
    work.start_servers(web, iperf=False)
    if pushed:
        wait_installed(tmp_path / f"sidecar-{web.name}.log")
    wait_http_mirrored(lab, agent, client, web)
    truth_path = tmp_path / "truth.pcap"
    truth_dump = capture.start_tcpdump(lab, web.ns, "eth0", truth_path,
                                       f"not (ip dst host {agent.ip} and ip proto 17) and not arp")
    before = settled(agent, web)
    start = time.time()  # after a quiet 0.5 s: no tunnel packet is on its way to the counters
    result = work.client(client, web, rounds=1, ping=2, ipv6=False)
    capture.stop_tcpdump(lab, truth_dump, truth_path)
    after = settled(agent, web)
    end = time.time()
    capture.stop_tcpdump(lab, wire, tmp_path / "wire.pcap")
    assert capture.captured_all(tmp_path / "wire.pcap"), "the tunnel's capture itself lost packets"
    assert lab.ns.stop(sidecar, timeout=10) == 0
    assert agent.stop() == 0

    assert result["errors"] == 0
    truth = capture.decode(truth_path)
    forwarded = capture.Traffic()
    for f in sorted((tmp_path / "pcap").glob("*.pcap")):
        forwarded.add(capture.decode(f))
    http = {k: n for k, n in truth.tcp_bytes.items() if str(HTTP_PORT) in (k[2], k[4])}
    assert http and other_ports(truth), "the ground truth lacks HTTP or the other ports"
    for key, nbytes in http.items():
        assert forwarded.tcp_bytes[key] == nbytes, key
    assert other_ports(forwarded) == []
    assert forwarded.count("icmp") == 0 and forwarded.count("arp") == 0
    dropped = after["drops"]["other_container"] - before["drops"]["other_container"]
    if pushed:
        capture.strip_vxlan(tmp_path / "wire.pcap", tmp_path / "wire-inner.pcap")
        assert other_ports(capture.decode(tmp_path / "wire-inner.pcap")) == []
        # The pushed program mirrors every ICMP and ICMPv6, and the agent drops all of it, since no
        # container owns it: the ping (2 requests, 2 replies) and whatever the pod's kernel sent on
        # its own while the counters ran (IPv6 router solicitations come every few seconds after a
        # pod starts; one fell in this window on a busy machine). So the drops are the ICMP the
        # tunnel carried between the two reads of the counters, and the ping is among it.
        tunnel_icmp = capture.decode(
            tmp_path / "wire-inner.pcap", f"(icmp or icmpv6) and {capture.window(start, end)}").frames
        assert truth.count("icmp") == 4
        assert dropped == tunnel_icmp >= 4, (dropped, tunnel_icmp)
    else:
        assert dropped > truth.count("icmp")
