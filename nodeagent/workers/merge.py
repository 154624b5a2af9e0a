"""The node's ``/status`` from its workers' snapshots: a sum that does not need to know the fields.

Each worker's snapshot is taken in one synchronous call in that worker, so each satisfies
``received == forwarded + sum(drops)`` (and any other linear identity of the counters); a sum of
snapshots satisfies it too, whatever moment each was taken. Summing generically (by structure,
not by field name) keeps this module independent of what the pipeline and the outputs count:
a counter added to a worker's snapshot is summed without a change here.

Rules, applied recursively to the snapshots' common structure:

- numbers are summed, except the settings echoed in a snapshot (``SAME``: one worker's value);
- booleans: true only if true in every worker;
- mappings: merged key by key (a key missing in one worker counts as absent there);
- lists of the same length (a VXLAN output's sensors) merged element by element; others joined;
- text and null: the common value, or the distinct values as a list (pcap files, last errors).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SAME = frozenset({"max_frame", "rcvbuf", "vni", "address", "port", "dir", "gso"})
"""Keys whose value is a setting, identical in every worker: never summed."""


def merge(snapshots: Sequence[Any], key: str = "") -> Any:
    present = [s for s in snapshots if s is not None]
    if not present:
        return None
    first = present[0]
    if key in SAME:
        return first
    if isinstance(first, bool):
        return all(bool(s) for s in present)
    if isinstance(first, int | float) and all(_number(s) for s in present):
        return sum(present)
    if isinstance(first, dict) and all(isinstance(s, dict) for s in present):
        keys: dict[str, None] = {}
        for s in present:
            keys.update(dict.fromkeys(s))
        return {k: merge([s.get(k) for s in present], k) for k in keys}
    if isinstance(first, list) and all(isinstance(s, list) for s in present):
        if len({len(s) for s in present}) == 1:
            return [merge(items, key) for items in zip(*present, strict=True)]
        return [item for s in present for item in s]
    distinct: list[Any] = []
    for s in present:
        if s not in distinct:
            distinct.append(s)
    return distinct[0] if len(distinct) == 1 else distinct


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table_entries(snapshot: dict[str, Any]) -> int:
    """Entries in a worker's pipeline tables (flows, digests): what its memory grows with."""
    return sum(int(t.get("entries", 0)) for t in (snapshot.get("pipeline") or {}).values())
