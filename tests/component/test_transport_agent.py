"""The node agent with the batched transport on: tunnel in, collector out, /status, SIGTERM flush."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from nodeagent.adapters import transport_out
from nodeagent.app import Agent
from nodeagent.settings import COLLECTOR_PORT, Settings, load
from tests.component.agent_kit import (
    KNOWN,
    get_status,
    make_settings,
    send_tunnel,
    sender,
    tcp_frame,
    tunnel_port,
)
from tests.component.transport_kit import (
    Certs,
    ChildCollector,
    RecordingSink,
    free_port,
    pcapng_packets,
    start_collector,
)
from tests.waiting import wait_for


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Agent]:
    """agent_kit's ``running``, plus the transport's ``install`` hook (app.run calls it)."""
    agent = Agent(settings)
    transport_out.install(agent)
    task = asyncio.create_task(agent.run(handle_signals=False), name="agent-under-test")
    try:
        await wait_for(lambda: agent.is_ready() or task.done(), 5, "agent ready")
        if task.done():
            task.result()
        yield agent
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_the_agent_delivers_forwarded_packets_to_the_collector_and_flushes_on_stop(
        tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    sink = RecordingSink()
    collector, port = await start_collector(certs, sink)
    # A long max_delay: only the stop's flush can ship the last batch.
    transport = {"collectors": [f"127.0.0.1:{port}"], "ca_file": certs.ca_file, "max_delay": 1.0,
                 "cert_file": certs.client_cert, "key_file": certs.client_key}
    frames = [tcp_frame(f"packet {i}".encode(), sport=41000 + i) for i in range(30)]
    try:
        async with running(make_settings(outputs={"transport": transport})) as agent:
            good = sender(KNOWN)
            for frame in frames:
                send_tunnel(good, tunnel_port(agent), frame)
            good.close()
            await wait_for(lambda: agent.stats.total.forwarded == 30, 5, "forwarded")
            status = await get_status(agent)
            tr = status["outputs"]["transport"]
            assert tr["offered"] == 30 and tr["open_packets"] + tr["queued_packets"] + tr["delivered"] == 30
            assert list(tr["collectors"]) == [f"127.0.0.1:{port}"]
        # stopped: flush waited for the collector's acknowledgement
        assert [r.frame for r in sink.records] == frames
        assert {r.pod for r in sink.records} == {"default/web"} and {r.vni for r in sink.records} == {5}
    finally:
        await collector.stop()


def test_transport_settings_default_the_collector_port_and_name_bad_fields() -> None:
    s = load({"outputs": {"transport": {"collectors": ["10.9.8.7"]}}})
    assert s.outputs.transport.collectors[0].port == COLLECTOR_PORT
    try:
        load({"outputs": {"transport": {"max_delay": 5}}})
    except ValueError as exc:
        assert "outputs.transport.max_delay" in str(exc)
    else:
        raise AssertionError("max_delay 5 s accepted")


async def test_nodeagent_collect_exits_0_on_sigterm_with_complete_pcapng(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    port = free_port()
    child = ChildCollector(certs, port, tmp_path / "pcap")
    child.cmd[1:3] = ["-m", "nodeagent"]
    child.cmd.insert(3, "collect")
    await asyncio.to_thread(child.start)
    try:
        assert child.proc is not None
        child.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(child.proc.wait, 10) == 0
    finally:
        await asyncio.to_thread(child.stop)
    assert all(pcapng_packets(p) == [] for p in (tmp_path / "pcap").glob("*.pcapng"))


async def test_nodeagent_collect_without_a_sink_exits_2(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodeagent", "collect", "--cert", certs.cert_file, "--key", certs.key_file,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"--pcap-dir" in err
