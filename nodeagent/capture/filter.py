"""What a capture selects: plain data parsed from a query string, compiled once into a matcher. Pure.

``GET /v1/capture?pod=NS/NAME&namespace=NS&selector=app%3Dweb&bpf=EXPR&snaplen=N``:

- ``pod`` (repeatable): these pods; ``namespace``: pods of this namespace; ``selector``: pods whose
  labels match a Kubernetes equality-based selector (``app=web,tier!=db,canary,!legacy``). The
  conditions given are ANDed; none given selects every pod of the node.
- ``bpf``: a tcpdump expression over the Ethernet frame (compiled with libpcap once, per session).
- ``snaplen``: bytes kept per frame (0 or absent: whole frames; ``wire_len`` keeps the length).

Which packets belong to a selected pod: every forwarded packet whose copy the pod sent (its
tunnel), and every forwarded packet of which the pod is one end although another monitored pod's
copy was the one kept (dedup keeps one vantage per flow). Each forwarded packet appears once; its
interface is the pod whose copy it is when that pod is selected, else the selected end, with the
direction relative to that pod. So ``pod=shop/web`` shows all of web's traffic the agent forwards,
whichever vantage dedup chose, and never a packet in which no selected pod takes part.

Errors: ``CaptureError`` (a ``ValueError``) whose message names the parameter.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple
from urllib.parse import urlencode

from nodeagent.pods.index import PodInfo
from nodeagent.stages import bpfexpr
from sidecar_lite import cbpf

MAX_PODS = 256
MAX_TEXT = 4096
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
KNOWN = ("pod", "namespace", "selector", "bpf", "snaplen", "count", "duration")
"""Query parameters of ``/v1/capture``: the filter's, and the stream's own (``count``, ``duration``)."""


class CaptureError(ValueError):
    """A bad capture request; the message names the parameter."""


class Term(NamedTuple):
    key: str
    op: str
    """``=`` (equal), ``!=`` (not equal or absent), ``exists``, ``!exists``."""
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "=":
            return labels.get(self.key) == self.value
        if self.op == "!=":
            return labels.get(self.key) != self.value
        return (self.key in labels) == (self.op == "exists")


@dataclasses.dataclass(frozen=True)
class CaptureFilter:
    pods: tuple[str, ...] = ()
    """``namespace/name`` keys; empty: any pod."""
    namespace: str = ""
    selector: str = ""
    bpf: str = ""
    snaplen: int = 0
    """Bytes kept per frame; 0: whole frames."""

    def scopes(self) -> tuple[tuple[str, str], ...]:
        """What a reader must be allowed to capture, as (namespace, name) pairs: each named pod; else
        the namespace (name ""); else every namespace ("", ""). Conditions AND, so the pods named
        are enough when a namespace or selector narrows them further."""
        if self.pods:
            return tuple((key.partition("/")[0], key.partition("/")[2]) for key in self.pods)
        return ((self.namespace, ""),)

    def as_query(self) -> str:
        """The query string that ``parse`` turns back into this filter (relays, clients)."""
        pairs = [("pod", key) for key in self.pods]
        pairs += [(k, v) for k, v in (("namespace", self.namespace), ("selector", self.selector),
                                      ("bpf", self.bpf)) if v]
        if self.snaplen:
            pairs.append(("snaplen", str(self.snaplen)))
        return urlencode(pairs)


def parse(pairs: Iterable[tuple[str, str]]) -> CaptureFilter:
    """Query parameters -> ``CaptureFilter``; unknown parameters and bad values raise ``CaptureError``."""
    pods: list[str] = []
    single: dict[str, str] = {}
    for key, value in pairs:
        if key not in KNOWN:
            raise CaptureError(f"unknown parameter {key!r} (known: {', '.join(KNOWN)})")
        if len(value) > MAX_TEXT:
            raise CaptureError(f"{key} is longer than {MAX_TEXT} characters")
        if key == "pod":
            pods.append(_pod_key(value))
        elif key in single:
            raise CaptureError(f"{key} is given twice")
        else:
            single[key] = value
    if len(pods) > MAX_PODS:
        raise CaptureError(f"pod is given more than {MAX_PODS} times")
    namespace = single.get("namespace", "")
    if namespace and not _NAME.match(namespace):
        raise CaptureError(f"namespace {namespace!r} is not a Kubernetes name")
    selector = single.get("selector", "")
    parse_selector(selector)
    return CaptureFilter(tuple(dict.fromkeys(pods)), namespace, selector, single.get("bpf", "").strip(),
                         _integer(single.get("snaplen", "0"), "snaplen", 0, 262144))


def stream_limits(pairs: Iterable[tuple[str, str]]) -> tuple[int, float]:
    """The stream's own limits: ``count`` (packets, 0: none) and ``duration`` (seconds, 0: none)."""
    values = dict(pairs)
    count = _integer(values.get("count", "0"), "count", 0, 1 << 40)
    try:
        duration = float(values.get("duration", "0"))
    except ValueError:
        raise CaptureError("duration must be a number of seconds") from None
    if not 0 <= duration <= 86400 * 7:
        raise CaptureError("duration must be in 0..604800 seconds")
    return count, duration


