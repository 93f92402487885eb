"""Who is calling, and whether they may read.

Two trust models (SPEC §1). By default an auth proxy vouches for the caller
in ``X-User-Claim`` and heartbeat believes it, so the port must only be
reachable through that proxy. With ``JWT_SECRET`` set, heartbeat checks an
HS256 token itself and ignores ``X-User-Claim``, and reading presence
(subscribe, status) needs a valid token too.

A token may narrow what it reads (SPEC §1, "Who may watch whom"): its
``watch`` claim lists the users it may read besides its own, and its ``exp``
ends the streams it opened. Both are read once per request, so the fan-out
path never looks at them.

Routes call one :class:`Identity`: ``ping_user`` for the pinging user,
``authorize_read`` with the users a subscribe or status request names, and
``check_userid`` on every user id a client names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import jwt
from twisted.logger import Logger

from heartbeat.core import fast_json
from heartbeat.core.errors import BadCredentials, BadInput, NotAllowed
from heartbeat.core.request_view import RequestView

CLAIM_HEADER = b"X-User-Claim"
# The only algorithm accepted: pinning it is what stops ``alg: none`` and
# algorithm-confusion tokens.
JWT_ALGORITHMS = ["HS256"]
_BEARER = b"bearer"
# The longest ``watch`` list a token may carry. A contact list is far
# shorter; a list beyond this is a broken or hostile issuer, and refusing it
# bounds the set built per request.
MAX_WATCH = 10_000
# 9999-12-31T23:59:59Z: an ``exp`` later than this is as good as none, and
# keeps a huge integer from overflowing the clock's float arithmetic.
_FAR_FUTURE = 253_402_300_799

log = Logger()


def user_from_claim(header: bytes | None) -> tuple[str, str]:
    """The ``userid`` and device of a claim header, or a 400 saying what is wrong."""
    if header is None:
        raise BadInput("missing X-User-Claim header")
    try:
        claim = fast_json.loads(header)
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


def bearer_token(request: RequestView) -> bytes:
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


@dataclass(frozen=True, slots=True)
class Token:
    """What a valid token says: who it is, until when, and whom it may read.

    ``watch`` is None when the token carries no ``watch`` claim (it reads
    anyone, compat); ``exp`` is None when it never expires.
    """

    userid: str
    exp: float | None = None
    watch: frozenset[str] | None = None
    # The device (``clientid`` claim); none is the device "".
    clientid: str = ""


@dataclass(frozen=True, slots=True)
class Reading:
    """A read the caller may make: the users (each checked), and when it must end.

    ``expires`` is the token's ``exp``: a stream opened for this read is
    ended then, so the client reconnects with whatever token it has now.
    ``owner`` is the user whose credentials (token, or claim) asked, if any:
    a logout of that user ends the stream.
    """

    userids: tuple[str, ...]
    expires: float | None = None
    owner: str | None = None


def token_claims(claims: dict[str, object]) -> Token:
    """The :class:`Token` of decoded, verified ``claims``, or a 401.

    A ``watch`` that is not a list of at most ``MAX_WATCH`` strings spoils the
    whole token: guessing what a broken issuer meant could widen what it reads.
    """
    userid = claims.get("userid")
    if not isinstance(userid, str) or not userid:
        raise BadCredentials("token needs a non-empty string userid claim")
    clientid = claims.get("clientid")
    if clientid is not None and not isinstance(clientid, str):
        raise BadCredentials("token's clientid claim must be a string")
    exp = None
    if "exp" in claims:
        # PyJWT has checked that int() takes it; it may still be a string.
        exp = float(min(int(claims["exp"]), _FAR_FUTURE))  # type: ignore[call-overload]
    watch = None
    if "watch" in claims:
        listed = claims["watch"]
        if isinstance(listed, list) and len(listed) > MAX_WATCH:
            raise BadCredentials(f"token's watch claim lists more than {MAX_WATCH} users")
        if not isinstance(listed, list) or not all(isinstance(u, str) for u in listed):
            raise BadCredentials("token's watch claim must be a list of user ids")
        watch = frozenset(listed)
    return Token(userid, exp, watch, clientid or "")


def _claimed_user(request: RequestView) -> str | None:
    """The user a read's ``X-User-Claim`` names, if it names one; reads need none."""
    header = request.getHeader(CLAIM_HEADER)
    if header is None:
        return None
    try:
        return user_from_claim(header)[0]
    except BadInput:
        return None


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

    def ping_user(self, request: RequestView) -> tuple[str, str]:
        """The user and device a ``POST /ping`` or ``/leave`` is for: 400/401
        when there is none. No ``clientid`` (or an empty one) is the device ``""``."""
        if self.uses_jwt:
            token = self._token(request)
            userid, clientid = token.userid, token.clientid
        else:
            userid, clientid = user_from_claim(request.getHeader(CLAIM_HEADER))
        return self.check_userid(userid), clientid

    def authorize_read(self, request: RequestView, userids: Iterable[str]) -> Reading:
        """The read of ``userids`` the caller may make: 401, 400, then 403.

        Without a token (the trusted-proxy mode) anyone may read anyone: the
        proxy decides. A token without ``watch`` may read anyone too
        (compat); with one, only those users and itself, and a request naming
        anyone else is refused whole, saying how many but not whom.
        """
        token = self._token(request) if self.uses_jwt else None
        if token is not None:
            self.check_userid(token.userid)
        checked = self.check_userids(userids)
        if token is None:
            return Reading(checked, owner=_claimed_user(request))
        if token.watch is not None:
            refused = sum(
                1 for userid in checked if userid != token.userid and userid not in token.watch
            )
            if refused:
                raise NotAllowed(
                    f"this token may not read {refused} of the {len(checked)} users asked for"
                )
        return Reading(checked, token.exp, token.userid)

    def check_userid(self, userid: str) -> str:
        """``userid`` if it is a user id we accept, else a 400."""
        if not userid:
            raise BadInput("user id is empty")
        if len(userid) > self.max_userid:
            raise BadInput(f"user id is longer than {self.max_userid} characters")
        return userid

    def check_userids(self, userids: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.check_userid(userid) for userid in userids)

    def _token(self, request: RequestView) -> Token:
        token = bearer_token(request)
        try:
            claims = jwt.decode(token, self._secret or "", algorithms=JWT_ALGORITHMS)
        except jwt.ExpiredSignatureError:
            raise BadCredentials("token has expired") from None
        except jwt.PyJWTError:
            raise BadCredentials("token is not valid") from None
        return token_claims(claims)
