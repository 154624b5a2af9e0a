"""The control channel between the supervisor and a worker: JSON messages over a unix socketpair.

Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object). Both ends
use asyncio streams; a message larger than ``MAX_MESSAGE`` is a bug and ends the channel. EOF on
either side means the other side is gone: a worker stops (flushing its outputs) when its
supervisor disappears, and the supervisor restarts a worker whose channel closed.

Messages (``op``), supervisor -> worker:

- ``start {pods}``: the node's pod table; the worker starts reading its socket only after it;
- ``pods {add, remove}``: pod table changes (``PodInfo`` as ``pod_to_json``; addresses to remove);
- ``status {id}``: answered by ``{id, status, last_seen, rusage}``;
- ``capture {id, filter, queue_limit}`` / ``uncapture {id}``: live captures (``relay``), answered
  by ``capturing {id}`` once the worker's side is open;
- ``forget {grace}``: forget the counters of pods gone from the pod table for ``grace`` seconds;
- ``seen {times}``: when other workers last received pods' tunnels (liveness is the node's);
- ``stop``: stop reading, flush and close the outputs, answer ``stopped {status}``, exit 0.

worker -> supervisor: ``ready`` once its socket is read, replies carrying the request's ``id``,
``seen {times}`` for pods whose tunnel it saw first or again (relayed to the other workers), and
``stopped {status}`` (also when it stops on its own, on SIGTERM or supervisor EOF).

The settings are not sent here: the supervisor writes them to the worker's stdin once, at spawn.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

from nodeagent.pods.index import PodInfo

HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 << 20
"""Bytes: far above a status snapshot of thousands of pods; larger means a bug."""

Message = dict[str, Any]


class ChannelClosed(Exception):
    """The other end closed the channel (or sent something that is not a message)."""


class Channel:
    """One end of the socketpair, as asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        """Queue ``message`` (never blocks; call ``drain`` to wait for the socket)."""
        body = json.dumps(message, separators=(",", ":")).encode()
        if self._writer.is_closing():
            raise ChannelClosed("closed")
        self._writer.write(HEADER.pack(len(body)) + body)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ChannelClosed(str(exc)) from None

    async def receive(self) -> Message:
        try:
            (size,) = HEADER.unpack(await self._reader.readexactly(HEADER.size))
            if size > MAX_MESSAGE:
                raise ChannelClosed(f"message of {size} bytes")
            message = json.loads(await self._reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as exc:
            raise ChannelClosed(str(exc) or "end of stream") from None
        if not isinstance(message, dict):
            raise ChannelClosed("not a JSON object")
        return message

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def pod_to_json(pod: PodInfo) -> dict[str, Any]:
    return {"ip": pod.ip, "vni": pod.vni, "namespace": pod.namespace, "name": pod.name,
            "labels": dict(pod.labels), "node": pod.node, "local": pod.local,
            "ports": list(pod.ports), "ips": list(pod.ips)}


def pod_from_json(data: dict[str, Any]) -> PodInfo:
    return PodInfo(ip=data["ip"], vni=data["vni"], namespace=data["namespace"], name=data["name"],
                   labels=data["labels"], node=data["node"], local=data["local"],
                   ports=tuple(data["ports"]), ips=tuple(data["ips"]))


def pod_changes(before: dict[str, PodInfo], after: dict[str, PodInfo]) -> Message:
    """The ``pods`` message that turns table ``before`` into ``after`` (both by tunnel address)."""
    add = [pod_to_json(p) for ip, p in after.items() if before.get(ip) != p]
    remove = [ip for ip in before if ip not in after]
    return {"op": "pods", "add": add, "remove": remove}
