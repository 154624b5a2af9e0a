"""Classic BPF (cBPF): the one vocabulary of the project's filter programs, and their validator.

Model: a program is a tuple of ``Instruction(code, jt, jf, k)`` over an Ethernet frame, the form
the kernel's ``SO_ATTACH_FILTER`` and cls_bpf take (``struct sock_filter``). It returns the number
of bytes to keep: 0 skips the frame, ``SNAPLEN`` keeps all of it. The sidecar installs such
programs (``bpf.mirror_program``); the agent compiles tcpdump expressions into them and evaluates
them itself (``nodeagent.stages.bpfexpr``) and pushes them to sidecars
(``nodeagent.stages.pushdown``). Both sides accept a program only through ``validate`` (or
``parse`` for JSON), so what one side accepts the other installs or runs.

Invariants of a valid program (what the kernel's ``bpf_check_classic`` checks, plus what the
agent's translator needs): 1 to ``limit`` instructions; every opcode one of the kernel's classic
opcodes (``OPCODES``); every jump lands inside the program (cBPF jumps only forward, so a valid
program always terminates); scratch memory slots below 16; no Linux ancillary loads (negative
offsets: the agent cannot evaluate them); the last instruction returns.

Pure: no I/O. The sidecar's adapter (``bpf.attach_socket_filter``) packs with ``pack``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

MAX_INSNS = 4096
"""BPF_MAXINSNS: the kernel rejects longer classic programs."""
EXCLUSION_INSNS = 12
"""Instructions the sidecar puts in front of a pushed program (``bpf.tunnel_exclusion``)."""
MAX_PUSHED_INSNS = MAX_INSNS - EXCLUSION_INSNS
"""The longest program the agent may push: the sidecar's exclusion and it must fit the kernel's limit."""
SNAPLEN = 0x40000
"""The return value that keeps the whole frame: libpcap's default snap length (262,144 bytes),
larger than any GSO super-packet."""
SOCK_FILTER = struct.Struct("=HBBI")
"""struct sock_filter {u16 code; u8 jt; u8 jf; u32 k} as the kernel reads it (native order)."""

# Instruction classes, sizes, modes and sources (linux/filter.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
K, X, A = 0x00, 0x08, 0x10
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60,
                                                        0x70, 0x80, 0x90, 0xA0)
TAX, TXA = 0x00, 0x80

OPCODES = frozenset(
    [LD | size | mode for size in (W, H, B) for mode in (ABS, IND)]
    + [LD | IMM, LD | MEM, LD | W | LEN, LDX | IMM, LDX | MEM, LDX | W | LEN, LDX | B | MSH, ST, STX]
    + [ALU | op | src for op in (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, MOD, XOR) for src in (K, X)]
    + [ALU | NEG, MISC | TAX, MISC | TXA, RET | K, RET | A, JMP | JA]
    + [JMP | op | src for op in (JEQ, JGT, JGE, JSET) for src in (K, X)]
)
"""The opcodes the kernel accepts in a classic program (``bpf_check_classic``'s table)."""
_ANCILLARY = 0xFFFFF000
"""SKF_AD_OFF (-0x1000) as an unsigned k: loads at or above it read skb metadata, not the frame."""
MEMWORDS = 16


class Instruction(NamedTuple):
    code: int
    jt: int
    jf: int
    k: int


Program = tuple[Instruction, ...]

ACCEPT_ALL: Program = (Instruction(RET | K, 0, 0, SNAPLEN),)
"""Keep every frame whole."""
REJECT_ALL: Program = (Instruction(RET | K, 0, 0, 0),)
"""Keep nothing."""


class BpfError(ValueError):
    """A program the kernel would reject or the agent cannot run, or an expression libpcap rejects."""


def validate(program: Sequence[Sequence[int]], limit: int = MAX_INSNS) -> Program:
    """``program`` as a ``Program`` if it satisfies the module's invariants; else ``BpfError``."""
    if not 0 < len(program) <= limit:
        raise BpfError(f"program length {len(program)} is not in 1..{limit}")
    checked = tuple(_instruction(insn, pc, len(program)) for pc, insn in enumerate(program))
    if checked[-1].code & 0x07 != RET:
        raise BpfError("program does not end with a return")
    return checked


def parse(raw: object, limit: int = MAX_INSNS) -> Program:
    """A program received as JSON, ``[[code, jt, jf, k], ...]``: shape checked, then ``validate``."""
    if not isinstance(raw, list) or not raw:
        raise BpfError("bpf must be a non-empty list of [code, jt, jf, k]")
    for pc, item in enumerate(raw):
        if not isinstance(item, list | tuple) or len(item) != 4:
            raise BpfError(f"bpf[{pc}] is not [code, jt, jf, k]")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in item):
            raise BpfError(f"bpf[{pc}] has a non-integer field")
    return validate(raw, limit)


def _instruction(insn: Sequence[int], pc: int, length: int) -> Instruction:
    code, jt, jf, k = insn
    if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF and 0 <= k <= 0xFFFFFFFF):
        raise BpfError(f"instruction {pc}: a field is out of range")
    if code not in OPCODES:
        raise BpfError(f"instruction {pc}: unknown opcode 0x{code:02x}")
    cls, mode = code & 0x07, code & 0xE0
    if cls == JMP:
        reach = k if code & 0xF0 == JA else max(jt, jf)
        if pc + 1 + reach >= length:
            raise BpfError(f"instruction {pc}: jumps past the end of the program")
    elif (cls in (LD, LDX) and mode == MEM or cls in (ST, STX)) and k >= MEMWORDS:
        raise BpfError(f"instruction {pc}: scratch slot {k} out of range")
    elif cls == LD and mode in (ABS, IND) and k >= _ANCILLARY:
        raise BpfError(f"instruction {pc}: Linux ancillary loads are not supported")
    elif code in (ALU | DIV | K, ALU | MOD | K) and k == 0:
        # The kernel refuses these at attach time (EINVAL); the sidecar would keep its old program.
        raise BpfError(f"instruction {pc}: division by the constant 0")
    return Instruction(code, jt, jf, k)


def pack(program: Iterable[Instruction]) -> bytes:
    """The kernel's ``struct sock_filter[]`` bytes (what TCA_BPF_OPS and sock_fprog carry)."""
    return b"".join(SOCK_FILTER.pack(*insn) for insn in program)
