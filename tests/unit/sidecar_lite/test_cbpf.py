"""cbpf: the one validator both the agent (push-down, translation) and the sidecar (intake) apply."""

from __future__ import annotations

import struct

import pytest

from sidecar_lite import cbpf


def test_pack_is_the_kernel_sock_filter_layout() -> None:
    packed = cbpf.pack([cbpf.Instruction(0x28, 1, 2, 12)])
    assert packed == struct.pack("=HBBI", 0x28, 1, 2, 12) and len(packed) == 8


def test_accept_all_keeps_libpcaps_snap_length_and_reject_all_nothing() -> None:
    assert cbpf.ACCEPT_ALL == ((cbpf.RET | cbpf.K, 0, 0, 262144),)
    assert cbpf.REJECT_ALL == ((cbpf.RET | cbpf.K, 0, 0, 0),)


@pytest.mark.parametrize(
    "raw, message",
    [
        ([], "non-empty"),
        ("nope", "non-empty"),
        ([[6, 0, 0]], "not \\[code"),
        ([[6, 0, 0, "x"]], "non-integer"),
        ([[6, 0, 0, True]], "non-integer"),
        ([[0x15, 5, 0, 1], [6, 0, 0, 0]], "past the end"),
        ([[0x05, 0, 0, 9], [6, 0, 0, 0]], "past the end"),
        ([[0x28, 0, 0, 12]], "return"),
        ([[6, 0, 0, 1 << 32]], "out of range"),
        ([[0x0E, 0, 0, 0]], "unknown opcode"),
        ([[0x02, 0, 0, 16], [6, 0, 0, 0]], "scratch slot"),
        ([[0x20, 0, 0, 0xFFFFF004], [6, 0, 0, 1]], "ancillary"),
        ([[0x34, 0, 0, 0], [6, 0, 0, 1]], "division by the constant 0"),   # A /= 0
        ([[0x94, 0, 0, 0], [6, 0, 0, 1]], "division by the constant 0"),   # A %= 0
        ([[6, 0, 0, 1]] * (cbpf.MAX_PUSHED_INSNS + 1), "length"),
    ],
)
def test_bad_pushed_programs_are_refused(raw: object, message: str) -> None:
    with pytest.raises(cbpf.BpfError, match=message):
        cbpf.parse(raw, cbpf.MAX_PUSHED_INSNS)


def test_a_valid_program_comes_back_as_instructions() -> None:
    program = cbpf.parse([[0x28, 0, 0, 12], [0x15, 0, 1, 0x800], [6, 0, 0, 1], [6, 0, 0, 0]])
    assert program[1] == cbpf.Instruction(0x15, 0, 1, 0x800) and program[1].jf == 1


def test_the_kernel_limit_applies_without_a_pushed_limit() -> None:
    assert len(cbpf.validate([(6, 0, 0, 1)] * cbpf.MAX_INSNS)) == cbpf.MAX_INSNS
    with pytest.raises(cbpf.BpfError, match="length"):
        cbpf.validate([(6, 0, 0, 1)] * (cbpf.MAX_INSNS + 1))
