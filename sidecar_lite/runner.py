"""The two run loops: kernel mode (verify/repair + push-down) and sniff mode (packet loop).

Both poll push-down rules when a URL is configured and stop on the ``Stopper``. Kernel mode imports
``sidecar_lite.kernel`` (and so pyroute2) only when it runs. Errors while verifying are logged and
retried on the next tick: a transient netlink failure must not end the mirror.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING

from sidecar_lite import bpf, cbpf, plan, rules
from sidecar_lite.rules import Poller, Pushdown
from sidecar_lite.sniffer import Sniffer
from sidecar_lite.stopper import Stopper

if TYPE_CHECKING:
    from sidecar_lite.kernel import Kernel

log = logging.getLogger("sidecar_lite")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and what to mirror, once discovery and VNI are resolved."""

    interface: str
    agent_ip: str
    agent_port: int
    vni: int
    tunnel_mtu: int | None = None


def build_plan(t: Target, pushed: cbpf.Program | None) -> plan.MirrorPlan:
    return plan.build(interface=t.interface, agent_ip=t.agent_ip, agent_port=t.agent_port, vni=t.vni,
                      pushed=pushed, tunnel_mtu=t.tunnel_mtu)


class Every:
    """A periodic duty: ``due(now)`` is True once per ``interval`` seconds (monotonic clock)."""

    def __init__(self, interval: float, first: float) -> None:
        self.interval, self.next = interval, first

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.interval
        return True


def run_kernel(t: Target, poller: Poller | None, stop: Stopper, verify_interval: float,
               rules_interval: float, stats_interval: float = 60.0) -> None:
    """Apply the plan, keep it in place until stopped, then remove it. Raises if the first apply fails."""
    from sidecar_lite.kernel import Kernel

    kernel = Kernel()
    current = build_plan(t, None)
    try:
        steps = kernel.apply(current)
        log.info("kernel mode: mirroring %s to %s:%d vni %d via %s (%d setup steps)", t.interface,
                 t.agent_ip, t.agent_port, t.vni, current.vxlan.name, len(steps))
        start = time.monotonic()
        verify, stats, poll = (Every(verify_interval, start + verify_interval),
                               Every(stats_interval, start + stats_interval), Every(rules_interval, start))
        timers = (verify, stats, poll) if poller else (verify, stats)
        failing: list[str] = []
        seen: dict[str, int] = {}
        while not stop.wait(min(x.next for x in timers) - time.monotonic()):
            now = time.monotonic()
            if poller and poll.due(now) and (update := poller.poll()) is not None:
                current = _install(kernel, t, update)
            if verify.due(now):
                _verify(kernel, current, failing)
            if stats.due(now):
                seen = _log_tunnel(kernel, current.vxlan.name, seen)
    finally:
        try:
            kernel.teardown(current)
            log.info("kernel mode: removed %s and the filters on %s", current.vxlan.name, t.interface)
        except Exception as exc:  # never mask the error that ended the run
            log.error("kernel mode: teardown incomplete: %s", exc)
        kernel.close()


def _install(kernel: Kernel, t: Target, update: Pushdown) -> plan.MirrorPlan:
    """Replace the two mirror filters with the pushed program (cls_bpf replace: no gap, no restart)."""
    new = build_plan(t, update.program)
    try:
        kernel.apply(new)
    except Exception as exc:  # the next verify round retries with the new plan
        log.error("push-down version %r not installed yet: %s", update.version, exc)
        return new
    log.info("push-down version %r installed (%s)", update.version,
             "mirror all" if update.program is None else f"{len(update.program)} insns")
    return new


def _log_tunnel(kernel: Kernel, name: str, before: dict[str, int]) -> dict[str, int]:
    """Log the tunnel device's counters; warn when it dropped or failed to send since last time."""
    try:
        now = kernel.tunnel_counters(name)
    except Exception as exc:  # counters are informational: never end the mirror over them
        log.error("tunnel counters unavailable: %s", exc)
        return before
    lost = sum(now.get(k, 0) - before.get(k, 0) for k in ("tx_dropped", "tx_errors"))
    line = " ".join(f"{k}={v}" for k, v in now.items())
    if lost > 0:
        log.warning("tunnel %s lost %d packets since the last report: %s", name, lost, line)
    else:
        log.info("tunnel %s counters: %s", name, line)
    return now


def _verify(kernel: Kernel, current: plan.MirrorPlan, failing: list[str]) -> None:
    """One repair round. ``failing`` holds the last error text, so a lasting failure logs once."""
    try:
        steps = kernel.apply(current)
    except Exception as exc:  # outermost boundary of one repair round: log, retry next round
        if failing != [str(exc)]:
            log.error("kernel state check failed (retrying quietly): %s", exc)
            failing[:] = [str(exc)]
        return
    if failing:
        log.info("kernel state check succeeds again")
        failing.clear()
    if steps:
        log.warning("repaired kernel state: %s", ", ".join(f"{s.action} {s.target}" for s in steps))


def run_sniff(t: Target, poller: Poller | None, stop: Stopper, rules_interval: float,
              stats_interval: float, io: str = "ring") -> None:
    """The capture loop in this thread; push-down polls in a helper thread.

    A poll can block for up to ``rules.TIMEOUT`` seconds on an unreachable agent, which must not
    stall the capture (the socket queue would overflow). Replacing a socket filter from another
    thread is a single setsockopt, atomic in the kernel.
    """
    program = bpf.mirror_program(t.agent_ip, t.agent_port)
    sniffer = Sniffer(t.interface, (t.agent_ip, t.agent_port), t.vni, program, io=io)
    log.info("sniff mode: mirroring %s to %s:%d vni %d (%s)", t.interface, t.agent_ip, t.agent_port, t.vni,
             "TPACKET_V3 ring + sendmmsg" if sniffer.io == "ring" else "recvfrom + sendto")
    stats = Every(stats_interval, time.monotonic() + stats_interval)
    done = threading.Event()
    helper = threading.Thread(target=_poll_loop, args=(poller, sniffer, t, rules_interval, done),
                              name="pushdown", daemon=True) if poller else None

    def tick(now: float) -> None:
        if stats.due(now):
            log.info("sniff counters: %s", sniffer.counters.line())

    try:
        if helper:
            helper.start()
        sniffer.run(stop.is_set, tick)
    finally:
        done.set()
        if helper:
            helper.join(rules.TIMEOUT + 1)
        sniffer.close()
        log.info("sniff mode stopped: %s", sniffer.counters.line())


def _poll_loop(poller: Poller, sniffer: Sniffer, t: Target, interval: float, done: threading.Event) -> None:
    while not done.is_set():
        update = poller.poll()
        if update is not None and not done.is_set():
            sniffer.set_program(bpf.mirror_program(t.agent_ip, t.agent_port, update.program))
            log.info("push-down version %r installed in the socket filter", update.version)
        done.wait(interval)
