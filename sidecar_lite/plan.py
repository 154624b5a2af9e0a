"""Pure planning of the kernel mirror: desired state, observed state, and the steps between them.

Model: ``build(...)`` describes what kernel mode wants in the pod's namespace:

- a VXLAN device ``pm-<vni as 6 hex digits>`` (learning off) whose remote is the agent;
- a clsact qdisc on the mirrored interface with, at ingress and at egress, one cls_bpf filter
  (prio ``PRIO``, handle ``HANDLE``: the kernel keeps no name for classic programs, so that slot is
  our mark) running ``bpf.mirror_program`` in classic
  mode and, on a match, ``mirred egress mirror`` into the VXLAN device;
- a clsact qdisc on the VXLAN device whose ingress drops everything (direct action): the device binds
  the tunnel port inside the pod and would otherwise decapsulate injected VXLAN (docs/datapath.md);
- optionally a route to the agent with a locked MTU (``--tunnel-mtu``).

``diff(plan, observed)`` returns the ordered steps that turn ``observed`` into the plan; an empty
tuple means "already present, nothing to do". ``kernel.py`` observes and executes; this module has
no I/O, so the restart, repair and leftover cases are unit-tested without root.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from sidecar_lite import bpf, cbpf

INGRESS = 0xFFFFFFF2
EGRESS = 0xFFFFFFF3
PRIO = 16
"""Filter priority: low enough to run before most CNI programs, away from prio 1 which tools favour."""
HANDLE = 1
DEVICE_PREFIX = "pm-"


@dataclasses.dataclass(frozen=True)
class VxlanSpec:
    name: str
    vni: int
    remote: str
    port: int


@dataclasses.dataclass(frozen=True)
class FilterSpec:
    ifname: str
    parent: int
    program: bytes
    """Packed classic BPF (``cbpf.pack``)."""
    mirror_to: str | None
    """VXLAN device that matching packets are mirrored into; None: direct action (the drop filter)."""


@dataclasses.dataclass(frozen=True)
class RouteSpec:
    dst: str
    mtu: int


@dataclasses.dataclass(frozen=True)
class MirrorPlan:
    interface: str
    vxlan: VxlanSpec
    filters: tuple[FilterSpec, ...]
    route: RouteSpec | None = None


def device_name(vni: int) -> str:
    return f"{DEVICE_PREFIX}{vni:06x}"


def build(
    *,
    interface: str,
    agent_ip: str,
    agent_port: int,
    vni: int,
    pushed: Sequence[cbpf.Instruction] | None = None,
    tunnel_mtu: int | None = None,
) -> MirrorPlan:
    """The desired kernel state for mirroring ``interface`` to the agent."""
    vx = VxlanSpec(device_name(vni), vni, agent_ip, agent_port)
    mirror = cbpf.pack(bpf.mirror_program(agent_ip, agent_port, pushed))
    filters = (
        FilterSpec(interface, INGRESS, mirror, vx.name),
        FilterSpec(interface, EGRESS, mirror, vx.name),
        FilterSpec(vx.name, INGRESS, cbpf.pack(bpf.drop_all()), None),
    )
    route = RouteSpec(agent_ip, tunnel_mtu) if tunnel_mtu else None
    return MirrorPlan(interface, vx, filters, route)


@dataclasses.dataclass(frozen=True)
class ObservedLink:
    name: str
    index: int
    kind: str
    up: bool = True
    vni: int | None = None
    remote: str | None = None
    port: int | None = None


@dataclasses.dataclass(frozen=True)
class ObservedFilter:
    ifname: str
    parent: int
    kind: str
    program: bytes | None
    mirror_ifindex: int | None


@dataclasses.dataclass(frozen=True)
class Observed:
    links: Mapping[str, ObservedLink]
    clsact: frozenset[str] = frozenset()
    filters: tuple[ObservedFilter, ...] = ()
    """Only filters at (PRIO, HANDLE): ours or squatters on our slot."""
    route_mtu: int | None = None
    """Locked MTU of our route to the agent, if that route exists."""


class Step(NamedTuple):
    action: str
    """One of: delete-link, create-vxlan, link-up, add-clsact, set-filter, set-route."""
    target: str
    filter: FilterSpec | None = None


def diff(plan: MirrorPlan, observed: Observed) -> tuple[Step, ...]:
    """Ordered steps from ``observed`` to ``plan``; () when nothing needs doing."""
    if plan.interface not in observed.links:
        raise LookupError(f"interface {plan.interface!r} does not exist")
    steps = list(_stale_devices(plan, observed))
    fresh = _vxlan_steps(plan.vxlan, observed.links.get(plan.vxlan.name))
    steps += fresh
    recreated = any(s.action == "create-vxlan" for s in fresh)
    for ifname in (plan.interface, plan.vxlan.name):
        if (recreated and ifname == plan.vxlan.name) or ifname not in observed.clsact:
            steps.append(Step("add-clsact", ifname))
    vx_index = None if recreated else observed.links[plan.vxlan.name].index
    for spec in plan.filters:
        current = _find(observed.filters, spec)
        if recreated or not _filter_ok(spec, current, vx_index):
            steps.append(Step("set-filter", spec.ifname, spec))
    if plan.route and observed.route_mtu != plan.route.mtu:
        steps.append(Step("set-route", plan.route.dst))
    return tuple(steps)


def _stale_devices(plan: MirrorPlan, observed: Observed) -> list[Step]:
    """Our devices from a previous run with another VNI: they would hold the tunnel port."""
    return [
        Step("delete-link", link.name)
        for link in observed.links.values()
        if link.kind == "vxlan" and link.name.startswith(DEVICE_PREFIX) and link.name != plan.vxlan.name
    ]


def _vxlan_steps(spec: VxlanSpec, link: ObservedLink | None) -> list[Step]:
    if link is None:
        return [Step("create-vxlan", spec.name), Step("link-up", spec.name)]
    same = link.kind == "vxlan" and (link.vni, link.remote, link.port) == (spec.vni, spec.remote, spec.port)
    if not same:
        return [Step("delete-link", spec.name), Step("create-vxlan", spec.name), Step("link-up", spec.name)]
    return [] if link.up else [Step("link-up", spec.name)]


def _find(filters: tuple[ObservedFilter, ...], spec: FilterSpec) -> ObservedFilter | None:
    return next((f for f in filters if (f.ifname, f.parent) == (spec.ifname, spec.parent)), None)


def _filter_ok(spec: FilterSpec, current: ObservedFilter | None, vx_index: int | None) -> bool:
    if current is None or current.kind != "bpf":
        return False
    if current.program != spec.program:
        return False
    if spec.mirror_to is None:
        return current.mirror_ifindex is None
    return current.mirror_ifindex == vx_index


def is_ours(f: ObservedFilter) -> bool:
    """A cls_bpf filter at our (PRIO, HANDLE). Classic programs carry no name, so the slot is the mark."""
    return f.kind == "bpf"
