"""``nodeagent collect``: settings from flags, wiring, lifecycle (SIGTERM/SIGINT -> close, exit 0).

    nodeagent collect --cert FILE --key FILE (--client-ca FILE | --insecure-no-client-auth)
                      [--listen IP:PORT] [--status IP:PORT]
                      [--pcap-dir DIR [--pcap-max-bytes N] [--pcap-max-seconds S] [--pcap-max-files N]]
                      [--sensor IP[:PORT][,VNI]]... [--interface NAME [--interface-existing]]
                      [--max-connections N] [--max-connections-per-peer N] [--handshake-timeout S]
                      [--idle-timeout S] [--max-pods N]

Defaults: listen 0.0.0.0:14790 (agents' ``transport`` collectors), status 0.0.0.0:9478 (the agent's
is 9477, so both fit on one host). At least one sink is required. Agents must present a
certificate signed by ``--client-ca`` (mutual TLS): without it anyone who reaches the port could
inject packets under any pod's name, so running without it takes the explicit
``--insecure-no-client-auth``. Bad flags, and certificate files that cannot be loaded, exit 2
naming the flag.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import ssl
import sys
from typing import Any

from aiohttp import web

from nodeagent.collector import sinks
from nodeagent.collector import web as status_web
from nodeagent.collector.bounds import Limits
from nodeagent.collector.server import Collector
from nodeagent.tls import server_context, trust_clients

DEFAULT_PORT = 14790
DEFAULT_STATUS_PORT = 9478
log = logging.getLogger("nodeagent.collect")


class ConfigError(ValueError):
    pass


def _hostport(text: str, default_port: int, field: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":"):      # no port, or a bare IPv6 address
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{field}: {text!r} is not IP[:PORT]")
    return host, int(port)


@dataclasses.dataclass(frozen=True)
class CollectSettings:
    cert: str
    key: str
    client_ca: str | None = None
    listen: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT)
    status: tuple[str, int] | None = ("0.0.0.0", DEFAULT_STATUS_PORT)
    pcap_dir: str | None = None
    pcap_max_bytes: int = 100 * 2**20
    pcap_max_seconds: float = 300.0
    pcap_max_files: int = 10
    sensors: tuple[tuple[str, int, int | None], ...] = ()
    """VXLAN sensors: (host, port, vni or None to keep the sender's)."""
    interface: str | None = None
    interface_existing: bool = False
    insecure_no_client_auth: bool = False
    limits: Limits = Limits()

    def __post_init__(self) -> None:
        if not (self.pcap_dir or self.sensors or self.interface):
            raise ConfigError("collect: at least one of --pcap-dir, --sensor, --interface is required")
        if self.pcap_max_bytes <= 0 or self.pcap_max_seconds <= 0 or self.pcap_max_files <= 0:
            raise ConfigError("collect.pcap limits must be > 0")
        if not self.client_ca and not self.insecure_no_client_auth:
            raise ConfigError("--client-ca is required: the CA that signs the agents' certificates "
                              "(--insecure-no-client-auth accepts any client, and any pod name from it)")
        if self.client_ca and self.insecure_no_client_auth:
            raise ConfigError("--client-ca and --insecure-no-client-auth exclude each other")

    def context(self) -> ssl.SSLContext:
        """The TLS server context; a file that cannot be loaded is a ConfigError naming its flag."""
        for flag, path in (("--cert", self.cert), ("--key", self.key), ("--client-ca", self.client_ca)):
            if path is not None:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise ConfigError(f"{flag} cannot be read: {exc.strerror} ({path})") from None
        ctx = server_context(None, None)
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"--cert/--key cannot be loaded: {exc}") from None
        if self.client_ca:
            try:
                trust_clients(ctx, self.client_ca)
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"--client-ca cannot be loaded: {exc}") from None
        return ctx


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    p.add_argument("--key", required=True, help="server private key (PEM)")
    p.add_argument("--client-ca", help="require agent certificates signed by this CA (mutual TLS)")
    p.add_argument("--insecure-no-client-auth", action="store_true",
                   help="accept agents without a certificate: anyone reaching the port can inject")
    p.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_PORT}")
    p.add_argument("--status", default=f"0.0.0.0:{DEFAULT_STATUS_PORT}", help="'' disables it")
    p.add_argument("--pcap-dir")
    p.add_argument("--pcap-max-bytes", type=int, default=100 * 2**20)
    p.add_argument("--pcap-max-seconds", type=float, default=300.0)
    p.add_argument("--pcap-max-files", type=int, default=10)
    p.add_argument("--sensor", action="append", default=[], help="VXLAN sensor IP[:PORT][,VNI]")
    p.add_argument("--interface", help="veth to create (or use) for a sniffing sensor")
    p.add_argument("--interface-existing", action="store_true", help="use --interface as it is")
    d = Limits()
    p.add_argument("--max-connections", type=int, default=d.max_connections, help="open connections")
    p.add_argument("--max-connections-per-peer", type=int, default=d.max_connections_per_peer,
                   help="open connections from one source address")
    p.add_argument("--handshake-timeout", type=float, default=d.handshake_timeout,
                   help="seconds for the TLS handshake, and for the HELLO after it")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                   help="seconds without a message before a connection is closed")
    p.add_argument("--max-pods", type=int, default=d.max_pods, help="pods counted by name")


