"""``GET /v1/pushdown?ip=<pod ip>&vni=<vni>&mode=<kernel|sniff>``: a sidecar fetches its filter.

Answers ``{"version": "<opaque>", "bpf": [[code, jt, jf, k], ...] | null, "tunnel": bool}``
(``nodeagent.stages.pushdown``): the classic BPF program the sidecar installs (non-zero: mirror the
frame; null: mirror all). The sidecar polls and re-installs only when ``version`` changes; it adds
its own tunnel exclusion. The reported ``mode`` is recorded (``Agent.report_mode``) and shown in
``/status`` per pod.

``tunnel``: whether this agent receives the pod's tunnel, i.e. the pod is *live* as the vantage
stage means it (a datagram within ``dedup.live`` seconds; the request's own connection is pod
traffic, mirrored before the request is read). The sidecar's readiness probe
(``sidecar-lite --check-tunnel``) asks with ``check=1`` (no ``mode``, nothing recorded) and
fails when it is false: a pod's sidecar is Ready only while its agent receives its tunnel, which
is what other nodes' agents trust before dropping their copies in its favour (``pods.kube``).

Errors: 400 for a missing or bad parameter, 404 for an address that is not a local monitored pod
or a VNI that is not its own (the sidecar retries later: the pod table may lag the pod's start).
The program is compiled with libpcap on first use and cached per distinct expression, so polling
costs a dict lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any, Protocol

from aiohttp import web

from nodeagent.pods.index import PodIndex
from nodeagent.settings import Settings
from nodeagent.stages import filters, pushdown

PATH = "/v1/pushdown"
_CACHE_LIMIT = 1024


class PushdownHost(Protocol):
    settings: Settings
    pods: PodIndex

    def seen(self, pod_key: str) -> float | None: ...

    def add_route(self, method: str, path: str, handler: Any) -> None: ...

    def report_mode(self, pod_key: str, mode: str) -> None: ...


def install(agent: PushdownHost) -> None:
    agent.add_route("GET", PATH, make_handler(agent))


def make_handler(agent: PushdownHost) -> Any:
    filterset = filters.compile(agent.settings.filters)
    enabled = agent.settings.filters.pushdown
    live = agent.settings.dedup.live
    cache: dict[str, pushdown.PushdownPlan] = {}

    def tunnel(key: str) -> bool:
        seen = agent.seen(key)
        return seen is not None and asyncio.get_running_loop().time() - seen <= live

    async def handler(request: web.Request) -> web.Response:
        query = request.query
        ip, vni_text, mode = query.get("ip", ""), query.get("vni", ""), query.get("mode", "")
        try:
            ip = str(ipaddress.ip_address(ip))
            vni = int(vni_text, 0)
        except ValueError:
            return _error(400, "ip must be an IP address and vni an integer")
        check = query.get("check") == "1"  # the readiness probe: no mode to record
        if mode not in pushdown.MODES and not (check and not mode):
            return _error(400, f"mode must be one of {', '.join(pushdown.MODES)}")
        pod = agent.pods.sender(ip)
        if pod is None or pod.vni != vni:
            return _error(404, f"{ip} with VNI {vni} is not a monitored pod on this node")
        if not check:
            agent.report_mode(pod.key, mode)
        received = {"tunnel": tunnel(pod.key)}
        if not enabled:
            return web.json_response(pushdown.PushdownPlan(pushdown.version(None), None, None).as_json()
                                     | received)
        text = pushdown.expression(filterset, pod)
        plan = cache.get(text)
        if plan is None:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            plan = cache[text] = pushdown.plan(filterset, pod)
        return web.json_response(plan.as_json() | received)

    return handler


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
