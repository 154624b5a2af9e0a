"""Label discovery end to end against the in-process fake Kubernetes API (loopback HTTP).

The real ``kubernetes`` client is pointed at the fake through a kubeconfig, as a sidecar outside a
cluster would be; inside a cluster ``load_incluster_config`` is used instead.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from sidecar_lite import discovery
from sidecar_lite.settings import parse
from tests.fakes.kubeapi import FakeKubeApi, pod


@pytest.fixture
def fake_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeKubeApi, str]]:
    """The fake served from its own loop in a thread: the sidecar's client is synchronous."""
    fake, loop, ready = FakeKubeApi(), asyncio.new_event_loop(), threading.Event()
    runner = web.AppRunner(fake.app)
    port: list[int] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert ready.wait(10)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port[0]}'}}}}]\n"
        "users: [{name: fake, user: {token: t}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a cluster: kubeconfig
    try:
        yield fake, str(kubeconfig)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _populate(fake: FakeKubeApi) -> None:
    label = {"run": "podmirror-agent"}
    fake.create(pod("agent-b", ip="10.2.0.9", node="node-b", namespace="podmirror", labels=label))
    fake.create(pod("agent-a2", ip="10.1.0.8", node="node-a", namespace="podmirror", labels=label))
    fake.create(pod("agent-a1", node="node-a", namespace="podmirror", labels=label, phase="Pending"))
    fake.create(pod("other", ip="10.1.0.7", node="node-a", namespace="podmirror", labels={"run": "x"}))


def test_label_discovery_finds_the_running_agent_on_this_node(fake_api: tuple[FakeKubeApi, str]) -> None:
    fake, kubeconfig = fake_api
    _populate(fake)
    env = {
        "SENSOR": "podmirror-agent",
        "NODE_NAME": "node-a",
        "POD_NAMESPACE": "shop",
        "PODMIRROR_AGENT_NAMESPACE": "podmirror",
        "KUBECONFIG": kubeconfig,
    }
    assert discovery.resolve(parse([], env)) == "10.1.0.8"
    (query,) = fake.requests
    assert query["path"] == "/api/v1/namespaces/podmirror/pods"
    assert query.get("fieldSelector") == "spec.nodeName=node-a"
    assert query.get("labelSelector") == "run=podmirror-agent"


def test_label_discovery_without_an_agent_on_this_node_is_retried(fake_api: tuple[FakeKubeApi, str]) -> None:
    fake, kubeconfig = fake_api
    _populate(fake)
    env = {
        "SENSOR": "podmirror-agent",
        "NODE_NAME": "node-c",
        "PODMIRROR_AGENT_NAMESPACE": "podmirror",
        "KUBECONFIG": kubeconfig,
    }
    with pytest.raises(discovery.DiscoveryError, match="node-c"):
        discovery.resolve(parse([], env))


def test_api_errors_become_discovery_errors(fake_api: tuple[FakeKubeApi, str]) -> None:
    fake, kubeconfig = fake_api
    fake.fail_next(1, status=403)
    env = {"SENSOR": "podmirror-agent", "NODE_NAME": "node-a", "KUBECONFIG": kubeconfig}
    with pytest.raises(discovery.DiscoveryError, match="403|Forbidden"):
        discovery.resolve(parse([], env))


def test_only_label_mode_imports_kubernetes() -> None:
    code = (
        "import sys, sidecar_lite.cli, sidecar_lite.runner, sidecar_lite.kernel, sidecar_lite.discovery; "
        "bad = [m for m in ('kubernetes', 'scapy', 'nodeagent', 'aiohttp') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
