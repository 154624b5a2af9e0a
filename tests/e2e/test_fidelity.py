"""Fidelity end to end: every pod-pair packet exactly once, each connection from the one vantage the
flag names with one address pair, a forced retransmission delivered, and the books, in every sidecar
mode, family and vantage, directly and through an nftables DNAT Service, with the agent's defaults.

One lab node, four monitored pods: clients ``ka`` (kernel-mode sidecar) and ``sa`` (sniff), servers
``kb`` (kernel) and ``sb`` (sniff), so kernel-kernel ``ka->kb``, sniff-sniff ``sa->sb`` and mixed
``ka->sb``, ``sa->kb``. Every pod is dual-stack and declared with both addresses (``--sender
IP+IP6,VNI,NS/NAME``); each server has a ClusterIP of each family (DNAT in the node namespace, as
kube-proxy's nftables mode). In each server pod nftables drops the first request segment of every
HTTP connection once, after the sidecar and tcpdump saw it: the client retransmits it.

Two phases on the same lab, ``--dedup-vantage client`` then ``server`` (a fresh agent and sidecars),
each with the agent's defaults: cutoff and dedup on (the workload's TLS checks the cutoff's bounds
instead of exact bytes). Per pair: HTTP, DNS, TLS and ping over both families directly, HTTP and DNS
through both ClusterIPs, a datagram to a closed port (an ICMP error: content dedup). Ground truth:
tcpdump in every pod. Checked against the VXLAN sensor (each inner frame with its VNI), the pcap
files and ``/status``.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

from nodeagent.lab import capture, podmirror
from nodeagent.lab.topology import Lab, Pod
from nodeagent.lab.traffic import HTTP_PORT, TLS_PORT
from nodeagent.lab.workload import Workload
from tests.e2e.conftest import open_lab

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]

MODES = {"ka": "kernel", "kb": "kernel", "sa": "sniff", "sb": "sniff"}
VIPS = {"kb": ("10.96.0.11", "fd00:96::11"), "sb": ("10.96.0.12", "fd00:96::12")}
BUDGET = 16384
"""The cutoff's default budget per direction (TLS past it is cut to headers)."""


@dataclasses.dataclass
class Phase:
    vantage: str
    clients: list[Pod]
    servers: list[Pod]
    truth: dict[str, capture.Traffic]
    truth_segments: dict[str, collections.Counter[tuple[Any, ...]]]
    sensor: capture.Traffic
    inner: list[capture.Inner]
    pcap: capture.Traffic
    pcap_records: int
    status: dict[str, Any]
    books: dict[str, tuple[int, int]]
    """Per pod: (datagrams its sidecar sent, datagrams the agent counted received), read together."""
    work_errors: int
    retransmitted: dict[str, int]
    agent_exit: int

    @property
    def preferred(self) -> list[Pod]:
        return self.clients if self.vantage == "client" else self.servers

    def vni_of(self, address: str) -> int | None:
        for pod in self.clients + self.servers:
            if address in (pod.ip, pod.ip6):
                return pod.vni
        return None


def vip_traffic(lab: Lab, client: Pod, server: Pod) -> None:
    """HTTP and DNS through the server's ClusterIPs (both families), as a pod reaches a Service."""
    v4, v6 = VIPS[server.name]
    lab.ns.exec(client.ns, [sys.executable, "-m", "nodeagent.lab.traffic", "client", "--target", v4,
                            "--target", v6, "--http", "80", "--dns", "53", "--ping", "0"], timeout=60)


def closed_port(lab: Lab, client: Pod, server: Pod) -> None:
    code = ("import socket\n"
            f"for family, host in ((socket.AF_INET, '{server.ip}'), (socket.AF_INET6, '{server.ip6}')):\n"
            "    with socket.socket(family, socket.SOCK_DGRAM) as s:\n"
            "        s.sendto(b'nobody listens', (host, 9))\n")
    lab.ns.exec(client.ns, [sys.executable, "-c", code], timeout=30)


