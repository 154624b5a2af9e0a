"""Both modes against tcpdump ground truth: exactly once, no loop, push-down, RSS, clean exit."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.arch.common import compile_filter

from sidecar_lite import identity
from tests.netns.podlab import (
    NODE_IP,
    POD_IP,
    PUSHDOWN,
    GroundTruth,
    PodLab,
    compare,
    describe,
    is_tunnel,
    make_podlab,
    split_tcp_payload,
    vm_rss_kib,
    write_pcap,
)
from tests.waiting import poll

pytestmark = pytest.mark.needs_root
VNI = identity.vni_for_address(POD_IP)


@pytest.fixture
def podlab(tmp_path: Path) -> Iterator[PodLab]:
    yield from make_podlab(tmp_path)


@pytest.mark.parametrize("mode", ["kernel", "sniff"])
def test_every_pod_packet_arrives_exactly_once(podlab: PodLab, mode: str) -> None:
    proc, log = podlab.start_sidecar(mode)
    podlab.wait_quiet()
    truth = GroundTruth(podlab)
    podlab.drive_mix()
    podlab.wait_quiet()
    frames, records = truth.stop()
    mirrored = [r.inner for r in records]
    kinds = {f[12:14] for f in frames}
    assert {b"\x08\x00", b"\x08\x06", b"\x86\xdd"} <= kinds, "IPv4, ARP and IPv6 in the ground truth"
    assert len(frames) >= 30
    write_pcap(podlab.tmp / "mirrored.pcap", mirrored)
    truth_rest, truth_streams, truth_totals = split_tcp_payload(frames)
    rest, streams, totals = split_tcp_payload(mirrored)
    missing, extra = compare(truth_rest, rest)
    assert (missing, extra) == (0, 0), (
        f"{len(frames)} pod frames, {len(mirrored)} mirrored, see {podlab.tmp}: "
        f"missing {describe(list((Counter(truth_rest) - Counter(rest)).elements()))} "
        f"extra {describe(list((Counter(rest) - Counter(truth_rest)).elements()))}"
    )
    assert len(truth_streams) == 2 and sum(truth_totals.values()) == 4 * 8192
    assert streams == truth_streams and totals == truth_totals, "TCP payload differs (GSO compared as bytes)"
    assert {r.vni for r in records} == {VNI} and {r.source for r in records} == {POD_IP}
    assert not any(is_tunnel(f) for f in mirrored), "tunnel packets or their fragments were mirrored"
    # The exclusion was exercised: tunnel datagrams longer than the path MTU were IP-fragmented.
    assert max(len(r.payload) for r in records) + 28 > 1500
    rss = vm_rss_kib(proc.pid)
    assert rss <= 40 * 1024, f"RSS {rss} KiB"
    assert podlab.stop_sidecar(proc) == 0, log.read_text()


@pytest.mark.parametrize("mode", ["kernel", "sniff"])
def test_pushed_program_keeps_filtered_packets_off_the_tunnel(podlab: PodLab, mode: str) -> None:
    rules = podlab.tmp / "rules.json"
    program = compile_filter("not udp port 5353", linktype=1)
    insns = [[i.code, i.jt, i.jf, i.k] for i in program.bf_insns[: program.bf_len]]
    rules.write_text(json.dumps({"version": "v1", "bpf": insns}))
    server_log = podlab.tmp / "pushdown.log"
    podlab.ns.spawn(podlab.node, ["python3", "-c", PUSHDOWN, NODE_IP, str(rules)], log=server_log)
    proc, log = podlab.start_sidecar(
        mode, "--rules-url", f"http://{NODE_IP}:9477/v1/pushdown", "--rules-interval", "1"
    )
    poll(lambda: "push-down version 'v1' installed" in log.read_text(), 15, "v1 installed")
    assert f"mode={mode}" in server_log.read_text() and f"vni={VNI}" in server_log.read_text()
    start = len(podlab.records())
    podlab.client("udp", NODE_IP, 5353, count=5)
    podlab.client("udp", NODE_IP, 53, count=5)
    podlab.wait_quiet()
    ports = [_udp_ports(r.inner) for r in podlab.records()[start:]]
    assert sum(5353 in p for p in ports) == 0
    assert sum(53 in p for p in ports) == 10  # 5 queries + 5 answers

    rules.write_text(json.dumps({"version": "v2", "bpf": None}))  # back to mirror everything
    poll(lambda: "push-down version 'v2' installed" in log.read_text(), 15, "v2 installed")
    start = len(podlab.records())
    podlab.client("udp", NODE_IP, 5353, count=5)
    podlab.wait_quiet()
    assert sum(5353 in _udp_ports(r.inner) for r in podlab.records()[start:]) == 10
    assert podlab.stop_sidecar(proc) == 0, log.read_text()


def _udp_ports(frame: bytes) -> tuple[int, int]:
    if frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return (-1, -1)
    ihl = (frame[14] & 0x0F) * 4
    at = 14 + ihl
    return int.from_bytes(frame[at : at + 2], "big"), int.from_bytes(frame[at + 2 : at + 4], "big")


def test_unreachable_rules_url_fails_open(podlab: PodLab) -> None:
    proc, log = podlab.start_sidecar(
        "kernel", "--rules-url", f"http://{NODE_IP}:9/v1/pushdown", "--rules-interval", "1"
    )
    poll(lambda: "keeping the current program" in log.read_text(), 10, "fail-open log")
    start = len(podlab.records())
    podlab.client("udp", NODE_IP, 5353, count=2)
    podlab.wait_quiet()
    assert len(podlab.records()) - start >= 4
    assert log.read_text().count("keeping the current program") == 1
    assert podlab.stop_sidecar(proc) == 0


# setpriv drops CAP_NET_ADMIN from the bounding set, as a pod without NET_ADMIN would run.
NO_NET_ADMIN = ("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--")


@pytest.mark.parametrize(
    "wrapper, mode", [((), "kernel"), (NO_NET_ADMIN, "sniff")], ids=["net_admin", "net_raw"]
)
def test_auto_mode_follows_the_capabilities(podlab: PodLab, wrapper: tuple[str, ...], mode: str) -> None:
    proc, log = podlab.start_sidecar("auto", wrapper=wrapper)
    assert f"mode {mode} (requested auto)" in log.read_text()
    start = len(podlab.records())
    podlab.client("udp", NODE_IP, 53, count=3)
    podlab.wait_quiet()
    assert sum(53 in _udp_ports(r.inner) for r in podlab.records()[start:]) == 6
    assert podlab.stop_sidecar(proc) == 0, log.read_text()
