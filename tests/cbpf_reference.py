"""The tests' one reference classic-BPF interpreter: the kernel's semantics, one opcode at a time.

``run(program, frame)`` returns what the kernel's interpreter would: the program's return value
(0: skip the frame). A load outside the frame, and a division or modulo by zero, end the program
with 0. Registers are unsigned 32-bit; shifts count modulo 32 (libpcap never shifts by more).

Written independently of ``nodeagent.stages.bpfexpr`` (which translates programs into Python), so
that every test that runs a program (the sidecar's exclusion, pushed-down filters, the agent's
translation) checks it against this one model of the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

M32 = 0xFFFFFFFF
_WIDTH = {0x00: 4, 0x08: 2, 0x10: 1}


class _Stop(Exception):
    """The kernel ends the program with 0 (out-of-frame load, division by zero)."""


def run(program: Sequence[Sequence[int]], frame: bytes | memoryview) -> int:
    """The program's return value for ``frame``."""
    pkt = bytes(frame)
    a = x = pc = 0
    mem = [0] * 16
    try:
        while True:
            code, jt, jf, k = program[pc]
            pc += 1
            cls = code & 0x07
            if cls in (0, 1):  # ld, ldx
                value = _load(code, k, x, pkt, mem)
                a, x = (value, x) if cls == 0 else (a, value)
            elif cls in (2, 3):  # st, stx
                mem[k] = a if cls == 2 else x
            elif cls == 4:  # alu
                a = _alu(code & 0xF0, a, x if code & 0x08 else k)
            elif cls == 5:  # jmp
                pc += _jump(code, jt, jf, k, a, x)
            elif cls == 6:  # ret
                return k if code & 0x18 == 0x00 else a
            else:  # misc: tax, txa
                a, x = (a, a) if code & 0xF8 == 0x00 else (x, x)
    except _Stop:
        return 0


def _load(code: int, k: int, x: int, pkt: bytes, mem: list[int]) -> int:
    mode = code & 0xE0
    if mode == 0x00:  # imm
        return k
    if mode == 0x80:  # len
        return len(pkt)
    if mode == 0x60:  # mem
        return mem[k]
    if mode == 0xA0:  # msh: 4 * (low nibble of the byte at k), the IPv4 header length
        return (_bytes(pkt, k, 1) & 0x0F) * 4
    offset = k + (x if mode == 0x40 else 0)  # abs, ind
    return _bytes(pkt, offset, _WIDTH[code & 0x18])


def _bytes(pkt: bytes, offset: int, width: int) -> int:
    if offset + width > len(pkt):
        raise _Stop
    return int.from_bytes(pkt[offset:offset + width], "big")


def _alu(op: int, a: int, src: int) -> int:
    if op == 0x80:  # neg
        return -a & M32
    if op in (0x30, 0x90) and src == 0:  # div, mod by zero
        raise _Stop
    results = {0x00: lambda: a + src, 0x10: lambda: a - src, 0x20: lambda: a * src,
               0x30: lambda: a // src, 0x40: lambda: a | src, 0x50: lambda: a & src,
               0x60: lambda: a << (src & 31), 0x70: lambda: a >> (src & 31),
               0x90: lambda: a % src, 0xA0: lambda: a ^ src}
    return results[op]() & M32


def _jump(code: int, jt: int, jf: int, k: int, a: int, x: int) -> int:
    op, src = code & 0xF0, x if code & 0x08 else k
    if op == 0x00:  # ja
        return k
    taken = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
    return jt if taken else jf
