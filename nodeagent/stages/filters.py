"""Filter rules: ordered include/exclude rules compiled once into per-packet checks.

Model: ``compile(settings)`` turns ``FilterSettings`` into a ``FilterSet``. For one packet,
``decide(frame, meta, pod, peer, direction)`` walks the rules in order; the first rule whose every
condition matches decides (include, optionally with a snap length, or exclude); if none matches,
``default`` decides. The preset ``drop-health-probes`` is an exclude rule placed before the user's
rules: the peer is this node's own address (the kubelet probes pods from it).

Conditions (a rule holds any subset; all must match):

- ``direction``: in (the pod is the destination) or out (the pod is the source);
- ``namespace``, ``pod``, ``labels``: the monitored pod (the vantage that sent this copy);
- ``peer``: the other end's address is in one of the CIDRs (no other end: no match);
- ``peer_namespace``, ``peer_labels``: the other end is a known monitored pod that matches;
- ``protocol``; ``ports`` (either port, TCP/UDP/SCTP only; a non-first fragment has none);
- ``bpf``: a tcpdump expression over the Ethernet frame, compiled once with libpcap and run as
  generated Python (``bpfexpr.to_function``); a bad one is a ``ConfigError`` naming the rule.

Which rules apply to a pod depends only on the pod (namespace, name, labels), so the rule list is
narrowed once per pod object and cached. ``decide`` returns ``EXCLUDE`` (-1), ``INCLUDE`` (0) or a
snap length (> 0). Pure after compilation.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping, Sequence

from nodeagent.pods.index import PodInfo
from nodeagent.settings import ConfigError, FilterSettings, RuleSettings
from nodeagent.stages import bpfexpr
from nodeagent.verdict import Direction
from nodeagent.wire.headers import PacketMeta
from sidecar_lite import cbpf

EXCLUDE, INCLUDE = -1, 0
HEALTH_PRESET = "drop-health-probes"
PROTOCOLS: Mapping[str, tuple[int, ...]] = {"tcp": (6,), "udp": (17,), "icmp": (1, 58), "sctp": (132,),
                                            "icmp6": (58,)}
_PORTED = frozenset({6, 17, 132})
_CACHE_LIMIT = 512
"""Pods whose pod-level rule matches are cached (a node runs at most a few hundred): cleared when
full, so pods that come and go never grow it (churn of 10,000 pods: tests/kube/test_churn.py)."""
_EGRESS, _INGRESS = Direction.EGRESS, Direction.INGRESS
"""Per-packet comparisons against module constants: an enum member read from its class costs ~0.08 us."""

Check = Callable[[memoryview | bytes, PacketMeta, Direction, bytes, "PodInfo | None"], bool]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One compiled rule: pod-level conditions (checked once per pod) and packet checks."""

    name: str
    spec: RuleSettings
    outcome: int
    """EXCLUDE, INCLUDE or a snap length."""
    checks: tuple[Check, ...]
    program: cbpf.Program | None


def compile(settings: FilterSettings) -> FilterSet:  # noqa: A001 - the verb the style guide uses
    """Compile every rule once. Raises ``ConfigError`` naming the rule for a bad BPF or protocol."""
    specs: list[tuple[str, RuleSettings]] = []
    if HEALTH_PRESET in settings.presets and settings.node_ip:
        net = ipaddress.ip_network(settings.node_ip)
        specs.append((f"presets.{HEALTH_PRESET}", RuleSettings(action="exclude", name=HEALTH_PRESET,
                                                               peer=(str(net),))))
    specs += [(f"rules[{i}]", spec) for i, spec in enumerate(settings.rules)]
    rules = tuple(_compile_rule(path, spec) for path, spec in specs)
    return FilterSet(rules, INCLUDE if settings.default == "include" else EXCLUDE)


def _compile_rule(path: str, spec: RuleSettings) -> Rule:
    name = spec.name or path
    checks: list[Check] = []
    if spec.direction is not None:
        want = Direction.INGRESS if spec.direction == "in" else Direction.EGRESS
        checks.append(lambda f, m, d, a, p: d == want)
    if spec.protocol is not None:
        protos = frozenset(protocol_numbers(spec.protocol, f"filters.{path}.protocol", name))
        checks.append(lambda f, m, d, a, p: m.proto in protos)
    if spec.ports:
        checks.append(_ports_check(spec.ports, f"filters.{path}.ports", name))
    if spec.peer:
        checks.append(_cidr_check(spec.peer))
    if spec.peer_namespace is not None or spec.peer_labels is not None:
        ns, labels = spec.peer_namespace, spec.peer_labels or {}
        checks.append(lambda f, m, d, a, p: p is not None and _pod_matches(p, ns, None, labels))
    program = None
    if spec.bpf is not None:
        try:
            program = bpfexpr.compile_expression(spec.bpf)
            matcher = bpfexpr.to_function(program)
        except cbpf.BpfError as exc:
            raise ConfigError(f"filters.{path}.bpf", f"invalid BPF in rule {name!r}: {exc}") from None
        checks.append(lambda f, m, d, a, p: matcher(f) != 0)
    outcome = EXCLUDE if spec.action == "exclude" else (spec.snaplen or INCLUDE)
    return Rule(name, spec, outcome, tuple(checks), program)


