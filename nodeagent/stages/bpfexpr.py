"""Classic BPF (cBPF): compile tcpdump expressions once, evaluate them per packet as Python code.

Model: ``compile_expression(text)`` asks libpcap (through scapy's binding, loaded lazily: scapy never
runs per packet) for the program of a tcpdump expression over Ethernet frames (link type 1), as a
tuple of ``(code, jt, jf, k)`` instructions, the form the kernel's ``SO_ATTACH_FILTER`` and cls_bpf
take. ``to_function(program)`` translates it once into generated Python source and returns a
``Matcher``: ``matcher(frame) -> int``, the program's return value (non-zero: the frame matches).

Translation: cBPF jumps only forward, so the program is a DAG. Every instruction reached from one
place only is inlined into an ``if``/``else`` tree; an instruction reached from several places
(a join) becomes its own nested function, called with the registers, so the source grows linearly
with the program. Semantics follow the kernel's interpreter: registers are unsigned 32-bit, a load
outside the frame or a division by zero ends the program with 0 (no match).

Invariant: ``to_function(p)(frame) == interpret(p, frame)`` for every program and frame; the unit
tests check it against an independent reference interpreter on many packets.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

Instruction = tuple[int, int, int, int]
Program = tuple[Instruction, ...]
Matcher = Callable[[bytes | memoryview], int]

ACCEPT_ALL: Program = ((0x06, 0, 0, 0xFFFFFFFF),)
REJECT_ALL: Program = ((0x06, 0, 0, 0),)
MAX_INSNS = 4096
"""BPF_MAXINSNS: the kernel rejects longer classic programs."""

# Instruction classes and fields (linux/filter.h).
_LD, _LDX, _ST, _STX, _ALU, _JMP, _RET, _MISC = range(8)
_W, _H, _B = 0x00, 0x08, 0x10
_IMM, _ABS, _IND, _MEM, _LEN, _MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
_K, _X = 0x00, 0x08
_ALU_OPS = {0x00: "+", 0x10: "-", 0x20: "*", 0x30: "//", 0x40: "|", 0x50: "&", 0x60: "<<",
            0x70: ">>", 0x90: "%", 0xA0: "^"}
_JMP_OPS = {0x10: "==", 0x20: ">", 0x30: ">="}
_MASK = 0xFFFFFFFF
_INDENT_LIMIT = 40
"""Inlining deeper than this starts a nested function: CPython's parser stops at 100 indent levels."""


class BpfError(ValueError):
    """An expression libpcap rejects, or a program this module cannot translate."""


def compile_expression(text: str) -> Program:
    """The cBPF program of tcpdump expression ``text`` for Ethernet frames. Raises ``BpfError``."""
    try:
        from scapy.arch.common import compile_filter  # lazy: scapy is startup-only
        from scapy.error import Scapy_Exception
    except ImportError as exc:  # pragma: no cover - scapy is a dependency
        raise BpfError(f"cannot compile BPF: scapy is missing ({exc})") from None
    try:
        compiled = compile_filter(text, linktype=1)
    except Scapy_Exception as exc:
        raise BpfError(str(exc)) from None
    insns = compiled.bf_insns
    # scapy declares k as a signed int: 0xfd000000 arrives as a negative number.
    return tuple((insns[i].code & 0xFFFF, insns[i].jt & 0xFF, insns[i].jf & 0xFF, insns[i].k & _MASK)
                 for i in range(compiled.bf_len))


def validate(program: Sequence[Instruction]) -> None:
    """Check what the kernel checks: length, jumps in range, ends with a return."""
    if not 0 < len(program) <= MAX_INSNS:
        raise BpfError(f"program length {len(program)} is not in 1..{MAX_INSNS}")
    for pc, (code, jt, jf, k) in enumerate(program):
        cls = code & 0x07
        if cls == _JMP:
            targets = (pc + 1 + k,) if code & 0xF0 == 0 else (pc + 1 + jt, pc + 1 + jf)
            if any(t >= len(program) for t in targets):
                raise BpfError(f"instruction {pc}: jump out of the program")
        elif cls in (_LD, _LDX) and code & 0xE0 == _MEM or cls in (_ST, _STX):
            if k >= 16:
                raise BpfError(f"instruction {pc}: scratch slot {k} out of range")
        elif cls in (_LD,) and code & 0xE0 in (_ABS, _IND) and k >= 0xFFFFF000:
            raise BpfError(f"instruction {pc}: Linux ancillary loads are not supported")
    if program[-1][0] & 0x07 != _RET:
        raise BpfError("program does not end with a return")


def to_function(program: Sequence[Instruction]) -> Matcher:
    """Translate ``program`` into a Python function (once, at startup)."""
    program = tuple((int(c) & 0xFFFF, int(jt) & 0xFF, int(jf) & 0xFF, int(k) & _MASK)
                    for c, jt, jf, k in program)
    validate(program)
    source = _Generator(program).source()
    namespace: dict[str, object] = {"_W": struct.Struct("!I").unpack_from,
                                    "_H": struct.Struct("!H").unpack_from, "_error": struct.error}
    exec(compile(source, "<bpf>", "exec"), namespace)  # noqa: S102 - our own generated code
    matcher = namespace["match"]
    return matcher  # type: ignore[return-value]


def matches(program: Sequence[Instruction]) -> Matcher:
    """Alias of ``to_function`` that reads well at call sites: ``bpf.matches(prog)(frame)``."""
    return to_function(program)


