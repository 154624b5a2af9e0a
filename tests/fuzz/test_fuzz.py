"""The short fuzzing run of the test command: every target for a few seconds (``FUZZ_SECONDS``,
default 3) from its seed corpus, through the same runner as the long run (``run.py``). A finding
fails the test with the replay command; a target that executed too few inputs fails too (it
would prove nothing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="needs atheris (pip install -e '.[test]')")

from tests.fuzz import run  # noqa: E402 (after the skip: run imports the seeds, which need scapy)

SECONDS = int(os.environ.get("FUZZ_SECONDS", "3"))


@pytest.mark.parametrize("target", run.TARGETS)
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    result = run.run_target(target, tmp_path, runs=None, seconds=SECONDS)
    replay = [f"python -m tests.fuzz.fuzz_{target} {a}" for a in result.artifacts]
    assert result.ok, f"{target}: {replay}\n{result.log}"
    assert result.runs >= 100, result
