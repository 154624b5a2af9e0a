"""``nodeagent webhook`` options, and the injector options it shares with ``nodeagent inject``.

Kept apart from ``server`` so that ``nodeagent inject`` and the other subcommands do not load
aiohttp: the server is imported only when the webhook actually runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from nodeagent.webhook.inject import PULL_POLICIES, SNIFF_CAPABILITIES, InjectConfig


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
    p.add_argument("--image-pull-policy", choices=PULL_POLICIES,
                   help="the sidecar's imagePullPolicy (default: Kubernetes' default for its tag)")
    p.add_argument("--agent", default=defaults.agent, help="PODMIRROR_AGENT for the sidecar (HOST:PORT)")
    p.add_argument("--rules-url", default=defaults.rules_url, help="PODMIRROR_RULES_URL")
    p.add_argument("--discovery", default=defaults.discovery, choices=["service", "node-ip", "label"])
    p.add_argument("--sniff-capabilities", default=defaults.sniff_capabilities, choices=SNIFF_CAPABILITIES,
                   help="add: drop ALL, add NET_RAW (any runtime); runtime-default: drop every default "
                        "capability but NET_RAW, add none (Pod Security baseline; containerd, Docker)")
    p.add_argument("--mode", default=defaults.default_mode, choices=["auto", "kernel", "sniff"],
                   help="mode when the pod has no podmirror.io/mode annotation")


def inject_config(args: argparse.Namespace) -> InjectConfig:
    return InjectConfig(image=args.image, agent=args.agent, rules_url=args.rules_url,
                        discovery=args.discovery, default_mode=args.mode,
                        image_pull_policy=args.image_pull_policy,
                        sniff_capabilities=args.sniff_capabilities)


def run(args: argparse.Namespace) -> int:
    if bool(args.tls_cert) != bool(args.tls_key):
        print("nodeagent webhook: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    for flag, value in (("--agent", args.agent), ("--rules-url", args.rules_url)):
        if "$(" in value:  # Kubernetes leaves $(VAR) as it is when VAR is not defined
            print(f"nodeagent webhook: {flag} {value!r} holds an unexpanded $(VARIABLE): Kubernetes sets "
                  "PODMIRROR_AGENT_SERVICE_* only for Services that exist when the container starts; "
                  "create the agent Service first (the container restarts and picks it up)", file=sys.stderr)
            return 2
    from nodeagent.webhook import server  # aiohttp, only when serving

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(server.serve(args, inject_config(args)))
    return 0