def segments(path: Path) -> collections.Counter[tuple[Any, ...]]:
    """TCP segments with payload in an Ethernet pcap, by (src, sport, dst, dport, seq, length)."""
    out: collections.Counter[tuple[Any, ...]] = collections.Counter()
    for _, frame in capture.read_pcap(path)[1]:
        p = capture._inner(0, frame)
        if p.proto == "tcp" and p.length > 0:
            out[(p.src, p.sport, p.dst, p.dport, p.seq, p.length)] += 1
    return out


def settled(lab: Lab, agent: podmirror.Agent, pod: Pod) -> tuple[int, int]:
    """A kernel-mode pod's (tunnel datagrams sent, agent's received) at one quiet moment: the pod's
    background IPv6 neighbour discovery may add a datagram between two reads, so read until stable."""
    for _ in range(20):
        before = lab.tunnel_tx_packets(pod)
        received = agent.wait_quiet(settle=0.3)["pods"][pod.key]["received"]
        if lab.tunnel_tx_packets(pod) == before and before is not None:
            return before, received
    raise AssertionError(f"{pod.key}: its tunnel never settled")


def run_phase(lab: Lab, pods: dict[str, Pod], sensor: Any, work: Workload, tmp: Path, vantage: str) -> Phase:
    node = pods["ka"].node
    out = tmp / vantage
    out.mkdir()
    clients, servers = [pods["ka"], pods["sa"]], [pods["kb"], pods["sb"]]
    everyone = clients + servers
    sensor_dump = capture.start_tcpdump(lab, sensor.ns, "eth0", out / "sensor.pcap", "udp port 4789")
    agent = podmirror.start_agent(lab, node, out, sensors=[sensor], pcap_dir=out / "pcap", pods=everyone,
                                  extra=["--dedup-vantage", vantage], name=f"-{vantage}")
    mtu = ["--tunnel-mtu", "1600"]
    sidecars = {p.key: podmirror.start_sidecar(lab, p, out, mode=MODES[p.name], extra=mtu) for p in everyone}
    for p in everyone:
        podmirror.wait_mirroring(lab, agent, p, sidecars[p.key])
    agent.wait_quiet()
    tunnel = f"not (ip dst host {agent.ip} and ip proto 17)"
    dumps = {p.key: capture.start_tcpdump(lab, p.ns, "eth0", out / f"truth-{p.name}.pcap", tunnel)
             for p in everyone}
    dropped_before = {s.key: lab.dropped_once(s) for s in servers}
    errors = 0
    for client in clients:
        for server in servers:
            errors += work.client(client, server, rounds=1, ping=1)["errors"]
            vip_traffic(lab, client, server)
            closed_port(lab, client, server)
    agent.wait_quiet()
    truth, truth_segments = {}, {}
    for p in everyone:
        path = out / f"truth-{p.name}.pcap"
        capture.stop_tcpdump(lab, dumps[p.key], path)
        assert capture.captured_all(path), "the ground truth itself lost packets"
        truth[p.key], truth_segments[p.key] = capture.decode(path), segments(path)
    books = {p.key: settled(lab, agent, p) for p in everyone if MODES[p.name] == "kernel"}
    for p in everyone:
        assert lab.ns.stop(sidecars[p.key], timeout=10) == 0, f"sidecar of {p.key} did not exit 0"
    status = agent.wait_quiet()
    for p in everyone:  # a stopped sniffer's final counters are exact
        if MODES[p.name] == "sniff":
            books[p.key] = (podmirror.sidecar_sent(lab, p, out / f"sidecar-{p.name}.log"),
                            status["pods"][p.key]["received"])
    code = agent.stop()
    capture.stop_tcpdump(lab, sensor_dump, out / "sensor.pcap")
    capture.strip_vxlan(out / "sensor.pcap", out / "sensor-inner.pcap")
    pcap = capture.Traffic()
    records = 0
    for f in sorted((out / "pcap").glob("*.pcap")):
        pcap.add(capture.decode(f))
        records += len(capture.read_pcap(f)[1])
    return Phase(vantage, clients, servers, truth, truth_segments, capture.decode(out / "sensor-inner.pcap"),
                 capture.inner_packets(out / "sensor.pcap"), pcap, records, status, books, errors,
                 {s.key: lab.dropped_once(s) - dropped_before[s.key] for s in servers}, code)