class _Generator:
    """Emit the source of ``match(p)`` for one validated program."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.preds = [0] * len(program)
        self.preds[0] = 1
        for pc, (code, jt, jf, k) in enumerate(program):
            cls = code & 0x07
            if cls == _RET:
                continue
            if cls == _JMP:
                for t in ((pc + 1 + k,) if code & 0xF0 == 0 else (pc + 1 + jt, pc + 1 + jf)):
                    self.preds[t] += 1
            else:
                self.preds[pc + 1] += 1
        self.functions: dict[int, list[str]] = {}
        self.pending: list[int] = []
        self.uses_mem = any(c & 0x07 in (_ST, _STX) for c, _, _, _ in program)

    def source(self) -> str:
        body = self._block(0)
        while self.pending:
            pc = self.pending.pop()
            if pc not in self.functions:
                self.functions[pc] = []  # reserve before generating: recursion may request it
                self.functions[pc] = self._block(pc)
        lines: list[str] = []
        for pc, block in sorted(self.functions.items()):
            lines.append(f"def b{pc}(p, n, A, X, M):")
            lines.extend("    " + line for line in block)
        lines += ["def match(p):", "    n = len(p)", "    A = X = 0"]
        lines.append("    M = [0] * 16" if self.uses_mem else "    M = None")
        lines.append("    try:")
        lines.extend("        " + line for line in body)
        lines.append("    except (_error, IndexError, ZeroDivisionError):")
        lines.append("        return 0")
        return "\n".join(lines) + "\n"

    def _block(self, pc: int) -> list[str]:
        out: list[str] = []
        self._emit(pc, out, 0, first=True)
        return out

    def _goto(self, pc: int, out: list[str], depth: int) -> None:
        if self.preds[pc] > 1 or depth > _INDENT_LIMIT:
            if self.preds[pc] <= 1:
                self.preds[pc] = 2  # force a function so the depth resets
            self.pending.append(pc)
            out.append("    " * depth + f"return b{pc}(p, n, A, X, M)")
        else:
            self._emit(pc, out, depth, first=False)

    def _emit(self, pc: int, out: list[str], depth: int, first: bool) -> None:
        pad = "    " * depth
        while True:
            if not first and self.preds[pc] > 1:
                self._goto(pc, out, depth)
                return
            first = False
            code, jt, jf, k = self.program[pc]
            cls = code & 0x07
            if cls == _RET:
                out.append(pad + (f"return {k}" if code & 0x18 == _K else "return A"))
                return
            if cls == _JMP:
                self._jump(pc, out, depth)
                return
            out.append(pad + _statement(code, k))
            pc += 1

    def _jump(self, pc: int, out: list[str], depth: int) -> None:
        code, jt, jf, k = self.program[pc]
        op = code & 0xF0
        pad = "    " * depth
        if op == 0x00:  # ja
            self._goto(pc + 1 + k, out, depth)
            return
        rhs = "X" if code & 0x08 == _X else str(k)
        cond = f"A & {rhs}" if op == 0x40 else f"A {_JMP_OPS[op]} {rhs}"
        if op not in _JMP_OPS and op != 0x40:
            raise BpfError(f"instruction {pc}: unknown jump 0x{code:02x}")
        out.append(pad + f"if {cond}:")
        self._goto(pc + 1 + jt, out, depth + 1)
        out.append(pad + "else:")
        self._goto(pc + 1 + jf, out, depth + 1)


def _statement(code: int, k: int) -> str:
    """One non-jump, non-return instruction as a Python statement."""
    cls, size, mode = code & 0x07, code & 0x18, code & 0xE0
    if cls == _LD:
        if mode == _IMM:
            return f"A = {k}"
        if mode == _LEN:
            return "A = n"
        if mode == _MEM:
            return f"A = M[{k}]"
        where = str(k) if mode == _ABS else f"X + {k}"
        if size == _W:
            return f"(A,) = _W(p, {where})"
        if size == _H:
            return f"(A,) = _H(p, {where})"
        return f"A = p[{where}]"
    if cls == _LDX:
        if mode == _IMM:
            return f"X = {k}"
        if mode == _LEN:
            return "X = n"
        if mode == _MEM:
            return f"X = M[{k}]"
        if mode == _MSH:
            return f"X = (p[{k}] & 0x0F) << 2"
    if cls == _ST:
        return f"M[{k}] = A"
    if cls == _STX:
        return f"M[{k}] = X"
    if cls == _ALU:
        return _alu(code, k)
    if cls == _MISC:
        return "X = A" if code & 0xF8 == 0x00 else "A = X"
    raise BpfError(f"unsupported instruction 0x{code:02x}")


def _alu(code: int, k: int) -> str:
    op = code & 0xF0
    if op == 0x80:
        return "A = -A & 0xFFFFFFFF"
    rhs = "X" if code & 0x08 == _X else str(k)
    symbol = _ALU_OPS.get(op)
    if symbol is None:
        raise BpfError(f"unsupported ALU instruction 0x{code:02x}")
    if op in (0x60,):  # lsh: the kernel shifts modulo 32 on most paths; libpcap never shifts >= 32
        return f"A = (A << ({rhs} & 31)) & 0xFFFFFFFF"
    if op == 0x70:
        return f"A = A >> ({rhs} & 31)"
    return f"A = (A {symbol} {rhs}) & 0xFFFFFFFF"
