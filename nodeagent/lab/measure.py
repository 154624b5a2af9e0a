"""What the benchmarks read from the kernel: a process's CPU and memory, the machine's CPU by kind.

- ``cpu_seconds(pid)``: user + system time of a process (all its threads), from ``/proc/<pid>/stat``;
- ``rss_bytes(pid)``: its resident memory now (``/proc/<pid>/statm``);
- ``machine()``: the whole machine's CPU seconds by kind (``/proc/stat``'s first line): where the
  kernel pays for packets that no process is charged for (``softirq``: NET_RX/NET_TX processing,
  VXLAN encapsulation and decapsulation, tc mirred), and ``busy`` (everything but idle and iowait).
  Machine-wide: other load on the machine counts too, so a benchmark compares runs made back to
  back and says so.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_STAT_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process; softirq work done in its context is not in either
    (ticks that land in a softirq are the machine's ``softirq``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (a supervisor's workers)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


@dataclasses.dataclass(frozen=True)
class MachineCpu:
    """CPU seconds of the whole machine since boot, by kind."""

    user: float
    system: float
    softirq: float
    irq: float
    idle: float
    busy: float

    def __sub__(self, other: MachineCpu) -> MachineCpu:
        return MachineCpu(*(getattr(self, f.name) - getattr(other, f.name) for f in dataclasses.fields(self)))


def machine() -> MachineCpu:
    values = dict(zip(_STAT_KINDS, (int(v) / TICK for v in Path("/proc/stat").read_text().split()[1:9]),
                      strict=True))
    idle = values["idle"] + values["iowait"]
    busy = sum(values.values()) - idle
    return MachineCpu(user=values["user"] + values["nice"], system=values["system"],
                      softirq=values["softirq"], irq=values["irq"], idle=idle, busy=busy)
