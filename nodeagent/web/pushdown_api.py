"""``GET /v1/pushdown?ip=<pod ip>&vni=<vni>&mode=<kernel|sniff>``: a sidecar fetches its filter.

Answers ``{"version": "<opaque>", "bpf": [[code, jt, jf, k], ...] | null, "tunnel": bool}``
(``nodeagent.stages.pushdown``): the classic BPF program the sidecar installs (non-zero: mirror the
frame; null: mirror all). The sidecar polls and re-installs only when ``version`` changes; it adds
its own tunnel exclusion. The reported ``mode`` is recorded (``Agent.report_mode``) and shown in
``/status`` per pod.

``tunnel``: whether this agent receives the pod's tunnel, i.e. the pod is *live* as the vantage
stage means it (a datagram within ``dedup.live`` seconds; the request's own connection is pod
traffic, mirrored before the request is read). The sidecar's readiness probe
(``sidecar-lite --check-tunnel``, an exec probe: it asks from the pod's own address) asks with
``check=1`` (no ``mode``, nothing recorded) and fails when it is false: a pod's sidecar is Ready
only while its agent receives its tunnel, which is what other nodes' agents trust before dropping
their copies in its favour (``pods.kube``).

Who is answered (the watched may be hostile, docs/threat-model.md): only the pod asking about
itself. The request's source address must be one of the pod's addresses (an IPv4-mapped IPv6
source counts as its IPv4 address), so a pod can neither read another pod's filter program (which
tells what is *not* watched) nor overwrite the mode another pod reports. That needs the pod's
address preserved up to the agent: true for a pod reaching the agent's Service (kube-proxy DNATs,
it does not SNAT pod traffic) or the node's address; where a CNI masquerades it, every request is
refused and the sidecars keep mirroring everything (fail open: the agent enforces every rule).

The endpoint has a listener of its own (``settings.pushdown``, port 9476), apart from ``/status``
and ``/metrics`` (9477): ``deploy/`` opens this one to every pod and the status port only to the
node and Prometheus. Answers and refusals are counted under ``/status`` ``pushdown``.

Errors: 400 for a missing or bad parameter, 403 for a request from another address than the pod's,
404 for an address that is not a local monitored pod or a VNI that is not its own (the sidecar
retries later: the pod table may lag the pod's start). The program is compiled with libpcap on
first use and cached per distinct expression (at most ``_CACHE_LIMIT``), so polling costs a dict
lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any, Protocol

from aiohttp import web

from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.settings import Settings
from nodeagent.stages import filters, pushdown

PATH = "/v1/pushdown"
_CACHE_LIMIT = 1024
REASONS = ("bad_request", "not_the_pod", "unknown_pod")
"""Refusal counters in ``/status`` ``pushdown.refused``: 400, 403, 404."""
log = logging.getLogger(__name__)


class PushdownHost(Protocol):
    settings: Settings
    pods: PodIndex

    def seen(self, pod_key: str) -> float | None: ...

    def add_task(self, name: str, factory: Any) -> None: ...

    def add_status_hook(self, hook: Any) -> None: ...

    def add_ready_check(self, check: Any) -> None: ...

    def report_mode(self, pod_key: str, mode: str) -> None: ...


def install(agent: PushdownHost) -> PushdownServer:
    """Serve push-down on ``settings.pushdown`` as one of the agent's root tasks."""
    server = PushdownServer(agent)
    agent.add_task("pushdown", server.run)
    agent.add_status_hook(server.status_hook)
    agent.add_ready_check(lambda: server.address is not None)
    return server


def source_address(remote: str | None) -> str | None:
    """The request's source as the pod table writes addresses (IPv4-mapped IPv6 -> IPv4)."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class PushdownServer:
    def __init__(self, agent: PushdownHost) -> None:
        self._agent = agent
        self.address: tuple[str, int] | None = None
        self.answered = 0
        self.refused = dict.fromkeys(REASONS, 0)
        self._filters = filters.compile(agent.settings.filters)
        self._enabled = agent.settings.filters.pushdown
        self._live = agent.settings.dedup.live
        self._cache: dict[str, pushdown.PushdownPlan] = {}

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PATH, self.handle)
        return app

    async def run(self) -> None:
        """Listen until cancelled (the agent's shutdown)."""
        runner = web.AppRunner(self.make_app(), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            listen = self._agent.settings.pushdown
            await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
            host, port = runner.addresses[0][:2]
            self.address = (host, port)
            log.info("push-down on http://%s:%d%s", host, port, PATH)
            await asyncio.Event().wait()
        finally:
            self.address = None
            await runner.cleanup()

    def status_hook(self, snap: dict[str, Any]) -> None:
        listen = f"{self.address[0]}:{self.address[1]}" if self.address else None
        snap["pushdown"] = {"listen": listen, "answered": self.answered, "refused": dict(self.refused)}

    async def handle(self, request: web.Request) -> web.Response:
        query = request.query
        ip, vni_text, mode = query.get("ip", ""), query.get("vni", ""), query.get("mode", "")
        try:
            ip = str(ipaddress.ip_address(ip))
            vni = int(vni_text, 0)
        except ValueError:
            return self._refuse("bad_request", "ip must be an IP address and vni an integer")
        check = query.get("check") == "1"  # the readiness probe: no mode to record
        if mode not in pushdown.MODES and not (check and not mode):
            return self._refuse("bad_request", f"mode must be one of {', '.join(pushdown.MODES)}")
        pod = self._agent.pods.sender(ip)
        source = source_address(request.remote)
        # Checked first, and the same answer whether ``ip`` is a pod or not: no oracle of which
        # addresses are monitored.
        if source != ip and (pod is None or source not in pod.all_ips):
            return self._refuse("not_the_pod", f"a pod may ask only about itself, not from {source}")
        if pod is None or pod.vni != vni:
            return self._refuse("unknown_pod", f"{ip} with VNI {vni} is not a monitored pod on this node")
        if not check:
            self._agent.report_mode(pod.key, mode)
        self.answered += 1
        return web.json_response(self._plan(pod).as_json() | {"tunnel": self._tunnel(pod.key)})

    def _tunnel(self, key: str) -> bool:
        seen = self._agent.seen(key)
        return seen is not None and asyncio.get_running_loop().time() - seen <= self._live

    def _plan(self, pod: PodInfo) -> pushdown.PushdownPlan:
        if not self._enabled:
            return pushdown.PushdownPlan(pushdown.version(None), None, None)
        text = pushdown.expression(self._filters, pod)
        plan = self._cache.get(text)
        if plan is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            plan = self._cache[text] = pushdown.plan(self._filters, pod)
        return plan

    def _refuse(self, reason: str, message: str) -> web.Response:
        self.refused[reason] += 1
        status = {"bad_request": 400, "not_the_pod": 403, "unknown_pod": 404}[reason]
        return web.json_response({"error": message}, status=status)
