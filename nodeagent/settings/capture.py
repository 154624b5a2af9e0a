"""Settings of live capture (``GET /v1/capture`` on its own TLS listener). Off unless ``listen`` is set.

Never open: a listener needs a server certificate and at least one way to authenticate readers:
``client_ca`` (mutual TLS: any client certificate this CA signed may capture everything),
``token_file`` (a shared bearer token, compared in constant time; may capture everything), or
``kube_auth`` (a Kubernetes bearer token checked with TokenReview, then a SubjectAccessReview for
``get`` on ``pods/capture`` in each namespace the request selects; needs the pod table from
Kubernetes). ``docs/capture.md`` has the model and the commands.
"""

from __future__ import annotations

import dataclasses

from nodeagent.settings.base import check, parse_hostport

CAPTURE_PORT = 9479
"""Default TCP port of the capture listener (the status port is 9477, the collector's 9478)."""


@dataclasses.dataclass(frozen=True)
class CaptureSettings:
    listen: str | None = None
    """``IP:PORT`` of the TLS capture listener; None (the default): no capture endpoint at all."""
    cert: str | None = None
    """Server certificate chain (PEM) of the listener."""
    key: str | None = None
    client_ca: str | None = None
    """Accept client certificates signed by this CA (PEM) as capture credentials."""
    token_file: str | None = None
    """A file holding one bearer token (its first line) that may capture."""
    kube_auth: bool = False
    """Check bearer tokens with the Kubernetes API (TokenReview + SubjectAccessReview)."""
    audiences: tuple[str, ...] = ()
    """TokenReview audiences (empty: the apiserver's own)."""
    queue_packets: int = 10_000
    """Per reader: records it may lag behind before its packets are dropped (and counted)."""
    queue_bytes: int = 32 << 20
    """Per reader: frame bytes it may lag behind (bounds a stalled reader's memory)."""
    max_sessions: int = 8
    """Captures open at once on this agent; more are refused with 503."""

    def __post_init__(self) -> None:
        check(1 <= self.queue_packets <= 1_000_000, "queue_packets", "must be in 1..1000000")
        check(65536 <= self.queue_bytes <= 1 << 30, "queue_bytes", "must be in 65536..1073741824")
        check(1 <= self.max_sessions <= 64, "max_sessions", "must be in 1..64")
        if self.listen is None:
            return
        parse_hostport(self.listen, CAPTURE_PORT, "listen")
        check(bool(self.cert and self.key), "cert",
              "and capture.key are required with capture.listen (the endpoint is TLS only)")
        check(bool(self.client_ca or self.token_file or self.kube_auth), "listen",
              "needs a way to authenticate readers: client_ca, token_file or kube_auth")

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_hostport(self.listen, CAPTURE_PORT, "listen") if self.listen else None
