"""The status page in headless Chromium (Debian's package, driven over the DevTools protocol): it
renders, updates itself, shows the numbers ``/status`` holds, loads nothing from anywhere else, and
its screenshot is a real picture.

Chromium runs as root, hence ``--no-sandbox``; a fresh ``--user-data-dir`` per test; no network
besides the agent on loopback (``--disable-background-networking`` and friends)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import struct
import subprocess
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.component.agent_kit import (
    get_status,
    make_settings,
    running,
    send_tunnel,
    sender,
    tcp_frame,
    tunnel_port,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="needs Debian's chromium package (scripts/setup.sh --test)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
         "--window-size=1280,1000", "--remote-debugging-port=0"]


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})  # type: ignore[no-any-return]
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"page never satisfied {expression!r}")


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    assert CHROMIUM is not None
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.loads(response.read()) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        try:
            yield tools
        finally:
            tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


SHOWN = """JSON.stringify({
  fields: [...document.querySelectorAll('[data-k]')].map(e => [JSON.parse(e.dataset.k), e.textContent]),
  sums: [...document.querySelectorAll('[data-sum]')].map(e => [JSON.parse(e.dataset.sum), e.textContent]),
  pods: [...document.querySelectorAll('#pods tbody tr[data-pod]')].map(e => e.dataset.pod),
  ready: document.getElementById('ready').textContent})"""


def lookup(status: Any, path: list[Any]) -> Any:
    for key in path:
        status = status[key]
    return status


def shown_number(text: str) -> int:
    return int(text.replace(",", ""))


def png_pixels(data: bytes) -> tuple[int, int, set[int]]:
    """Width, height and the distinct byte values of the decompressed image data (no PIL needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    offset, idat = 8, b""
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            idat += data[offset + 8:offset + 8 + length]
        offset += 12 + length
    return width, height, set(zlib.decompress(idat)[:2_000_000])



def _drive(url: str, profile: Path, shot: Path) -> dict[str, Any]:
    with chromium(profile) as tools:
        tools.call("Network.enable")
        tools.call("Runtime.enable")
        tools.call("Log.enable")
        tools.call("Page.navigate", url=url)
        try:
            tools.wait("+document.body.getAttribute('data-rendered') >= 2")  # two reads: rates exist
        except AssertionError:
            shown_error = tools.evaluate("document.getElementById('error').textContent")
            other = [e for e in tools.events if "Network" not in e.get("method", "")]
            raise AssertionError(f"page error {shown_error!r}, events {other}") from None
        shown = json.loads(tools.evaluate(SHOWN))
        png = base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
        shot.write_bytes(png)
        shown["requests"] = [e["params"]["request"]["url"] for e in tools.events
                             if e.get("method") == "Network.requestWillBeSent"]
        shown["errors"] = [e["params"] for e in tools.events
                           if e.get("method") in ("Runtime.exceptionThrown", "Log.entryAdded")
                           and e["params"].get("entry", {}).get("level", "error") == "error"]
        shown["rendered"] = int(tools.evaluate("document.body.getAttribute('data-rendered')"))
        return shown


async def test_status_page_shows_the_numbers_of_status_and_loads_nothing_else(tmp_path: Path) -> None:
    settings = make_settings(outputs={"pcap": {"dir": str(tmp_path / "pcap")}},
                             senders=["127.0.0.1,5,shop/web", "127.0.0.3,7,shop/db"])
    async with running(settings, extensions=True) as agent:
        with sender() as web:
            send_tunnel(web, tunnel_port(agent), tcp_frame(b"hello", src="127.0.0.1"), vni=5, count=30)
            send_tunnel(web, tunnel_port(agent), tcp_frame(b"x"), vni=9, count=3)  # wrong VNI: drops
        while (await get_status(agent))["received"] < 33:
            await asyncio.sleep(0.05)
        assert agent.status_address is not None
        host, port = agent.status_address
        url = f"http://{host}:{port}/"
        shot = tmp_path / "page.png"
        shown = await asyncio.to_thread(_drive, url, tmp_path / "profile", shot)
        status = await get_status(agent)
    origin = url.rstrip("/")
    assert shown["requests"] and all(r.startswith(origin) for r in shown["requests"]), shown["requests"]
    assert shown["errors"] == []  # no script error, no CSP violation
    assert shown["ready"] == "ready"
    assert shown["pods"] == ["shop/db", "shop/web"]
    paths = {json.dumps(path) for path, _ in shown["fields"]}
    for needed in (["received"], ["forwarded"], ["pods", "shop/web", "received"], ["drops", "wrong_vni"],
                   ["outputs", "pcap", "packets"], ["socket", "kernel_drops"]):
        assert json.dumps(needed) in paths, f"{needed} is not shown"
    for path, text in shown["fields"]:
        value = lookup(status, path)
        assert shown_number(text) == value, f"{path}: page {text}, /status {value}"
    for path, text in shown["sums"]:
        assert shown_number(text) == sum(lookup(status, path).values()), path
    width, height, values = png_pixels(shot.read_bytes())
    assert width == 1280 and height > 600  # the window, less whatever chrome headless keeps
    assert len(values) > 50, "the screenshot is (nearly) blank"


def test_page_is_self_contained() -> None:
    from nodeagent.web import page

    html, csp = page.render()
    bare = html.replace("http://www.w3.org/2000/svg", "")  # the SVG namespace name, never fetched
    assert "http://" not in bare and "https://" not in bare and "//" + "cdn" not in bare
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "innerHTML" not in html  # watched pods' strings are only ever text