def _integer(text: str, name: str, low: int, high: int) -> int:
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise CaptureError(f"{name} must be an integer in {low}..{high}, got {text!r}")
    return int(text)


def _pod_key(text: str) -> str:
    namespace, slash, name = text.partition("/")
    if not slash or not _NAME.match(namespace) or not _NAME.match(name):
        raise CaptureError(f"pod must be NAMESPACE/NAME, got {text!r}")
    return text


def parse_selector(text: str) -> tuple[Term, ...]:
    """Kubernetes equality-based selector -> terms. Set-based terms (``in``, ``notin``) are refused
    with a clear error rather than misread."""
    terms = []
    for raw in (part.strip() for part in text.split(",")) if text.strip() else ():
        if " in " in f" {raw} " or " notin " in f" {raw} " or "(" in raw:
            raise CaptureError(f"selector {raw!r}: set-based terms are not supported, use k=v, k!=v, k, !k")
        if "!=" in raw:
            key, _, value = raw.partition("!=")
            term = Term(key.strip(), "!=", value.strip())
        elif "=" in raw:
            key, _, value = raw.partition("==") if "==" in raw else raw.partition("=")
            term = Term(key.strip(), "=", value.strip())
        elif raw.startswith("!"):
            term = Term(raw[1:].strip(), "!exists")
        else:
            term = Term(raw, "exists")
        if not _LABEL_KEY.match(term.key) or not _LABEL_VALUE.match(term.value):
            raise CaptureError(f"selector {raw!r} is not a valid label term")
        terms.append(term)
    return tuple(terms)


class Matcher:
    """A compiled ``CaptureFilter``: ``pod(info)`` decides for a pod (cached by the caller),
    ``frame(bytes)`` applies the BPF expression (None: no expression)."""

    def __init__(self, flt: CaptureFilter) -> None:
        self.filter = flt
        self._pods = frozenset(flt.pods)
        self._terms = parse_selector(flt.selector)
        self.frame: bpfexpr.Matcher | None = None
        if flt.bpf:
            try:
                self.frame = bpfexpr.to_function(bpfexpr.compile_expression(flt.bpf))
            except cbpf.BpfError as exc:
                raise CaptureError(f"bpf {flt.bpf!r}: {exc}") from None
        self.snaplen = flt.snaplen

    def pod(self, pod: PodInfo) -> bool:
        if self._pods and pod.key not in self._pods:
            return False
        if self.filter.namespace and pod.namespace != self.filter.namespace:
            return False
        return all(term.matches(pod.labels) for term in self._terms)


def compile(flt: CaptureFilter) -> Matcher:  # noqa: A001 - the verb the style guide uses
    return Matcher(flt)
