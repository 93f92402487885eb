"""Who is calling: the user an auth proxy vouches for in ``X-User-Claim``.

heartbeat trusts the header as Beep's traefik forward-auth sets it, so the
port must only be reachable through that proxy.
"""

from __future__ import annotations

import json

from twisted.web.iweb import IRequest

from heartbeat.errors import ApiError

CLAIM_HEADER = b"X-User-Claim"


def userid_from_claim(header: bytes | None) -> str:
    """The ``userid`` of a claim header, or a 400 saying what is wrong with it."""
    if header is None:
        raise ApiError(400, "missing X-User-Claim header")
    try:
        claim = json.loads(header)
    except ValueError:
        raise ApiError(400, "X-User-Claim is not valid JSON") from None
    if not isinstance(claim, dict):
        raise ApiError(400, "X-User-Claim must be a JSON object")
    userid = claim.get("userid")
    if not isinstance(userid, str) or not userid:
        raise ApiError(400, "X-User-Claim needs a non-empty string userid")
    return userid


def proxy_identity(request: IRequest) -> str:
    """The caller's user id in trusted-proxy mode."""
    return userid_from_claim(request.getHeader(CLAIM_HEADER))
