"""``nodeagent capture``: one live pcapng of the selected pods, merged from every agent that holds them.

    nodeagent capture -n shop -l app=web | wireshark -k -i -
    nodeagent capture -n shop web-0 web-1 -w web.pcapng --duration 30
    nodeagent capture --agent https://10.1.0.2:9479 --agent https://10.2.0.2:9479 \\
        --cacert ca.pem --cert me.pem --key me.key -n default -l app=web --count 100 -w out.pcapng

With Kubernetes (``client.agents``): the selected pods -> their nodes -> the agent on each node,
one ``GET /v1/capture`` stream per node, authenticated with the kubeconfig's bearer token (the
agent checks it with TokenReview and ``get pods/capture``) or a client certificate (``--cert``).
Without Kubernetes: ``--agent URL`` (repeat) and the same filter flags. The streams are merged in
timestamp order (``client.merge``) into stdout or ``-w FILE``. It ends at ``--count`` packets,
after ``--duration`` seconds (the agents end their streams then, with their final statistics),
on Ctrl-C/SIGTERM, or when every stream has ended; the output then closes with each pod's
statistics (packets the agents offered, packets dropped because this reader was slow). Progress
goes to stderr every 2 s (``-q`` silences it). Exit 0, or 1 when an agent could not be streamed
from (the others are still written), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
import time
from typing import IO, Any

from nodeagent.capture.filter import CaptureError, CaptureFilter, parse
from nodeagent.client import agents
from nodeagent.client.merge import Item, Merger, Output
from nodeagent.settings import CAPTURE_PORT
from nodeagent.wire import Malformed, pcapng

PROGRESS_EVERY = 2.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("capture", help="live pcapng of pods, merged across nodes (to Wireshark)",
                              description=__doc__.split("\n\n")[0])
    add_selection(p)
    p.add_argument("--bpf", metavar="EXPR", default="", help="tcpdump expression applied by the agents")
    p.add_argument("--snaplen", type=int, default=0, help="bytes kept per packet (0: whole)")
    p.add_argument("-w", "--write", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    p.add_argument("--count", type=int, default=0, help="stop after this many packets")
    p.add_argument("--merge-delay", type=float, default=0.5,
                   help="seconds a packet is held to be ordered among the nodes' streams (default 0.5)")
    add_connection(p, CAPTURE_PORT)
    p.add_argument("--cacert", metavar="FILE", help="CA of the agents' capture certificates")
    p.add_argument("--cert", metavar="FILE", help="client certificate (mutual TLS)")
    p.add_argument("--key", metavar="FILE", help="its private key")
    p.add_argument("--token-file", metavar="FILE", help="bearer token (default: the kubeconfig's)")
    p.add_argument("--tls-server-name", metavar="NAME",
                   help=f"name on the agents' certificate (Kubernetes: {agents.SERVER_NAME})")
    p.set_defaults(func=command)


def add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("pods", nargs="*", metavar="POD", help="pod names in --namespace")
    p.add_argument("-n", "--namespace", default="", help="namespace of the pods (default: default)")
    p.add_argument("-l", "--selector", default="", help="label selector (k=v,k!=v,k,!k)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="pods of every namespace")


def add_connection(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--agent", metavar="URL", action="append", default=[],
                   help=f"an agent to use without Kubernetes (repeat; port {port} by default)")
    p.add_argument("--kubeconfig", metavar="FILE")
    p.add_argument("--context", metavar="NAME")
    p.add_argument("--agent-namespace", default=agents.AGENT_NAMESPACE)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def capture_filter(args: argparse.Namespace) -> CaptureFilter:
    namespace = "" if args.all_namespaces else (args.namespace or ("default" if args.pods or not args.agent
                                                                    else ""))
    pairs = [("pod", f"{namespace or 'default'}/{name}") for name in args.pods]
    pairs += [(k, v) for k, v in (("namespace", namespace), ("selector", args.selector), ("bpf", args.bpf),
                                  ("snaplen", str(args.snaplen) if args.snaplen else "")) if v]
    return parse(pairs)


def command(args: argparse.Namespace) -> int:
    try:
        flt = capture_filter(args)
    except CaptureError as exc:
        print(f"nodeagent capture: {exc}", file=sys.stderr)
        return 2
    if args.count < 0 or args.duration < 0 or bool(args.cert) != bool(args.key):
        print("nodeagent capture: --count and --duration must be >= 0; --cert needs --key", file=sys.stderr)
        return 2
    try:
        plan = make_plan(args, flt)
    except (agents.DiscoveryError, ValueError, OSError, ssl.SSLError) as exc:
        print(f"nodeagent capture: {exc}", file=sys.stderr)
        return 1
    if not plan.endpoints:
        print("nodeagent capture: no agent holds the selected pods", file=sys.stderr)
        return 1
    out = open(args.write, "wb") if args.write else sys.stdout.buffer  # noqa: SIM115 - closed below
    try:
        return asyncio.run(Capture(plan, args, out).run())
    finally:
        if args.write:
            out.close()


class Plan:
    def __init__(self, endpoints: list[agents.Endpoint], query: str, ctx: ssl.SSLContext,
                 token: str | None, server_name: str | None) -> None:
        self.endpoints, self.query, self.ctx = endpoints, query, ctx
        self.token, self.server_name = token, server_name


def make_plan(args: argparse.Namespace, flt: CaptureFilter) -> Plan:
    ctx = ssl.create_default_context(cafile=args.cacert)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            token = handle.readline().strip()
    query = flt.as_query() + (f"&duration={args.duration}" if args.duration else "")
    if args.agent:
        endpoints = [agents.from_url(url, CAPTURE_PORT) for url in args.agent]
        return Plan(endpoints, query, ctx, token, args.tls_server_name)
    import kubernetes.client

    client = agents.api_client(args.kubeconfig, args.context)
    core = kubernetes.client.CoreV1Api(client)
    namespace = None if args.all_namespaces else (args.namespace or "default")
    pods = agents.selected_pods(core, namespace, args.selector, args.pods)
    nodes = sorted({p["node"] for p in pods if p["node"]})
    agents.say(f"capture: {len(pods)} pods selected on {len(nodes)} nodes: "
               f"{', '.join(p['namespace'] + '/' + p['name'] for p in pods[:10])}"
               f"{' ...' if len(pods) > 10 else ''}", args.quiet)
    by_node = agents.agents(core, args.agent_namespace)
    for node in nodes:
        if node not in by_node:
            agents.say(f"capture: warning: no running agent on node {node}: its pods are not captured")
    if not args.cert and token is None:
        token = agents.bearer_token(client)
    return Plan([by_node[n] for n in nodes if n in by_node], query, ctx, token,
                args.tls_server_name or agents.SERVER_NAME)


class Capture:
    """Streams from every agent into the merger; the merger into the output."""

    def __init__(self, plan: Plan, args: argparse.Namespace, out: IO[bytes]) -> None:
        self.plan, self.args, self.out = plan, args, out
        self.merger = Merger(args.merge_delay)
        self.output = Output()
        self.stats: dict[tuple[str, str], pcapng.Stats] = {}
        self.received: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        self.stop = asyncio.Event()
        self.started_ns = time.time_ns()
        self.closed_output = False

    async def run(self) -> int:
        import aiohttp

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        self.write(self.output.start())
        names = ", ".join(f"{e.node} ({e.host})" for e in self.plan.endpoints)
        agents.say(f"capture: streaming from {len(self.plan.endpoints)} agents: {names}", self.args.quiet)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            tasks = [asyncio.create_task(self.stream(http, e), name=f"capture-{e.node}")
                     for e in self.plan.endpoints]
            try:
                await self.pump(tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        self.finish()
        for node, why in self.failed.items():
            agents.say(f"capture: {node}: {why}")
        return 1 if self.failed else 0

    async def pump(self, tasks: list[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.args.duration + 5.0 if self.args.duration else None
        shown = loop.time()
        while not self.stop.is_set() and not self.closed_output:
            if all(t.done() for t in tasks) or (deadline is not None and loop.time() > deadline):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.1)
            self.emit(self.merger.ready(loop.time()))
            if loop.time() - shown >= PROGRESS_EVERY:
                shown = loop.time()
                self.progress()
        self.emit(self.merger.drain())

    async def stream(self, http: Any, endpoint: agents.Endpoint) -> None:
        import aiohttp

        headers = {"Authorization": f"Bearer {self.plan.token}"} if self.plan.token else {}
        url = f"{endpoint.capture_url}/v1/capture?{self.plan.query}"
        try:
            async with http.get(url, headers=headers, ssl=self.plan.ctx,
                                server_hostname=self.plan.server_name) as response:
                if response.status != 200:
                    self.failed[endpoint.node] = f"{response.status} {(await response.text())[:300]}"
                    return
                reader = pcapng.Reader()
                ifaces: dict[int, pcapng.Interface] = {}
                async for chunk in response.content.iter_any():
                    reader.feed(chunk)
                    self.blocks(endpoint.node, reader, ifaces)
        except (aiohttp.ClientError, OSError, Malformed, ssl.SSLError) as exc:
            self.failed[endpoint.node] = f"{type(exc).__name__}: {exc}"

    def blocks(self, node: str, reader: pcapng.Reader, ifaces: dict[int, pcapng.Interface]) -> None:
        now = asyncio.get_running_loop().time()
        for block in reader.blocks():
            if block.kind == pcapng.SHB:
                ifaces.clear()
            elif block.kind == pcapng.IDB:
                ifaces[len(ifaces)] = pcapng.read_interface(block.body)
            elif block.kind == pcapng.EPB:
                p = pcapng.read_packet(block.body)
                iface = ifaces.get(p.iface, pcapng.Interface(f"{node}/interface-{p.iface}", ""))
                self.merger.push(Item(p.ts_ns, iface.name, iface.description, p.frame, p.wire_len, p.flags,
                                      p.comment), now)
                self.received[node] = self.received.get(node, 0) + 1
            elif block.kind == pcapng.ISB:
                s = pcapng.read_statistics(block.body)
                described = ifaces.get(s.iface)
                if described is not None:
                    self.stats[(node, described.name)] = s

    def emit(self, items: list[Item]) -> None:
        count = self.args.count
        if count:
            items = items[:max(0, count - self.output.packets)]
        if items:
            self.write(self.output.items(items))
        if count and self.output.packets >= count:
            self.stop.set()

    def write(self, data: bytes) -> None:
        if self.closed_output or not data:
            return
        try:
            self.out.write(data)
            self.out.flush()
        except BrokenPipeError:  # Wireshark or head closed the pipe: a normal way to stop
            self.closed_output = True
            self.stop.set()

    def progress(self) -> None:
        per_node = ", ".join(f"{n} {c}" for n, c in sorted(self.received.items())) or "nothing yet"
        dropped = sum(s.dropped or 0 for s in self.stats.values())
        agents.say(f"capture: {self.output.packets} packets written (received {per_node}); "
                   f"{dropped} dropped by the agents' queues; {len(self.failed)} agents failed",
                   self.args.quiet)

    def finish(self) -> None:
        late = f"; {self.merger.late} packets arrived too late to be in order" if self.merger.late else ""
        self.write(self.output.finish(self.stats, time.time_ns(), self.started_ns, late))
        self.progress()
        if self.closed_output:
            with contextlib.suppress(OSError):
                sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - silences Python's flush at exit
