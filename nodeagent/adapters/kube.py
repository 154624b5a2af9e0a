"""Kubernetes pod watch -> ``PodTable``, without ever blocking the event loop.

The official ``kubernetes`` client is synchronous, so each watch runs in a worker thread that only
*hands* events to the loop with ``call_soon_threadsafe``; the loop thread alone touches the table
(``pods.kube.PodTable``, pure). Two watches (see ``pods.kube``): this node's pods (field selector
``spec.nodeName``) and the cluster's monitored pods (label selector), never every pod.

Per watch, the thread loops: list (paged) -> hand a RESYNC -> watch from the list's
resourceVersion, resuming from the last version seen (events and BOOKMARKs) whenever the stream
ends. A 410 Gone (an ERROR event or an HTTP 410) means the version was compacted: relist. Any other
failure waits an exponential backoff with full jitter (so a restarted apiserver is not hit by every
agent at once) and retries. ``stop()`` sets a flag and shuts the open response's socket down, so a
thread blocked in a read returns at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from nodeagent.pods.kube import LOCAL, MONITORED_LABEL, PEERS, PodTable
from nodeagent.settings import ConfigError
from nodeagent.stats import Counters

log = logging.getLogger(__name__)

Sink = Callable[[str, str, Any], None]
"""``sink(source, kind, payload)``: kind RESYNC (payload: list of pods) or ADDED/MODIFIED/DELETED."""


class Gone(Exception):
    """The requested resourceVersion is too old (HTTP 410): relist."""


@dataclasses.dataclass(frozen=True)
class WatchSpec:
    source: str
    field_selector: str | None = None
    label_selector: str | None = None


def watch_specs(node: str, label_selector: str = f"{MONITORED_LABEL}=true") -> list[WatchSpec]:
    return [WatchSpec(LOCAL, field_selector=f"spec.nodeName={node}"),
            WatchSpec(PEERS, label_selector=label_selector)]


class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**n))`` seconds."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base, self.cap, self._rng, self._failures = base, cap, rng or random.Random(), 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2 ** min(self._failures, 30))
        self._failures += 1
        return self._rng.uniform(0, delay)

    def reset(self) -> None:
        self._failures = 0


class PodStream:
    """One list+watch loop, run by a worker thread (``run``); ``stop`` may be called from any thread."""

    def __init__(self, api: kubernetes.client.CoreV1Api, spec: WatchSpec, sink: Sink, *,
                 timeout: int = 300, page: int = 500, backoff: Backoff | None = None) -> None:
        self._api, self._spec, self._sink = api, spec, sink
        self._timeout, self._page = timeout, page
        self._backoff = backoff or Backoff()
        self._stopped = threading.Event()
        self._response: Any = None
        self.relists = self.errors = self.resumes = 0

    def stop(self) -> None:
        self._stopped.set()
        response = self._response
        if response is not None:
            response.shutdown()  # urllib3 >= 2.3: unblocks a read in another thread

    def run(self) -> None:
        version: str | None = None
        while not self._stopped.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                self.resumes += 1  # the stream ended normally (timeout): resume from ``version``
                self._backoff.reset()
            except Gone:
                self.relists += 1
                version = None
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError, KeyError) as exc:
                if self._stopped.is_set():
                    break
                self.errors += 1
                delay = self._backoff.next()
                log.warning("pod watch %s failed (%s); retrying in %.1fs", self._spec.source, exc, delay)
                self._stopped.wait(delay)

    def _call(self, **kwargs: Any) -> Any:
        spec = self._spec
        if spec.field_selector:
            kwargs["field_selector"] = spec.field_selector
        if spec.label_selector:
            kwargs["label_selector"] = spec.label_selector
        try:
            return self._api.list_pod_for_all_namespaces(_preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status == 410:
                raise Gone(str(exc.reason)) from exc
            raise

    def _list(self) -> str:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            extra = {"_continue": token} if token else {}
            response = self._call(limit=self._page, _request_timeout=(10, 60), **extra)
            body = json.loads(response.data)
            items.extend(body.get("items") or [])
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                break
        self._sink(self._spec.source, "RESYNC", items)
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        response = self._call(watch=True, resource_version=version, allow_watch_bookmarks=True,
                              timeout_seconds=self._timeout, _request_timeout=(10, self._timeout + 30))
        self._response = response
        if self._stopped.is_set():  # stop() ran before the response was visible to it
            response.shutdown()
        try:
            for line in iter_resp_lines(response):
                if self._stopped.is_set():
                    break
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", ""))
                    raise ValueError(f"watch error: {obj.get('message')}")
                version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self._sink(self._spec.source, kind, obj)
        finally:
            self._response = None
            response.release_conn()
        return version


def api_client(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    """A client for ``kubeconfig``, or the in-cluster service account; never the global default."""
    if kubeconfig:
        client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(
            config_file=kubeconfig)
        return client
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_incluster_config(client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


class KubeWatcher:
    """Root task: runs the two streams in threads and applies their events to ``table`` on the loop."""

    def __init__(self, table: PodTable, api: kubernetes.client.CoreV1Api, specs: list[WatchSpec], *,
                 timeout: int = 300) -> None:
        self._table = table
        self._streams = [PodStream(api, spec, self._hand_over, timeout=timeout) for spec in specs]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listed: set[str] = set()
        self.synced = asyncio.Event()
        """Set once every source has been listed: the table is complete (``/readyz``)."""
        self.events = 0

    def _hand_over(self, source: str, kind: str, payload: Any) -> None:
        """Worker thread: queue the event onto the loop; never touch the table here."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._apply, source, kind, payload)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def _apply(self, source: str, kind: str, payload: Any) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.events += 1
        if kind == "RESYNC":
            self._table.replace(source, payload, now)
            self._listed.add(source)
            if len(self._listed) == len(self._streams):
                self.synced.set()
        else:
            self._table.apply(source, kind, payload, now)

    def snapshot(self) -> dict[str, int]:
        return {"events": self.events, "relists": sum(s.relists for s in self._streams),
                "resumes": sum(s.resumes for s in self._streams),
                "errors": sum(s.errors for s in self._streams)}

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        threads = [threading.Thread(target=s.run, name=f"kube-watch-{i}", daemon=True)
                   for i, s in enumerate(self._streams)]
        for thread in threads:
            thread.start()
        try:
            await asyncio.Event().wait()  # until cancelled by the supervisor
        finally:
            for stream in self._streams:
                stream.stop()
            for thread in threads:
                await asyncio.to_thread(thread.join, 5.0)


