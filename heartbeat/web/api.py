"""What the routes do, apart from how their request arrived.

The route table (:mod:`heartbeat.web.routes`) names these handlers; the
edge serves the hot ones from its own parse, and the Klein routes use the
rest, so a rule (who may ping, which users a stream may name, when streams
are full) has one home.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from heartbeat.core.changes import ChangeFeed, Position
from heartbeat.core.errors import BadInput, Unavailable
from heartbeat.core.hub import Hub
from heartbeat.core.identity import Identity, Reading
from heartbeat.core.ping_body import parse_status, validate_status
from heartbeat.core.presence import Ping, UserState
from heartbeat.core.quiet import OptionStream
from heartbeat.core.request_view import RequestView
from heartbeat.core.store_contract import Store
from heartbeat.core.stream import Stream
from heartbeat.core.stream_options import stream_options
from heartbeat.core.user_query import posted_users, requested_users
from heartbeat.web.cors import CorsPolicy
from heartbeat.web.feed_route import ChangesRoute


class RouteSettings(Protocol):
    """The settings the routes read (the daemon's ``Settings`` has them)."""

    @property
    def max_users_per_stream(self) -> int: ...
    @property
    def max_streams(self) -> int: ...
    @property
    def stream_blocked_timeout(self) -> float: ...
    @property
    def cors_origins(self) -> tuple[str, ...]: ...
    @property
    def api_key(self) -> tuple[str, ...]: ...
    @property
    def presence_timeout(self) -> float: ...


class Meter(Protocol):
    """Where ping answers are counted and ``/metrics`` is rendered (the daemon's metrics)."""

    def ping_answered(self, code: int, seconds: float | None) -> None: ...
    def render(self, request: IRequest) -> bytes: ...


# What a stream route's handler answers: the users to stream, and the one
# device of theirs when it is a device stream.
Opening = tuple[Reading, "str | None"]
# The largest body of ``POST /subscribe`` (a ping's is MAX_BODY).
SUBSCRIBE_BODY = 1024 * 1024


class Api:
    """The handlers of every route; the store, hub, clock, identity and limits come from outside."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        clock: IReactorTime,
        identity: Identity,
        settings: RouteSettings,
        meter: Meter | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        self.identity = identity
        self.settings = settings
        self.meter = meter
        self.cors = CorsPolicy(settings.cors_origins)
        # Set when the instance starts stopping: /readyz answers 503 from then on.
        self.stopping = False
        # The change feed (SPEC §8), if this store keeps one, and a way to end
        # each open /changes stream (the service's stop calls them).
        self.feed = feed
        self.feed_streams: set[Callable[[], None]] = set()
        self.changes_route = ChangesRoute(feed, settings.api_key, clock, self.feed_streams)
        # On a ping's answer and every stream's: how often to ping (SPEC §2).
        self.pacing = ((b"Heartbeat-Presence-Timeout", b"%d" % settings.presence_timeout),)

    def ping(self, request: RequestView, body: bytes) -> Deferred[None]:
        """``POST /ping``: store the caller's ping; fails with a domain error when refused."""
        userid, clientid = self.identity.ping_user(request)
        status = parse_status(request.getHeader(b"Content-Type"), body)
        return self.store.ping(Ping(userid, int(self.clock.seconds()), status, clientid))

    def leave(self, request: RequestView, body: bytes) -> Deferred[None]:
        """``POST /leave``: the caller's device goes offline now; any body is ignored (sendBeacon)."""
        userid, clientid = self.identity.ping_user(request)
        if self.hub.holder is not None:
            self.hub.holder.left(userid, clientid)
        return self.store.leave(userid, clientid)

    def subscribe_one(self, request: RequestView, body: bytes, userid: str,
                      clientid: str | None = None) -> Opening:
        """``GET /subscribe/<userid>[/client/<clientid>]``: that user (device), if the caller may read it."""
        return self.identity.authorize_read(request, (userid,)), clientid

    def subscribe_many(self, request: RequestView, body: bytes) -> Opening:
        """``GET /subscribe?user=…``: the users asked, if the caller may read them."""
        return self.many_users(request), None

    def subscribe_posted(self, request: RequestView, body: bytes) -> Opening:
        """``POST /subscribe``: the users of its ``{"users": [...]}``, if the caller may read them."""
        userids = posted_users(body, self.settings.max_users_per_stream)
        return self.identity.authorize_read(request, userids), None

    def many_users(self, request: RequestView) -> Reading:
        """The ``?user=`` list of the multi-user routes, if the caller may read them."""
        userids = requested_users(request, self.settings.max_users_per_stream)
        return self.identity.authorize_read(request, userids)

    def attach(self, stream: Stream, reading: Reading) -> None:
        """Hand an open stream to the hub, to end when its token expires (a client
        found gone ends it too: see ``peers``)."""
        self.hub.attach(stream, reading.expires)

    def new_stream(self, reading: Reading, request: RequestView,
                   clientid: str | None = None) -> Stream:
        """A stream of ``userids`` (of one device of theirs with ``clientid``),
        if there is room for one more (503 otherwise).

        Checked before any header is sent, so a refused client gets a plain
        503 rather than a stream that ends.
        """
        options = stream_options(request)
        presence = self._presence(request)
        limit = self.settings.max_streams
        if len(self.hub.streams) >= limit:
            raise Unavailable(f"too many open streams (limit {limit}), retry later", 5)
        last_event_id = request.getHeader(b"Last-Event-ID")
        blocked_timeout = self.settings.stream_blocked_timeout
        stream = (Stream(reading.userids, self.clock, blocked_timeout, last_event_id, clientid,
                         reading.owner)
                  if options.plain else
                  OptionStream(reading.userids, self.clock, blocked_timeout, last_event_id,
                               clientid, options, reading.owner))
        stream.presence = presence
        return stream

    def _presence(self, request: RequestView) -> Ping | None:
        """The ping a ``presence=<status>`` stream's opening is: its status is
        checked as a ping's, and its device is the caller's (SPEC §2)."""
        values = request.args.get(b"presence")
        if values is None:
            return None
        try:
            status = validate_status(values[0].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadInput("presence status is not valid UTF-8") from None
        userid, clientid = self.identity.ping_user(request)
        return Ping(userid, int(self.clock.seconds()), status, clientid)

    def status(self, request: RequestView) -> Deferred[tuple[bytes, Position | None]]:
        """``{"a": {"time": …, "status": …, "online": …, "devices": {…}}, "b": null}``
        in the order asked, and the feed's position the state includes (its cursor)."""
        userids = self.many_users(request).userids
        return ensureDeferred(self._status(userids))

    async def _status(self, userids: tuple[str, ...]) -> tuple[bytes, Position | None]:
        # The cursor is read first: the state read after it includes every
        # change up to it (and perhaps some after, which a reader applies again).
        cursor = None if self.feed is None else await self.feed.position()
        states = await self.store.get(userids)
        return status_body(states), cursor


def json_body(body: bytes, request: IRequest) -> bytes:
    """``body`` as a JSON answer that no cache keeps."""
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def status_body(states: dict[str, UserState | None]) -> bytes:
    """The ``/status`` answer for ``states``, in their order."""
    return json.dumps(
        {userid: state.as_status() if state is not None else None
         for userid, state in states.items()},
        separators=(",", ":"),
    ).encode("utf-8")
