"""Target ``pushdown``: the answer a sidecar gets from ``/v1/pushdown``, through its parser and
validator (``sidecar_lite.rules.parse``, ``sidecar_lite.cbpf.parse``), then what it installs.

The input mutates a real answer (a program compiled from a tcpdump expression, or null), or is
taken as the body itself one time in four. Checks: only ``BadAnswer`` escapes (the sidecar keeps
its current program); an accepted program has at most ``MAX_INSNS`` instructions with the tunnel
exclusion, only opcodes the kernel knows, every jump lands inside it, it ends with a return, and it
packs into the kernel's ``struct sock_filter`` array (what the socket filter and cls_bpf receive).
"""

from __future__ import annotations

import json

import atheris

from tests.fuzz import harness

with harness.instrumented():
    from sidecar_lite import bpf, cbpf, rules

ANSWERS = [
    {"version": "v1", "bpf": None},
    {"version": "c0ffee", "bpf": [[40, 0, 0, 12], [21, 0, 3, 2048], [48, 0, 0, 23], [21, 0, 1, 17],
                                  [6, 0, 0, 0], [6, 0, 0, 262144]]},
    {"version": "j", "bpf": [[40, 0, 0, 12], [21, 2, 0, 34525], [5, 0, 0, 1], [6, 0, 0, 0],
                             [6, 0, 0, 262144]]},
]
WORDS = ("version", "bpf", "v1", "")


def _jump_targets(index: int, code: int, jt: int, jf: int, k: int) -> tuple[int, ...]:
    if code & 0x07 != 0x05:
        return ()
    return (index + 1 + k,) if code == 0x05 else (index + 1 + jt, index + 1 + jf)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
    else:
        answer = harness.mutate(fdp, ANSWERS[fdp.ConsumeIntInRange(0, len(ANSWERS) - 1)], WORDS, edits=4)
        try:
            body = json.dumps(answer).encode()
        except ValueError:
            return
    try:
        pushed = rules.parse(body)
    except rules.BadAnswer:
        return
    assert isinstance(pushed.version, str)
    program = bpf.mirror_program("10.0.0.1", 14789, pushed.program)
    assert len(program) <= cbpf.MAX_INSNS and program[-1].code & 0x07 == cbpf.RET
    for index, insn in enumerate(program):
        assert insn.code in cbpf.OPCODES, (index, insn)
        assert all(0 <= target < len(program) for target in _jump_targets(index, *insn)), (index, insn)
    assert len(cbpf.pack(program)) == 8 * len(program)


if __name__ == "__main__":
    harness.main(test_one_input)