def protocol_numbers(value: str | int, field: str, rule: str) -> tuple[int, ...]:
    if isinstance(value, int):
        if not 0 <= value <= 255:
            raise ConfigError(field, f"in rule {rule!r} must be in 0..255, got {value}")
        return (value,)
    numbers = PROTOCOLS.get(value.lower())
    if numbers is None:
        raise ConfigError(field, f"in rule {rule!r} must be one of {sorted(PROTOCOLS)} or a number")
    return numbers


def port_ranges(ports: Sequence[int | str], field: str, rule: str) -> tuple[tuple[int, int], ...]:
    out = []
    for item in ports:
        low, _, high = str(item).partition("-")
        try:
            lo, hi = int(low), int(high or low)
        except ValueError:
            raise ConfigError(field, f"in rule {rule!r}: bad port {item!r}") from None
        if not 0 <= lo <= hi <= 65535:
            raise ConfigError(field, f"in rule {rule!r}: bad port range {item!r}")
        out.append((lo, hi))
    return tuple(out)


def _ports_check(ports: Sequence[int | str], field: str, rule: str) -> Check:
    ranges = port_ranges(ports, field, rule)
    singles = frozenset(lo for lo, hi in ranges if lo == hi)
    spans = tuple((lo, hi) for lo, hi in ranges if lo != hi)

    def check(f: memoryview | bytes, m: PacketMeta, d: Direction, a: bytes, p: PodInfo | None) -> bool:
        if m.proto not in _PORTED or m.l4 < 0:
            return False
        if m.sport in singles or m.dport in singles:
            return True
        return any(lo <= m.sport <= hi or lo <= m.dport <= hi for lo, hi in spans)

    return check


def _cidr_check(cidrs: Sequence[str]) -> Check:
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    table = tuple((n.max_prefixlen // 8, int(n.netmask), int(n.network_address)) for n in nets)

    def check(f: memoryview | bytes, m: PacketMeta, d: Direction, a: bytes, p: PodInfo | None) -> bool:
        if not a:
            return False
        value, length = int.from_bytes(a), len(a)
        for size, mask, net in table:  # a loop, not any(generator): ~0.3 us less per packet
            if length == size and value & mask == net:
                return True
        return False

    return check


def _pod_matches(pod: PodInfo, namespace: str | None, name: str | None, labels: Mapping[str, str]) -> bool:
    if namespace is not None and pod.namespace != namespace:
        return False
    if name is not None and pod.name != name:
        return False
    return all(pod.labels.get(k) == v for k, v in labels.items())


def applies(rule: Rule, pod: PodInfo) -> bool:
    """Whether the rule's pod-level conditions (namespace, name, labels) hold for ``pod``."""
    return _pod_matches(pod, rule.spec.namespace, rule.spec.pod, rule.spec.labels or {})


class FilterSet:
    def __init__(self, rules: tuple[Rule, ...], default: int) -> None:
        self.rules = rules
        self.default = default
        self._per_pod: dict[int, tuple[PodInfo, tuple[Rule, ...]]] = {}

    def for_pod(self, pod: PodInfo) -> tuple[Rule, ...]:
        """The rules whose pod-level conditions hold for ``pod``, in order (cached per pod object)."""
        cached = self._per_pod.get(id(pod))
        if cached is not None and cached[0] is pod:
            return cached[1]
        if len(self._per_pod) >= _CACHE_LIMIT:  # pods come and go: start afresh, never grow
            self._per_pod.clear()
        rules = tuple(rule for rule in self.rules if applies(rule, pod))
        self._per_pod[id(pod)] = (pod, rules)
        return rules

    def decide(self, frame: memoryview | bytes, meta: PacketMeta, pod: PodInfo, peer: PodInfo | None,
               direction: Direction) -> int:
        """EXCLUDE (-1), INCLUDE (0) or a snap length (> 0) for one packet of ``pod``."""
        if not self.rules:  # no rules configured (the default): 0.47 -> 0.1 us per packet, measured
            return self.default
        if direction == _EGRESS:
            other = meta.dst
        elif direction == _INGRESS:
            other = meta.src
        else:
            other = b""
        for rule in self.for_pod(pod):
            for check in rule.checks:
                if not check(frame, meta, direction, other, peer):
                    break
            else:
                return rule.outcome
        return self.default
