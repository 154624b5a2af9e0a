"""Dual-stack pods: every address of a pod is the pod (table, direction, vantage, push-down)."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress

from nodeagent.pipeline import Pipeline
from nodeagent.pods import kube
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.pods.kube import LOCAL, PodTable
from nodeagent.settings import load
from nodeagent.stages import filters, pushdown
from nodeagent.stats import Stats
from nodeagent.verdict import Drop, Forward
from sidecar_lite import cbpf
from tests import cbpf_reference
from tests.fakes.kubeapi import pod
from tests.unit.nodeagent.pipeline_packets import (
    CLIENT,
    REMOTE,
    SERVER,
    TCP,
    IPv6,
    datagram,
    eth,
    feed,
    make_pipeline,
)

MON = {"podmirror.io/monitored": "true"}
CLIENT6, SERVER6, REMOTE6 = "fd00::5", "fd00::9", "fd00:1::7"
DS_CLIENT = dataclasses.replace(CLIENT, ips=(CLIENT6,))
DS_SERVER = dataclasses.replace(SERVER, ips=(SERVER6,))
DS_REMOTE = dataclasses.replace(REMOTE, ips=(REMOTE6,))


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def tcp6(src: str, dst: str, sport: int = 40000, dport: int = 80, flags: str = "A") -> bytes:
    return bytes(eth() / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def dual(name: str, v4: str, v6: str, node: str = "node-a") -> dict:  # type: ignore[type-arg]
    raw = pod(name, ip=v4, node=node, labels=MON)
    raw["status"]["podIPs"] = [{"ip": v4}, {"ip": v6.upper()}, {"ip": "junk"}]
    return raw


def test_pod_table_fills_the_other_addresses_from_pod_ips() -> None:
    info = kube.pod_info(dual("web", "10.0.0.9", SERVER6), node="node-a")
    assert info is not None and info.ips == (SERVER6,) and info.all_ips == ("10.0.0.9", SERVER6)
    assert kube.pod_info(pod("v4", ip="10.0.0.8", labels=MON), node="node-a").ips == ()


def test_index_finds_a_pod_by_either_address_and_forgets_both() -> None:
    index = PodIndex()
    table = PodTable(index, node="node-a")
    table.replace(LOCAL, [dual("web", "10.0.0.9", SERVER6)], now=0.0)
    assert index.by_addr(packed(SERVER6)) is index.by_addr(packed("10.0.0.9")) is not None
    assert index.sender("10.0.0.9") is not None
    table.replace(LOCAL, [], now=1.0)
    assert index.by_addr(packed(SERVER6)) is None and index.by_addr(packed("10.0.0.9")) is None


def test_removing_a_pod_leaves_an_address_another_pod_took() -> None:
    index = PodIndex([DS_SERVER])
    index.add(PodInfo("10.0.0.77", 77, "shop", "new", ips=(SERVER6,)))
    index.remove(DS_SERVER.ip)
    assert index.by_addr(packed(SERVER6)).name == "new"  # type: ignore[union-attr]


def run(pods: list[PodInfo], copies: list[tuple[bytes, PodInfo]]) -> list[object]:
    pipe, stats = make_pipeline(*pods)
    return [feed(pipe, stats, frame, sender, 1.0) for frame, sender in copies]


def test_an_ipv6_flow_on_one_node_is_kept_from_the_client_side_only() -> None:
    syn = tcp6(CLIENT6, SERVER6, flags="S")
    ack = tcp6(SERVER6, CLIENT6, sport=80, dport=40000, flags="SA")
    verdicts = run([DS_CLIENT, DS_SERVER], [(syn, DS_CLIENT), (syn, DS_SERVER), (ack, DS_SERVER),
                                            (ack, DS_CLIENT)])
    assert [type(v) for v in verdicts] == [Forward, Drop, Drop, Forward]
    assert verdicts[1] == verdicts[2] == Drop.OTHER_VANTAGE


def test_an_ipv6_flow_across_nodes_is_owned_by_the_clients_node() -> None:
    syn = tcp6(REMOTE6, SERVER6, flags="S")
    assert run([DS_SERVER, DS_REMOTE], [(syn, DS_SERVER)]) == [Drop.NOT_OWNER]
    # The client's node, where the roles of local sender and peer are swapped, keeps it.
    here, there = dataclasses.replace(DS_REMOTE, local=True), dataclasses.replace(DS_SERVER, local=False)
    assert isinstance(run([here, there], [(syn, here)])[0], Forward)


def test_direction_rules_hold_for_the_other_family_at_the_agent_and_in_the_push_down() -> None:
    rules = filters.compile(load({"filters": {"rules": [{"action": "include", "direction": "out"}],
                                              "default": "exclude"}}).filters)
    pipe = Pipeline(pods=PodIndex([DS_SERVER]), stats=Stats(), filters=rules)
    out, into = tcp6(SERVER6, REMOTE6, sport=80, dport=40000), tcp6(REMOTE6, SERVER6)
    assert isinstance(pipe.process(datagram(out, DS_SERVER), SERVER.ip, 1.0), Forward)
    assert pipe.process(datagram(into, DS_SERVER), SERVER.ip, 1.0) == Drop.FILTERED
    program = pushdown.plan(rules, DS_SERVER).program or cbpf.REJECT_ALL
    assert cbpf_reference.run(program, out) and not cbpf_reference.run(program, into)


def test_peer_cidr_rules_are_pushed_for_each_family() -> None:
    rules = filters.compile(load({"filters": {"rules": [{"action": "exclude",
                                                         "peer": ["fd00:1::/64", "10.1.0.0/16"]}]}}).filters)
    match = functools.partial(cbpf_reference.run, pushdown.plan(rules, DS_SERVER).program or cbpf.ACCEPT_ALL)
    assert not match(tcp6(SERVER6, REMOTE6)) and not match(tcp6(REMOTE6, SERVER6))
    assert match(tcp6(SERVER6, "fd00:2::1"))
