"""Batched transport faults in the lab (docs/transport.md): a collector with the wrong certificate,
a collector killed under load.

One node, ``client`` (monitored) sends iperf3 TCP to ``web``; the agent's only output is the batched
transport to a collector on a remote host. First the collector presents a certificate from a CA the
agent does not trust: the agent refuses it and delivers nothing; the right certificate then lets
delivery start by itself. Then the collector is killed (SIGKILL) for a while under traffic and
started again: the agent's memory stays bounded (its queue bound plus a margin), every packet is
accounted for (delivered or dropped by reason), delivery resumes by itself, and the two collector
lives wrote at least every acknowledged packet. The 30-second outage of the issue is marked slow;
the default run uses 5 seconds. Namespaces ``pmrs<random>*``.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from nodeagent.lab import podmirror
from nodeagent.lab.collector import LabCollector, start_collector
from nodeagent.lab.topology import Lab
from nodeagent.lab.workload import Workload
from tests.books import output_balances
from tests.component.transport_kit import pcapng_packets
from tests.waiting import poll

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]

QUEUE = 8 << 20
CONFIG = {"cutoff": {"enabled": False},
          "outputs": {"transport": {"queue_bytes": QUEUE, "backoff_initial": 0.1, "backoff_max": 1.0}}}


def issue(ca: trustme.CA, identity: str, tmp: Path, name: str) -> tuple[str, str]:
    cert = ca.issue_cert(identity)
    pair = (str(tmp / f"{name}.pem"), str(tmp / f"{name}.key"))
    cert.cert_chain_pems[0].write_to_path(pair[0])
    cert.private_key_pem.write_to_path(pair[1])
    return pair


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def link(agent: podmirror.Agent) -> dict[str, Any]:
    (state,) = agent.status()["outputs"]["transport"]["collectors"].values()
    return state  # type: ignore[no-any-return]


def scenario(lab: Lab, tmp: Path, outage: float) -> dict[str, Any]:
    node = lab.add_node()
    web, client = lab.add_pod(node, "web"), lab.add_pod(node, "client")
    lab.add_agent(node)
    coll = lab.add_host("coll")
    good, bad = trustme.CA(), trustme.CA()
    good.cert_pem.write_to_path(str(tmp / "ca.pem"))
    bad_pair, good_pair = issue(bad, coll.ip, tmp, "untrusted"), issue(good, coll.ip, tmp, "trusted")
    agent_pair = issue(good, "agent.lab", tmp, "agent")   # the agent's client certificate (mutual TLS)
    ca = str(tmp / "ca.pem")
    out: dict[str, Any] = {}

    wrong: LabCollector = start_collector(lab, coll, tmp, cert=bad_pair[0], key=bad_pair[1], client_ca=ca,
                                          pcap_dir=tmp / "wrong")
    agent = podmirror.start_agent(lab, node, tmp, pods=[client], config=CONFIG,
                                  extra=["--collector", coll.ip, "--collector-ca", ca,
                                         "--collector-cert", agent_pair[0], "--collector-key", agent_pair[1]])
    sidecar = podmirror.start_sidecar(lab, client, tmp, extra=["--tunnel-mtu", "1600"])
    podmirror.wait_mirroring(lab, agent, client, sidecar)
    poll(lambda: link(agent)["reconnects"] >= 2, 20, "refused connections")
    out["refused"] = link(agent)
    out["wrong_packets"] = wrong.status()["packets"]
    wrong.stop()

    pcap = tmp / "pcapng"
    collector = start_collector(lab, coll, tmp, cert=good_pair[0], key=good_pair[1], client_ca=ca,
                                pcap_dir=pcap)
    poll(lambda: link(agent)["state"] == "up" and link(agent)["delivered"] > 0, 20, "delivery to start")

    work = Workload(lab, tmp)
    work.start_servers(web)
    bulk = threading.Thread(target=work.iperf, args=(client, web),
                            kwargs={"seconds": outage + 6, "bitrate": "40M"})
    baseline = rss_kib(agent.proc.pid)
    bulk.start()
    time.sleep(2)
    lab.ns.stop(collector.proc, sig=signal.SIGKILL)
    poll(lambda: link(agent)["state"] == "down", 20, "the agent to notice")
    peak, deadline = baseline, time.monotonic() + outage
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(agent.proc.pid))
        time.sleep(0.25)
    out["during"] = link(agent)
    delivered_before = out["during"]["delivered"]
    collector = start_collector(lab, coll, tmp, cert=good_pair[0], key=good_pair[1], client_ca=ca,
                                pcap_dir=pcap)
    poll(lambda: link(agent)["delivered"] > delivered_before, 20, "delivery to resume by itself")
    bulk.join(outage + 60)
    poll(lambda: link(agent)["queued_packets"] == 0 and link(agent)["open_packets"] == 0, 30, "backlog")
    out["final"] = link(agent)
    out["peak_growth_kib"], out["baseline_kib"] = peak - baseline, baseline
    assert lab.ns.stop(sidecar, timeout=10) == 0
    assert agent.stop() == 0
    assert collector.stop() == 0
    out["written"] = sum(len(pcapng_packets(p)) for p in pcap.glob("*.pcapng"))
    return out


def run_outage(lab: Lab, tmp: Path, outage: float) -> None:
    r = scenario(lab, tmp, outage)
    print(f"outage {outage} s: {r['final']} peak RSS growth {r['peak_growth_kib']} KiB "
          f"(baseline {r['baseline_kib']} KiB), written {r['written']}")
    assert "CERTIFICATE_VERIFY_FAILED" in r["refused"]["last_error"] and r["refused"]["delivered"] == 0
    assert r["wrong_packets"] == 0
    f = r["final"]
    assert f["state"] == "up" and f["reconnects"] >= 1
    assert output_balances(f) and f["queued_packets"] == f["open_packets"] == 0  # every packet accounted
    assert r["during"]["dropped"]["queue_full"] > 0                         # the stated policy acted
    assert f["dropped"]["shutdown"] == 0
    assert r["peak_growth_kib"] * 1024 < QUEUE + (48 << 20)                 # bounded memory
    assert r["written"] >= f["delivered"]          # both lives together wrote every acknowledged packet


def test_wrong_certificate_then_collector_killed_for_5_seconds(lab: Lab, tmp_path: Path) -> None:
    run_outage(lab, tmp_path, 5.0)


@pytest.mark.slow
def test_wrong_certificate_then_collector_killed_for_30_seconds(lab: Lab, tmp_path: Path) -> None:
    run_outage(lab, tmp_path, 30.0)
