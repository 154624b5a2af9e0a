"""Target ``wire``: a tunnel datagram as a pod can send it, through VXLAN, the header decoder and
re-segmentation (``nodeagent.wire``).

Checks: only ``Malformed`` escapes; the fast path decodes exactly as the general path; every
decoded frame has ``l3 <= l4 <= payload <= end <= len(frame)``; normalization (at the default
``max_frame`` and at the least allowed) never makes more than ``ceil(len / MIN_MSS)`` frames, nor
more than ``MAX_SEGMENTS``, nor segments longer than ``max_frame``, nor more than twice the bytes
(the amplification bound), and every frame it makes decodes again.
"""

from __future__ import annotations

import math

from tests.fuzz import harness

with harness.instrumented():
    from nodeagent.wire import Malformed, headers, normalize, vxlan

NORMALIZERS = (normalize.Normalizer(), normalize.Normalizer(max_frame=590))


def test_one_input(data: bytes) -> None:
    try:
        vni, inner = vxlan.decode(data)
    except Malformed:
        return
    assert 0 <= vni < 1 << 24
    try:
        meta = headers.decode(inner)
    except Malformed:
        try:
            headers._decode_general(inner, len(inner))
        except Malformed:
            return
        raise AssertionError("the fast path refused what the general path decodes") from None
    assert meta == headers._decode_general(inner, len(inner)), "fast and general paths disagree"
    size = len(inner)
    assert 0 <= meta.end <= size and meta.l3 <= size
    if meta.l4 >= 0:
        assert meta.l3 <= meta.l4 <= meta.payload <= meta.end, meta
    for norm in NORMALIZERS:
        out = norm.apply(inner, meta, size)
        if out is None:
            continue
        assert len(out) <= max(1, min(normalize.MAX_SEGMENTS, math.ceil(size / normalize.MIN_MSS)))
        assert sum(len(f) for f in out) <= 2 * size + 64
        for frame in out:
            if len(out) > 1:
                assert len(frame) <= norm.max_frame
            headers.decode(bytes(frame))   # what the sensors get must decode (Malformed = bug here)


if __name__ == "__main__":
    harness.main(test_one_input)
