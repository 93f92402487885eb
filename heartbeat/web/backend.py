"""The app's backend routes (SPEC §1 "The app's backend", §2 "(backend)").

The chat app's own servers read many users at once, count and list who is
online, erase a user and end a user's streams. These routes open only with
one of ``API_KEY``'s keys, checked by
:func:`~heartbeat.web.feed_route.check_api_key` — the one door
of every backend route; a user's token or claim never opens one, and a key
never stands in for a user (the user routes read only tokens and claims).
Each handler here is a ``KLEIN`` route of the table (:mod:`heartbeat.web.routes`).
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.web.iweb import IRequest

from heartbeat.core.errors import BadInput, TooLarge, Unavailable
from heartbeat.core.presence import UserState
from heartbeat.core.request_view import RequestView
from heartbeat.core.user_query import posted_users
from heartbeat.web.api import Api, json_body, status_body
from heartbeat.web.feed_route import check_api_key

# Users one POST /status may name, and the bytes of its body.
MAX_BULK_USERS = 10_000
MAX_BULK_BODY = 1 << 20
# Users one page of GET /online?list=1 holds: by default, and at most.
DEFAULT_PAGE = 1_000
MAX_PAGE = 10_000
_BEARER = b"bearer"


def check(api: Api, request: RequestView) -> None:
    """The door of every backend route: one of ``API_KEY``'s keys."""
    check_api_key(request, api.settings.api_key)


def bulk_status(api: Api, request: IRequest) -> Deferred[bytes]:
    """``POST /status``: ``GET /status``'s answer for the users of a JSON body."""
    check(api, request)
    body = request.content.read(MAX_BULK_BODY + 1)
    if len(body) > MAX_BULK_BODY:
        raise TooLarge(f"request body is larger than {MAX_BULK_BODY} bytes")
    userids = api.identity.check_userids(posted_users(body, MAX_BULK_USERS))
    only_online = _flag(request, b"online", b"only")
    d = api.store.get(userids).addCallback(_online_only if only_online else status_body)
    return d.addCallback(json_body, request)


def online(api: Api, request: IRequest) -> Deferred[bytes]:
    """``GET /online``: how many users are online, and with ``?list=1`` a page of them."""
    check(api, request)
    listing = _flag(request, b"list", b"1")
    limit = _limit(request)
    after = _text(request, b"after")
    count = api.store.online_users()
    if count is None:
        raise Unavailable("who is online is not known yet, retry later")
    if not listing:
        return succeed(json_body(_json({"count": count}), request))
    page = api.store.online_page(after, limit)
    return page.addCallback(
        lambda found: json_body(_json({"count": count, "users": found[0], "next": found[1]}),
                                request))


def erase(api: Api, request: IRequest, userid: str) -> Deferred[bytes]:
    """``DELETE /users/{id}``: every trace of the user gone, their streams ended."""
    check(api, request)
    userid = api.identity.check_userid(userid)
    store = api.store
    # The change feed's erasure (issue 22) belongs in the store's erase, in
    # the same atomic step; nothing more is needed here.
    d = store.erase(userid).addCallback(lambda _: store.disconnect(userid))
    return d.addCallback(_no_content, request)


def disconnect(api: Api, request: IRequest, userid: str) -> Deferred[bytes]:
    """``POST /users/{id}/disconnect``: the user's own streams end everywhere;
    with ``?leave=1`` their devices go offline first, as ``POST /leave``."""
    check(api, request)
    userid = api.identity.check_userid(userid)
    store = api.store
    leaving: Deferred[object] = succeed(None)
    if _flag(request, b"leave", b"1"):
        leaving = store.get((userid,)).addCallback(_leave_all, api, userid)
    d = leaving.addCallback(lambda _: store.disconnect(userid))
    return d.addCallback(_no_content, request)


def _leave_all(states: dict[str, UserState | None], api: Api, userid: str) -> Deferred[object]:
    # Every device, online or not: a hidden one is still connected.
    state = states.get(userid)
    devices = () if state is None else tuple(state.devices)
    return gatherResults(
        [api.store.leave(userid, clientid) for clientid in devices], consumeErrors=True,
    ).addCallback(lambda _: None)


def _no_content(_: object, request: IRequest) -> bytes:
    request.setResponseCode(204)
    return b""


def _json(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _online_only(states: dict[str, UserState | None]) -> bytes:
    return status_body({u: s for u, s in states.items() if s is not None and s.user.online})


def _text(request: RequestView, name: bytes) -> str | None:
    values = request.args.get(name)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{name.decode()} must be valid UTF-8") from None


def _flag(request: RequestView, name: bytes, on: bytes) -> bool:
    """Whether ``?name=on`` is given: absent is off, any other value a 400."""
    values = request.args.get(name)
    if not values:
        return False
    if values[0] != on:
        raise BadInput(f"{name.decode()} must be {on.decode()}")
    return True


def _limit(request: RequestView) -> int:
    text = _text(request, b"limit")
    if text is None:
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise BadInput(f"limit must be a whole number from 1 to {MAX_PAGE}")
    return int(text)
