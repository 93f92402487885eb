"""The ``user`` query parameters of the multi-user routes.

``/subscribe?user=a&user=b`` and ``/status?user=a&user=b`` name users the
same way and obey the same rules, checked here once: at least one user, none
empty, repeats counted once, at most ``MAX_USERS_PER_STREAM``.
"""

from __future__ import annotations

from heartbeat.core.errors import BadInput
from heartbeat.core.request_view import RequestView


def requested_users(request: RequestView, limit: int) -> tuple[str, ...]:
    """The distinct users named, in the order first named, or a 400."""
    users: dict[str, None] = {}
    for raw in request.args.get(b"user", ()):
        try:
            userid = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput("user must be valid UTF-8") from None
        if not userid:
            raise BadInput("user must not be empty")
        users[userid] = None
    if not users:
        raise BadInput("name at least one user: ?user=a&user=b")
    if len(users) > limit:
        raise BadInput(f"at most {limit} users per request, got {len(users)}")
    return tuple(users)
