"""TLS contexts for every edge that carries traffic or control, in one place.

- ``client_context``: the agent toward a collector (``adapters/transport_out.py``), and clients of
  the capture listener: the server is always verified (a CA file, or the system store); the client
  presents its own certificate when given one.
- ``server_context``: the collector (``nodeagent collect``: client certificates required by default)
  and the agent's capture listener (``web/capture_api.py``: requested, verified when presented, so
  bearer-token users can connect too). TLS 1.2 at least, everywhere.

``trust_clients`` refuses a CA file that holds no CA certificate: loading it would leave the
context trusting nobody new while looking configured.
"""

from __future__ import annotations

import ssl

MINIMUM = ssl.TLSVersion.TLSv1_2


def client_context(ca_file: str | None, cert_file: str | None = None,
                   key_file: str | None = None) -> ssl.SSLContext:
    """Server verification always on (``ca_file``, else the system store); optional client cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = MINIMUM
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def server_context(cert_file: str | None, key_file: str | None, client_ca: str | None = None, *,
                   client_certificate: ssl.VerifyMode = ssl.CERT_REQUIRED) -> ssl.SSLContext:
    """A server's context; with ``client_ca``, clients' certificates are checked against it and
    ``client_certificate`` says whether one is required (collector) or optional (capture)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = MINIMUM
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    if client_ca:
        trust_clients(ctx, client_ca, client_certificate)
    return ctx


def trust_clients(ctx: ssl.SSLContext, client_ca: str,
                  client_certificate: ssl.VerifyMode = ssl.CERT_REQUIRED) -> None:
    """Verify clients' certificates against ``client_ca`` (ValueError if it holds no CA)."""
    before = len(ctx.get_ca_certs())
    ctx.load_verify_locations(client_ca)
    if len(ctx.get_ca_certs()) == before:
        raise ValueError(f"{client_ca} holds no CA certificate")
    ctx.verify_mode = client_certificate
