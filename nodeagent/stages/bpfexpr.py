"""tcpdump expression -> classic BPF program (libpcap) -> Python predicate, once at start-up.

Model: ``compile_expression(text)`` asks libpcap (through scapy's binding, loaded lazily: scapy never
runs per packet) for the program of a tcpdump expression over Ethernet frames (link type 1), in the
project's cBPF vocabulary (``sidecar_lite.cbpf``: the form the kernel's ``SO_ATTACH_FILTER`` and
cls_bpf take, and what the agent pushes to sidecars). ``to_function(program)`` validates it with
``cbpf.validate`` and translates it once into generated Python source, returning a ``Matcher``:
``matcher(frame) -> int``, the program's return value (non-zero: the frame matches).

Translation: cBPF jumps only forward, so the program is a DAG. Every instruction reached from one
place only is inlined into an ``if``/``else`` tree; an instruction reached from several places
(a join) becomes its own nested function, called with the registers, so the source grows linearly
with the program. Semantics follow the kernel's interpreter: registers are unsigned 32-bit, a load
outside the frame or a division by zero ends the program with 0 (no match).

Invariant: ``to_function(p)(frame) == interpret(p, frame)`` for every program and frame; the unit
tests check it against an independent reference interpreter (``tests/cbpf_reference.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import cast

from sidecar_lite import cbpf
from sidecar_lite.cbpf import ALU, JMP, LD, LDX, MISC, RET, ST, STX, BpfError, Program

Matcher = Callable[[bytes | memoryview], int]

_ALU_OPS = {cbpf.ADD: "+", cbpf.SUB: "-", cbpf.MUL: "*", cbpf.DIV: "//", cbpf.OR: "|", cbpf.AND: "&",
            cbpf.LSH: "<<", cbpf.RSH: ">>", cbpf.MOD: "%", cbpf.XOR: "^"}
_JMP_OPS = {cbpf.JEQ: "==", cbpf.JGT: ">", cbpf.JGE: ">="}
_INDENT_LIMIT = 40
"""Inlining deeper than this starts a nested function: CPython's parser stops at 100 indent levels."""


def compile_expression(text: str) -> Program:
    """The cBPF program of tcpdump expression ``text`` for Ethernet frames. Raises ``cbpf.BpfError``."""
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
    return cbpf.validate([(insns[i].code & 0xFFFF, insns[i].jt & 0xFF, insns[i].jf & 0xFF,
                           insns[i].k & 0xFFFFFFFF) for i in range(compiled.bf_len)])


def to_function(program: Sequence[Sequence[int]]) -> Matcher:
    """Translate ``program`` into a Python function (once, at startup). Raises ``cbpf.BpfError``."""
    source = _Generator(cbpf.validate(program)).source()
    namespace: dict[str, object] = {"_W": struct.Struct("!I").unpack_from,
                                    "_H": struct.Struct("!H").unpack_from, "_error": struct.error}
    exec(compile(source, "<bpf>", "exec"), namespace)  # noqa: S102 - our own generated code
    return cast(Matcher, namespace["match"])


class _Generator:
    """Emit the source of ``match(p)`` for one validated program."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.preds = [0] * len(program)
        self.preds[0] = 1
        for pc, (code, jt, jf, k) in enumerate(program):
            cls = code & 0x07
            if cls == RET:
                continue
            if cls == JMP:
                for t in ((pc + 1 + k,) if code & 0xF0 == cbpf.JA else (pc + 1 + jt, pc + 1 + jf)):
                    self.preds[t] += 1
            else:
                self.preds[pc + 1] += 1
        self.functions: dict[int, list[str]] = {}
        self.pending: list[int] = []
        self.uses_mem = any(c & 0x07 in (ST, STX) for c, _, _, _ in program)

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
            if cls == RET:
                out.append(pad + (f"return {k}" if code & 0x18 == cbpf.K else "return A"))
                return
            if cls == JMP:
                self._jump(pc, out, depth)
                return
            out.append(pad + _statement(code, k))
            pc += 1

    def _jump(self, pc: int, out: list[str], depth: int) -> None:
        code, jt, jf, k = self.program[pc]
        op = code & 0xF0
        pad = "    " * depth
        if op == cbpf.JA:
            self._goto(pc + 1 + k, out, depth)
            return
        rhs = "X" if code & 0x08 == cbpf.X else str(k)
        cond = f"A & {rhs}" if op == cbpf.JSET else f"A {_JMP_OPS[op]} {rhs}"
        out.append(pad + f"if {cond}:")
        self._goto(pc + 1 + jt, out, depth + 1)
        out.append(pad + "else:")
        self._goto(pc + 1 + jf, out, depth + 1)


def _statement(code: int, k: int) -> str:
    """One non-jump, non-return instruction (of a validated program) as a Python statement."""
    cls, size, mode = code & 0x07, code & 0x18, code & 0xE0
    if cls in (LD, LDX):
        register = "A" if cls == LD else "X"
        if mode == cbpf.IMM:
            return f"{register} = {k}"
        if mode == cbpf.LEN:
            return f"{register} = n"
        if mode == cbpf.MEM:
            return f"{register} = M[{k}]"
    if cls == LDX:  # the one other LDX mode: MSH, the IPv4 header length
        return f"X = (p[{k}] & 0x0F) << 2"
    if cls == LD:
        where = str(k) if mode == cbpf.ABS else f"X + {k}"
        if size == cbpf.W:
            return f"(A,) = _W(p, {where})"
        if size == cbpf.H:
            return f"(A,) = _H(p, {where})"
        return f"A = p[{where}]"
    if cls in (ST, STX):
        return f"M[{k}] = {'A' if cls == ST else 'X'}"
    if cls == ALU:
        return _alu(code, k)
    if cls == MISC:
        return "X = A" if code & 0xF8 == cbpf.TAX else "A = X"
    raise BpfError(f"unsupported instruction 0x{code:02x}")  # unreachable after cbpf.validate


def _alu(code: int, k: int) -> str:
    op = code & 0xF0
    if op == cbpf.NEG:
        return "A = -A & 0xFFFFFFFF"
    rhs = "X" if code & 0x08 == cbpf.X else str(k)
    if op == cbpf.LSH:  # the kernel shifts modulo 32 on most paths; libpcap never shifts >= 32
        return f"A = (A << ({rhs} & 31)) & 0xFFFFFFFF"
    if op == cbpf.RSH:
        return f"A = A >> ({rhs} & 31)"
    return f"A = (A {_ALU_OPS[op]} {rhs}) & 0xFFFFFFFF"
