"""``nodeagent`` command line: dispatch only. Each subcommand's code lives in its own module.

Adding a subcommand (``lab``, ``inject``, ``collect``): in your module write
``register(subparsers) -> None`` that adds a parser and sets ``func=<callable(args) -> int>``
with ``set_defaults``; then add its name and module to ``SUBCOMMANDS`` below. Only the module of
the subcommand being run is imported (``nodeagent run`` never loads the lab, the webhook or the
collector); ``nodeagent --help`` imports them all.

Exit codes: 0 success (also after SIGTERM), 1 runtime failure, 2 bad usage or configuration
(the message names the field, e.g. ``outputs.pcap.max_bytes must be > 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from nodeagent import settings as settings_mod
from nodeagent.settings import ConfigError, Settings

SUBCOMMANDS = {
    "run": "nodeagent.cli",
    "inject": "nodeagent.webhook.inject_cmd",
    "webhook": "nodeagent.webhook.cli",
    "lab": "nodeagent.lab.runner",
    "collect": "nodeagent.collector.main",
    "capture": "nodeagent.client.capture_cmd",
    "status": "nodeagent.client.status_cmd",
}
"""Subcommand -> the module whose ``register(subparsers)`` defines it (imported on demand)."""


def register(subparsers: Any) -> None:
    """``nodeagent run``."""
    _register_run(subparsers)


def _register_run(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run the node agent (flags override the config file)")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON configuration")
    p.add_argument("--listen", metavar="IP:PORT",
                   help=f"tunnel UDP address (port {settings_mod.TUNNEL_PORT})")
    p.add_argument("--sender", metavar="IP,VNI,NAMESPACE/NAME", action="append",
                   help="a monitored pod on this node (repeat; replaces the file's senders); an optional "
                        "4th field PORT[+PORT...] keeps only those pod-side ports (container selection)")
    p.add_argument("--peer", metavar="IP,NAMESPACE/NAME", action="append",
                   help="a monitored pod on another node (repeat; replaces the file's peers); optional "
                        "3rd field PORT[+PORT...]: its container selection")
    p.add_argument("--pcap-dir", metavar="DIR", help="write rotating pcap files here")
    p.add_argument("--sensor", metavar="IP[:PORT]", action="append",
                   help=f"VXLAN sensor (repeat; port {settings_mod.SENSOR_PORT} by default)")
    p.add_argument("--status", metavar="IP:PORT",
                   help=f"/status and /metrics address (port {settings_mod.STATUS_PORT})")
    p.add_argument("--pushdown", metavar="IP:PORT",
                   help=f"/v1/pushdown address, for the sidecars (port {settings_mod.PUSHDOWN_PORT})")
    p.add_argument("--collector", metavar="IP[:PORT]", action="append",
                   help=f"batched TLS output to a collector (repeat; port {settings_mod.COLLECTOR_PORT})")
    p.add_argument("--collector-ca", metavar="FILE", help="CA that signs the collectors' certificates")
    p.add_argument("--collector-cert", metavar="FILE",
                   help="this agent's client certificate for the collectors (with --collector-key)")
    p.add_argument("--collector-key", metavar="FILE", help="the private key of --collector-cert")
    p.add_argument("--dedup-vantage", choices=("client", "server"),
                   help="which vantage of a local flow is kept")
    p.add_argument("--workers", metavar="N|auto",
                   help="worker processes (default auto: one per CPU the agent may use)")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--node-name", metavar="NAME", help="take the pod table from Kubernetes for this node")
    p.add_argument("--kubeconfig", metavar="FILE", help="with --node-name (default: in-cluster account)")
    _register_capture(p)
    p.set_defaults(func=_run)


def _register_capture(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("live capture (GET /v1/capture, TLS; off unless --capture is given)")
    g.add_argument("--capture", metavar="IP:PORT",
                   help=f"capture listener (port {settings_mod.CAPTURE_PORT}); needs a certificate "
                        "and an auth method")
    g.add_argument("--capture-cert", metavar="FILE", help="the listener's certificate chain (PEM)")
    g.add_argument("--capture-key", metavar="FILE", help="the listener's private key (PEM)")
    g.add_argument("--capture-client-ca", metavar="FILE",
                   help="readers present a client certificate signed by this CA (mutual TLS)")
    g.add_argument("--capture-token-file", metavar="FILE",
                   help="readers send 'Authorization: Bearer <the file's first line>'")
    g.add_argument("--capture-kube-auth", action="store_true",
                   help="readers send a Kubernetes bearer token; TokenReview + SubjectAccessReview "
                        "(get pods/capture in the namespaces selected)")


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags -> a mapping merged over the config file (lists replace, scalars override)."""
    over: dict[str, Any] = {}
    if args.listen:
        host, port = settings_mod.parse_hostport(args.listen, settings_mod.TUNNEL_PORT, "--listen")
        over["listen"] = {"host": host, "port": port}
    if args.status:
        host, port = settings_mod.parse_hostport(args.status, settings_mod.STATUS_PORT, "--status")
        over["status"] = {"host": host, "port": port}
    if args.pushdown:
        host, port = settings_mod.parse_hostport(args.pushdown, settings_mod.PUSHDOWN_PORT, "--pushdown")
        over["pushdown"] = {"host": host, "port": port}
    if args.sender:
        over["senders"] = list(args.sender)
    if args.peer:
        over["peers"] = list(args.peer)
    if args.pcap_dir:
        over.setdefault("outputs", {})["pcap"] = {"dir": args.pcap_dir}
    if args.sensor:
        over.setdefault("outputs", {})["sensors"] = list(args.sensor)
    if args.collector:
        over.setdefault("outputs", {}).setdefault("transport", {})["collectors"] = list(args.collector)
    for flag, field in (("collector_ca", "ca_file"), ("collector_cert", "cert_file"),
                        ("collector_key", "key_file")):
        if getattr(args, flag):
            over.setdefault("outputs", {}).setdefault("transport", {})[field] = getattr(args, flag)
    if args.dedup_vantage:
        over["dedup"] = {"vantage": args.dedup_vantage}
    if args.workers:
        over["workers"] = {"count": args.workers}
    if args.log_level:
        over["log"] = {"level": args.log_level}
    capture = {key: value for key, value in (
        ("listen", args.capture), ("cert", args.capture_cert), ("key", args.capture_key),
        ("client_ca", args.capture_client_ca), ("token_file", args.capture_token_file),
        ("kube_auth", args.capture_kube_auth or None)) if value}
    if capture:
        over["capture"] = capture
    if args.node_name or args.kubeconfig:
        kube = {"node_name": args.node_name, "kubeconfig": args.kubeconfig}
        over["kube"] = {key: value for key, value in kube.items() if value}
    return over


