"""adapters.kube against the fake API over HTTP, with the real `kubernetes` client."""

from __future__ import annotations

import asyncio
import random

import kubernetes.client
import pytest

from nodeagent.adapters.kube import Backoff, KubeWatcher, watch_specs
from nodeagent.pods.index import PodIndex
from nodeagent.pods.kube import PodTable
from tests.fakes.kubeapi import label_matcher, pod
from tests.waiting import wait_for

pytestmark = pytest.mark.kube
MON = {"podmirror.io/monitored": "true"}


async def start(client: kubernetes.client.ApiClient, timeout: int = 30) -> tuple[PodIndex, KubeWatcher,
                                                                                   asyncio.Task[None]]:
    index = PodIndex()
    watcher = KubeWatcher(PodTable(index, node="node-a"), kubernetes.client.CoreV1Api(client),
                          watch_specs("node-a"), timeout=timeout)
    task = asyncio.create_task(watcher.run(), name="kube-watch")
    await asyncio.wait_for(watcher.synced.wait(), 10)
    return index, watcher, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_list_then_watch_with_node_and_label_selectors(fake_api) -> None:
    fake, client = fake_api
    fake.create(pod("early", ip="10.0.0.1", labels=MON))
    fake.create(pod("plain", ip="10.0.0.2"))
    fake.create(pod("remote", ip="10.0.1.1", node="node-b", labels=MON))
    fake.create(pod("remote-plain", ip="10.0.1.2", node="node-b"))
    index, watcher, task = await start(client)
    try:
        assert sorted(p.key for p in index.all()) == ["default/early", "default/remote"]
        fake.create(pod("late", ip="10.0.0.3", annotations={"podmirror.io/monitor": "true"}))
        fake.create(pod("far", ip="10.0.2.1", node="node-c", labels=MON))
        await wait_for(lambda: index.sender("10.0.0.3") and index.by_addr(bytes([10, 0, 2, 1])))
        assert index.by_addr(bytes([10, 0, 2, 1])).local is False
    finally:
        await stop(task)
    selectors = {(r.get("fieldSelector"), r.get("labelSelector")) for r in fake.requests}
    assert selectors == {("spec.nodeName=node-a", None), (None, "podmirror.io/monitored=true")}
    await wait_for(lambda: fake.open_watches == 0, timeout=5)  # stop() closed both streams


async def test_watch_resumes_from_last_version_after_disconnect(fake_api) -> None:
    fake, client = fake_api
    index, watcher, task = await start(client)
    try:
        fake.create(pod("a", ip="10.0.0.1", labels=MON))
        await wait_for(lambda: index.sender("10.0.0.1"))
        version = fake.rv
        lists_before = sum("watch" not in r for r in fake.requests)
        fake.disconnect_watches()
        fake.create(pod("b", ip="10.0.0.2", labels=MON))  # happens while no watch is open
        await wait_for(lambda: index.sender("10.0.0.2"))
        assert sum("watch" not in r for r in fake.requests) == lists_before  # no relist
        resumed = [r for r in fake.requests if "watch" in r][-2:]
        assert {r["resourceVersion"] for r in resumed} == {str(version)}
    finally:
        await stop(task)


@pytest.mark.parametrize("gone_as_http", [False, True])
async def test_410_gone_relists_and_drops_pods_deleted_meanwhile(fake_api, gone_as_http: bool) -> None:
    fake, client = fake_api
    fake.gone_as_http = gone_as_http
    fake.create(pod("a", ip="10.0.0.1", labels=MON))
    fake.create(pod("b", ip="10.0.0.2", labels=MON))
    index, watcher, task = await start(client)
    try:
        fake.disconnect_watches()
        fake.delete("default", "a")
        fake.compact()  # the DELETED event is gone from the history: only a relist can learn it
        await wait_for(lambda: index.sender("10.0.0.1") is None)
        assert index.sender("10.0.0.2") is not None
        assert watcher.snapshot()["relists"] >= 1
    finally:
        await stop(task)


async def test_errors_back_off_and_recover(fake_api) -> None:
    fake, client = fake_api
    fake.fail_next(3, status=500)
    fake.create(pod("a", ip="10.0.0.1", labels=MON))
    index, watcher, task = await start(client)
    try:
        assert index.sender("10.0.0.1") is not None
        assert watcher.snapshot()["errors"] == 3
    finally:
        await stop(task)


async def test_bookmark_advances_the_resume_version(fake_api) -> None:
    fake, client = fake_api
    index, watcher, task = await start(client, timeout=1)
    try:
        fake.create(pod("x", ip="10.0.5.1", node="node-z"))  # matches neither watch
        await wait_for(lambda: any(r.get("resourceVersion") == str(fake.rv) for r in fake.requests
                                     if "watch" in r), timeout=5)
    finally:
        await stop(task)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(40)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(delays[:1]) <= 1.0 and max(delays[10:]) > 4.0
    backoff.reset()
    assert backoff.next() <= 1.0


def test_fake_label_selector_semantics() -> None:
    assert label_matcher("a=b,c")({"a": "b", "c": ""})
    assert not label_matcher("a!=b")({"a": "b"})
    assert label_matcher("a notin (x,y)")({})
    assert label_matcher("env in (prod, dev),!gone")({"env": "dev"})
    assert not label_matcher("env in (prod)")({})
