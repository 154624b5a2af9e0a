"""An in-process fake of the Kubernetes API's pod endpoints, served over real HTTP (aiohttp).

The real ``kubernetes`` client is pointed at it, so the adapter is tested end to end at the HTTP
boundary (kopf/kmock's rationale: fake the API, never mock the client).

Served: ``GET /api/v1/pods`` and ``GET /api/v1/namespaces/{ns}/pods``, list and ``watch=1``, with
``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a)``) and
``fieldSelector`` (``spec.nodeName``, ``metadata.namespace``, ``metadata.name``, ``status.phase``
with ``=``/``==``/``!=``), ``resourceVersion`` (watch resumes after it), ``timeoutSeconds``,
``allowWatchBookmarks`` (a BOOKMARK before a timeout closes the stream).

Semantics copied from the apiserver: one global, increasing resourceVersion; a watch sends the
events after the requested version, then live ones; an object entering or leaving a selector's set
is sent as ADDED or DELETED; a version older than the compaction point gets an ``ERROR`` event with
a 410 Status (or, with ``gone_as_http``, an HTTP 410 answer). Test controls: ``compact()``,
``disconnect_watches()``, ``fail_next(n, status)``, and ``requests`` (every query seen).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

Obj = dict[str, Any]


def _get(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


_SET = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(notin|in)\s*\(([^)]*)\)|(==|!=|=)\s*([\w./-]*))?\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in [*parts, current] if p.strip()]


def label_matcher(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    tests = []
    for term in _split_selector(text or ""):
        match = _SET.match(term)
        if match is None:
            raise ValueError(f"bad label selector term {term!r}")
        neg, key, setop, values, op, value = match.groups()
        if setop:
            allowed = {v.strip() for v in values.split(",")}
            inside = setop == "in"
            # ``notin`` also matches objects without the label, as the apiserver does
            tests.append(lambda lb, k=key, a=allowed, i=inside: (lb.get(k) in a) == i)
        elif op:
            want = op != "!="
            tests.append(lambda lb, k=key, v=value, w=want: (lb.get(k) == v) == w)
        else:
            tests.append(lambda lb, k=key, n=bool(neg): (k in lb) != n)
    return lambda labels: all(test(labels) for test in tests)


def field_matcher(text: str | None) -> Callable[[Obj], bool]:
    tests = []
    for term in _split_selector(text or ""):
        match = re.match(r"^\s*([\w.]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if match is None or match.group(1) not in (
            "spec.nodeName", "metadata.namespace", "metadata.name", "status.phase"
        ):
            raise ValueError(f"unsupported field selector {term!r}")
        path, op, value = match.groups()
        tests.append(lambda obj, p=path, v=value, w=op != "!=": (_get(obj, p) == v) == w)
    return lambda obj: all(test(obj) for test in tests)


class FakeKubeApi:
    """Pods in memory with a change history; ``app`` serves them. Use from the event loop's thread."""

    def __init__(self, *, gone_as_http: bool = False) -> None:
        self.pods: dict[tuple[str, str], Obj] = {}
        self.history: list[tuple[int, str, Obj | None, Obj]] = []  # (rv, type, before, after)
        self.rv = 100
        self.compacted = 0
        self.gone_as_http = gone_as_http
        self.requests: list[dict[str, str]] = []
        self._watchers: set[asyncio.Queue[tuple[int, str, Obj | None, Obj] | None]] = set()
        self._failures: list[int] = []
        self.app = web.Application()
        self.app.router.add_get("/api/v1/pods", self._pods)
        self.app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._pods)

    # ---- test controls ----
    def create(self, pod: Obj) -> Obj:
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{meta['namespace']}-{meta['name']}")
        return self._record("ADDED", None, pod)

    def update(self, pod: Obj) -> Obj:
        meta = pod["metadata"]
        before = self.pods[(meta.get("namespace", "default"), meta["name"])]
        after = copy.deepcopy(pod)
        after["metadata"].setdefault("namespace", "default")
        return self._record("MODIFIED", before, after)

    def delete(self, namespace: str, name: str) -> Obj:
        before = self.pods[(namespace, name)]
        return self._record("DELETED", before, copy.deepcopy(before))

    def compact(self) -> None:
        """Forget the history so far: watches from older versions now get 410 Gone."""
        self.compacted = self.rv
        self.history.clear()

    def disconnect_watches(self) -> None:
        """End every open watch stream (as an apiserver restart or a load balancer would)."""
        for queue in self._watchers:
            queue.put_nowait(None)

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with HTTP ``status``."""
        self._failures.extend([status] * count)

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    def _record(self, kind: str, before: Obj | None, after: Obj) -> Obj:
        self.rv += 1
        after["metadata"]["resourceVersion"] = str(self.rv)
        key = (after["metadata"]["namespace"], after["metadata"]["name"])
        if kind == "DELETED":
            self.pods.pop(key, None)
        else:
            self.pods[key] = after
        event = (self.rv, kind, before, after)
        self.history.append(event)
        for queue in self._watchers:
            queue.put_nowait(event)
        return copy.deepcopy(after)

    # ---- HTTP ----
    async def _pods(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append({"path": request.path, **query})
        if self._failures:
            status = self._failures.pop(0)
            return web.json_response(_status(status, "injected failure"), status=status)
        try:
            labels = label_matcher(query.get("labelSelector"))
            fields = field_matcher(query.get("fieldSelector"))
        except ValueError as exc:
            return web.json_response(_status(400, str(exc)), status=400)
        namespace = request.match_info.get("namespace")

        def matches(obj: Obj | None) -> bool:
            if obj is None or (namespace and obj["metadata"]["namespace"] != namespace):
                return False
            return labels(obj["metadata"].get("labels") or {}) and fields(obj)

        if query.get("watch") in ("1", "true"):
            return await self._watch(request, query, matches)
        items = [copy.deepcopy(p) for p in self.pods.values() if matches(p)]
        return web.json_response({"kind": "PodList", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    async def _watch(self, request: web.Request, query: dict[str, str],
                     matches: Callable[[Obj | None], bool]) -> web.StreamResponse:
        since = int(query.get("resourceVersion") or self.rv)
        if since < self.compacted:
            gone = _status(410, f"too old resource version: {since} ({self.compacted})")
            if self.gone_as_http:
                return web.json_response(gone, status=410)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if since < self.compacted:
            await _send(response, "ERROR", gone)
            return response
        queue: asyncio.Queue[tuple[int, str, Obj | None, Obj] | None] = asyncio.Queue()
        for event in self.history:
            if event[0] > since:
                queue.put_nowait(event)
        self._watchers.add(queue)
        timeout = float(query.get("timeoutSeconds") or 1800)
        try:
            async with asyncio.timeout(timeout):
                while (event := await queue.get()) is not None:
                    kind = _as_seen(event[1], matches(event[2]), matches(event[3]))
                    if kind:
                        await _send(response, kind, event[3])
        except TimeoutError:
            if query.get("allowWatchBookmarks") in ("1", "true"):
                bookmark = {"kind": "Pod", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(self.rv)}}
                await _send(response, "BOOKMARK", bookmark)
        finally:
            self._watchers.discard(queue)
        return response


def _as_seen(kind: str, before: bool, after: bool) -> str | None:
    """How a watcher with a selector sees a change: entering is ADDED, leaving is DELETED."""
    if kind == "DELETED":
        return "DELETED" if before else None
    if after:
        return "MODIFIED" if before else "ADDED"
    return "DELETED" if before else None


async def _send(response: web.StreamResponse, kind: str, obj: Obj) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


def _status(code: int, message: str) -> Obj:
    reason = {410: "Expired", 400: "BadRequest"}.get(code, "InternalError")
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def pod(name: str, *, ip: str | None = None, node: str = "node-a", namespace: str = "default",
        labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
        phase: str = "Running", sidecar: bool | None = None, sidecar_ready: bool = True) -> Obj:
    """A minimal Pod object as the API serves it.

    ``sidecar`` (None: as the webhook does, with the monitored label or annotation): the injected
    container, with its status ``ready`` as ``sidecar_ready`` once the pod has an IP."""
    labels, annotations = dict(labels or {}), dict(annotations or {})
    if sidecar is None:
        sidecar = (labels.get("podmirror.io/monitored") == "true"
                   or annotations.get("podmirror.io/monitor") == "true")
    containers = [{"name": "app", "image": "app"}]
    if sidecar:
        containers.append({"name": "podmirror-sidecar", "image": "podmirror"})
    obj: Obj = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": {"nodeName": node, "containers": containers},
        "status": {"phase": phase},
    }
    if ip:
        obj["status"]["podIP"] = ip
        obj["status"]["containerStatuses"] = [
            {"name": c["name"], "image": c["image"], "imageID": "", "restartCount": 0,
             "ready": c["name"] != "podmirror-sidecar" or sidecar_ready} for c in containers]
    return obj
