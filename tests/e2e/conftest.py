"""Fixtures for the end-to-end tier: a fresh lab per test (namespaces ``pme2e-<random>-``).

Every lab is closed in a ``finally`` (processes stopped, namespaces deleted) and the test fails
if any namespace with its tag is left behind. ``podmirror_ready`` skips, with a reason, while the
agent's or the sidecar's entry point cannot start (they are built in parallel with this tier).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.lab import netns
from nodeagent.lab.podmirror import ENV, NODEAGENT, SIDECAR
from nodeagent.lab.topology import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab("pme2e", workdir=tmp_path)
    try:
        yield lab
    finally:
        lab.close()
        assert netns.leftovers(lab.tag) == [], "namespaces left behind"


def _entry_point_problem() -> str | None:
    for cmd in ([*NODEAGENT, "run", "--help"], [*SIDECAR, "--help"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={**os.environ, **ENV})
        except OSError as exc:
            return f"{cmd[0]} missing: {exc}"
        if proc.returncode != 0:
            return f"{' '.join(cmd)} does not work yet: {proc.stderr.strip()[-200:]}"
    return None


@pytest.fixture(scope="session")
def podmirror_ready() -> None:
    problem = _entry_point_problem()
    if problem is not None:
        pytest.skip(problem)