@pytest.fixture(scope="module")
def phases(tmp_path_factory: pytest.TempPathFactory, podmirror_ready: None) -> Any:
    tmp = tmp_path_factory.mktemp("fidelity")
    with open_lab(tmp) as lab:  # module-scoped: both vantages' phases share one lab
        node = lab.add_node()
        pods = {name: lab.add_pod(node, name) for name in ("ka", "sa", "kb", "sb")}
        for pod in pods.values():
            # Router solicitations repeat after the link comes up, the same bytes each time: one sent
            # just before the ground truth starts would look like a duplicate at the sensor.
            lab.ns.sysctl(pod.ns, {"net.ipv6.conf.eth0.router_solicitations": "0"})
        lab.add_agent(node)
        sensor = lab.add_host("sensor")
        work = Workload(lab, tmp)
        work.start_sink(sensor)
        for name, (v4, v6) in VIPS.items():
            for vip in (v4, v6):
                lab.add_cluster_ip(node, vip, 80, pods[name], HTTP_PORT)
                lab.add_cluster_ip(node, vip, 53, pods[name], 53)
            work.start_servers(pods[name], iperf=False)
            lab.drop_once_per_connection(pods[name], HTTP_PORT)
        yield {vantage: run_phase(lab, pods, sensor, work, tmp, vantage) for vantage in ("client", "server")}


VANTAGES = ["client", "server"]


def pair_key(phase: Phase, key: tuple[str, ...]) -> bool:
    """A packet between a client pod and a server pod (or its ClusterIP)."""
    clients = {a for p in phase.clients for a in (p.ip, p.ip6)}
    servers = {a for p in phase.servers for a in (p.ip, p.ip6, *VIPS[p.name])}
    fields = set(key[1:5])
    return bool(fields & clients) and bool(fields & servers)


def is_tls(key: tuple[str, ...]) -> bool:
    return key[0] == "tcp" and str(TLS_PORT) in (key[2], key[4])


def expected(phase: Phase) -> capture.Traffic:
    """Each pod's own traffic, and the pod-pair packets as the preferred vantage's pods saw them."""
    out = capture.Traffic()
    for pods, pairs in ((phase.preferred, True), ([p for p in phase.clients + phase.servers
                                                   if p not in phase.preferred], False)):
        for pod in pods:
            truth = phase.truth[pod.key]
            part = capture.Traffic()
            part.tcp_bytes.update({k: n for k, n in truth.tcp_bytes.items()
                                   if pairs or not pair_key(phase, k)})
            part.packets.update({k: n for k, n in truth.packets.items() if pairs or not pair_key(phase, k)})
            out = out.union(part)
    return out


def without_tls(traffic: capture.Traffic) -> capture.Traffic:
    out = capture.Traffic(frames=traffic.frames)
    out.tcp_bytes.update({k: n for k, n in traffic.tcp_bytes.items() if not is_tls(k)})
    out.packets.update({k: n for k, n in traffic.packets.items() if not is_tls(k)})
    return out


@pytest.mark.parametrize("vantage", VANTAGES)
def test_the_workload_ran_with_retransmissions(phases: Any, vantage: str) -> None:
    phase: Phase = phases[vantage]
    assert phase.work_errors == 0 and phase.agent_exit == 0
    assert all(n >= 4 for n in phase.retransmitted.values()), phase.retransmitted  # 2 direct + 2 VIP each
    for kind in ("tcp", "udp", "icmp", "icmpv6"):
        assert any(k[0] == kind for k in phase.truth["default/ka"].packets), f"no {kind} in the truth"


@pytest.mark.parametrize("vantage", VANTAGES)
@pytest.mark.parametrize("output", ["sensor", "pcap"])
def test_every_pod_packet_reaches_the_outputs_exactly_once(phases: Any, vantage: str, output: str) -> None:
    phase: Phase = phases[vantage]
    got = phase.sensor if output == "sensor" else phase.pcap
    want = expected(phase)
    assert capture.diff(without_tls(want), without_tls(got)) == {}
    assert any(":" in k[1] for k in want.tcp_bytes if pair_key(phase, k)), "no IPv6 pod-pair TCP"
    assert any(VIPS["kb"][1] in k or VIPS["sb"][0] in k for k in phase.truth["default/ka"].tcp_bytes
               | phase.truth["default/sa"].tcp_bytes), "no traffic through a ClusterIP"


