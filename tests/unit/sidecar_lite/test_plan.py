"""plan.diff: fresh namespace, already present, restart with leftovers, repair, push-down change."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar_lite import bpf, cbpf, plan
from sidecar_lite.plan import Observed, ObservedFilter, ObservedLink

AGENT, PORT, VNI = "10.77.0.1", 14789, 0x4D0002
ETH0 = ObservedLink("eth0", 2, "veth")
LO = ObservedLink("lo", 1, "")


def desired(**kw: object) -> plan.MirrorPlan:
    return plan.build(interface="eth0", agent_ip=AGENT, agent_port=PORT, vni=VNI, **kw)  # type: ignore[arg-type]


def in_place(p: plan.MirrorPlan, vx_index: int = 7) -> Observed:
    """What the kernel shows once ``p`` is applied."""
    vx = ObservedLink(p.vxlan.name, vx_index, "vxlan", True, p.vxlan.vni, p.vxlan.remote, p.vxlan.port)
    filters = tuple(
        ObservedFilter(f.ifname, f.parent, "bpf", f.program, None if f.mirror_to is None else vx_index)
        for f in p.filters
    )
    return Observed({"lo": LO, "eth0": ETH0, vx.name: vx}, frozenset({"eth0", vx.name}), filters)


def actions(steps: tuple[plan.Step, ...]) -> list[tuple[str, str]]:
    return [(s.action, s.target) for s in steps]


def test_plan_mirrors_both_directions_into_a_named_vxlan_device() -> None:
    p = desired()
    assert p.vxlan == plan.VxlanSpec("pm-4d0002", VNI, AGENT, PORT)
    eth0 = [f for f in p.filters if f.ifname == "eth0"]
    assert {f.parent for f in eth0} == {plan.INGRESS, plan.EGRESS}
    assert all(f.mirror_to == "pm-4d0002" for f in eth0)
    assert all(f.program == cbpf.pack(bpf.mirror_program(AGENT, PORT)) for f in eth0)


def test_vxlan_device_ingress_drops_everything() -> None:
    (guard,) = [f for f in desired().filters if f.ifname == "pm-4d0002"]
    assert guard.parent == plan.INGRESS and guard.mirror_to is None
    assert guard.program == cbpf.pack(bpf.drop_all())


def test_fresh_namespace_needs_every_step_in_order() -> None:
    steps = plan.diff(desired(), Observed({"lo": LO, "eth0": ETH0}))
    assert actions(steps) == [
        ("create-vxlan", "pm-4d0002"),
        ("link-up", "pm-4d0002"),
        ("add-clsact", "eth0"),
        ("add-clsact", "pm-4d0002"),
        ("set-filter", "eth0"),
        ("set-filter", "eth0"),
        ("set-filter", "pm-4d0002"),
    ]


def test_already_present_nothing_to_do() -> None:
    p = desired()
    assert plan.diff(p, in_place(p)) == ()


def test_deleted_filter_is_repaired_alone() -> None:
    p = desired()
    seen = in_place(p)
    seen = dataclasses.replace(seen, filters=seen.filters[1:])
    assert actions(plan.diff(p, seen)) == [("set-filter", "eth0")]


def test_deleted_qdisc_is_repaired_with_its_filters() -> None:
    p = desired()
    seen = in_place(p)
    seen = dataclasses.replace(
        seen, clsact=frozenset({p.vxlan.name}), filters=tuple(f for f in seen.filters if f.ifname != "eth0")
    )
    assert actions(plan.diff(p, seen)) == [
        ("add-clsact", "eth0"),
        ("set-filter", "eth0"),
        ("set-filter", "eth0"),
    ]


def test_deleted_device_is_recreated_and_filters_repointed() -> None:
    p = desired()
    seen = in_place(p)
    links = {k: v for k, v in seen.links.items() if k != p.vxlan.name}
    steps = plan.diff(p, dataclasses.replace(seen, links=links))
    assert actions(steps)[:3] == [
        ("create-vxlan", "pm-4d0002"),
        ("link-up", "pm-4d0002"),
        ("add-clsact", "pm-4d0002"),
    ]
    assert sum(s.action == "set-filter" for s in steps) == 3


def test_device_down_is_brought_up() -> None:
    p = desired()
    seen = in_place(p)
    links = dict(seen.links, **{p.vxlan.name: dataclasses.replace(seen.links[p.vxlan.name], up=False)})
    assert actions(plan.diff(p, dataclasses.replace(seen, links=links))) == [("link-up", "pm-4d0002")]


def test_restart_with_another_agent_replaces_the_device() -> None:
    old = in_place(plan.build(interface="eth0", agent_ip="10.77.0.9", agent_port=PORT, vni=VNI))
    steps = plan.diff(desired(), old)
    assert actions(steps)[:3] == [
        ("delete-link", "pm-4d0002"),
        ("create-vxlan", "pm-4d0002"),
        ("link-up", "pm-4d0002"),
    ]
    assert sum(s.action == "set-filter" for s in steps) == 3


def test_leftover_device_of_another_vni_is_removed() -> None:
    p = desired()
    seen = in_place(p)
    stale = ObservedLink("pm-000001", 9, "vxlan", True, 1, AGENT, PORT)
    steps = plan.diff(p, dataclasses.replace(seen, links=dict(seen.links, **{"pm-000001": stale})))
    assert actions(steps) == [("delete-link", "pm-000001")]


def test_filter_pointing_at_an_old_device_index_is_replaced() -> None:
    p = desired()
    seen = in_place(p, vx_index=7)
    seen = dataclasses.replace(
        seen,
        filters=tuple(
            dataclasses.replace(f, mirror_ifindex=3) if f.mirror_ifindex else f for f in seen.filters
        ),
    )
    assert actions(plan.diff(p, seen)) == [("set-filter", "eth0"), ("set-filter", "eth0")]


def test_pushed_program_changes_only_the_two_mirror_filters() -> None:
    before = desired()
    after = desired(pushed=cbpf.REJECT_ALL)
    steps = plan.diff(after, in_place(before))
    assert actions(steps) == [("set-filter", "eth0"), ("set-filter", "eth0")]
    assert all(s.filter is not None and s.filter.program.endswith(cbpf.pack(cbpf.REJECT_ALL)) for s in steps)


def test_someone_elses_filter_in_our_slot_is_replaced() -> None:
    p = desired()
    seen = in_place(p)
    squatter = ObservedFilter("eth0", plan.INGRESS, "u32", None, None)
    seen = dataclasses.replace(seen, filters=(squatter,) + seen.filters[1:])
    assert actions(plan.diff(p, seen)) == [("set-filter", "eth0")]


def test_tunnel_mtu_adds_a_route_step_until_present() -> None:
    p = desired(tunnel_mtu=1600)
    assert p.route == plan.RouteSpec(AGENT, 1600)
    assert actions(plan.diff(p, in_place(p))) == [("set-route", AGENT)]
    assert plan.diff(p, dataclasses.replace(in_place(p), route_mtu=1600)) == ()


def test_missing_interface_is_an_error() -> None:
    with pytest.raises(LookupError):
        plan.diff(desired(), Observed({"lo": LO}))
