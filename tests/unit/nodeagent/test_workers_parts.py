"""The worker pool's pure parts: the status merge, pod table changes, the CPU count, the setting."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from nodeagent import settings
from nodeagent.capture import filter as capture_filter
from nodeagent.capture.filter import CaptureFilter
from nodeagent.capture.session import TooManySessions
from nodeagent.pods.index import PodInfo
from nodeagent.settings import ConfigError
from nodeagent.stats import Stats
from nodeagent.transport.records import Record, encode_records
from nodeagent.verdict import Drop
from nodeagent.workers import cores, merge, relay
from nodeagent.workers.channel import pod_changes, pod_from_json, pod_to_json


def _snapshot(forwarded: int, dropped: int, key: str = "default/web") -> dict:
    stats = Stats()
    counters = stats.pod(key)
    for _ in range(forwarded):
        stats.read(100)
        stats.receive(counters, 100, 0.0)
        stats.forward(counters, 100)
    for _ in range(dropped):
        stats.read(60)
        stats.receive(counters, 60, 0.0)
        stats.drop(counters, Drop.DUPLICATE, 60)
    snap = stats.snapshot()
    snap.update(normalize={"segments": forwarded, "max_frame": 1514},
                socket={"rcvbuf": 1 << 20, "kernel_drops": 1},
                outputs={"pcap": {"packets": forwarded, "file": f"w{forwarded}.pcap", "dir": "/x"},
                         "vxlan": {"sensors": [{"address": "10.0.0.1:4789", "packets": forwarded,
                                                "state": "up", "vni": None}]}},
                malformed={"first": None, "last": None})
    return snap


def test_merge_sums_counters_keeps_settings_and_the_identity_holds() -> None:
    a, b = _snapshot(3, 2), _snapshot(5, 1)
    b["malformed"]["first"] = "10.0.0.5: vxlan: short"
    total = merge.merge([a, b])
    assert total["received"] == 11 and total["forwarded"] == 8 and total["drops"]["duplicate"] == 3
    assert total["received"] == total["forwarded"] + sum(total["drops"].values())
    assert total["pods"]["default/web"]["received"] == 11
    assert total["normalize"] == {"segments": 8, "max_frame": 1514}
    assert total["socket"] == {"rcvbuf": 1 << 20, "kernel_drops": 2}
    pcap = total["outputs"]["pcap"]
    assert pcap["file"] == ["w3.pcap", "w5.pcap"] and pcap["dir"] == "/x" and pcap["packets"] == 8
    sensor = total["outputs"]["vxlan"]["sensors"][0]
    assert sensor == {"address": "10.0.0.1:4789", "packets": 8, "state": "up", "vni": None}
    assert total["malformed"] == {"first": "10.0.0.5: vxlan: short", "last": None}


def test_merge_counts_a_key_only_one_worker_has() -> None:
    a, b = _snapshot(1, 0, "ns/a"), _snapshot(2, 0, "ns/b")
    total = merge.merge([a, b])
    assert total["pods"]["ns/a"]["forwarded"] == 1 and total["pods"]["ns/b"]["forwarded"] == 2
    assert merge.merge([]) is None and merge.merge([None, a]) == a


def test_pod_changes_carry_additions_changes_and_removals() -> None:
    web = PodInfo("10.0.0.5", 5, "default", "web", labels={"app": "web"}, ports=(8080,), ips=("fd00::5",))
    db = PodInfo("10.0.0.6", 6, "default", "db")
    moved = PodInfo("10.0.0.5", 5, "default", "web", labels={"app": "web2"})
    peer = PodInfo("10.1.0.7", 0, "other", "peer", local=False)
    message = pod_changes({web.ip: web, db.ip: db}, {moved.ip: moved, peer.ip: peer})
    assert message["remove"] == ["10.0.0.6"]
    assert sorted((pod_from_json(p) for p in message["add"]), key=lambda p: p.ip) == [moved, peer]
    assert pod_from_json(pod_to_json(web)) == web
    assert pod_changes({web.ip: web}, {web.ip: web}) == {"op": "pods", "add": [], "remove": []}


def test_cpu_quota_from_cgroup_v2_and_v1(tmp_path: Path) -> None:
    no_cgroup = tmp_path / "self-cgroup"
    no_cgroup.write_text("0::/\n")
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cores.quota(tmp_path, no_cgroup) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores.quota(tmp_path, no_cgroup) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cores.quota(v1, no_cgroup) == 0.5
    assert 1 <= cores.available(v1) <= 1


def test_workers_setting_accepts_auto_and_counts_and_names_the_field() -> None:
    assert settings.load({}).workers.count == "auto"
    assert settings.load({"workers": "4"}).workers.count == 4
    assert settings.load({"workers": {"count": 2, "restart": False}}).workers.restart is False
    for bad in ({"workers": {"count": 0}}, {"workers": "many"}, {"workers": {"start_timeout": 0}}):
        with pytest.raises(ConfigError, match="workers"):
            settings.load(bad)


def test_relayed_capture_carries_the_filter_and_counts_upstream_losses() -> None:
    captures = relay.Captures(max_sessions=1)
    session = captures.open(CaptureFilter(pods=("default/web",), bpf="tcp port 80"), 100)
    message = captures.message(session.ident)
    assert capture_filter.parse(parse_qsl(message["filter"])) == session.filter
    records = [Record(1, 60, "default/web", 5, 1, bytes(60)), Record(2, 60, "default/web", 5, 2, bytes(60))]
    captures.receive(session.ident, relay.RECORDS, relay.COUNT.pack(len(records)) + encode_records(records))
    captures.receive(session.ident, relay.DROPS, json.dumps({"default/web": 3}).encode())
    assert session.queued == 2 and session.received == {"default/web": 5}
    assert session.dropped == {"default/web": 3}
    with pytest.raises(TooManySessions):
        captures.open(CaptureFilter(), 100)
    session.close()
    assert captures.prune() == [session.ident] and captures.sessions == {}
    assert captures.state()["dropped"] == {"queue_full": 3}