def settings_from(args: argparse.Namespace) -> CollectSettings:
    sensors = []
    for text in args.sensor:
        addr, _, vni = text.partition(",")
        host, port = _hostport(addr, 4789, "--sensor")
        sensors.append((host, port, int(vni, 0) if vni else None))
    try:
        limits = Limits(max_connections=args.max_connections,
                        max_connections_per_peer=args.max_connections_per_peer,
                        handshake_timeout=args.handshake_timeout, idle_timeout=args.idle_timeout,
                        max_pods=args.max_pods)
    except ValueError as exc:
        raise ConfigError(f"--{str(exc).replace('_', '-')}") from None
    return CollectSettings(
        cert=args.cert, key=args.key, client_ca=args.client_ca,
        listen=_hostport(args.listen, DEFAULT_PORT, "--listen"),
        status=_hostport(args.status, DEFAULT_STATUS_PORT, "--status") if args.status else None,
        pcap_dir=args.pcap_dir, pcap_max_bytes=args.pcap_max_bytes,
        pcap_max_seconds=args.pcap_max_seconds, pcap_max_files=args.pcap_max_files,
        sensors=tuple(sensors), interface=args.interface, interface_existing=args.interface_existing,
        insecure_no_client_auth=args.insecure_no_client_auth, limits=limits,
    )


def make_sinks(s: CollectSettings) -> list[sinks.Sink]:
    out: list[sinks.Sink] = []
    if s.pcap_dir:
        out.append(sinks.PcapngSink(s.pcap_dir, max_bytes=s.pcap_max_bytes,
                                    max_seconds=s.pcap_max_seconds, max_files=s.pcap_max_files))
    out += [sinks.VxlanSink(h, p, vni=v) for h, p, v in s.sensors]
    if s.interface:
        out.append(sinks.InterfaceSink(s.interface, create=not s.interface_existing))
    return out


async def run(s: CollectSettings, ctx: ssl.SSLContext) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sinks_ = make_sinks(s)
    log.info("start-up 1/3: TLS loaded (client certificates %s); sinks ready: %s",
             "required" if s.client_ca else "NOT required", ", ".join(_describe(k) for k in sinks_) or "none")
    collector = Collector(sinks_, ctx, s.limits)
    if not s.client_ca:
        log.warning("client authentication is off (--insecure-no-client-auth): anyone who reaches "
                    "%s:%d can send packets under any pod's name", *s.listen)
    runner = web.AppRunner(status_web.make_app(collector), handle_signals=False)
    try:
        host, port = await collector.start(*s.listen)
        log.info("start-up 2/3: listening for agents on %s:%d", host, port)
        if s.status:
            await runner.setup()
            await web.TCPSite(runner, *s.status).start()
            log.info("start-up 3/3: status on http://%s:%d/status", *runner.addresses[0][:2])
        else:
            log.info("start-up 3/3: no status listener (--status)")
        # Stdout line for tests and scripts: the bound port (0 in --listen picks one).
        print(f"listening {host}:{port}", flush=True)
        await stop.wait()
    finally:
        await collector.stop()
        await runner.cleanup()
    return 0


def _describe(sink: sinks.Sink) -> str:
    """``pcapng DIR``, ``vxlan HOST:PORT``, ``interface NAME``: a start-up progress line's words."""
    state = sink.state()
    where = state.get("directory") or state.get("sensor") or state.get("interface") or ""
    return f"{state.get('kind', type(sink).__name__)} {where}".strip()


def register(subparsers: Any) -> None:
    """``nodeagent collect`` (cli.py calls this)."""
    p = subparsers.add_parser("collect", help="receive batches from agents and hand them to a sensor")
    add_arguments(p)
    p.set_defaults(func=command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodeagent collect")
    add_arguments(parser)
    return command(parser.parse_args(argv))


def command(args: argparse.Namespace) -> int:
    """Entry for ``nodeagent collect`` (cli.py dispatches here)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = settings_from(args)
        ctx = settings.context()
    except ConfigError as exc:
        print(f"nodeagent collect: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(settings, ctx))
