"""pods: the pod table by tunnel source and by packed address; senders vs peers."""

from __future__ import annotations

import ipaddress

import pytest

from nodeagent.pods.index import PodIndex, PodInfo


def _pod(ip: str, name: str = "web", local: bool = True, vni: int = 5) -> PodInfo:
    return PodInfo(ip=ip, vni=vni, namespace="default", name=name, local=local)


def test_pod_key_and_packed_address():
    pod = _pod("10.0.0.5")
    assert pod.key == "default/web" and pod.addr == ipaddress.ip_address("10.0.0.5").packed
    assert _pod("fd00::5").addr == ipaddress.ip_address("fd00::5").packed


def test_invalid_address_is_refused():
    with pytest.raises(ValueError):
        _pod("not-an-ip")


def test_sender_is_only_a_local_pod():
    index = PodIndex([_pod("10.0.0.5"), _pod("10.0.1.7", name="remote", local=False)])
    assert index.sender("10.0.0.5").name == "web"
    assert index.sender("10.0.1.7") is None  # a peer never sends us tunnels
    assert index.sender("10.0.0.99") is None
    assert index.by_addr(ipaddress.ip_address("10.0.1.7").packed).name == "remote"
    assert len(index) == 2


def test_add_replaces_a_pod_with_the_same_ip():
    index = PodIndex([_pod("10.0.0.5", name="old")])
    index.add(_pod("10.0.0.5", name="new", vni=9))
    assert index.sender("10.0.0.5").name == "new" and index.sender("10.0.0.5").vni == 9
    assert len(index) == 1


def test_remove_clears_both_lookups():
    index = PodIndex([_pod("10.0.0.5")])
    assert index.remove("10.0.0.5").name == "web"
    assert index.remove("10.0.0.5") is None
    assert index.sender("10.0.0.5") is None
    assert index.by_addr(ipaddress.ip_address("10.0.0.5").packed) is None


def test_replace_all_forgets_the_old_table():
    index = PodIndex([_pod("10.0.0.5"), _pod("10.0.0.6", name="b")])
    index.replace_all([_pod("10.0.0.7", name="c")])
    assert [p.name for p in index.all()] == ["c"]
    assert index.by_addr(ipaddress.ip_address("10.0.0.5").packed) is None


def test_removing_a_pod_gives_a_shared_address_back_to_the_pod_that_still_holds_it():
    """Found by tests/fuzz (kube_pods): a peer listing a local pod's address among its podIPs took
    that address over; when the peer went, the local pod was left unreachable by address."""
    from nodeagent.pods.index import PodIndex, PodInfo

    local = PodInfo(ip="10.0.0.5", vni=5, namespace="shop", name="web")
    peer = PodInfo(ip="10.0.0.6", vni=0, namespace="shop", name="web", local=False, ips=("10.0.0.5",))
    index = PodIndex([local, peer])
    assert index.by_addr(local.addr) is peer
    index.remove(peer.ip)
    assert index.by_addr(local.addr) is local and index.sender(local.ip) is local


def test_removing_a_local_pod_gives_a_shared_source_back_to_the_other_sender():
    from nodeagent.pods.index import PodIndex, PodInfo

    first = PodInfo(ip="10.0.0.5", vni=5, namespace="shop", name="a", ips=("fd00::5",))
    second = PodInfo(ip="10.0.0.6", vni=6, namespace="shop", name="b", ips=("fd00::5",))
    index = PodIndex([first, second])
    assert index.sender("fd00::5") is second
    index.remove(second.ip)
    import ipaddress

    assert index.sender("fd00::5") is first
    assert index.by_addr(ipaddress.ip_address("fd00::5").packed) is first
