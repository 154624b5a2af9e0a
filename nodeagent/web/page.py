"""``GET /``: the agent's status page for people: one self-contained HTML document, no external asset.

The page holds no data of its own: its script fetches ``status`` (relative, so it also works
behind a path prefix such as the apiserver's pod proxy) every ``REFRESH`` seconds and renders it
with ``textContent`` only (pod names and malformed-input reasons come from watched pods: never
parsed as HTML). Rates are differences between two reads of the counters; the small charts are
inline SVG polylines of the last ``HISTORY`` rates. Every number shown carries ``data-k``, the
path of the ``/status`` field it shows (``pods.shop/web.received``), so a test can compare the
page with ``/status`` field by field.

Served by the status application, next to ``/status``: whoever may read ``/status`` may read the
page and nobody else (it shows nothing ``/status`` does not). A Content-Security-Policy with the
hashes of the inline script and style allows nothing else: no external script, style, font or
image, and requests only to the agent itself.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

REFRESH = 2.0
HISTORY = 60


def _asset(name: str) -> str:
    return resources.files("nodeagent.web").joinpath("page_assets", name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def render() -> tuple[str, str]:
    """(the HTML document, its Content-Security-Policy)."""
    style = _asset("page.css")
    script = _asset("page.js").replace("__REFRESH_MS__", str(int(REFRESH * 1000))).replace(
        "__HISTORY__", str(HISTORY))
    html = _asset("page.html").replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
    csp = (f"default-src 'none'; script-src '{_sha256(script)}'; style-src '{_sha256(style)}'; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp


class PageHost(Protocol):
    def add_route(self, method: str, path: str, handler: Any) -> None: ...


def install(agent: PageHost) -> None:
    html, csp = render()
    body = html.encode()
    headers = {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp,
               "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer"}

    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    agent.add_route("GET", "/", page)
