from __future__ import annotations

import pytest

from nodeagent.wire import vxlan as agent_vxlan
from sidecar_lite import vxlan


def test_header_is_flags_then_vni_in_the_high_24_bits() -> None:
    assert vxlan.header(0x0A0B0C) == bytes([0x08, 0, 0, 0, 0x0A, 0x0B, 0x0C, 0])


def test_agent_decodes_what_the_sidecar_encodes() -> None:
    frame = bytes(range(64))
    decoded = agent_vxlan.decode(vxlan.encode(0x123456, frame))
    assert decoded.vni == 0x123456 and bytes(decoded.inner) == frame


@pytest.mark.parametrize("vni", [-1, 1 << 24])
def test_out_of_range_vni_is_refused(vni: int) -> None:
    with pytest.raises(ValueError):
        vxlan.header(vni)


def test_default_port_avoids_cni_tunnels() -> None:
    assert vxlan.DEFAULT_PORT == 14789 and vxlan.DEFAULT_PORT not in (4789, 8472, 6081)
