"""``nodeagent webhook``: the admission webhook over TLS (aiohttp), and its certificate set-up.

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
import sys
import tempfile
from typing import Any

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="0.0.0.0:8443", help="IP:PORT (default 0.0.0.0:8443)")
    p.add_argument("--tls-cert", help="serving certificate (PEM), e.g. from cert-manager")
    p.add_argument("--tls-key", help="its private key (PEM)")
    p.add_argument("--service", default="podmirror-webhook", help="Service name for the self-made cert")
    p.add_argument("--namespace", default="podmirror", help="namespace of that Service")
    p.add_argument("--dns-name", action="append", default=[], help="extra DNS SAN (repeat)")
    p.add_argument("--ip-san", action="append", default=[], help="extra IP SAN (repeat)")
    p.add_argument("--webhook-config", help="MutatingWebhookConfiguration whose caBundle to patch")
    p.add_argument("--ca-out", help="also write the self-made CA (PEM) to this file")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")
    add_inject_options(p)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("webhook", help="serve the sidecar-injection admission webhook (TLS)")
    add_arguments(p)
    p.set_defaults(func=run)


def add_inject_options(p: argparse.ArgumentParser) -> None:
    defaults = InjectConfig()
    p.add_argument("--image", default=defaults.image, help="sidecar image")
    p.add_argument("--agent", default=defaults.agent, help="PODMIRROR_AGENT for the sidecar")
    p.add_argument("--rules-url", default=defaults.rules_url, help="PODMIRROR_RULES_URL")
    p.add_argument("--discovery", default=defaults.discovery, choices=["service", "node-ip", "label"])
    p.add_argument("--mode", default=defaults.default_mode, choices=["auto", "kernel", "sniff"],
                   help="mode when the pod has no podmirror.io/mode annotation")


def inject_config(args: argparse.Namespace) -> InjectConfig:
    return InjectConfig(image=args.image, agent=args.agent, rules_url=args.rules_url,
                        discovery=args.discovery, default_mode=args.mode)


def run(args: argparse.Namespace) -> int:
    if bool(args.tls_cert) != bool(args.tls_key):
        print("nodeagent webhook: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args, inject_config(args)))
    return 0
