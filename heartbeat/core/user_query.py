"""The ``user`` query parameters of the multi-user routes.

``/subscribe?user=a&user=b`` and ``/status?user=a&user=b`` name users the
same way and obey the same rules, checked here once: at least one user, none
empty, repeats counted once, at most ``MAX_USERS_PER_STREAM``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from heartbeat.core.errors import BadInput
from heartbeat.core.request_view import RequestView


def requested_users(request: RequestView, limit: int) -> tuple[str, ...]:
    """The distinct users named, in the order first named, or a 400."""
    named = []
    for raw in request.args.get(b"user", ()):
        try:
            named.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadInput("user must be valid UTF-8") from None
    return _distinct(named, limit, "name at least one user: ?user=a&user=b")


def posted_users(body: bytes, limit: int) -> tuple[str, ...]:
    """The distinct users of a JSON body ``{"users": [...]}``, or a 400."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadInput('the body must be JSON: {"users": [...]}') from None
    users = parsed.get("users") if isinstance(parsed, dict) else None
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise BadInput('the body must be {"users": [<user id>, ...]}')
    for userid in users:
        try:
            userid.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escaped in JSON
            raise BadInput("user must be valid UTF-8") from None
    return _distinct(users, limit, 'name at least one user: {"users": ["a", "b"]}')


def _distinct(named: Iterable[str], limit: int, none_named: str) -> tuple[str, ...]:
    """The same rules for every list: none empty, repeats once, 1 to ``limit``."""
    users: dict[str, None] = {}
    for userid in named:
        if not userid:
            raise BadInput("user must not be empty")
        users[userid] = None
    if not users:
        raise BadInput(none_named)
    if len(users) > limit:
        raise BadInput(f"at most {limit} users per request, got {len(users)}")
    return tuple(users)
