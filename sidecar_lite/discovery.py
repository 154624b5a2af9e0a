"""Find the node agent's address: service, node-ip or label discovery.

- ``service``: the configured host, resolved with the system resolver (a Service name with
  ``internalTrafficPolicy: Local`` keeps the tunnel on the node: the kernel drops it if there is no
  agent here, rather than sending it to another node);
- ``node-ip``: the node's address from the downward API (already in ``Settings.agent_host``);
- ``label``: ``discovery_label.find_agent`` (the only module that imports ``kubernetes``, lazily).

The tunnel is IPv4 (the tunnel exclusion matches IPv4 UDP to the agent), so names resolve to IPv4.
"""

from __future__ import annotations

import ipaddress
import socket

from sidecar_lite.settings import Settings


class DiscoveryError(RuntimeError):
    """The agent cannot be found now; the caller retries."""


def resolve(settings: Settings) -> str:
    """The agent's IPv4 address as a string."""
    if settings.discovery == "label":
        from sidecar_lite import discovery_label  # imports kubernetes: only in this mode

        try:
            return discovery_label.find_agent(settings)
        except discovery_label.NoAgent as exc:
            raise DiscoveryError(str(exc)) from exc
    host = settings.agent_host or ""
    try:
        return str(ipaddress.IPv4Address(host))
    except ipaddress.AddressValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, settings.agent_port, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        raise DiscoveryError(f"cannot resolve agent {host!r}: {exc}") from exc
    return str(infos[0][4][0])
