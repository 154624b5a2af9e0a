"""The admission webhook over TLS (aiohttp), and its certificate set-up (``nodeagent webhook``).

Routes: ``POST /mutate`` (namespaces without the monitor label: annotated pods only),
``POST /mutate/enabled-namespace`` (namespaces labelled ``podmirror.io/monitor=enabled``),
``GET /healthz``. TLS material: ``--tls-cert``/``--tls-key`` files (cert-manager's Secret, mounted),
or else a self-made CA (``certs.make``) whose certificate is patched into the ``caBundle`` of every
entry of the MutatingWebhookConfiguration ``--webhook-config`` (RBAC: get/patch on that one object).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import signal
import ssl
import tempfile

from aiohttp import web

from nodeagent.webhook import certs
from nodeagent.webhook.inject import InjectConfig
from nodeagent.webhook.review import BadReview, respond

log = logging.getLogger(__name__)


def make_app(config: InjectConfig) -> web.Application:
    async def mutate(request: web.Request, *, namespace_enabled: bool) -> web.Response:
        try:
            review = await request.json()
            return web.json_response(respond(review, config, namespace_enabled=namespace_enabled))
        except (ValueError, BadReview) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def annotated(request: web.Request) -> web.Response:
        return await mutate(request, namespace_enabled=False)

    async def enabled(request: web.Request) -> web.Response:
        return await mutate(request, namespace_enabled=True)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/mutate", annotated)
    app.router.add_post("/mutate/enabled-namespace", enabled)
    app.router.add_get("/healthz", healthz)
    return app


def ssl_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only: write the PEMs to a private temporary directory.
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        for path, data in ((cert_file, cert_pem), (key_file, key_pem)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:
                handle.write(data)
        context.load_cert_chain(cert_file, key_file)
    return context


def patch_ca_bundle(kubeconfig: str | None, name: str, ca_pem: bytes) -> int:
    """Set ``caBundle`` on every webhook entry of configuration ``name``; returns the entry count."""
    import base64

    import kubernetes.client

    from nodeagent.adapters.kube import api_client

    with api_client(kubeconfig) as client:
        api = kubernetes.client.AdmissionregistrationV1Api(client)
        current = api.read_mutating_webhook_configuration(name)
        bundle = base64.b64encode(ca_pem).decode()
        ops = [{"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
               for i in range(len(current.webhooks or []))]
        api.patch_mutating_webhook_configuration(name, ops)
        return len(ops)


async def serve(args: argparse.Namespace, config: InjectConfig) -> None:
    if args.tls_cert:
        with open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
            context = ssl_context(cert.read(), key.read())
    else:
        names = certs.service_names(args.service, args.namespace) + list(args.dns_name)
        made = certs.make(names, datetime.datetime.now(datetime.UTC), ip_addresses=tuple(args.ip_san))
        context = ssl_context(made.cert_pem, made.key_pem)
        if args.webhook_config:
            count = await asyncio.to_thread(patch_ca_bundle, args.kubeconfig, args.webhook_config,
                                            made.ca_pem)
            log.info("patched caBundle of %d webhooks in %s", count, args.webhook_config)
        if args.ca_out:
            with open(args.ca_out, "wb") as handle:
                handle.write(made.ca_pem)
    host, _, port = args.listen.rpartition(":")
    runner = web.AppRunner(make_app(config), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]") or "0.0.0.0", int(port), ssl_context=context).start()
        log.info("webhook listening on %s", args.listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