@pytest.mark.parametrize("vantage", VANTAGES)
def test_encrypted_flows_keep_their_budget_and_handshake_under_the_default_cutoff(phases: Any,
                                                                                 vantage: str) -> None:
    phase: Phase = phases[vantage]
    want = expected(phase)
    tls = [k for k in want.tcp_bytes if is_tls(k)]
    assert tls, "no TLS in the truth"
    for k in tls:
        sent, got = want.tcp_bytes[k], phase.sensor.tcp_bytes.get(k, 0)
        assert min(sent, BUDGET) <= got <= sent, (k, sent, got)
    syns = {k: n for k, n in want.packets.items() if is_tls(k) and "0x0002" in k[5]}
    assert syns and all(phase.sensor.packets[k] == n for k, n in syns.items())


@pytest.mark.parametrize("vantage", VANTAGES)
def test_every_pod_pair_connection_comes_from_the_one_vnI_the_flag_names_with_one_address_pair(
        phases: Any, vantage: str) -> None:
    phase: Phase = phases[vantage]
    clients = {a: p for p in phase.clients for a in (p.ip, p.ip6)}
    backend = {a: p for p in phase.servers for a in (p.ip, p.ip6, *VIPS[p.name])}
    wrong, remotes = [], collections.defaultdict(set)
    for p in phase.inner:
        if p.proto not in ("tcp", "udp"):
            continue
        ends = ((p.src, p.sport), (p.dst, p.dport))
        for (c, cport), (s, sport) in (ends, ends[::-1]):
            if c in clients and s in backend:
                owner = clients[c] if vantage == "client" else backend[s]
                if p.vni != owner.vni:
                    wrong.append(p)
                remotes[(p.proto, c, cport)].add((s, sport))
    assert remotes, "no pod-pair connection at the sensor"
    assert wrong == []
    split = {k: v for k, v in remotes.items() if len(v) > 1}
    assert split == {}, "a connection shown with two address pairs"


@pytest.mark.parametrize("vantage", VANTAGES)
def test_the_retransmission_is_delivered(phases: Any, vantage: str) -> None:
    phase: Phase = phases[vantage]
    sensor: collections.Counter[tuple[Any, ...]] = collections.Counter(
        (p.src, p.sport, p.dst, p.dport, p.seq, p.length) for p in phase.inner
        if p.proto == "tcp" and p.length)
    retransmitted = {k: n for pod in phase.preferred for k, n in phase.truth_segments[pod.key].items()
                     if n > 1 and (k[3] in (HTTP_PORT, 80))}
    assert len(retransmitted) >= 8, retransmitted  # 2 clients x 2 servers x 2 families x (direct, VIP)
    assert {k: sensor[k] for k in retransmitted} == retransmitted


@pytest.mark.parametrize("vantage", VANTAGES)
def test_the_books_are_counted_not_derived(phases: Any, vantage: str) -> None:
    phase: Phase = phases[vantage]
    st = phase.status
    assert {key: received for key, (_, received) in phase.books.items()} == \
        {key: sent for key, (sent, _) in phase.books.items()}, "received != what the sidecars sent"
    assert st["received"] == st["pipeline_received"] == sum(p["received"] for p in st["pods"].values())
    assert st["held"] == 0
    assert st["received"] == st["forwarded"] + sum(st["drops"].values()) + st["held"]
    assert st["drops"]["unknown_sender"] == st["drops"]["malformed"] == st["drops"]["foreign"] == 0
    assert st["drops"]["other_vantage"] > 0 and st["drops"]["duplicate"] > 0
    # Forwarded is what the outputs got: each re-segmented super-packet becomes its segments.
    frames = st["forwarded"] - st["normalize"]["segmented"] + st["normalize"]["segments"]
    assert sum(1 for _ in phase.inner) == frames == phase.pcap_records
