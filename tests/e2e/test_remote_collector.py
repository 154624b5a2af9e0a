"""The batched transport (docs/transport.md) in the lab: to collectors on remote hosts, checked against pods.

``client`` (monitored) talks to ``web`` (not monitored, so nothing depends on dedup) and ``egress``
(monitored) to ``ext`` outside the node. The agent's only output is the batched TLS transport
(certificates made in the test with trustme). Ground truth is tcpdump on each monitored pod's eth0.

- one collector writing pcapng and feeding a veth a sensor could sniff: both hold exactly the
  ground truth (tshark, ``capture``'s model), the pcapng carries pod identity;
- two collectors: together they hold the ground truth, and every flow is entirely at one of them.

Namespaces ``pmrs<random>*``, removed in ``finally``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from nodeagent.lab import capture, podmirror
from nodeagent.lab.collector import LabCollector, start_collector
from nodeagent.lab.topology import Host, Lab, Pod
from nodeagent.lab.workload import Workload

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]

WHOLE = {"cutoff": {"enabled": False}}
VETH = "pmrsv"


def certs(tmp: Path, hosts: list[Host]) -> tuple[str, dict[str, tuple[str, str]]]:
    """One CA; a serving certificate per collector host and the agent's client certificate
    (``out["agent"]``): mutual TLS, as ``nodeagent collect`` requires by default."""
    ca = trustme.CA()
    ca_file = str(tmp / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    out = {}
    for name, identity in [(h.name, h.ip) for h in hosts] + [("agent", "agent.lab")]:
        cert = ca.issue_cert(identity)
        pair = (str(tmp / f"{name}.pem"), str(tmp / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(pair[0])
        cert.private_key_pem.write_to_path(pair[1])
        out[name] = pair
    return ca_file, out


def wait_delivered(agent: podmirror.Agent, settle: float = 0.5, timeout: float = 30.0) -> dict[str, Any]:
    """Poll until the agent stops receiving and the transport holds nothing unacknowledged."""
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        st = agent.status()
        tr = st["outputs"]["transport"]
        busy = tr["queued_packets"] or tr["open_packets"]
        if st["received"] != last or busy:
            last, since = st["received"], time.monotonic()
        elif time.monotonic() - since >= settle:
            return st
        time.sleep(0.1)
    raise AssertionError("the agent kept receiving or could not deliver")


def run(lab: Lab, tmp: Path, n_collectors: int, veth: bool) -> dict[str, Any]:
    node = lab.add_node()
    web, client, egress = (lab.add_pod(node, n) for n in ("web", "client", "egress"))
    lab.add_agent(node)
    ext = lab.add_host("ext")
    hosts = [lab.add_host(f"coll{i}") for i in range(n_collectors)]
    ca, pairs = certs(tmp, hosts)
    collectors: list[LabCollector] = []
    for h in hosts:
        extra = ["--interface", VETH] if veth else []
        collectors.append(start_collector(lab, h, tmp, cert=pairs[h.name][0], key=pairs[h.name][1],
                                          client_ca=ca, pcap_dir=tmp / f"pcapng-{h.name}", extra=extra))
    sniff = (capture.start_tcpdump(lab, hosts[0].ns, f"{VETH[:10]}-s", tmp / "veth.pcap") if veth else None)
    monitored: list[Pod] = [client, egress]
    extra = [arg for h in hosts for arg in ("--collector", h.ip)] + [
        "--collector-ca", ca, "--collector-cert", pairs["agent"][0], "--collector-key", pairs["agent"][1]]
    agent = podmirror.start_agent(lab, node, tmp, pods=monitored, config=WHOLE, extra=extra)
    sidecars = {p.key: podmirror.start_sidecar(lab, p, tmp, extra=["--tunnel-mtu", "1600"])
                for p in monitored}
    for p in monitored:
        podmirror.wait_mirroring(lab, agent, p, sidecars[p.key])
    work = Workload(lab, tmp)
    work.start_servers(web, iperf=False)
    work.start_servers(ext, iperf=False)
    wait_delivered(agent)
    tunnel = f"not (ip dst host {agent.ip} and ip proto 17)"
    dumps = {p.key: capture.start_tcpdump(lab, p.ns, "eth0", tmp / f"truth-{p.name}.pcap", tunnel)
             for p in monitored}
    # The window every comparison uses, as in test_mirror: from after 0.5 s without a tunnel datagram
    # to the same at the end (a pod's own IPv6 router solicitation, mirrored before the truth began,
    # once made a collector hold two copies of what the truth held once).
    agent.wait_quiet()
    start = time.time()
    # Collector-side counts before the measured traffic (probes and handshakes came earlier).
    before = [c.status()["packets"] for c in collectors]
    traffic = work.client(client, web, rounds=2)
    for k, v in work.client(egress, ext, rounds=2).items():
        traffic[k] += v
    status = wait_delivered(agent)
    agent.wait_quiet()
    window = capture.window(start, time.time())
    truth = capture.Traffic()
    for p in monitored:
        path = tmp / f"truth-{p.name}.pcap"
        capture.stop_tcpdump(lab, dumps[p.key], path)
        assert capture.captured_all(path), "the ground truth itself lost packets"
        truth.add(capture.decode(path, window))
    coll_status = [c.status() for c in collectors]
    for p in monitored:
        assert lab.ns.stop(sidecars[p.key], timeout=10) == 0
    assert agent.stop() == 0
    if sniff is not None:
        capture.stop_tcpdump(lab, sniff, tmp / "veth.pcap")
    for c in collectors:
        assert c.stop() == 0
    return {"truth": truth, "traffic": traffic, "status": status, "collectors": coll_status,
            "before": before, "hosts": hosts, "monitored": monitored, "window": window}


def decode_dir(directory: Path, window: str) -> capture.Traffic:
    t = capture.Traffic()
    for f in sorted(directory.glob("*.pcapng")):
        t.add(capture.decode(f, window))
    return t


def test_collector_pcapng_and_sensor_veth_hold_exactly_the_pods_traffic(lab: Lab, tmp_path: Path) -> None:
    r = run(lab, tmp_path, 1, veth=True)
    assert r["traffic"]["errors"] == 0
    assert r["truth"].tcp_bytes and r["truth"].packets, "the ground truth is empty"
    tr = r["status"]["outputs"]["transport"]
    assert tr["offered"] == tr["delivered"] and sum(tr["dropped"].values()) == 0
    got = decode_dir(tmp_path / "pcapng-coll0", r["window"])
    assert capture.diff(r["truth"], got) == {}, "pcapng differs from the pods' ground truth"
    sniffed = capture.decode(tmp_path / "veth.pcap", r["window"])
    assert capture.diff(r["truth"], sniffed) == {}, "the sensor's veth differs from the ground truth"
    (path,) = sorted((tmp_path / "pcapng-coll0").glob("*.pcapng"))
    names = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_name"],
                           capture_output=True, text=True, check=True, timeout=120).stdout.split()
    assert set(names) == {p.key for p in r["monitored"]}
    # An ACK follows the write: the collector's count, read later, covers what the agent saw acked.
    assert r["collectors"][0]["packets"] >= tr["delivered"]
    assert r["collectors"][0]["delay_seconds"]["p99"] < 1.0


def test_two_collectors_hold_every_flow_entirely_at_one_of_them(lab: Lab, tmp_path: Path) -> None:
    r = run(lab, tmp_path, 2, veth=False)
    assert r["traffic"]["errors"] == 0 and r["truth"].tcp_bytes
    parts = [decode_dir(tmp_path / f"pcapng-{h.name}", r["window"]) for h in r["hosts"]]
    union = capture.Traffic()
    for part in parts:
        union.add(part)
    assert capture.diff(r["truth"], union) == {}

    def flows(t: capture.Traffic) -> set[tuple[str, ...]]:
        keys = list(t.tcp_bytes) + [k for k in t.packets if k[0] in ("tcp", "udp")]
        out = set()
        for k in keys:
            a, b = (k[1], k[2]), (k[3], k[4])
            out.add((k[0], *min(a, b), *max(a, b)))
        return out

    a, b = flows(parts[0]), flows(parts[1])
    assert a and b, "both collectors should get some flows"
    assert a & b == set(), f"flows split across collectors: {sorted(a & b)[:5]}"
