"""Push-down parsing (pure) and the poller against a loopback HTTP server (fail open)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from sidecar_lite import cbpf, rules


def test_build_url_adds_the_contract_query() -> None:
    url = rules.build_url(
        "http://{agent_host}:9477/v1/pushdown", ip="10.1.0.5", vni=5, mode="sniff", agent_host="10.0.0.1"
    )
    assert url == "http://10.0.0.1:9477/v1/pushdown?ip=10.1.0.5&vni=5&mode=sniff"
    assert rules.build_url("http://a/x?t=1", ip="1", vni=2, mode="kernel").endswith(
        "?t=1&ip=1&vni=2&mode=kernel"
    )


def test_parse_program_and_null() -> None:
    answer = rules.parse(b'{"version": "v1", "bpf": [[6, 0, 0, 0]]}')
    assert answer == rules.Pushdown("v1", (cbpf.Instruction(6, 0, 0, 0),))
    assert rules.parse(b'{"version": "v2", "bpf": null}') == rules.Pushdown("v2", None)


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"bpf": null}', b'{"version": "1", "bpf": [[1]]}'])
def test_parse_rejects_nonsense(body: bytes) -> None:
    with pytest.raises(rules.BadAnswer):
        rules.parse(body)


class _Agent(http.server.BaseHTTPRequestHandler):
    answer: bytes = b""
    paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def agent() -> Iterator[tuple[http.server.HTTPServer, type[_Agent]]]:
    handler = type("Handler", (_Agent,), {"paths": [], "answer": b""})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_poller_reports_only_changes(agent: tuple[http.server.HTTPServer, type[_Agent]]) -> None:
    server, handler = agent
    url = rules.build_url(
        f"http://127.0.0.1:{server.server_port}/v1/pushdown", ip="10.1.0.5", vni=5, mode="kernel"
    )
    poller = rules.Poller(url)
    handler.answer = json.dumps({"version": "a", "bpf": [[6, 0, 0, 0]]}).encode()
    assert poller.poll() == rules.Pushdown("a", (cbpf.Instruction(6, 0, 0, 0),))
    assert poller.poll() is None
    handler.answer = json.dumps({"version": "b", "bpf": None}).encode()
    assert poller.poll() == rules.Pushdown("b", None)
    assert handler.paths[0] == "/v1/pushdown?ip=10.1.0.5&vni=5&mode=kernel"


def test_unreachable_agent_keeps_the_current_program_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    poller = rules.Poller(f"http://127.0.0.1:{port}/v1/pushdown")
    assert poller.poll() is None and poller.poll() is None
    assert poller.current is None
    assert sum("unusable" in r.message for r in caplog.records) == 1


def test_the_readiness_question_asks_with_check_and_no_mode() -> None:
    url = rules.build_check_url("http://{agent_host}:9477/v1/pushdown", ip="10.1.0.5", vni=5,
                                agent_host="10.0.0.1")
    assert url == "http://10.0.0.1:9477/v1/pushdown?ip=10.1.0.5&vni=5&check=1"


def test_tunnel_received_only_when_the_agent_says_so(
        agent: tuple[http.server.HTTPServer, type[_Agent]]) -> None:
    server, handler = agent
    url = rules.build_check_url(f"http://127.0.0.1:{server.server_port}/v1/pushdown", ip="10.1.0.5", vni=5)
    handler.answer = json.dumps({"version": "a", "bpf": None, "tunnel": True}).encode()
    assert rules.tunnel_received(url) == (True, "")
    for answer in ({"version": "a", "bpf": None, "tunnel": False}, {"version": "a", "bpf": None}, "junk"):
        handler.answer = json.dumps(answer).encode()
        ok, why = rules.tunnel_received(url)
        assert not ok and "receives nothing" in why


def test_check_tunnel_exit_codes(agent: tuple[http.server.HTTPServer, type[_Agent]], monkeypatch) -> None:
    """``sidecar-lite --check-tunnel`` (the injected readiness probe) with the pod's environment."""
    from sidecar_lite import cli

    server, handler = agent
    env = {"PODMIRROR_AGENT": "127.0.0.1:14789", "POD_IP": "10.1.0.5", "PODMIRROR_VNI": "auto",
           "PODMIRROR_RULES_URL": f"http://{{agent_host}}:{server.server_port}/v1/pushdown"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    handler.answer = json.dumps({"version": "a", "bpf": None, "tunnel": True}).encode()
    assert cli.main(["--check-tunnel"]) == 0
    assert handler.paths[-1] == "/v1/pushdown?ip=10.1.0.5&vni=65541&check=1"
    handler.answer = json.dumps({"version": "a", "bpf": None, "tunnel": False}).encode()
    assert cli.main(["--check-tunnel"]) == 1
    monkeypatch.delenv("PODMIRROR_RULES_URL")
    assert cli.main(["--check-tunnel"]) == 2
