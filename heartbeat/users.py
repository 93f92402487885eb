"""The ``user`` query parameters of the multi-user routes.

``/subscribe?user=a&user=b`` and ``/status?user=a&user=b`` name users the
same way and obey the same rules, checked here once: at least one user, none
empty, repeats counted once, at most ``MAX_USERS_PER_STREAM``.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from heartbeat.errors import ApiError


def requested_users(request: IRequest, limit: int) -> tuple[str, ...]:
    """The distinct users named, in the order first named, or a 400."""
    users: dict[str, None] = {}
    for raw in request.args.get(b"user", ()):
        try:
            userid = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "user must be valid UTF-8") from None
        if not userid:
            raise ApiError(400, "user must not be empty")
        users[userid] = None
    if not users:
        raise ApiError(400, "name at least one user: ?user=a&user=b")
    if len(users) > limit:
        raise ApiError(400, f"at most {limit} users per request, got {len(users)}")
    return tuple(users)
