"""The Lua scripts heartbeat runs in Redis, and the wire shapes of a ping.

A script runs atomically on the server, so storing a ping and publishing it
is one command that no crash can split; reading many users' pings is one
command too. Scripts are called by hash (``EVALSHA``) and sent in full
(``EVAL``) only when Redis does not know them yet (``NOSCRIPT``: a fresh or
restarted server, or ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from txredisapi import RedisProtocol, ResponseError

from heartbeat.core.presence import Ping


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def run(
        self, conn: RedisProtocol, keys: Sequence[str], args: Sequence[object] = ()
    ) -> Deferred[Any]:
        """``EVALSHA``, then ``EVAL`` if the server has not seen the script."""
        d = maybeDeferred(conn.execute_command, "EVALSHA", self.sha, len(keys), *keys, *args)
        return d.addErrback(self._unknown, conn, keys, args)

    def _unknown(
        self, failure: Failure, conn: RedisProtocol, keys: Sequence[str], args: Sequence[object]
    ) -> Deferred[Any] | Failure:
        if not (failure.check(ResponseError) and str(failure.value).startswith("NOSCRIPT")):
            return failure
        return maybeDeferred(conn.execute_command, "EVAL", self.source, len(keys), *keys, *args)


# KEYS: the users' keys, which are also their channels, one per ping. ARGV: each
# ping's time and status, in turn. Returns, per ping, 1 once stored and published, or
# the error that kept it from being stored (a key holding something else): the other
# pings of the call are stored all the same.
STORE_AND_PUBLISH = Script(
    "local results = {}\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local time, status = ARGV[2 * i - 1], ARGV[2 * i]\n"
    "  local stored = redis.pcall('HSET', key, 'time', time, 'status', status)\n"
    "  if type(stored) == 'table' and stored.err then\n"
    "    results[i] = stored.err\n"
    "  else\n"
    "    redis.call('PUBLISH', key, time .. ' ' .. status)\n"
    "    results[i] = 1\n"
    "  end\n"
    "end\n"
    "return results\n"
)

# KEYS: the users' keys. Returns one [time, status] pair per key (nils when absent, or
# when the key holds something other than a hash).
READ_MANY = Script(
    "local pings = {}\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local ping = redis.pcall('HMGET', key, 'time', 'status')\n"
    "  if ping.err then ping = {false, false} end\n"
    "  pings[i] = ping\n"
    "end\n"
    "return pings\n"
)


def from_message(userid: str, text: str) -> Ping | None:
    """The ping a published ``"time status"`` message carries (statuses may hold spaces)."""
    time, _, status = text.partition(" ")
    return _ping(userid, time, status)


def from_fields(userid: str, fields: Sequence[str | None]) -> Ping | None:
    """The ping stored in a user's hash, from ``HMGET time status``."""
    time, status = fields
    return _ping(userid, time, status)


def _ping(userid: str, time: str | None, status: str | None) -> Ping | None:
    # Anything not written by heartbeat (or its Go predecessor) reads as no ping.
    if not time or not status or not (time.isascii() and time.isdigit()):
        return None
    return Ping(userid, int(time), status)
