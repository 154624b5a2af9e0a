"""The webhook's HTTPS server: self-made CA + serving cert, verified by a client trusting only that CA."""

from __future__ import annotations

import datetime
import json
import pathlib
import ssl
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web

from nodeagent.webhook import certs, server
from nodeagent.webhook.inject import InjectConfig
from tests.kube.patching import response_patch

REVIEW = pathlib.Path(__file__).resolve().parents[1] / "data" / "admission" / "annotated_pod.json"


def test_serving_cert_names_the_service_and_chains_to_the_ca() -> None:
    made = certs.make(certs.service_names("podmirror-webhook", "podmirror"),
                      datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(made.cert_pem)
    ca = x509.load_pem_x509_certificate(made.ca_pem)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "podmirror-webhook.podmirror.svc" in names.get_values_for_type(x509.DNSName)
    assert leaf.issuer == ca.subject and leaf.not_valid_before_utc.year == 2029
    leaf.verify_directly_issued_by(ca)


async def test_webhook_answers_reviews_over_verified_tls() -> None:
    made = certs.make(["localhost"], datetime.datetime.now(datetime.UTC), ip_addresses=("127.0.0.1",))
    runner = web.AppRunner(server.make_app(InjectConfig()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server.ssl_context(made.cert_pem, made.key_pem))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    trust = ssl.create_default_context(cadata=made.ca_pem.decode())
    try:
        async with aiohttp.ClientSession() as session:
            url = f"https://127.0.0.1:{port}"
            review = json.loads(REVIEW.read_text())
            async with session.post(f"{url}/mutate", json=review, ssl=trust) as answer:
                assert answer.status == 200
                assert response_patch(await answer.json())[-1]["path"] == "/spec/containers/-"
            async with session.post(f"{url}/mutate", data=b"not json", ssl=trust) as answer:
                assert answer.status == 400
            async with session.get(f"{url}/healthz", ssl=trust) as answer:
                assert answer.status == 200
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("flag", ["--agent", "--rules-url"])
def test_an_unexpanded_kubernetes_variable_is_a_configuration_error(flag: str) -> None:
    """deploy/base passes $(PODMIRROR_AGENT_SERVICE_HOST)...: Kubernetes leaves it as it is when the
    agent Service did not exist when the container started; the webhook refuses it (exit 2, the
    container restarts and gets the variables) instead of injecting a sidecar that cannot work."""
    value = "$(PODMIRROR_AGENT_SERVICE_HOST):$(PODMIRROR_AGENT_SERVICE_PORT_TUNNEL)"
    result = subprocess.run([sys.executable, "-m", "nodeagent", "webhook", flag, value],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and flag in result.stderr and "PODMIRROR_AGENT_SERVICE_" in result.stderr
