"""A tiny classic-BPF interpreter (the subset libpcap and our programs use), for tests only.

``run(program, frame)`` returns what the kernel would: the program's return value (0 = skip).
Out-of-bounds loads return 0, as the kernel's cBPF does.
"""

from __future__ import annotations

from collections.abc import Sequence

M32 = 0xFFFFFFFF


def _load(frame: bytes, offset: int, size: int) -> int | None:
    if offset < 0 or offset + size > len(frame):
        return None
    return int.from_bytes(frame[offset : offset + size], "big")


def run(program: Sequence[Sequence[int]], frame: bytes) -> int:  # noqa: C901 - an interpreter
    a = x = 0
    mem = [0] * 16
    pc = 0
    sizes = {0x00: 4, 0x08: 2, 0x10: 1}
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        cls, mode = code & 0x07, code & 0xE0
        if cls == 0x00:  # LD
            if mode == 0x00:  # IMM
                a = k
            elif mode in (0x20, 0x40):  # ABS, IND
                value = _load(frame, k + (x if mode == 0x40 else 0), sizes[code & 0x18])
                if value is None:
                    return 0
                a = value
            elif mode == 0x80:  # LEN
                a = len(frame)
            elif mode == 0x60:  # MEM
                a = mem[k]
            else:
                raise NotImplementedError(hex(code))
        elif cls == 0x01:  # LDX
            if mode == 0x00:
                x = k
            elif mode == 0xA0:  # MSH
                value = _load(frame, k, 1)
                if value is None:
                    return 0
                x = (value & 0x0F) * 4
            elif mode == 0x80:
                x = len(frame)
            elif mode == 0x60:
                x = mem[k]
            else:
                raise NotImplementedError(hex(code))
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            operand = x if code & 0x08 else k
            op = code & 0xF0
            ops = {0x00: a + operand, 0x10: a - operand, 0x20: a * operand,
                   0x40: a | operand, 0x50: a & operand, 0x60: a << operand, 0x70: a >> operand,
                   0xA0: a ^ operand, 0x80: (-a) & M32}
            if op == 0x30:
                ops[0x30] = a // operand if operand else 0
            if op == 0x90:
                ops[0x90] = a % operand if operand else 0
            a = ops[op] & M32
        elif cls == 0x05:  # JMP
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: bool(a & operand)}[op]
            pc += jt if taken else jf
        elif cls == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        elif cls == 0x07:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
