"""Fixtures for the end-to-end tier: a fresh lab per test (namespaces ``pme2e-<random>-``).

Every e2e test gets its lab from here: the ``lab`` fixture, or ``open_lab`` for a fixture of wider
scope or other options (``node_mtu``). Every lab is closed in a ``finally`` (processes stopped,
namespaces deleted) and the test fails if any namespace with its tag is left behind.
``podmirror_ready`` skips, with a reason, while the agent's or the sidecar's entry point cannot start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.lab import netns
from nodeagent.lab.podmirror import ENV, NODEAGENT, SIDECAR
from nodeagent.lab.topology import Lab


@contextlib.contextmanager
def open_lab(workdir: Path | None = None, **options: Any) -> Iterator[Lab]:
    """A fresh lab (``topology.Lab`` options as keywords), closed and checked whatever happens."""
    lab = Lab("pme2e", workdir=workdir, **options)
    try:
        yield lab
    finally:
        lab.close()
        assert netns.leftovers(lab.tag) == [], "namespaces left behind"


@pytest.fixture(scope="session", autouse=True)
def _reap_killed_runs() -> None:
    """Namespaces of an earlier run that was killed (its owner is dead) are removed before this one."""
    if os.geteuid() == 0:
        stale = netns.reap_stale("pme2e")
        if stale:
            print(f"e2e: removed {len(stale)} namespaces of killed runs: {' '.join(stale)}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path) as fresh:
        yield fresh


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
