"""Why a request is refused, in the domain's terms; the web layer maps each to HTTP.

Core and store code raise these without knowing about status codes, so the
same rule (a bad status, a bad token, an unreachable store) reads the same
wherever it is checked.
"""

from __future__ import annotations


class Refused(Exception):
    """A request refused for a reason the client can act on; ``message`` says which."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(Refused):
    """What the client sent is not acceptable (a body, a user id, a query)."""


class BadCredentials(Refused):
    """The caller could not be identified (no token, a bad or expired one)."""


class NotAllowed(Refused):
    """The caller is known but may not read what it asked for."""


class TooLarge(Refused):
    """A request body over the limit."""


class Unavailable(Refused):
    """The service cannot do it right now; the client should retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after
