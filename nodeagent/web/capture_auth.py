"""Who may open a live capture: mutual TLS, a shared token file, or a Kubernetes bearer token.

Each request is authenticated by the first method its credentials fit, then authorized:

- a client certificate signed by ``capture.client_ca`` (verified in the TLS handshake): the
  holder may capture everything on the agent (the CA is dedicated to capture);
- ``Authorization: Bearer <t>`` equal to the token in ``capture.token_file`` (constant-time
  compare): may capture everything;
- ``Authorization: Bearer <t>`` with ``capture.kube_auth``: a TokenReview names the user, then a
  SubjectAccessReview per scope of the request (``CaptureFilter.scopes``) asks whether that user
  may ``get`` ``pods/capture`` (core group) in that namespace (for that pod name, when the request
  names pods; cluster-wide when the request names no namespace). ``pods/capture`` is not an API
  resource: RBAC rules may name any subresource, so a Role granting it says exactly "may watch
  these pods' traffic", like ``pods/log`` for logs.

No credentials: 401; credentials that do not authenticate: 401; authenticated but not allowed:
403 naming the verb, resource and namespace. Kubernetes answers are cached for ``ttl`` seconds
(bounded tables), so a reconnecting client does not hit the apiserver per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from nodeagent.capture.filter import CaptureFilter

VERB, RESOURCE, SUBRESOURCE = "get", "pods", "capture"
CACHE_TTL = 10.0
CACHE_SIZE = 1024


class Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Identity(NamedTuple):
    user: str
    method: str
    """``mtls``, ``token-file`` or ``kubernetes``."""
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] | None = None


class _Cache:
    """A small expiring map; the oldest entry goes when full."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl, self.size = ttl, size
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, now: float) -> Any:
        hit = self._items.get(key)
        if hit is None or hit[0] < now:
            return None
        return hit[1]

    def put(self, key: Any, value: Any, now: float) -> None:
        if len(self._items) >= self.size:
            self._items.pop(next(iter(self._items)))
        self._items[key] = (now + self.ttl, value)


class KubeReviewer:
    """TokenReview + SubjectAccessReview through the official client (calls run in a thread)."""

    def __init__(self, api_client: Any, audiences: tuple[str, ...] = (), ttl: float = CACHE_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import kubernetes.client  # only agents with kube_auth load it here

        self._k = kubernetes.client
        self._authn = kubernetes.client.AuthenticationV1Api(api_client)
        self._authz = kubernetes.client.AuthorizationV1Api(api_client)
        self.audiences = list(audiences)
        self._tokens = _Cache(ttl, CACHE_SIZE)
        self._reviews = _Cache(ttl, CACHE_SIZE)
        self._clock = clock
        self.token_reviews = self.access_reviews = self.errors = 0

    async def identity(self, token: str) -> Identity:
        key = hashlib.sha256(token.encode()).digest()
        cached = self._tokens.get(key, self._clock())
        if cached is None:
            cached = await asyncio.to_thread(self._token_review, token)
            self._tokens.put(key, cached, self._clock())
        if isinstance(cached, str):
            raise Denied(401, f"the bearer token was not accepted: {cached}")
        assert isinstance(cached, Identity)
        return cached

    def _token_review(self, token: str) -> Identity | str:
        k = self._k
        spec = k.V1TokenReviewSpec(token=token, audiences=self.audiences or None)
        self.token_reviews += 1
        try:
            status = self._authn.create_token_review(k.V1TokenReview(spec=spec)).status
        except k.exceptions.ApiException as exc:
            self.errors += 1
            return f"TokenReview failed ({exc.status} {exc.reason})"
        if status is None or not status.authenticated or status.user is None:
            return (status.error if status is not None and status.error else "") or "unauthenticated"
        user = status.user
        return Identity(user.username or "", "kubernetes", tuple(user.groups or ()), user.uid or "",
                        dict(user.extra or {}))

    async def allowed(self, who: Identity, namespace: str, name: str) -> bool:
        key = (who.user, who.groups, namespace, name)
        cached = self._reviews.get(key, self._clock())
        if cached is None:
            cached = await asyncio.to_thread(self._access_review, who, namespace, name)
            self._reviews.put(key, cached, self._clock())
        return bool(cached)

    def _access_review(self, who: Identity, namespace: str, name: str) -> bool:
        k = self._k
        attributes = k.V1ResourceAttributes(verb=VERB, resource=RESOURCE, subresource=SUBRESOURCE,
                                            group="", namespace=namespace or None, name=name or None)
        spec = k.V1SubjectAccessReviewSpec(user=who.user, groups=list(who.groups), uid=who.uid or None,
                                           extra=who.extra or None, resource_attributes=attributes)
        self.access_reviews += 1
        try:
            status = self._authz.create_subject_access_review(k.V1SubjectAccessReview(spec=spec)).status
        except k.exceptions.ApiException:
            self.errors += 1
            return False
        return bool(status is not None and status.allowed)

    def state(self) -> dict[str, int]:
        return {"token_reviews": self.token_reviews, "access_reviews": self.access_reviews,
                "errors": self.errors}


class Gate:
    """The capture endpoint's authentication and authorization (see the module docstring)."""

    def __init__(self, *, mtls: bool = False, token: str | None = None,
                 kube: KubeReviewer | None = None) -> None:
        self.mtls, self._token, self.kube = mtls, token, kube
        self.refused = {401: 0, 403: 0}

    @property
    def methods(self) -> list[str]:
        return [m for m, on in (("mtls", self.mtls), ("token-file", self._token is not None),
                                ("kubernetes", self.kube is not None)) if on]

    async def check(self, authorization: str, peercert: dict[str, Any] | None,
                    flt: CaptureFilter) -> Identity:
        """The reader's identity once allowed to capture ``flt``; ``Denied`` (401/403) otherwise."""
        try:
            who = await self._authenticate(authorization, peercert)
            if who.method == "kubernetes":
                await self._authorize(who, flt)
            return who
        except Denied as exc:
            self.refused[exc.status] = self.refused.get(exc.status, 0) + 1
            raise

    async def _authenticate(self, authorization: str, peercert: dict[str, Any] | None) -> Identity:
        scheme, _, token = authorization.strip().partition(" ")
        if authorization and (scheme.lower() != "bearer" or not token.strip()):
            raise Denied(401, "Authorization must be 'Bearer <token>'")
        token = token.strip()
        if token:
            if self._token is not None and hmac.compare_digest(token.encode(), self._token.encode()):
                return Identity("token-file", "token-file")
            if self.kube is not None:
                return await self.kube.identity(token)
            raise Denied(401, "the bearer token was not accepted")
        if self.mtls and peercert:
            return Identity(_common_name(peercert), "mtls")
        raise Denied(401, f"credentials required ({' or '.join(self.methods)})")

    async def _authorize(self, who: Identity, flt: CaptureFilter) -> None:
        assert self.kube is not None
        for namespace, name in flt.scopes():
            if not await self.kube.allowed(who, namespace, name):
                where = f"in namespace {namespace!r}" if namespace else "cluster-wide"
                target = f" ({name})" if name else ""
                raise Denied(403, f"{who.user} may not {VERB} {RESOURCE}/{SUBRESOURCE} {where}{target}")


def _common_name(peercert: dict[str, Any]) -> str:
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "client-certificate"
