"""What a route is, and how a path finds one: the machinery of the route table.

The table itself (every route, once) is :data:`heartbeat.web.routes.ROUTES`.
Each :class:`Route` names its path, its methods and its handler, and who
serves it:

- ``CALL``: the edge, from its own parse; ``handler(api, request, body,
  **params)`` returns a Deferred, and the answer is a ``200`` with no body.
- ``STREAM``: the edge; ``handler(api, request, body, **params)`` returns the
  :class:`~heartbeat.core.identity.Reading` and device to stream (or raises),
  and the edge opens the event stream.
- ``KLEIN``: the Klein app, behind the edge; ``handler(api, request,
  **params)`` gets a twisted.web request and returns the body (or a Deferred
  of it), as a Klein route does.

A path is a werkzeug rule with plain ``<name>`` segments (one non-empty
segment each, percent-decoded, UTF-8 or a ``400``). A method a path does not
declare is a ``405`` whose ``Allow`` is what it does declare; ``GET`` brings
``HEAD``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import unquote_to_bytes

from heartbeat.core.errors import BadInput
from heartbeat.core.ping_body import MAX_BODY


class Serve(Enum):
    """Who answers a route."""

    CALL = "call"
    STREAM = "stream"
    KLEIN = "klein"


CALL, STREAM, KLEIN = Serve.CALL, Serve.STREAM, Serve.KLEIN


@dataclass(frozen=True)
class Route:
    """One route: ``methods`` of ``path``, answered by ``handler`` as ``serve`` says."""

    path: str
    methods: tuple[str, ...]
    handler: Callable[..., Any]
    serve: Serve
    # Its answers are pings: counted in /metrics, and they carry
    # ``Heartbeat-Presence-Timeout`` (as every stream does).
    ping: bool = False
    # The largest body it reads (a longer one is a 413): a ping's, unless it says.
    max_body: int = MAX_BODY

    @property
    def name(self) -> str:
        """Klein's endpoint name: unique per path and methods."""
        return f"{'+'.join(self.methods)} {self.path}"


class Resource:
    """Every route of one path, by method."""

    __slots__ = ("by_method", "allow")

    def __init__(self) -> None:
        self.by_method: dict[bytes, Route] = {}
        self.allow = b""

    def add(self, route: Route) -> None:
        for method in route.methods:
            raw = method.encode("ascii")
            if raw in self.by_method:
                raise ValueError(f"{method} {route.path} is declared twice")
            self.by_method[raw] = route
        if b"GET" in self.by_method:
            self.by_method.setdefault(b"HEAD", self.by_method[b"GET"])
        self.allow = b", ".join(sorted(self.by_method))


NO_PARAMS: dict[str, bytes] = {}


class RouteTable:
    """The routes, found by path: fixed paths by one dict look-up, the rest segment by segment."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._fixed: dict[bytes, Resource] = {}
        # (segments, resource); a segment is bytes to equal, or a str: a parameter's name.
        self._patterns: list[tuple[tuple[bytes | str, ...], Resource]] = []
        patterns: dict[tuple[bytes | str, ...], Resource] = {}
        for route in self.routes:
            segments = tuple(_segment_rule(part) for part in route.path.split("/"))
            if all(isinstance(s, bytes) for s in segments):
                resource = self._fixed.setdefault(route.path.encode("ascii"), Resource())
            else:
                resource = patterns.setdefault(segments, Resource())
            resource.add(route)
        self._patterns = list(patterns.items())

    def find(self, path: bytes) -> tuple[Resource, dict[str, bytes]] | None:
        """The routes of ``path`` and its raw (still percent-encoded) parameters, if any."""
        resource = self._fixed.get(path)
        if resource is not None:
            return resource, NO_PARAMS
        parts = path.split(b"/")
        for segments, resource in self._patterns:
            if len(segments) != len(parts):
                continue
            params: dict[str, bytes] = {}
            for rule, part in zip(segments, parts):
                if isinstance(rule, str):
                    if not part:
                        break
                    params[rule] = part
                elif rule != part:
                    break
            else:
                return resource, params
        return None

    def cold(self) -> tuple[Route, ...]:
        """The routes Klein serves."""
        return tuple(route for route in self.routes if route.serve is KLEIN)


def _segment_rule(part: str) -> bytes | str:
    if part.startswith("<") and part.endswith(">"):
        # ``<path:name>`` is still one segment here; Klein's ``path``
        # converter lets it hold the ``/`` a ``%2F`` in it decodes to.
        return part[1:-1].rpartition(":")[2]
    return part.encode("ascii")


def decode_params(params: dict[str, bytes]) -> dict[str, str]:
    """Path parameters percent-decoded; one that is not UTF-8 is a ``400``."""
    if not params:
        return {}
    try:
        return {name: unquote_to_bytes(raw).decode("utf-8") for name, raw in params.items()}
    except UnicodeDecodeError:
        raise BadInput("user id must be valid UTF-8") from None
