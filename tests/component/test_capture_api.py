"""Live capture on loopback: refused without credentials, the selected pods' packets exactly as the
pcap output got them (tshark reads the stream), a stalled reader's drops counted while every packet
is still forwarded."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

from nodeagent.settings import ConfigError
from nodeagent.wire import pcap
from tests.component.agent_kit import (
    get_status,
    make_settings,
    running,
    send_tunnel,
    sender,
    tcp_frame,
    tunnel_port,
    udp_frame,
    wait_for,
)
from tests.component.capture_kit import (
    TOKEN,
    client_context,
    decode,
    make_certs,
    open_stream,
    read_chunked,
    tshark_fields,
)

WEB, DB = "127.0.0.1", "127.0.0.3"
"""Two monitored pods: their tunnels come from their own (loopback) addresses."""


def two_pods(tmp_path: Path, capture: dict[str, Any], **groups: Any) -> Any:
    return make_settings(senders=[f"{WEB},5,default/web", f"{DB},7,default/db"],
                         outputs={"pcap": {"dir": str(tmp_path / "pcap")}}, capture=capture, **groups)


async def capture_address(agent: Any) -> tuple[str, int]:
    await wait_for(lambda: agent.capture_address is not None, what="capture listener")
    return agent.capture_address  # type: ignore[no-any-return]


def pcap_frames(directory: Path) -> list[bytes]:
    frames = []
    for path in sorted(directory.glob("*.pcap")):
        frames += [r.data for r in pcap.read(path.read_bytes())[1]]
    return frames


async def test_capture_is_refused_without_credentials_or_with_a_foreign_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    settings = two_pods(tmp_path, {"listen": "127.0.0.1:0", "cert": certs.cert, "key": certs.key,
                                   "client_ca": certs.ca, "token_file": str(token)})
    async with running(settings, extensions=True) as agent:
        address = await capture_address(agent)
        bare = client_context(certs, cert=False)
        async with open_stream(address, "pod=default/web", bare) as stream:
            assert stream.status == 401
            assert stream.headers["www-authenticate"] == "Bearer"
        async with open_stream(address, "pod=default/web", bare, token="not-the-token-at-all") as stream:
            assert stream.status == 401
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            async with open_stream(address, "pod=default/web", client_context(certs, other=True)):
                pass
        async with open_stream(address, "pod=nope", client_context(certs)) as stream:
            assert stream.status == 400  # the query is checked first; it names the parameter
        async with open_stream(address, "pod=default/web&count=1", bare, token=TOKEN) as stream:
            assert stream.status == 200
        status = await get_status(agent)
    assert status["capture"]["refused"]["401"] >= 2
    assert status["capture"]["auth"] == ["mtls", "token-file"]


async def test_stream_holds_exactly_what_the_pcap_output_got_for_the_selected_pod(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    settings = two_pods(tmp_path, {"listen": "127.0.0.1:0", "cert": certs.cert, "key": certs.key,
                                   "client_ca": certs.ca})
    web_frames = [tcp_frame(b"web %d" % i, src=WEB, seq=i + 1) for i in range(20)]
    db_frames = [udp_frame(b"db %d" % i, src=DB) for i in range(20)]
    async with running(settings, extensions=True) as agent:
        address = await capture_address(agent)
        async with open_stream(address, "pod=default/web&count=20", client_context(certs)) as stream:
            assert stream.status == 200
            assert stream.headers["content-type"] == "application/x-pcapng"
            with sender(WEB) as web, sender(DB) as db:
                for w, d in zip(web_frames, db_frames, strict=True):
                    send_tunnel(web, tunnel_port(agent), w, vni=5)
                    send_tunnel(db, tunnel_port(agent), d, vni=7)
            body = await asyncio.wait_for(read_chunked(stream.reader), 10)
        await wait_for(lambda: agent.stats.total.forwarded == 40, what="40 forwarded")
    path = tmp_path / "stream.pcapng"
    path.write_bytes(body)
    packets, ifaces, stats = decode(body)
    written = pcap_frames(tmp_path / "pcap")
    assert [p.frame for p in packets] == [f for f in written if f[26:30] == bytes([127, 0, 0, 1])]
    assert [p.frame for p in packets] == web_frames
    assert list(ifaces.values())[0].name == "default/web"
    assert {s.dropped for s in stats} == {0} and stats[-1].received == 20
    rows = tshark_fields(path, "frame.interface_name", "frame.comment", "frame.packet_flags_direction",
                         "ip.src", "tcp.seq_raw")
    assert len(rows) == 20
    outbound = "0x00000002"
    assert {tuple(r[:4]) for r in rows} == {("default/web", "default/web egress", outbound, WEB)}
    assert [int(r[4]) for r in rows] == list(range(1, 21))


async def test_stalled_reader_drops_are_counted_and_every_packet_is_still_forwarded(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    settings = two_pods(tmp_path, {"listen": "127.0.0.1:0", "cert": certs.cert, "key": certs.key,
                                   "client_ca": certs.ca, "queue_packets": 200})
    frame = tcp_frame(b"x" * 1400, src=WEB)
    sent = 3000
    async with running(settings, extensions=True) as agent:
        address = await capture_address(agent)
        async with open_stream(address, "pod=default/web&duration=1", client_context(certs),
                               rcvbuf=4096) as stream:
            assert stream.status == 200
            with sender(WEB) as web:
                for _ in range(0, sent, 100):
                    send_tunnel(web, tunnel_port(agent), frame, vni=5, count=100)
                    await asyncio.sleep(0)  # let the agent drain its socket between bursts
            await wait_for(lambda: agent.stats.total.forwarded == sent, what="every packet forwarded")
            status = await get_status(agent)
            assert status["socket"].get("kernel_drops", 0) == 0
            live = status["outputs"]["capture"]["open"][0]
            assert live["dropped"] > 0 and live["received"] == sent
            body = await asyncio.wait_for(read_chunked(stream.reader), 30)  # the reader resumes
        status = await get_status(agent)
    packets, _, stats = decode(body)
    final = stats[-1]
    assert final.received == sent
    assert final.dropped == status["outputs"]["capture"]["dropped"]["queue_full"] > 0
    assert len(packets) + final.dropped == sent
    assert "fell behind" in final.comment


async def test_a_capture_listener_without_an_auth_method_is_a_configuration_error(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    with pytest.raises(ConfigError, match="capture.listen needs a way to authenticate"):
        make_settings(capture={"listen": "127.0.0.1:0", "cert": certs.cert, "key": certs.key})
    with pytest.raises(ConfigError, match="capture.cert"):
        make_settings(capture={"listen": "127.0.0.1:0", "client_ca": certs.ca})

