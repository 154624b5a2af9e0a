"""Suite-wide markers and guards.

Tiers: ``tests/unit`` (pure, no root), ``tests/component`` (loopback sockets, fake API),
``tests/netns`` and ``tests/e2e`` (root: real namespaces, veth, vxlan, tc), ``tests/kube``
(fake API always; ``apiserver``-marked tests need the real kube-apiserver that ``.ci/apiserver.sh``
builds). Root tests skip with a reason when root or ``ip netns`` is missing; CI has both.
"""

from __future__ import annotations

import os
import shutil

import pytest


def _root_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tc)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if not os.path.exists("/proc/self/ns/net"):
        return "needs network namespaces"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _root_missing()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "needs_root" in item.keywords:
            item.add_marker(skip)
