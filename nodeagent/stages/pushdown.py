"""Push-down: the part of the filter rules a pod's sidecar can apply in its kernel path.

Model. A sidecar mirrors a frame when its program returns non-zero (classic BPF over the Ethernet
frame, as cls_bpf at clsact and SO_ATTACH_FILTER both run it). For one pod, ``expression(filters,
pod)`` folds the ordered rules into one tcpdump expression, then ``plan`` compiles it with libpcap
and names it with a stable version (the same rules and pod always give the same version, any change
gives a new one). Served at ``GET /v1/pushdown?ip=&vni=&mode=`` as
``{"version": str, "bpf": [[code, jt, jf, k], ...] | null}`` (null: mirror everything).

Soundness invariant: the sidecar must mirror every frame the agent would forward (a superset), so
pushing down never loses traffic; the agent still enforces every rule itself. Per rule:

- conditions on the pod (namespace, name, labels) are constants for that pod: a rule that does not
  apply is left out, one that applies loses those conditions;
- direction, protocol, ports, peer CIDRs and BPF expressions read only the frame and the pod's own
  address: they translate exactly (``ip src host POD`` for out, ``ip dst net C`` for the peer...);
- conditions on the peer *pod* (``peer_namespace``, ``peer_labels``) depend on the pod table and
  are not pushed: an exclude rule holding one is skipped (the agent applies it), and an include
  rule holding one ends the fold with "mirror" (a frame reaching it might be included).

A container selection (``PodInfo.ports``, see ``containers``) is and-ed in front of the rules.

First match wins, so the fold runs backwards from the default: an include rule gives
``C or (rest)``, an exclude rule ``not C and (rest)``, with constant folding so a rule set with
nothing pushable yields null. Limits: frames carrying a VLAN tag or IPv6 extension headers before
the transport header are matched by libpcap's rules (the agent decodes past them); pods' eth0
frames carry neither in practice.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Sequence
from typing import NamedTuple

from nodeagent.pods.index import PodInfo
from nodeagent.settings import RuleSettings
from nodeagent.stages import bpfexpr, containers, filters
from sidecar_lite import cbpf

MODES = ("kernel", "sniff")
_TRUE, _FALSE = "1", "0"
"""Folding constants; never handed to libpcap."""


class PushdownPlan(NamedTuple):
    version: str
    program: cbpf.Program | None
    expression: str | None
    """The tcpdump expression compiled (None: mirror everything); for logs and tests."""

    def as_json(self) -> dict[str, object]:
        return {"version": self.version,
                "bpf": None if self.program is None else [list(insn) for insn in self.program]}


def expression(filterset: filters.FilterSet, pod: PodInfo) -> str:
    """The pod's pushable rules as one tcpdump expression, or the constants "1" / "0"."""
    rest = _TRUE if filterset.default == filters.INCLUDE else _FALSE
    rules = list(filterset.for_pod(pod))
    cut = next((i for i, r in enumerate(rules) if not _pushable(r.spec) and r.outcome != filters.EXCLUDE),
               None)
    if cut is not None:  # an include rule we cannot evaluate: every frame reaching it may be kept
        rules, rest = rules[:cut], _TRUE
    for rule in reversed(rules):
        if not _pushable(rule.spec):
            continue  # an unpushable exclude: the agent applies it
        cond = condition(rule.spec, pod)
        if rule.outcome == filters.EXCLUDE:
            rest = _and(_not(cond), rest)
        else:
            rest = _or(cond, rest)
    ports = containers.expression(pod)  # the container selection holds whatever the rules say
    return rest if ports is None else _and(ports, rest)


def plan(filterset: filters.FilterSet, pod: PodInfo) -> PushdownPlan:
    """Compile the pod's expression (libpcap, at most once per distinct expression by the caller).

    The program passes the validator the sidecar applies to what it receives (``cbpf.parse``), with
    room for the sidecar's tunnel exclusion; ``cbpf.BpfError`` otherwise (the sidecar keeps its
    current program, the agent still enforces every rule)."""
    text = expression(filterset, pod)
    if text == _TRUE:
        return PushdownPlan(version(None), None, None)
    program = cbpf.REJECT_ALL if text == _FALSE else bpfexpr.compile_expression(text)
    return PushdownPlan(version(program), cbpf.validate(program, cbpf.MAX_PUSHED_INSNS), text)


def condition(spec: RuleSettings, pod: PodInfo) -> str:
    """The packet-level conditions of a pushable rule for ``pod`` (constants for none)."""
    parts: list[str] = []
    if spec.direction is not None:  # every address: a dual-stack pod's IPv6 packets are its own too
        end = "src" if spec.direction == "out" else "dst"
        parts.append(_or_all([f"{_family(ip)} {end} host {ip}" for ip in pod.all_ips]))
    if spec.protocol is not None:
        numbers = filters.protocol_numbers(spec.protocol, "protocol", spec.name)
        # Both families: the agent matches the protocol of any frame, and dual-stack pods send both.
        parts.append(_or_all([f"{fam} proto {n}" for n in numbers for fam in ("ip", "ip6")]))
    if spec.ports:
        ranges = filters.port_ranges(spec.ports, "ports", spec.name)
        parts.append(_or_all([f"port {lo}" if lo == hi else f"portrange {lo}-{hi}" for lo, hi in ranges]))
    if spec.peer:
        peer = _peer_condition(spec.peer, pod)
        if peer == _FALSE:
            return _FALSE
        parts.append(peer)
    if spec.bpf is not None:
        parts.append(spec.bpf)
    if not parts:
        return _TRUE
    return " and ".join(f"({p})" for p in parts)


def _peer_condition(cidrs: Sequence[str], pod: PodInfo) -> str:
    """The other end in one of ``cidrs``, from each of the pod's addresses of the same family."""
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    sides = []
    for ip in pod.all_ips:
        version, family = ipaddress.ip_address(ip).version, _family(ip)
        same = [n for n in nets if n.version == version]
        if same:
            peer = _or_all([f"{family} dst net {n}" for n in same])
            back = _or_all([f"{family} src net {n}" for n in same])
            # Parenthesised: libpcap's "and" and "or" bind equally, left to right.
            sides += [f"{family} src host {ip} and ({peer})", f"{family} dst host {ip} and ({back})"]
    return _or_all(sides) if sides else _FALSE


def _family(ip: str) -> str:
    return "ip" if ipaddress.ip_address(ip).version == 4 else "ip6"


def _pushable(spec: RuleSettings) -> bool:
    return spec.peer_namespace is None and spec.peer_labels is None


def version(program: Sequence[cbpf.Instruction] | None) -> str:
    blob = json.dumps(None if program is None else [list(i) for i in program]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _or_all(items: list[str]) -> str:
    return items[0] if len(items) == 1 else " or ".join(f"({i})" for i in items)


def _not(a: str) -> str:
    return _FALSE if a == _TRUE else _TRUE if a == _FALSE else f"not ({a})"


def _and(a: str, b: str) -> str:
    if _FALSE in (a, b):
        return _FALSE
    return b if a == _TRUE else a if b == _TRUE else f"({a}) and ({b})"


def _or(a: str, b: str) -> str:
    if _TRUE in (a, b):
        return _TRUE
    return b if a == _FALSE else a if b == _FALSE else f"({a}) or ({b})"
