"""Cross-origin access for browser clients (``CORS_ORIGINS``).

The policy wraps the whole app resource rather than living in the routes, so
every response — each route, every JSON error, open event streams — gets the
same headers, set before any route runs. With no origins configured the app
resource is used as is and no CORS header is ever sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

ALLOW_METHODS = b"GET, POST, OPTIONS"
ALLOW_HEADERS = b"Authorization, Content-Type, X-User-Claim, Last-Event-ID"
# Readable by scripts: when a 503 says to retry, and the presence timeout a
# browser client paces its pings by (clients/js reads both with fetch).
EXPOSE_HEADERS = b"Retry-After, Heartbeat-Presence-Timeout"
PREFLIGHT_MAX_AGE = b"600"


def _normalize(origin: str) -> str:
    """Origins as browsers serialize them: lower case, no trailing slash."""
    return origin.strip().rstrip("/").lower()


class CorsPolicy:
    """Which origins may read responses: exact origins, or ``*`` for any."""

    def __init__(self, origins: Iterable[str]) -> None:
        origins = tuple(origins)
        self.any_origin = "*" in origins
        self.origins = frozenset(_normalize(o) for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self.origins)

    def allows(self, origin: bytes | None) -> bool:
        if not origin:
            return False
        return self.any_origin or _normalize(origin.decode("latin-1")) in self.origins

    def headers(self, origin: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
        """Echo an allowed ``Origin``; the answer depends on it, hence ``Vary``.

        Nothing at all when no origin is configured.
        """
        if not self.enabled:
            return ()
        if not self.allows(origin):
            return ((b"Vary", b"Origin"),)
        assert origin is not None
        return (
            (b"Vary", b"Origin"),
            (b"Access-Control-Allow-Origin", origin),
            (b"Access-Control-Expose-Headers", EXPOSE_HEADERS),
        )

    def apply(self, request: IRequest) -> None:
        for name, value in self.headers(request.getHeader(b"Origin")):
            request.setHeader(name, value)


def is_preflight(request: IRequest) -> bool:
    return (
        request.method == b"OPTIONS"
        and request.getHeader(b"Origin") is not None
        and request.getHeader(b"Access-Control-Request-Method") is not None
    )


class CorsResource(Resource):
    """The app resource behind a CORS policy; answers preflights itself."""

    isLeaf = True

    def __init__(self, wrapped: IResource, policy: CorsPolicy) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.policy = policy

    def render(self, request: IRequest) -> bytes | int:
        self.policy.apply(request)
        if not is_preflight(request):
            return self.wrapped.render(request)
        # Any path: the browser asks before the real request, which is then
        # routed (and answered 404/405) as usual.
        if self.policy.allows(request.getHeader(b"Origin")):
            request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS)
            request.setHeader(b"Access-Control-Allow-Headers", ALLOW_HEADERS)
            request.setHeader(b"Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
        request.setResponseCode(204)
        return b""


def with_cors(resource: IResource, policy: CorsPolicy) -> IResource:
    """``resource`` behind ``policy``; unchanged when it allows no origin."""
    return CorsResource(resource, policy) if policy.enabled else resource