def environment_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """Downward-API values under the config file: ``NODE_IP`` -> ``filters.node_ip`` (the
    drop-health-probes preset's node address; a file shared by every node cannot hold it)."""
    node_ip = environ.get("NODE_IP", "").strip()
    return {"filters": {"node_ip": node_ip}} if node_ip else {}


def load_run_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < environment (``environment_defaults``) < config file < flags."""
    over = run_overrides(args)
    base = environment_defaults(os.environ if environ is None else environ)
    if args.config:
        return settings_mod.load_file(args.config, over, base=base)
    return settings_mod.load(settings_mod.merge(base, over))


def _run(args: argparse.Namespace) -> int:
    from nodeagent import app  # imported here: other subcommands need not load aiohttp

    settings = load_run_settings(args)
    logging.basicConfig(level=settings.log.level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(app.run(settings))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with ``only`` that one (its module alone imported)."""
    parser = argparse.ArgumentParser(prog="nodeagent", description="podmirror node agent")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None).parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"nodeagent: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the listen or status address is taken
        print(f"nodeagent: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


PLUGIN_COMMANDS = ("capture", "status")


def kubectl_plugin(argv: Sequence[str] | None = None) -> int:
    """``kubectl-podmirror``: ``kubectl podmirror capture -n shop -l app=web`` runs ``nodeagent capture``.

    kubectl runs any executable named ``kubectl-<name>`` on the PATH for ``kubectl <name> ...`` with
    the remaining arguments; installing podmirror puts this one beside ``nodeagent``. It offers the
    operator commands only. kubectl's own flags reach a plugin only after its name, so
    ``--kubeconfig``/``--context`` go after the subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in PLUGIN_COMMANDS:
        print(f"usage: kubectl podmirror {{{'|'.join(PLUGIN_COMMANDS)}}} [options] (--help after it)",
              file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    return main(args)
