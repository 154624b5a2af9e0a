"""Kernel mode adapter: observe and change links, qdiscs, filters and routes with pyroute2.

The only module that imports pyroute2 (``pyroute2.iproute.linux.IPRoute`` directly: the package
root pulls in much more and the sidecar must stay under 40 MiB RSS). It executes the steps that
``plan.diff`` computes, so every decision is in the pure ``plan`` module; this file only translates.

pyroute2 0.9.x never sends classic BPF bytecode to cls_bpf (``TCA_BPF_OPS_LEN``/``TCA_BPF_OPS`` are
declared with the wrong types and never emitted, docs/datapath.md "tc on this kernel"). ``_ClsBpf``
is a drop-in plugin with the right attribute map that emits both; it is registered for kind ``bpf``
when a ``Kernel`` opens.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import plugins as tc_plugins
from pyroute2.netlink.rtnl.tcmsg import sched_bpf

from sidecar_lite import plan as planmod
from sidecar_lite.plan import FilterSpec, MirrorPlan, Observed, ObservedFilter, ObservedLink, Step

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
IFF_UP = 0x1
ENOENT, EEXIST = 2, 17
IN6_ADDR_GEN_MODE_NONE = 1
RTAX_MTU_LOCK = 1 << 2  # lock bit for RTAX_MTU (2): the kernel will not lower it by PMTU discovery


class _ClsBpfOptions(sched_bpf.options):  # type: ignore[misc]  # pyroute2 is untyped: its class is Any
    nla_map = (
        ("TCA_BPF_UNSPEC", "none"),
        ("TCA_BPF_ACT", "bpf_act"),
        ("TCA_BPF_POLICE", "police"),
        ("TCA_BPF_CLASSID", "uint32"),
        ("TCA_BPF_OPS_LEN", "uint16"),
        ("TCA_BPF_OPS", "cdata"),
        ("TCA_BPF_FD", "uint32"),
        ("TCA_BPF_NAME", "asciiz"),
        ("TCA_BPF_FLAGS", "uint32"),
    )


class _ClsBpf:
    """The ``sched_bpf`` plugin interface, plus classic bytecode (``bytecode=`` packed sock_filter)."""

    parent = sched_bpf.parent
    fix_request = staticmethod(sched_bpf.fix_request)
    options = _ClsBpfOptions

    @staticmethod
    def get_parameters(kwarg: dict[str, Any]) -> dict[str, Any]:
        ret: dict[str, Any] = sched_bpf.get_parameters(kwarg)
        code = kwarg.get("bytecode")
        if code is not None:
            ret["attrs"].append(["TCA_BPF_OPS_LEN", len(code) // 8])
            ret["attrs"].append(["TCA_BPF_OPS", code])
        return ret


class Kernel:
    """Apply, verify and tear down a MirrorPlan in the current network namespace."""

    def __init__(self) -> None:
        tc_plugins["bpf"] = _ClsBpf  # process-wide by pyroute2's design; only this process uses it
        self._ipr = IPRoute()
        self._created_clsact: set[str] = set()

    def close(self) -> None:
        self._ipr.close()

    def observe(self, plan: MirrorPlan) -> Observed:
        links = {link.name: link for link in self._links()}
        clsact, filters = set(), []
        for name in (plan.interface, plan.vxlan.name):
            if name not in links:
                continue
            index = links[name].index
            if any(q.get_attr("TCA_KIND") == "clsact" for q in self._ipr.get_qdiscs(index=index)):
                clsact.add(name)
                filters += self._our_slot(name, index)
        route_mtu = self._route_mtu(plan.route.dst) if plan.route else None
        return Observed(links, frozenset(clsact), tuple(filters), route_mtu)

    def execute(self, plan: MirrorPlan, steps: tuple[Step, ...]) -> None:
        for step in steps:
            log.debug("step %s %s", step.action, step.target)
            if step.action == "delete-link":
                self._ipr.link("del", index=self._index(step.target))
            elif step.action == "create-vxlan":
                vx = plan.vxlan
                self._ipr.link("add", ifname=vx.name, kind="vxlan", vxlan_id=vx.vni, vxlan_group=vx.remote,
                               vxlan_port=vx.port, vxlan_learning=0)
            elif step.action == "link-up":
                index = self._index(step.target)
                # No IPv6 on the tunnel device: its link-local DAD and MLD frames would otherwise
                # travel through the tunnel as if the pod had sent them.
                self._ipr.link("set", index=index, IFLA_AF_SPEC={"attrs": [["AF_INET6", {"attrs": [
                    ["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}]]})
                self._ipr.link("set", index=index, state="up")
            elif step.action == "add-clsact":
                self._add_clsact(step.target)
            elif step.action == "set-filter" and step.filter is not None:
                self._set_filter(step.filter)
            elif step.action == "set-route" and plan.route is not None:
                self._set_route(plan.route)

    def tunnel_counters(self, name: str) -> dict[str, int]:
        """The VXLAN device's transmit counters (GSO super-packets count once)."""
        for msg in self._ipr.get_links(ifname=name):
            stats = msg.get_attr("IFLA_STATS64")
            if stats is not None:
                return {k: int(stats[k]) for k in ("tx_packets", "tx_bytes", "tx_dropped", "tx_errors")}
        return {}

    def apply(self, plan: MirrorPlan) -> tuple[Step, ...]:
        """Make the kernel match ``plan``; returns the steps that were needed (() when intact)."""
        steps = planmod.diff(plan, self.observe(plan))
        self.execute(plan, steps)
        return steps

    def teardown(self, plan: MirrorPlan) -> None:
        """Remove what the plan put in place; leave everything else as it was."""
        links = {link.name: link for link in self._links()}
        # Our route is recognisable by its locked MTU, also when a killed run left it behind.
        if plan.route and self._route_mtu(plan.route.dst) == plan.route.mtu:
            self._ignore_missing(self._ipr.route, "del", dst=plan.route.dst, dst_len=32)
        if plan.vxlan.name in links:
            self._ignore_missing(self._ipr.link, "del", index=links[plan.vxlan.name].index)
        iface = links.get(plan.interface)
        if iface is None:
            return
        for f in self._our_slot(plan.interface, iface.index):
            if planmod.is_ours(f):
                self._del_filter(iface.index, f.parent)
        if plan.interface in self._created_clsact or not self._has_filters(iface.index):
            self._ignore_missing(self._ipr.tc, "del", "clsact", iface.index)

    # -- helpers -------------------------------------------------------------------------------

    def _links(self) -> list[ObservedLink]:
        out = []
        for msg in self._ipr.get_links():
            info = msg.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            data = info.get_attr("IFLA_INFO_DATA") if info and kind == "vxlan" else None
            out.append(ObservedLink(
                name=msg.get_attr("IFLA_IFNAME"), index=msg["index"], kind=kind or "",
                up=bool(msg["flags"] & IFF_UP),
                vni=data.get_attr("IFLA_VXLAN_ID") if data else None,
                remote=data.get_attr("IFLA_VXLAN_GROUP") if data else None,
                port=data.get_attr("IFLA_VXLAN_PORT") if data else None,
            ))
        return out

    def _index(self, name: str) -> int:
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            raise LookupError(f"link {name!r} vanished")
        return int(found[0])

    def _our_slot(self, ifname: str, index: int) -> list[ObservedFilter]:
        out = []
        for parent in (planmod.INGRESS, planmod.EGRESS):
            for msg in self._ipr.get_filters(index=index, parent=parent):
                if msg["info"] >> 16 != planmod.PRIO or msg["handle"] != planmod.HANDLE:
                    continue
                out.append(_observed_filter(ifname, parent, msg))
        return out

    def _has_filters(self, index: int) -> bool:
        return any(self._ipr.get_filters(index=index, parent=p) for p in (planmod.INGRESS, planmod.EGRESS))

    def _add_clsact(self, ifname: str) -> None:
        try:
            self._ipr.tc("add", "clsact", self._index(ifname))
        except NetlinkError as exc:
            if exc.code != EEXIST:
                raise
            return
        if not ifname.startswith(planmod.DEVICE_PREFIX):  # the VXLAN device's clsact dies with it
            self._created_clsact.add(ifname)

    def _set_filter(self, spec: FilterSpec) -> None:
        index = self._index(spec.ifname)
        kwargs: dict[str, Any] = dict(
            index=index, handle=planmod.HANDLE, parent=spec.parent, prio=planmod.PRIO,
            protocol=ETH_P_ALL, bytecode=spec.program,
        )
        if spec.mirror_to is None:
            kwargs["direct_action"] = True
        else:
            kwargs["action"] = dict(kind="mirred", direction="egress", action="mirror",
                                    ifindex=self._index(spec.mirror_to))
        try:
            self._ipr.tc("replace-filter", "bpf", **kwargs)
        except NetlinkError:
            # Someone else's filter (another kind) holds our prio: take the slot back.
            self._del_filter(index, spec.parent)
            self._ipr.tc("add-filter", "bpf", **kwargs)

    def _del_filter(self, index: int, parent: int) -> None:
        self._ignore_missing(self._ipr.tc, "del-filter", "bpf", index=index, parent=parent,
                             prio=planmod.PRIO, handle=planmod.HANDLE, protocol=ETH_P_ALL)

    def _route_mtu(self, dst: str) -> int | None:
        for msg in self._ipr.get_routes(family=socket.AF_INET, dst=dst, dst_len=32, table=254):
            if msg["dst_len"] != 32:
                continue
            metrics = msg.get_attr("RTA_METRICS")
            return metrics.get_attr("RTAX_MTU") if metrics else None
        return None

    def _set_route(self, route: planmod.RouteSpec) -> None:
        via = self._ipr.route("get", dst=route.dst)[0]
        kwargs: dict[str, Any] = dict(dst=route.dst, dst_len=32, oif=via.get_attr("RTA_OIF"),
                                      metrics={"mtu": route.mtu, "lock": RTAX_MTU_LOCK})
        if via.get_attr("RTA_GATEWAY"):
            kwargs["gateway"] = via.get_attr("RTA_GATEWAY")
        self._ipr.route("replace", **kwargs)

    @staticmethod
    def _ignore_missing(call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code not in (ENOENT, 19, 22):  # ENOENT, ENODEV, EINVAL: already gone
                raise


def _observed_filter(ifname: str, parent: int, msg: Any) -> ObservedFilter:
    options = msg.get_attr("TCA_OPTIONS")
    kind = msg.get_attr("TCA_KIND") or ""
    if options is None or kind != "bpf":
        return ObservedFilter(ifname, parent, kind, None, None)
    mirror = None
    acts = options.get_attr("TCA_BPF_ACT")
    for _, act in acts["attrs"] if acts is not None else ():
        opts = act.get_attr("TCA_ACT_OPTIONS") if act.get_attr("TCA_ACT_KIND") == "mirred" else None
        parms = opts.get_attr("TCA_MIRRED_PARMS") if opts is not None else None
        if parms is not None:
            mirror = parms["ifindex"]
    return ObservedFilter(ifname, parent, kind, options.get_attr("TCA_BPF_OPS"), mirror)
