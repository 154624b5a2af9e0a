"""The status server: ``/healthz``, ``/readyz``, ``/status`` (JSON) and ``/metrics`` (Prometheus).

``make_app`` takes a ``StatusSource`` (the agent) and returns an aiohttp application; ``serve``
runs it with ``AppRunner(handle_signals=False)`` so that the agent, not aiohttp, owns SIGTERM.
Extra routes (``Route`` tuples) come from other parts of the agent, e.g. the push-down endpoint.

``/status`` and ``/metrics`` first ``await source.refresh()`` (a worker pool fetches its workers'
counters), then read ``source.status()``, built in one synchronous call on the loop thread from
snapshots each taken in one synchronous call, so the invariant ``received == forwarded +
sum(drops) + held`` holds in every response. ``drops`` holds the pipeline's reasons
(``verdict.Drop``); what each output lost after that is under ``outputs.<name>.dropped``
(``verdict.OutputDrop``), so no reason is listed twice or where nothing can emit it.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Route(NamedTuple):
    method: str
    path: str
    handler: Handler


class StatusSource(Protocol):
    async def refresh(self) -> None:
        """Bring the counters up to date (a worker pool asks its workers); then ``status()``."""

    def status(self) -> dict[str, Any]: ...

    def is_ready(self) -> bool: ...


def make_app(
    source: StatusSource, registry: CollectorRegistry, routes: Sequence[Route] = ()
) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        if source.is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def status(_request: web.Request) -> web.Response:
        await source.refresh()
        return web.json_response(source.status(), dumps=_dumps)

    async def metrics(_request: web.Request) -> web.Response:
        await source.refresh()
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    return app


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, indent=1, sort_keys=True) + "\n"


async def serve(app: web.Application, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                shutdown_timeout: float = 60.0) -> tuple[web.AppRunner, tuple[str, int]]:
    """Start ``app`` on host:port (0: any free port), over TLS with ``ssl_context``. Returns the
    runner and the bound address. The one way the agent serves HTTP (status, capture)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockname = runner.addresses[0]
    return runner, (sockname[0], sockname[1])
