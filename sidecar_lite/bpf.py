"""Classic BPF programs the sidecar installs, and their packing for the kernel.

Model: a program is a tuple of ``Insn(code, jt, jf, k)`` over an Ethernet frame. It returns non-zero
to mirror the frame and 0 to skip it (tc cls_bpf "classic" mode and the SO_ATTACH_FILTER socket
filter agree on that meaning). The same bytes serve both data paths, because at clsact ingress and
egress and on an AF_PACKET SOCK_RAW socket the program sees the frame from its Ethernet header.

Invariants:

- ``mirror_program`` always starts with ``tunnel_exclusion(agent, port)``: IPv4 UDP to the agent's
  address that is a non-first fragment or goes to the tunnel port -> return 0. Non-first fragments
  carry no UDP header, so matching only the port leaked them (DATAPLANE.md measured 55k leaked
  fragments in 0.5 s); all non-first UDP fragments to the agent's address are skipped instead.
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
LDH_IND = 0x48
LDXB_MSH = 0xB1
JEQ_K = 0x15
JSET_K = 0x45
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


def tunnel_exclusion(agent_ip: str, agent_port: int) -> Program:
    """Skip (return 0) the tunnel's packets; fall through to the next instruction for all others.

    Tunnel packets are IPv4 UDP to ``agent_ip`` that are either non-first fragments (they carry no
    port, so every one of them to the agent is skipped) or have destination port ``agent_port``.
    Other UDP to the agent's host (DNS to a node address, say) is still mirrored.
    """
    agent = int(ipaddress.IPv4Address(agent_ip))
    # Ethertype at 12; IPv4 at 14: flags/fragment offset at +6, protocol at +9, destination at +16.
    return (
        Insn(LDH_ABS, 0, 0, 12),
        Insn(JEQ_K, 0, 10, 0x0800),  # not IPv4 -> pass (index 12)
        Insn(LDB_ABS, 0, 0, 23),
        Insn(JEQ_K, 0, 8, 17),  # not UDP -> pass
        Insn(LD_ABS, 0, 0, 30),
        Insn(JEQ_K, 0, 6, agent),  # not to the agent -> pass
        Insn(LDH_ABS, 0, 0, 20),
        Insn(JSET_K, 3, 0, 0x1FFF),  # non-first fragment -> skip (index 11)
        Insn(LDXB_MSH, 0, 0, 14),  # X = IPv4 header length
        Insn(LDH_IND, 0, 0, 16),  # UDP destination port at 14 + X + 2
        Insn(JEQ_K, 0, 1, agent_port),  # tunnel port -> skip, else pass
        Insn(RET_K, 0, 0, 0),
    )


def mirror_program(agent_ip: str, agent_port: int, pushed: Sequence[Insn] | None = None) -> Program:
    """The program that decides what to mirror: tunnel exclusion, then ``pushed`` or "everything"."""
    tail: Program = tuple(pushed) if pushed else (Insn(RET_K, 0, 0, ACCEPT_ALL),)
    return tunnel_exclusion(agent_ip, agent_port) + tail


def drop_all() -> Program:
    """A direct-action tc program that drops every packet (TC_ACT_SHOT)."""
    return (Insn(RET_K, 0, 0, TC_ACT_SHOT),)


def validate(raw: object) -> Program:
    """Turn a pushed JSON ``[[code, jt, jf, k], ...]`` into a Program, or raise BadProgram."""
    if not isinstance(raw, list) or not raw:
        raise BadProgram("bpf must be a non-empty list of [code, jt, jf, k]")
    if len(raw) > MAX_INSNS - len(tunnel_exclusion("0.0.0.0", 0)):
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
    if code & 0x07 == 0x05:  # BPF_JMP class: BPF_JA jumps by k, conditionals by jt/jf
        reach = k if code == 0x05 else max(jt, jf)
        if index + 1 + reach >= length:
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
