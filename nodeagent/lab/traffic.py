"""Workloads for the lab: small servers and clients for HTTP, DNS over UDP, TLS and ICMP (stdlib only).

Run inside a namespace as ``python -m nodeagent.lab.traffic serve ...`` (one process serves
HTTP, DNS and TLS on dual-stack sockets) and ``python -m nodeagent.lab.traffic client ...``
(one round of each exchange per ``--rounds``; prints one JSON object with what succeeded, so the
caller can assert that the workload really ran). iperf3 is started by the lab itself.

Every client exchange checks its answer (HTTP body length, the DNS answer's address, the TLS
peer certificate, the ICMP echo identifier), so a broken path is a failed workload, not silence.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.request
from typing import Any

HTTP_PORT, DNS_PORT, TLS_PORT, IPERF_PORT = 8080, 53, 8443, 5201
DNS_ANSWER = "10.0.0.53"


# -- servers --------------------------------------------------------------------------------------
class _DualStack(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Corpus:
    """Real documents served one after the other, each once per pass: no two responses in a row
    repeat, so a compressor downstream sees content as varied as a service's (see ``corpus_files``)."""

    def __init__(self, listing: str) -> None:
        with open(listing, encoding="utf-8") as handle:
            self.paths = [line.rstrip("\n") for line in handle if line.strip()]
        self._next = 0
        self._lock = threading.Lock()

    def next(self) -> bytes:
        with self._lock:
            path = self.paths[self._next % len(self.paths)]
            self._next += 1
        with open(path, "rb") as handle:
            return handle.read()


CORPUS_ROOTS = ("/usr/share", "/usr/lib", sys.prefix)
CORPUS_KINDS = ((".json", "json"), (".html", "html"), (".htm", "html"), (".txt", "text"), (".md", "text"),
                (".rst", "text"), (".py", "text"))


def corpus_files(limit: int = 24 << 20, roots: tuple[str, ...] = CORPUS_ROOTS) -> list[str]:
    """Text, JSON and HTML files of this machine (2 to 512 KB each), about ``limit`` bytes, a third
    of each kind where the machine has enough, each content once, the kinds interleaved: a web
    service's mix of responses without a single repeated body."""
    import hashlib
    import itertools

    by_kind: dict[str, list[str]] = {"json": [], "html": [], "text": []}
    sizes: dict[str, int] = dict.fromkeys(by_kind, 0)
    seen: set[bytes] = set()
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                kind = next((k for ext, k in CORPUS_KINDS if name.endswith(ext)), None)
                path = os.path.join(folder, name)
                if kind is None or sizes[kind] >= limit // 3 or not 2048 <= _size(path) <= 512 << 10:
                    continue
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).digest()
                if digest not in seen:
                    seen.add(digest)
                    by_kind[kind].append(path)
                    sizes[kind] += _size(path)
            if all(n >= limit // 3 for n in sizes.values()):
                break
    return [p for group in itertools.zip_longest(*by_kind.values()) for p in group if p is not None]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _http_handler(body: bytes, corpus: Corpus | None = None) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            data = corpus.next() if corpus is not None else body
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # quiet: the lab shows its own progress
            pass
    return Handler


def dns_answer(query: bytes, answer: str = DNS_ANSWER) -> bytes:
    """A response with one A record for the (first) question of ``query``; pure."""
    qid = query[:2]
    end = 12
    while query[end] != 0:
        end += query[end] + 1
    question = query[12:end + 5]
    header = qid + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton(answer)
    return header + question + record


def dns_query(name: str, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 1, 1)


def _serve_dns(port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    while True:
        data, addr = sock.recvfrom(2048)
        if len(data) > 12:
            sock.sendto(dns_answer(data), addr)


def _serve_tls(port: int, cert: str, key: str, body: bytes) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_tls_session, args=(ctx, conn, body), daemon=True).start()


def _tls_session(ctx: ssl.SSLContext, conn: socket.socket, body: bytes) -> None:
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1024)
            tls.sendall(struct.pack("!I", len(body)) + body)
    except OSError:
        pass


