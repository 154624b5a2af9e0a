"""``sidecar-lite``: settings -> discovery -> mode -> run loop -> teardown; exit codes.

Exit 0 after SIGTERM/SIGINT with everything created removed; 2 for a configuration error; 1 when
the mirror cannot be set up at all. ``auto`` picks kernel mode when CAP_NET_ADMIN is effective and
falls back to sniff mode if the kernel set-up is refused anyway (seccomp, user namespaces).
``--check-tunnel`` (the readiness probe) mirrors nothing: exit 0 when the agent says it receives
this pod's tunnel, 1 otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from sidecar_lite import discovery, identity, netinfo, rules, runner, settings
from sidecar_lite.stopper import Stopper

log = logging.getLogger("sidecar_lite")

RETRY_SECONDS = 2.0
"""Pause between discovery attempts: DNS or the agent pod may not be ready when the pod starts."""


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("PODMIRROR_LOG_LEVEL", "INFO"),
                        format="%(asctime)s sidecar-lite %(levelname)s %(message)s", stream=sys.stderr)
    try:
        cfg = settings.parse(sys.argv[1:] if argv is None else argv, os.environ)
    except settings.ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    if cfg.check_tunnel:
        return check_tunnel(cfg)
    stop = Stopper()
    stop.install()
    try:
        return _run(cfg, stop)
    finally:
        stop.close()


def _run(cfg: settings.Settings, stop: Stopper) -> int:
    agent_ip = _discover(cfg, stop)
    if agent_ip is None:
        return 0  # stopped while waiting for the agent
    try:
        pod_ip = cfg.pod.ip or netinfo.interface_ipv4(cfg.interface)
    except OSError as exc:
        log.error("interface %s has no IPv4 address (%s)", cfg.interface, exc)
        return 1
    try:
        vni = cfg.vni if cfg.vni is not None else identity.vni_for_address(pod_ip)
    except ValueError as exc:  # an IPv6-only pod: the VNI rule needs IPv4, so it must be given
        log.error("vni auto: %s; set PODMIRROR_VNI", exc)
        return 2
    target = runner.Target(cfg.interface, agent_ip, cfg.agent_port, vni, cfg.tunnel_mtu)
    mode = choose_mode(cfg.mode, netinfo.has_net_admin())
    log.info("mode %s (requested %s), pod %s, vni %d (0x%06x)", mode, cfg.mode, pod_ip, vni, vni)
    if mode == "kernel":
        try:
            runner.run_kernel(target, _poller(cfg, pod_ip, vni, "kernel", agent_ip), stop,
                              cfg.verify_interval, cfg.rules_interval, cfg.stats_interval)
            return 0
        except Exception as exc:  # set-up refused: only auto may fall back
            if cfg.mode == "kernel":
                log.error("kernel mode failed: %s", exc)
                return 1
            log.warning("kernel mode refused (%s); falling back to sniff mode", exc)
    runner.run_sniff(target, _poller(cfg, pod_ip, vni, "sniff", agent_ip), stop,
                     cfg.rules_interval, cfg.stats_interval, cfg.sniff_io)
    return 0


def check_tunnel(cfg: settings.Settings) -> int:
    """One question to the agent (push-down URL, ``check=1``): does it receive this pod's tunnel?"""
    if not cfg.rules_url:
        log.error("--check-tunnel asks the agent at the push-down URL: set PODMIRROR_RULES_URL")
        return 2
    try:
        agent_ip = discovery.resolve(cfg)
        pod_ip = cfg.pod.ip or netinfo.interface_ipv4(cfg.interface)
        vni = cfg.vni if cfg.vni is not None else identity.vni_for_address(pod_ip)
    except (discovery.DiscoveryError, OSError, ValueError) as exc:
        log.error("not ready: %s", exc)
        return 1
    url = rules.build_check_url(cfg.rules_url, ip=pod_ip, vni=vni, agent_host=agent_ip)
    ok, why = rules.tunnel_received(url)
    if not ok:
        log.error("not ready: %s", why)
    return 0 if ok else 1


def choose_mode(requested: str, net_admin: bool) -> str:
    if requested != "auto":
        return requested
    return "kernel" if net_admin else "sniff"


def _discover(cfg: settings.Settings, stop: Stopper) -> str | None:
    logged = False
    while not stop.is_set():
        try:
            return discovery.resolve(cfg)
        except discovery.DiscoveryError as exc:
            if not logged:
                log.warning("agent not found yet (%s); retrying every %.0f s", exc, RETRY_SECONDS)
                logged = True
        stop.wait(RETRY_SECONDS)
    return None


def _poller(cfg: settings.Settings, pod_ip: str, vni: int, mode: str, agent_ip: str) -> rules.Poller | None:
    if not cfg.rules_url:
        return None
    return rules.Poller(rules.build_url(cfg.rules_url, ip=pod_ip, vni=vni, mode=mode, agent_host=agent_ip))
