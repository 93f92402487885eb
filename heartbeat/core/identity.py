"""Who is calling, and whether they may read.

Two trust models (SPEC §1). By default an auth proxy vouches for the caller
in ``X-User-Claim`` and heartbeat believes it, so the port must only be
reachable through that proxy. With ``JWT_SECRET`` set, heartbeat checks an
HS256 token itself and ignores ``X-User-Claim``, and reading presence
(subscribe, status) needs a valid token too.

Routes call one :class:`Identity`: ``ping_user`` for the pinging user,
``authorize_read`` before streaming or reading anyone's presence, and
``check_userid`` on every user id a client names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import jwt
from twisted.logger import Logger

from heartbeat.core.asking import Asking
from heartbeat.core.errors import BadCredentials, BadInput

CLAIM_HEADER = b"X-User-Claim"
# The only algorithm accepted: pinning it is what stops ``alg: none`` and
# algorithm-confusion tokens.
JWT_ALGORITHMS = ["HS256"]
_BEARER = b"bearer"

log = Logger()


def user_from_claim(header: bytes | None) -> tuple[str, str]:
    """The ``userid`` and device of a claim header, or a 400 saying what is wrong."""
    if header is None:
        raise BadInput("missing X-User-Claim header")
    try:
        claim = json.loads(header)
    except ValueError:
        raise BadInput("X-User-Claim is not valid JSON") from None
    if not isinstance(claim, dict):
        raise BadInput("X-User-Claim must be a JSON object")
    userid = claim.get("userid")
    if not isinstance(userid, str) or not userid:
        raise BadInput("X-User-Claim needs a non-empty string userid")
    clientid = claim.get("clientid")
    if clientid is not None and not isinstance(clientid, str):
        raise BadInput("X-User-Claim clientid must be a string")
    return userid, clientid or ""


def bearer_token(request: Asking) -> bytes:
    """The request's token: the ``Authorization`` header, else ``?token=``.

    A present header wins even when it is malformed, so a client cannot
    fall back to a second token by spoiling the first.
    """
    header = request.getHeader(b"Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != _BEARER or not token:
            raise BadCredentials("Authorization must be 'Bearer <token>'")
        return token
    tokens = request.args.get(b"token")
    if not tokens or not tokens[0]:
        raise BadCredentials("missing token: send Authorization: Bearer <token> or ?token=")
    return tokens[0]


class Identity:
    """The trust model of one process, with the user-id length limit."""

    def __init__(self, jwt_secret: str | None, max_userid: int) -> None:
        self._secret = jwt_secret
        self.max_userid = max_userid

    @property
    def uses_jwt(self) -> bool:
        return self._secret is not None

    def announce(self) -> None:
        """Say at start-up whom the process trusts, loudly when it is the proxy."""
        if self.uses_jwt:
            log.info("identity: built-in JWT auth (HS256); X-User-Claim is ignored")
        else:
            log.warn(
                "identity: trusting X-User-Claim from an auth proxy; this port must "
                "only be reachable through that proxy (set JWT_SECRET otherwise)"
            )

    def ping_user(self, request: Asking) -> tuple[str, str]:
        """The user and device a ``POST /ping`` or ``/leave`` is for: 400/401
        when there is none. No ``clientid`` (or an empty one) is the device ``""``."""
        if self.uses_jwt:
            userid, clientid = self._token_user(request)
        else:
            userid, clientid = user_from_claim(request.getHeader(CLAIM_HEADER))
        return self.check_userid(userid), clientid

    def authorize_read(self, request: Asking) -> None:
        """401 unless the caller may read presence (any valid token in JWT mode).

        Any authenticated user may watch any other: watching contacts is the
        point of the service.
        """
        if self.uses_jwt:
            self.check_userid(self._token_user(request)[0])

    def check_userid(self, userid: str) -> str:
        """``userid`` if it is a user id we accept, else a 400."""
        if not userid:
            raise BadInput("user id is empty")
        if len(userid) > self.max_userid:
            raise BadInput(f"user id is longer than {self.max_userid} characters")
        return userid

    def check_userids(self, userids: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.check_userid(userid) for userid in userids)

    def _token_user(self, request: Asking) -> tuple[str, str]:
        token = bearer_token(request)
        try:
            claims = jwt.decode(token, self._secret, algorithms=JWT_ALGORITHMS)
        except jwt.ExpiredSignatureError:
            raise BadCredentials("token has expired") from None
        except jwt.PyJWTError:
            raise BadCredentials("token is not valid") from None
        userid = claims.get("userid")
        if not isinstance(userid, str) or not userid:
            raise BadCredentials("token needs a non-empty string userid claim")
        clientid = claims.get("clientid")
        if clientid is not None and not isinstance(clientid, str):
            raise BadCredentials("token's clientid claim must be a string")
        return userid, clientid or ""