def install(agent: Any) -> None:
    """Wire the watcher into ``app.Agent`` when ``settings.kube`` is enabled (``--node-name``):
    root tasks (the watch; forgetting departed pods' state), the ``kube``/``silent`` parts of
    ``/status``, and readiness once listed."""
    settings = agent.settings.kube
    if not settings.enabled:
        return
    table = PodTable(agent.pods, node=settings.node_name)
    try:
        client = api_client(settings.kubeconfig)
    except (kubernetes.config.ConfigException, OSError) as exc:  # no kubeconfig, not in a cluster
        raise ConfigError("kube.kubeconfig", f"gives no usable API access: {exc}") from None
    watcher = KubeWatcher(table, kubernetes.client.CoreV1Api(client),
                          watch_specs(settings.node_name, settings.label_selector),
                          timeout=settings.watch_timeout)

    async def run() -> None:
        try:
            await watcher.run()
        finally:
            client.close()

    async def forget() -> None:
        """Per-pod state follows the pod table: removed ``forget_after`` seconds after a pod left."""
        loop, grace = asyncio.get_running_loop(), settings.forget_after
        while True:
            await asyncio.sleep(min(grace / 2, 10.0))
            gone = agent.forget_departed(loop.time(), grace)
            if gone:
                log.info("forgot the state of %d pods that left the table (e.g. %s)", len(gone), gone[0])

    def report(snapshot: dict[str, Any]) -> None:
        now = asyncio.get_running_loop().time()
        silent = table.silent(agent.last_seen(), now, settings.silent_after)
        add_status(snapshot, table, watcher, silent)

    agent.add_task("kube-watch", run)
    agent.add_task("kube-forget", forget)
    agent.add_status_hook(report)
    agent.add_ready_check(watcher.synced.is_set)


def add_status(snapshot: dict[str, Any], table: PodTable, watcher: KubeWatcher, silent: list[str]) -> None:
    """``/status`` additions: every selected local pod (zero counters before its first datagram,
    which leaves the totals and their invariant untouched), ``silent`` flags and watch counters."""
    pods = snapshot.setdefault("pods", {})
    quiet = set(silent)
    for key in table.keys(LOCAL):
        entry = pods.setdefault(key, Counters().snapshot())
        entry["silent"] = key in quiet
    snapshot["silent"] = silent
    snapshot["kube"] = {**watcher.snapshot(), "synced": watcher.synced.is_set(),
                        "local": len(table.keys(LOCAL)), "peers": len(table.keys(PEERS))}
