"""Classic BPF programs the sidecar installs, and their packing for the kernel.

Model: a program is a tuple of ``Insn(code, jt, jf, k)`` over an Ethernet frame. It returns non-zero
to mirror the frame and 0 to skip it (tc cls_bpf "classic" mode and the SO_ATTACH_FILTER socket
filter agree on that meaning). The same bytes serve both data paths, because at clsact ingress and
egress and on an AF_PACKET SOCK_RAW socket the program sees the frame from its Ethernet header.

Invariants:

- ``mirror_program`` always starts with ``tunnel_exclusion(agent)``: IPv4 (0x0800), protocol 17,
  destination = the agent's address -> return 0. Matching on protocol + destination and not on the
  UDP port is what also excludes non-first IP fragments of large tunnel datagrams (DATAPLANE.md
  measured 55k leaked fragments in 0.5 s when only the port was matched).
- cBPF jumps are relative and forward-only, so prepending the exclusion never changes what a pushed
  program means; the exclusion's "not the tunnel" exits land on the first pushed instruction.

Pure: no I/O. ``attach_socket_filter`` is the one adapter (a setsockopt).
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

SO_ATTACH_FILTER = 26
"""Linux value; Python's socket module does not export it."""
SOCK_FILTER = struct.Struct("=HBBI")
"""struct sock_filter {u16 code; u8 jt; u8 jf; u32 k} as the kernel reads it (native order)."""
MAX_INSNS = 4096
"""BPF_MAXINSNS."""
ACCEPT_ALL = 0x40000
"""Return value that keeps the whole frame (a snap length larger than any GSO super-packet)."""

# Opcodes used by the hand-written programs.
LDH_ABS = 0x28
LDB_ABS = 0x30
LD_ABS = 0x20
JEQ_K = 0x15
RET_K = 0x06

TC_ACT_SHOT = 2


class Insn(NamedTuple):
    code: int
    jt: int
    jf: int
    k: int


Program = tuple[Insn, ...]


class BadProgram(ValueError):
    """A pushed program the kernel would reject (or that we refuse to install)."""


def tunnel_exclusion(agent_ip: str) -> Program:
    """Skip (return 0) every IPv4 UDP packet to ``agent_ip``; fall through to the next insn otherwise."""
    agent = int(ipaddress.IPv4Address(agent_ip))
    # Offsets: ethertype at 12, IPv4 protocol at 14 + 9, destination at 14 + 16.
    return (
        Insn(LDH_ABS, 0, 0, 12),
        Insn(JEQ_K, 0, 5, 0x0800),  # not IPv4 -> pass (index 7)
        Insn(LDB_ABS, 0, 0, 23),
        Insn(JEQ_K, 0, 3, 17),  # not UDP -> pass
        Insn(LD_ABS, 0, 0, 30),
        Insn(JEQ_K, 0, 1, agent),  # to the agent -> skip, else pass
        Insn(RET_K, 0, 0, 0),
    )


def mirror_program(agent_ip: str, pushed: Sequence[Insn] | None = None) -> Program:
    """The program that decides what to mirror: tunnel exclusion, then ``pushed`` or "everything"."""
    tail: Program = tuple(pushed) if pushed else (Insn(RET_K, 0, 0, ACCEPT_ALL),)
    return tunnel_exclusion(agent_ip) + tail


def drop_all() -> Program:
    """A direct-action tc program that drops every packet (TC_ACT_SHOT)."""
    return (Insn(RET_K, 0, 0, TC_ACT_SHOT),)


def validate(raw: object) -> Program:
    """Turn a pushed JSON ``[[code, jt, jf, k], ...]`` into a Program, or raise BadProgram."""
    if not isinstance(raw, list) or not raw:
        raise BadProgram("bpf must be a non-empty list of [code, jt, jf, k]")
    if len(raw) > MAX_INSNS - len(tunnel_exclusion("0.0.0.0")):
        raise BadProgram(f"bpf has {len(raw)} instructions, too many")
    program = tuple(_insn(item, index, len(raw)) for index, item in enumerate(raw))
    if program[-1].code & 0x07 != RET_K & 0x07:
        raise BadProgram("bpf must end with a return instruction")
    return program


def _insn(item: object, index: int, length: int) -> Insn:
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise BadProgram(f"bpf[{index}] is not [code, jt, jf, k]")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in item):
        raise BadProgram(f"bpf[{index}] has a non-integer field")
    code, jt, jf, k = item
    if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF and 0 <= k <= 0xFFFFFFFF):
        raise BadProgram(f"bpf[{index}] has a field out of range")
    if code & 0x07 == 0x05 and index + 1 + max(jt, jf) >= length:  # BPF_JMP class
        raise BadProgram(f"bpf[{index}] jumps past the end")
    return Insn(code, jt, jf, k)


def pack(program: Iterable[Insn]) -> bytes:
    """The kernel's ``struct sock_filter[]`` bytes (what TCA_BPF_OPS and sock_fprog carry)."""
    return b"".join(SOCK_FILTER.pack(*insn) for insn in program)


def attach_socket_filter(sock: socket.socket, program: Sequence[Insn]) -> None:
    """Install (or atomically replace) ``program`` as ``sock``'s SO_ATTACH_FILTER."""
    code = pack(program)
    buffer = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;} with native alignment.
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
