"""pods.kube: API pod objects -> PodInfo, the two-source table, silence (pure, no API)."""

from __future__ import annotations

from nodeagent.pods import kube
from nodeagent.pods.index import PodIndex
from nodeagent.pods.kube import LOCAL, PEERS, PodTable
from tests.fakes.kubeapi import pod

MON = {"podmirror.io/monitored": "true"}


def test_monitored_by_label_or_annotation_only() -> None:
    assert kube.is_monitored(pod("a", labels=MON))
    assert kube.is_monitored(pod("a", annotations={"podmirror.io/monitor": "true"}))
    assert not kube.is_monitored(pod("a", annotations={"podmirror.io/monitor": "false"}))
    assert not kube.is_monitored(pod("a"))


def test_pod_info_carries_identity_vni_ports_and_locality() -> None:
    raw = pod("web", ip="10.1.2.3", node="node-a", namespace="shop", labels={**MON, "app": "web"},
              annotations={"podmirror.io/ports": "8080/TCP, 53/UDP,bogus,70000"})
    info = kube.pod_info(raw, node="node-a")
    assert info is not None
    assert (info.ip, info.vni, info.key, info.node, info.local) == ("10.1.2.3", 0x010203, "shop/web",
                                                                   "node-a", True)
    assert info.labels["app"] == "web"
    assert info.ports == (53, 8080)
    assert kube.pod_info(raw, node="node-b").local is False


def test_pods_without_ip_finished_or_on_host_network_are_left_out() -> None:
    assert kube.pod_info(pod("a", labels=MON), node="node-a") is None
    assert kube.pod_info(pod("a", ip="10.0.0.1", labels=MON, phase="Succeeded"), node="node-a") is None
    host = pod("a", ip="192.168.1.1", labels=MON)
    host["spec"]["hostNetwork"] = True
    assert kube.pod_info(host, node="node-a") is None


def test_vnis_of_a_node_pod_cidr_never_collide() -> None:
    vnis = {kube.pod_info(pod(f"p{i}", ip=f"10.244.{i // 256}.{i % 256}", labels=MON),
                              node="node-a").vni for i in range(1024)}
    assert len(vnis) == 1024


def test_local_source_fills_senders_and_peers_source_fills_peers() -> None:
    index = PodIndex()
    table = PodTable(index, node="node-a")
    table.replace(LOCAL, [pod("mine", ip="10.0.0.5", labels=MON), pod("other", ip="10.0.0.6")], now=0.0)
    table.replace(PEERS, [pod("far", ip="10.0.1.5", node="node-b", labels=MON),
                          pod("mine", ip="10.0.0.5", labels=MON)], now=0.0)
    assert index.sender("10.0.0.5") is not None
    assert index.sender("10.0.0.6") is None  # not monitored
    assert index.sender("10.0.1.5") is None  # a peer is not a sender
    assert index.by_addr(bytes([10, 0, 1, 5])).key == "default/far"
    assert table.keys(PEERS) == ["default/far"]  # this node's pod belongs to the local source only


def test_ip_change_modify_and_delete_keep_the_index_exact() -> None:
    index = PodIndex()
    table = PodTable(index, node="node-a")
    table.apply(LOCAL, "ADDED", pod("a", labels=MON), now=0.0)
    assert len(index) == 0  # no IP yet
    table.apply(LOCAL, "MODIFIED", pod("a", ip="10.0.0.7", labels=MON), now=1.0)
    assert index.sender("10.0.0.7").name == "a"
    table.apply(LOCAL, "MODIFIED", pod("a", ip="10.0.0.8", labels=MON), now=2.0)
    assert index.sender("10.0.0.7") is None and index.sender("10.0.0.8") is not None
    table.apply(LOCAL, "MODIFIED", pod("a", ip="10.0.0.8"), now=3.0)  # label removed
    assert len(index) == 0
    table.apply(LOCAL, "ADDED", pod("a", ip="10.0.0.8", labels=MON), now=4.0)
    table.apply(LOCAL, "DELETED", pod("a", ip="10.0.0.8", labels=MON), now=5.0)
    assert len(index) == 0 and table.keys(LOCAL) == []


def test_relist_drops_pods_deleted_while_disconnected() -> None:
    index = PodIndex()
    table = PodTable(index, node="node-a")
    table.replace(LOCAL, [pod("a", ip="10.0.0.1", labels=MON), pod("b", ip="10.0.0.2", labels=MON)], 0.0)
    table.replace(LOCAL, [pod("b", ip="10.0.0.2", labels=MON)], 1.0)
    assert [p.key for p in index.all()] == ["default/b"]


def test_reused_address_is_not_removed_by_the_old_pods_deletion() -> None:
    index = PodIndex()
    table = PodTable(index, node="node-a")
    table.apply(LOCAL, "ADDED", pod("old", ip="10.0.0.9", labels=MON), 0.0)
    table.apply(LOCAL, "ADDED", pod("new", ip="10.0.0.9", labels=MON), 1.0)
    table.apply(LOCAL, "DELETED", pod("old", ip="10.0.0.9", labels=MON), 2.0)
    assert index.sender("10.0.0.9").name == "new"


def test_silent_pods_are_those_quiet_for_the_period_since_selection_or_last_datagram() -> None:
    table = PodTable(PodIndex(), node="node-a")
    table.replace(LOCAL, [pod("talks", ip="10.0.0.1", labels=MON), pod("mute", ip="10.0.0.2", labels=MON)],
                  now=100.0)
    assert table.silent({}, now=129.0, after=30.0) == []
    seen = {"default/talks": 125.0}
    assert table.silent(seen, now=131.0, after=30.0) == ["default/mute"]
    assert table.silent(seen, now=160.0, after=30.0) == ["default/mute", "default/talks"]


def test_a_label_alone_never_makes_a_monitored_pod() -> None:
    """Anyone may label their pod: without the injected sidecar container it is not in the table."""
    forged = pod("attacker", ip="10.0.0.66", labels=MON, sidecar=False)
    assert kube.pod_info(forged, node="node-a") is None
    assert kube.pod_info(pod("real", ip="10.0.0.5", labels=MON), node="node-a") is not None


def test_a_peer_counts_only_while_its_sidecar_is_ready() -> None:
    """Another node's pod: Ready is its agent saying it receives the pod's tunnel (the probe)."""
    ready = pod("far", ip="10.0.1.5", node="node-b", labels=MON)
    not_ready = pod("far", ip="10.0.1.5", node="node-b", labels=MON, sidecar_ready=False)
    assert kube.pod_info(ready, node="node-a") is not None
    assert kube.pod_info(not_ready, node="node-a") is None
    # On its own node the agent sees the tunnel itself: readiness does not gate a sender.
    assert kube.pod_info(not_ready, node="node-b") is not None
    native = pod("native", ip="10.0.1.6", node="node-b", labels=MON, sidecar=False)
    native["spec"]["initContainers"] = [{"name": "podmirror-sidecar", "restartPolicy": "Always"}]
    native["status"]["initContainerStatuses"] = [{"name": "podmirror-sidecar", "ready": True}]
    assert kube.pod_info(native, node="node-a") is not None


def test_dual_stack_addresses_come_from_pod_ips() -> None:
    raw = pod("web", ip="10.0.0.9", labels=MON)
    raw["status"]["podIPs"] = [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}]
    info = kube.pod_info(raw, node="node-a")
    assert info is not None and info.ips == ("fd00::9",)
