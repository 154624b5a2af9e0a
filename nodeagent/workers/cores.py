"""How many workers ``--workers auto`` starts: the CPUs this process may run on, within its CPU quota.

Two limits apply to a pod: the CPUs it may be scheduled on (``sched_getaffinity``, narrowed by a
cpuset or the static CPU manager) and its CPU limit (the cgroup's CFS quota: ``cpu.max`` in
cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1). A worker per allowed CPU, rounded
up to whole CPUs of quota (1.5 CPUs -> 2 workers: a worker that waits for the quota still drains
its socket buffer later, one fewer worker would leave half a CPU unused), never below 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota(root: Path = CGROUP, self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs of quota of this process's cgroup (None: unlimited or unknown). cgroup v2: the
    process's own ``cpu.max`` (``0::/path`` in /proc/self/cgroup; the root in a container's
    cgroup namespace), then v1's CFS files."""
    try:
        own = next((line.split("::", 1)[1].strip() for line in self_cgroup.read_text().splitlines()
                    if line.startswith("0::")), "/")
    except OSError:
        own = "/"
    for directory in (root / own.lstrip("/"), root):
        try:
            limit, period = (directory / "cpu.max").read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        except (OSError, ValueError):
            continue
    try:
        limit_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if limit_us <= 0 or period_us <= 0 else limit_us / period_us


def available(root: Path = CGROUP) -> int:
    """The default worker count (see the module docstring)."""
    cpus = len(os.sched_getaffinity(0))
    limit = quota(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)
