"""Capture filters (parsing, selection, attribution), the bounded session, and the client's merge order."""

from __future__ import annotations

import asyncio

import pytest

from nodeagent.capture.filter import CaptureError, CaptureFilter, parse, parse_selector, stream_limits
from nodeagent.capture.session import Session
from nodeagent.capture.tap import Tap
from nodeagent.client.merge import Item, Merger
from nodeagent.pods.index import PodIndex, PodInfo
from nodeagent.transport.records import Record
from nodeagent.verdict import Direction, Forward
from nodeagent.wire import headers
from tests.component.agent_kit import tcp_frame

WEB = PodInfo(ip="10.1.0.10", vni=10, namespace="shop", name="web", labels={"app": "web"})
DB = PodInfo(ip="10.1.0.11", vni=11, namespace="shop", name="db", labels={"app": "db"})
OTHER = PodInfo(ip="10.1.0.12", vni=12, namespace="dev", name="web", labels={"app": "web"})


def test_query_parses_into_a_filter_and_back() -> None:
    flt = parse([("pod", "shop/web"), ("pod", "shop/db"), ("selector", "app=web,tier!=x,canary,!old"),
                 ("bpf", "tcp port 80"), ("snaplen", "96")])
    assert flt == CaptureFilter(("shop/web", "shop/db"), "", "app=web,tier!=x,canary,!old", "tcp port 80", 96)
    assert parse(_pairs(flt.as_query())) == flt
    assert flt.scopes() == (("shop", "web"), ("shop", "db"))
    assert parse([("namespace", "shop")]).scopes() == (("shop", ""),)
    assert parse([]).scopes() == (("", ""),)  # every pod of the node: cluster-wide permission


def _pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query)


@pytest.mark.parametrize(("pairs", "message"), [
    ([("pod", "web")], "pod must be NAMESPACE/NAME"),
    ([("pod", "shop/We b")], "pod must be NAMESPACE/NAME"),
    ([("namespace", "Shop")], "not a Kubernetes name"),
    ([("selector", "app in (a,b)")], "set-based"),
    ([("selector", "=x")], "not a valid label term"),
    ([("snaplen", "-1")], "snaplen must be"),
    ([("snaplen", "1"), ("snaplen", "2")], "given twice"),
    ([("interface", "eth0")], "unknown parameter 'interface'"),
    ([("bpf", "x" * 5000)], "longer than"),
])
def test_bad_queries_name_the_parameter(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        parse(pairs)


def test_stream_limits() -> None:
    assert stream_limits([("count", "5"), ("duration", "1.5")]) == (5, 1.5)
    with pytest.raises(CaptureError, match="duration"):
        stream_limits([("duration", "soon")])


def test_selector_terms_match_labels() -> None:
    terms = parse_selector("app=web,tier!=db,canary,!legacy")
    assert all(t.matches({"app": "web", "canary": ""}) for t in terms)
    assert not all(t.matches({"app": "web", "canary": "", "legacy": "1"}) for t in terms)
    assert not all(t.matches({"app": "web"}) for t in terms)


def forward(pod: PodInfo, src: str, dst: str, direction: Direction, seq: int = 1) -> Forward:
    frame = tcp_frame(b"data", src=src, dst=dst, seq=seq)
    return Forward(memoryview(frame), headers.decode(frame), pod.vni, pod, direction, len(frame), 0.0)


def test_tap_attributes_each_packet_once_to_a_selected_pod() -> None:
    tap = Tap(PodIndex([WEB, DB, OTHER]))
    web_only = tap.open_session(parse([("pod", "shop/web")]))
    shop_web = tap.open_session(parse([("namespace", "shop"), ("selector", "app=web")]))
    both = tap.open_session(parse([("namespace", "shop")]))
    tap.offer(forward(WEB, WEB.ip, "8.8.8.8", Direction.EGRESS, 1))     # web's own copy
    tap.offer(forward(DB, DB.ip, WEB.ip, Direction.EGRESS, 2))          # db's copy of db -> web
    tap.offer(forward(DB, DB.ip, "8.8.8.8", Direction.EGRESS, 3))       # db alone
    tap.offer(forward(OTHER, OTHER.ip, "8.8.8.8", Direction.EGRESS, 4))  # another namespace
    got = {name: [(r.pod, r.direction) for r in s._queue]
           for name, s in (("web", web_only), ("shop_web", shop_web), ("shop", both))}
    # db's copy of a packet into web is web's traffic too: shown on web's interface, as ingress
    assert got["web"] == [("shop/web", 1), ("shop/web", 2)]
    assert got["shop_web"] == got["web"]
    assert got["shop"] == [("shop/web", 1), ("shop/db", 1), ("shop/db", 1)]


def test_tap_applies_bpf_and_snaplen_per_session() -> None:
    tap = Tap(PodIndex([WEB]))
    port80 = tap.open_session(parse([("bpf", "tcp dst port 80"), ("snaplen", "40")]))
    port81 = tap.open_session(parse([("bpf", "tcp dst port 81")]))
    tap.offer(forward(WEB, WEB.ip, "8.8.8.8", Direction.EGRESS))
    (record,) = port80._queue
    assert len(record.frame) == 40 and record.wire_len > 40
    assert not port81._queue


def test_closed_sessions_cost_nothing_and_the_totals_stay() -> None:
    tap = Tap(PodIndex([WEB]), max_sessions=1)
    session = tap.open_session(parse([]), queue_limit=1)
    tap.offer(forward(WEB, WEB.ip, "8.8.8.8", Direction.EGRESS))
    tap.offer(forward(WEB, WEB.ip, "8.8.8.8", Direction.EGRESS))
    session.close()
    assert tap.state()["dropped"] == {"queue_full": 1} and tap.state()["sessions"] == 0
    tap.open_session(parse([]))  # the closed one no longer counts against max_sessions


async def test_session_is_bounded_counts_drops_per_pod_and_ends_when_closed() -> None:
    session = Session(CaptureFilter(), queue_limit=2)
    records = [Record(i, 60, "shop/web", 10, 1, b"x" * 60) for i in range(3)]
    assert [session.offer(r) for r in records] == [True, True, False]
    session.count_dropped("shop/web", 5)  # a relay's upstream loss
    assert session.received == {"shop/web": 8} and session.dropped == {"shop/web": 6}
    assert await session.batch() == records[:2]
    waiter = asyncio.create_task(session.batch())
    await asyncio.sleep(0)
    session.close()
    assert await waiter == []
    assert session.received["shop/web"] == session.delivered + session.total_dropped + session.queued


def item(ts: int, pod: str = "shop/web") -> Item:
    return Item(ts, pod, "", b"f%d" % ts, 60, 0, "")


def test_merge_orders_by_timestamp_across_streams_after_the_delay() -> None:
    merger = Merger(delay=0.5)
    merger.push(item(30, "a"), now=0.0)   # node a is ahead
    merger.push(item(10, "b"), now=0.2)   # node b's earlier packet arrives later
    merger.push(item(20, "a"), now=0.3)
    assert merger.ready(now=0.4) == []    # nothing has waited 0.5 s
    assert [i.ts_ns for i in merger.ready(now=0.75)] == [10]  # 20 has waited 0.45 s only
    merger.push(item(25, "b"), now=0.8)
    assert [i.ts_ns for i in merger.ready(now=0.85)] == [20]  # 25 holds 30 back: order kept
    assert [i.ts_ns for i in merger.drain()] == [25, 30]
    assert merger.late == 0
    merger.push(item(5, "a"), now=2.0)    # later than its order: written anyway, counted
    assert [i.ts_ns for i in merger.drain()] == [5] and merger.late == 1
