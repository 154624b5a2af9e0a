"""Helpers for live-capture tests: certificates, a raw HTTPS stream reader, pcapng decoding with tshark."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import trustme

from nodeagent.wire import pcapng

TOKEN = "capture-test-token-0123456789abcdef"


class CaptureCerts(NamedTuple):
    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str
    other_cert: str
    """A client certificate from a CA the agent does not trust."""
    other_key: str


def make_certs(tmp: Path, *hosts: str) -> CaptureCerts:
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert(*(hosts or ("127.0.0.1",)), "podmirror-agent.podmirror.svc")
    client, stranger = ca.issue_cert("alice@example"), other.issue_cert("mallory@example")
    paths = {}
    for name, blob in (("ca", ca.cert_pem), ("cert", server.cert_chain_pems[0]),
                       ("key", server.private_key_pem),
                       ("client_cert", client.cert_chain_pems[0]), ("client_key", client.private_key_pem),
                       ("other_cert", stranger.cert_chain_pems[0]), ("other_key", stranger.private_key_pem)):
        path = tmp / f"capture-{name}.pem"
        blob.write_to_path(str(path))
        paths[name] = str(path)
    return CaptureCerts(**paths)


def client_context(certs: CaptureCerts, *, cert: bool = True, other: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    if other:
        ctx.load_cert_chain(certs.other_cert, certs.other_key)
    elif cert:
        ctx.load_cert_chain(certs.client_cert, certs.client_key)
    return ctx


def capture_settings(certs: CaptureCerts, **extra: Any) -> dict[str, Any]:
    return {"listen": "127.0.0.1:0", "cert": certs.cert, "key": certs.key, "client_ca": certs.ca, **extra}


class Stream(NamedTuple):
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@contextlib.asynccontextmanager
async def open_stream(address: tuple[str, int], query: str, ctx: ssl.SSLContext, *, token: str = "",
                      rcvbuf: int = 0) -> AsyncIterator[Stream]:
    """GET /v1/capture?query over TLS; the body is left in ``reader`` (chunked: use ``read_body``)."""
    sock = None
    if rcvbuf:
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
    if sock is not None:
        reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="127.0.0.1",
                                                       limit=1 << 20)
    else:
        reader, writer = await asyncio.open_connection(*address, ssl=ctx, limit=1 << 20)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        writer.write(f"GET /v1/capture?{query} HTTP/1.1\r\nHost: agent\r\n{auth}"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        yield Stream(status, headers, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """The rest of a chunked body, until its last chunk."""
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


def decode(data: bytes) -> tuple[list[pcapng.Packet], dict[int, pcapng.Interface], list[pcapng.Stats]]:
    reader = pcapng.Reader()
    reader.feed(data)
    packets, ifaces, stats = [], {}, []
    for block in reader.blocks():
        if block.kind == pcapng.IDB:
            ifaces[len(ifaces)] = pcapng.read_interface(block.body)
        elif block.kind == pcapng.EPB:
            packets.append(pcapng.read_packet(block.body))
        elif block.kind == pcapng.ISB:
            stats.append(pcapng.read_statistics(block.body))
    assert reader.pending == 0, "the stream ends inside a block"
    return packets, ifaces, stats


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t"]
    for name in fields:
        cmd += ["-e", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines()]
