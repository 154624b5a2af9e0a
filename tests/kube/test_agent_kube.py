"""The whole agent with its pod table from the (fake) API: ``kube`` settings -> watcher -> senders.

The monitored pod's IP is 127.0.0.1 so the test can send its tunnel from loopback: VNI 1 (the low
24 bits of the address). Before the pod exists its datagrams are unknown senders; after, accepted.
"""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp
import pytest
import yaml
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from nodeagent import app, settings
from nodeagent.wire import vxlan
from tests.books import assert_balanced
from tests.fakes.kubeapi import pod
from tests.waiting import wait_for

pytestmark = pytest.mark.kube
MON = {"podmirror.io/monitored": "true"}


def kubeconfig(path: str, url: str) -> str:
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
              "clusters": [{"name": "fake", "cluster": {"server": url}}],
              "users": [{"name": "u", "user": {}}],
              "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}]}
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    return path


async def get_status(address: tuple[str, int]) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{address[0]}:{address[1]}/status") as answer:
            assert answer.status == 200
            return await answer.json()


async def test_agent_takes_senders_from_the_api_and_reports_silent_pods(fake_api, tmp_path) -> None:
    fake, client = fake_api
    conf = kubeconfig(os.path.join(tmp_path, "kubeconfig"), client.configuration.host)
    agent = app.Agent(settings.load({
        "listen": {"host": "127.0.0.1", "port": 0}, "status": {"host": "127.0.0.1", "port": 0},
        "pushdown": {"host": "127.0.0.1", "port": 0},
        "kube": {"node_name": "node-a", "kubeconfig": conf, "silent_after": 2.0}}))
    app._install_extensions(agent)
    runner = asyncio.create_task(agent.run(handle_signals=False), name="agent")
    try:
        await wait_for(lambda: agent.status_address is not None and agent.receiver.address)
        fake.create(pod("quiet", ip="10.0.0.9", labels=MON))
        await wait_for(lambda: agent.is_ready())
        frame = bytes(Ether() / IP(src="127.0.0.1", dst="10.0.0.9") / UDP(dport=53) / b"q")
        tunnel = agent.receiver.address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(vxlan.encode(1, frame), tunnel)
            await wait_for(lambda: agent.stats.total.received == 1)
            assert agent.stats.total.drops["unknown_sender"] == 1  # not a known pod yet
            fake.create(pod("talker", ip="127.0.0.1", labels=MON))
            await wait_for(lambda: agent.pods.sender("127.0.0.1") is not None)
            sock.sendto(vxlan.encode(1, frame), tunnel)
            await wait_for(lambda: agent.stats.total.received == 2)
        status = await get_status(agent.status_address)
        assert_balanced(status)
        assert status["pods"]["default/talker"]["received"] == 1
        assert status["kube"]["synced"] is True and status["kube"]["local"] == 2
        assert status["pods"]["default/talker"]["silent"] is False
        deadline = asyncio.get_running_loop().time() + 10
        while "default/quiet" not in (status := await get_status(agent.status_address))["silent"]:
            assert asyncio.get_running_loop().time() < deadline, status["silent"]
            await asyncio.sleep(0.05)
        assert status["pods"]["default/quiet"]["silent"] is True
    finally:
        agent.stop()
        assert await asyncio.wait_for(runner, 15) == 0


def test_unusable_kubeconfig_is_a_configuration_error(tmp_path) -> None:
    agent = app.Agent(settings.load({"kube": {"node_name": "n", "kubeconfig": str(tmp_path / "none")}}))
    with pytest.raises(settings.ConfigError, match="kube.kubeconfig"):
        app._install_extensions(agent)


def test_kube_settings_from_flags_and_validation() -> None:
    from nodeagent import cli

    args = cli.build_parser().parse_args(["run", "--node-name", "node-a", "--kubeconfig", "/k"])
    loaded = settings.load(cli.run_overrides(args))
    assert loaded.kube.enabled and (loaded.kube.node_name, loaded.kube.kubeconfig) == ("node-a", "/k")
    assert not settings.load({}).kube.enabled  # no --node-name: the static sender table only
    with pytest.raises(settings.ConfigError, match="kube.silent_after"):
        settings.load({"kube": {"silent_after": 0}})
