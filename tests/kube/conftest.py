"""Fixtures for the Kubernetes tiers: the in-process fake API, a real client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import kubernetes.client
import pytest
from aiohttp.test_utils import TestServer

from tests.fakes.kubeapi import FakeKubeApi


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[FakeKubeApi, kubernetes.client.ApiClient]]:
    fake = FakeKubeApi()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    configuration = kubernetes.client.Configuration()
    configuration.host = str(server.make_url("")).rstrip("/")
    client = kubernetes.client.ApiClient(configuration)
    try:
        yield fake, client
    finally:
        fake.disconnect_watches()
        await server.close()
        client.close()
