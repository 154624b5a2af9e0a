"""``GET /v1/capture``: a live pcapng stream of what the agent forwards, on its own TLS listener.

Query: the filter of ``capture.filter`` (``pod``, ``namespace``, ``selector``, ``bpf``,
``snaplen``) plus the stream's limits ``count`` (packets) and ``duration`` (seconds). Answers
``200`` with ``application/x-pcapng`` streamed as packets are forwarded (chunked), ``400`` for a
bad query (the message names the parameter), ``401``/``403`` from ``capture_auth.Gate``, ``503``
when ``capture.max_sessions`` streams are open.

The handler works on any ``CaptureHost``: ``open_capture(filter, queue_limit) -> Session``; the
agent is one, a supervisor relaying several workers is another. It never slows the packet path:
records wait in the session's bounded queue while the socket is slow, and the queue's drops are
written as Interface Statistics Blocks (when they change, checked every ``STATS_EVERY`` seconds,
and at the end). A stream ends at ``count``, ``duration``, when the reader goes away, or when the
agent stops (its sessions are closed; the final statistics are still written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from nodeagent.capture.filter import CaptureError, CaptureFilter, parse, stream_limits
from nodeagent.capture.session import Session, TooManySessions
from nodeagent.capture.stream import StreamEncoder
from nodeagent.settings import CaptureSettings, ConfigError, Settings
from nodeagent.tls import server_context
from nodeagent.web import status
from nodeagent.web.capture_auth import Denied, Gate, KubeReviewer

log = logging.getLogger(__name__)

PATH = "/v1/capture"
CONTENT_TYPE = "application/x-pcapng"
STATS_EVERY = 1.0
"""Seconds between checks for new drops (and for a reader that went away while nothing flowed)."""
WRITE_CHUNK = 256 << 10
"""Bytes encoded before each socket write: large enough to amortize the write, small enough to keep
the stream live."""


class CaptureHost(Protocol):
    def open_capture(self, flt: CaptureFilter, queue_limit: int) -> Session: ...



def make_app(host: CaptureHost, gate: Gate, agent_name: str, queue_limit: int) -> web.Application:
    async def capture(request: web.Request) -> web.StreamResponse:
        pairs = list(request.query.items())
        try:
            flt = parse(pairs)
            count, duration = stream_limits(pairs)
        except CaptureError as exc:
            return _error(400, str(exc))
        try:
            who = await gate.check(request.headers.get("Authorization", ""), _peercert(request), flt)
        except Denied as exc:
            log.warning("capture refused (%d) for %s: %s", exc.status, request.remote, exc)
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return _error(exc.status, str(exc), headers)
        try:
            session = host.open_capture(flt, queue_limit)
        except CaptureError as exc:
            return _error(400, str(exc))
        except TooManySessions as exc:
            return _error(503, str(exc))
        log.info("capture %d opened by %s (%s) from %s: %s", session.ident, who.user, who.method,
                 request.remote, flt.as_query() or "every pod")
        try:
            return await _stream(request, session, StreamEncoder(agent_name), count, duration)
        finally:
            session.close()
            log.info("capture %d closed: %d delivered, %d dropped", session.ident, session.delivered,
                     session.total_dropped)

    app = web.Application()
    app.router.add_get(PATH, capture)
    return app


async def _stream(request: web.Request, session: Session, encoder: StreamEncoder, count: int,
                  duration: float) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store",
                                           "X-Content-Type-Options": "nosniff"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(encoder.start())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration if duration else None
    sent = 0
    with contextlib.suppress(ConnectionError):
        while not (count and sent >= count):
            wait = STATS_EVERY if deadline is None else min(STATS_EVERY, deadline - loop.time())
            if wait <= 0:
                break
            try:
                records = await asyncio.wait_for(session.batch(), wait)
            except TimeoutError:
                records = None
            if records == []:
                break  # the session was closed: the agent is stopping
            if records:
                if count:
                    records = records[:count - sent]
                sent += len(records)
                await _write(response, encoder.records(records))
            elif _gone(request):
                return response
            await _write(response, _stats(encoder, session, final=False))
        await _write(response, _stats(encoder, session, final=True))
        await response.write_eof()
    return response


async def _write(response: web.StreamResponse, data: bytes) -> None:
    for offset in range(0, len(data), WRITE_CHUNK):
        await response.write(data[offset:offset + WRITE_CHUNK])


def _stats(encoder: StreamEncoder, session: Session, *, final: bool) -> bytes:
    return encoder.statistics(session.received, session.dropped, time.time_ns(), session.started_ns,
                              final=final, queue_limit=session.queue_limit)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _peercert(request: web.Request) -> dict[str, Any] | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    return cert or None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class CaptureAgent(CaptureHost, Protocol):
    settings: Settings
    capture_address: tuple[str, int] | None

    def add_task(self, name: str, factory: Callable[[], Awaitable[None]]) -> None: ...

    def add_status_hook(self, hook: Callable[[dict[str, Any]], None]) -> None: ...

    def close_captures(self) -> None: ...


def make_gate(s: CaptureSettings, kube_client: Callable[[], Any] | None) -> Gate:
    """The gate from the settings; an unreadable or empty token file is a ``ConfigError``."""
    token = None
    if s.token_file:
        try:
            with open(s.token_file, encoding="utf-8") as handle:
                token = handle.readline().strip()
        except OSError as exc:
            raise ConfigError("capture.token_file", f"cannot be read: {exc.strerror}") from None
        if len(token) < 16:
            raise ConfigError("capture.token_file", "must hold a token of at least 16 characters")
    reviewer = None
    if s.kube_auth:
        if kube_client is None:
            raise ConfigError("capture.kube_auth", "needs the Kubernetes API client")
        reviewer = KubeReviewer(kube_client(), s.audiences)
    return Gate(mtls=bool(s.client_ca), token=token, kube=reviewer)


def install(agent: CaptureAgent, kube_client: Callable[[], Any] | None = None) -> None:
    """The capture listener as a root task, when ``capture.listen`` is set; its ``/status`` part."""
    s = agent.settings.capture
    address = s.address
    if address is None:
        return
    assert s.cert is not None and s.key is not None
    try:
        ctx = server_context(s.cert, s.key, s.client_ca, client_certificate=ssl.CERT_OPTIONAL)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("capture.cert", f"and capture.key (or client_ca) cannot be loaded: {exc}") from None
    gate = make_gate(s, kube_client)
    name = agent.settings.kube.node_name or socket.gethostname()
    app = make_app(agent, gate, name, s.queue_packets)

    async def run() -> None:
        runner, agent.capture_address = await status.serve(app, *address, ssl_context=ctx,
                                                           shutdown_timeout=2.0)
        log.info("capture on https://%s:%d%s (%s)", *agent.capture_address, PATH, ", ".join(gate.methods))
        try:
            await asyncio.Event().wait()  # until the supervisor cancels
        finally:
            agent.close_captures()  # streams end with their statistics, then the runner stops
            await runner.cleanup()
            agent.capture_address = None

    def report(snapshot: dict[str, Any]) -> None:
        part = snapshot.setdefault("capture", {})
        part.update(listen=s.listen, auth=gate.methods, refused=dict(gate.refused))
        if gate.kube is not None:
            part["kube"] = gate.kube.state()

    agent.add_task("capture-server", run)
    agent.add_status_hook(report)
