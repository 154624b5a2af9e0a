"""A tunnel is accepted only from a known sender with its VNI: all else is counted, never forwarded.

The datagrams are real VXLAN sent through the node from pod namespaces: ``web`` is not a known
sender; ``client`` is, but uses another pod's VNI. A well-formed one from ``client`` is the control.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from nodeagent.lab import netns, podmirror
from nodeagent.lab.topology import TUNNEL_PORT, Lab, Pod
from nodeagent.wire import vxlan
from tests.books import assert_balanced

pytestmark = [pytest.mark.needs_root, pytest.mark.usefixtures("podmirror_ready")]


def udp_frame(src: Pod, dst: Pod) -> bytes:
    """Ethernet + IPv4 + UDP, checksums zero (the agent does not require them)."""
    payload = b"podmirror-admission"
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src.ip), socket.inet_aton(dst.ip))
    return bytes.fromhex("02aabbccddee02aabbccddff0800") + ip + udp


def send_tunnel(pod: Pod, agent_ip: str, vni: int, frame: bytes) -> None:
    with netns.inside(pod.ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.sendto(vxlan.encode(vni, frame), (agent_ip, TUNNEL_PORT))


def wait_received(agent: podmirror.Agent, count: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (st := agent.status())["received"] < count:
        assert time.monotonic() < deadline, f"agent received {st['received']} of {count}"
        time.sleep(0.05)
    return st


def test_unknown_sender_and_wrong_vni_are_dropped_and_counted(lab: Lab, tmp_path: Path) -> None:
    node = lab.add_node()
    client, web = lab.add_pod(node, "client"), lab.add_pod(node, "web")
    sensor = lab.add_host("sensor")
    agent = podmirror.start_agent(lab, node, tmp_path, sensors=[sensor], pods=[client])
    frame = udp_frame(client, web)

    send_tunnel(web, agent.ip, web.vni, frame)              # not a monitored pod
    send_tunnel(client, agent.ip, web.vni, frame)           # a known pod, but not its VNI
    send_tunnel(client, agent.ip, client.vni, frame)        # the control: accepted
    st = wait_received(agent, 3)

    assert st["received"] == 3
    assert st["drops"]["unknown_sender"] == 1
    assert st["drops"]["wrong_vni"] == 1
    assert st["forwarded"] == 1
    assert_balanced(st)
    assert st["pods"][client.key]["forwarded"] == 1
    assert st["outputs"]["vxlan"]["packets"] == 1, "only the accepted datagram may reach the sensor"