def serve(args: argparse.Namespace) -> None:
    body = os.urandom(args.body)
    httpd = _DualStack(("::", args.http), _http_handler(body, Corpus(args.corpus) if args.corpus else None))
    threading.Thread(target=_serve_dns, args=(args.dns,), daemon=True).start()
    if args.cert:
        threading.Thread(target=_serve_tls, args=(args.tls, args.cert, args.key, body), daemon=True).start()
    print("ready", flush=True)
    httpd.serve_forever()


def sink(port: int) -> None:
    """Receive and discard UDP datagrams on ``port`` (a sensor's VXLAN port: no ICMP unreachable)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("::", port))
    buf = bytearray(65536)
    print("ready", flush=True)
    while True:
        sock.recv_into(buf)


# -- clients --------------------------------------------------------------------------------------
def _http_get(host: str, port: int) -> int:
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return len(resp.read())


def _dns(host: str, port: int, qid: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(dns_query("web.lab.podmirror", qid), (host, port))
        data = sock.recv(2048)
    return data[:2] == struct.pack("!H", qid) and data[-4:] == socket.inet_aton(DNS_ANSWER)


def _tls(host: str, port: int, cafile: str) -> int:
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((host, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="web.lab.podmirror") as tls:
        tls.sendall(b"GET\n")
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    return len(data) - 4


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def ping(host: str, count: int, ident: int, timeout: float = 1.0) -> int:
    """ICMP or ICMPv6 echo over a raw socket; returns the number of matching replies."""
    v6 = ":" in host
    family, proto, req, rep = ((socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129) if v6
                               else (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0))
    replies = 0
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        for seq in range(count):
            payload = b"podmirror-lab" + bytes(19)
            msg = struct.pack("!BBHHH", req, 0, 0, ident, seq) + payload
            if not v6:  # the kernel fills ICMPv6 checksums, not ICMPv4 ones
                msg = msg[:2] + struct.pack("!H", _checksum(msg)) + msg[4:]
            sock.sendto(msg, (host, 0))
            replies += _await_echo(sock, rep, ident, seq, v6, time.monotonic() + timeout)
    return replies


def _await_echo(sock: socket.socket, rep: int, ident: int, seq: int, v6: bool, deadline: float) -> int:
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return 0
        icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
        if len(icmp) >= 8 and icmp[0] == rep and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
            return 1
    return 0


def client(args: argparse.Namespace) -> dict[str, int]:
    done = {"http_bytes": 0, "dns_ok": 0, "tls_bytes": 0, "ping_replies": 0, "errors": 0}
    for i in range(args.rounds):
        for host in args.target:
            try:
                done["http_bytes"] += _http_get(host, args.http)
                done["dns_ok"] += _dns(host, args.dns, (os.getpid() + i) & 0xFFFF)
                if args.cafile:
                    done["tls_bytes"] += _tls(host, args.tls, args.cafile)
                done["ping_replies"] += ping(host, args.ping, os.getpid() & 0xFFFF)
            except OSError as exc:
                done["errors"] += 1
                print(f"traffic: {host}: {exc}", file=sys.stderr)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodeagent.lab.traffic")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("sink").add_argument("--port", type=int, default=4789)
    for name in ("serve", "client"):
        p = sub.add_parser(name)
        p.add_argument("--http", type=int, default=HTTP_PORT)
        p.add_argument("--dns", type=int, default=DNS_PORT)
        p.add_argument("--tls", type=int, default=TLS_PORT)
    s = sub.choices["serve"]
    s.add_argument("--body", type=int, default=20_000, help="bytes per HTTP and TLS response")
    s.add_argument("--corpus", help="a file listing documents: HTTP answers each GET with the next one")
    s.add_argument("--cert")
    s.add_argument("--key")
    c = sub.choices["client"]
    c.add_argument("--target", action="append", required=True, help="server address (repeat: v4, v6)")
    c.add_argument("--cafile")
    c.add_argument("--rounds", type=int, default=1)
    c.add_argument("--ping", type=int, default=2, help="echo requests per round and target")
    args = parser.parse_args(argv)
    if args.cmd == "sink":
        sink(args.port)
        return 0
    if args.cmd == "serve":
        serve(args)
        return 0
    print(json.dumps(client(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
