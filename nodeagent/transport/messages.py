"""The batched transport's messages and their framing (sans-IO, both ends).

Connection (inside TLS, TCP): every message is ``type:u8 length:u32 body`` (network order).

    agent -> collector  HELLO   magic "PMB1", version u8, stream id (16 bytes), agent name (utf-8)
    collector -> agent  WELCOME acked u64: the highest sequence this collector holds for the stream
    agent -> collector  BATCH   seq u64, count u32, raw_len u32, zstd block(records)
    collector -> agent  ACK     seq u64, cumulative: every batch <= seq is delivered
    agent -> collector  PING    (empty): sent when the agent had nothing to send for a while, so
                                the collector's idle timeout only closes connections that are dead

``Reader`` turns bytes into messages (h11 style), bounded by ``MAX_MESSAGE``. The protocol as a
whole (streams, resume, compression) is described in ``docs/transport.md``.

Bounds, checked on the header before anything is decompressed or decoded (the collector's peers
may be hostile): a message body is at most ``MAX_MESSAGE`` bytes; a BATCH announces 1 to
``MAX_RECORDS`` records and a ``raw_len`` of at most ``MAX_RAW`` that can hold that many record
headers. So 673 bytes can no longer announce (and decompress into) 335,000 empty records.

Errors: every decoding fault raises ``wire.Malformed``; the caller drops the connection.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from nodeagent.transport.records import MAX_RAW, MAX_RECORDS, RECORD_HEADER
from nodeagent.wire.errors import Malformed

MAGIC = b"PMB1"
VERSION = 1
MAX_MESSAGE = MAX_RAW + 1024
"""Largest message body accepted: bounds the reader's buffer (a batch's zstd block is at most its
raw size plus a few bytes per 128 KiB block, for data that does not compress)."""

_HEAD = struct.Struct("!BI")
_HELLO = struct.Struct("!4sB16s")
_U64 = struct.Struct("!Q")
_BATCH = struct.Struct("!QII")


class Kind(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    BATCH = 3
    ACK = 4
    PING = 5


class Hello(NamedTuple):
    stream: bytes
    name: str


class Welcome(NamedTuple):
    acked: int


class BatchMsg(NamedTuple):
    seq: int
    packets: int
    raw_len: int
    payload: bytes
    """zstd-compressed records."""


class Ack(NamedTuple):
    seq: int


class Ping(NamedTuple):
    pass


Message = Hello | Welcome | BatchMsg | Ack | Ping


def _frame(kind: Kind, body: bytes) -> bytes:
    return _HEAD.pack(kind, len(body)) + body


def encode_hello(stream: bytes, name: str) -> bytes:
    if len(stream) != 16:
        raise ValueError("stream id must be 16 bytes")
    return _frame(Kind.HELLO, _HELLO.pack(MAGIC, VERSION, stream) + name.encode()[:255])


def encode_welcome(acked: int) -> bytes:
    return _frame(Kind.WELCOME, _U64.pack(acked))


def encode_ack(seq: int) -> bytes:
    return _frame(Kind.ACK, _U64.pack(seq))


def encode_batch(seq: int, count: int, raw_len: int, payload: bytes) -> bytes:
    return _frame(Kind.BATCH, _BATCH.pack(seq, count, raw_len) + payload)


def encode_ping() -> bytes:
    return _frame(Kind.PING, b"")


def _parse(kind: int, body: bytes) -> Message:
    if kind == Kind.BATCH:
        if len(body) < _BATCH.size:
            raise Malformed("batch: truncated header")
        seq, count, raw_len = _BATCH.unpack_from(body)
        if not 0 < count <= MAX_RECORDS:
            raise Malformed(f"batch: {count} records, not in 1..{MAX_RECORDS}")
        if not 2 + count * RECORD_HEADER <= raw_len <= MAX_RAW:
            raise Malformed(f"batch: raw length {raw_len} cannot hold {count} records or exceeds {MAX_RAW}")
        return BatchMsg(seq, count, raw_len, body[_BATCH.size:])
    if kind == Kind.PING:
        if body:
            raise Malformed("ping: has a body")
        return Ping()
    if kind in (Kind.ACK, Kind.WELCOME):
        if len(body) != _U64.size:
            raise Malformed(f"{Kind(kind).name.lower()}: bad length")
        (value,) = _U64.unpack(body)
        return Ack(value) if kind == Kind.ACK else Welcome(value)
    if kind == Kind.HELLO:
        if len(body) < _HELLO.size:
            raise Malformed("hello: truncated")
        magic, version, stream = _HELLO.unpack_from(body)
        if magic != MAGIC or version != VERSION:
            raise Malformed("hello: not a podmirror batch stream or unsupported version")
        return Hello(stream, body[_HELLO.size:].decode(errors="replace"))
    raise Malformed(f"unknown message type {kind}")


class Reader:
    """Bytes in, messages out (h11 style). Bounded: a message over ``MAX_MESSAGE`` is Malformed."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        start = 0
        while len(buf) - start >= _HEAD.size:
            kind, length = _HEAD.unpack_from(buf, start)
            if length > MAX_MESSAGE:
                raise Malformed(f"message of {length} bytes exceeds the limit")
            end = start + _HEAD.size + length
            if len(buf) < end:
                break
            out.append(_parse(kind, bytes(buf[start + _HEAD.size:end])))
            start = end
        del buf[:start]
        return out
