"""The Lua scripts heartbeat runs in Redis, and the wire shapes of presence.

A script runs atomically on the server, so storing a ping and publishing it
is one command that no crash can split; reading many users' pings is one
command too. Scripts are called by hash (``EVALSHA``) and sent in full
(``EVAL``) only when Redis does not know them yet (``NOSCRIPT``: a fresh or
restarted server, or ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import RedisProtocol, ResponseError

from heartbeat.core.presence import Ping, Presence, UserState
from heartbeat.core.store_contract import BusListener

log = Logger()


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
        operands = (len(keys), *keys, *args)
        d = maybeDeferred(conn.execute_command, "EVALSHA", self.sha, *operands)
        return d.addErrback(self._unknown, conn, operands)

    def _unknown(
        self, failure: Failure, conn: RedisProtocol, operands: tuple[object, ...]
    ) -> Deferred[Any] | Failure:
        if not (failure.check(ResponseError) and str(failure.value).startswith("NOSCRIPT")):
            return failure
        return maybeDeferred(conn.execute_command, "EVAL", self.source, *operands)


# The Lua that takes one device offline, shared by the sweep and a leave. It publishes
# the device's offline event, then the user's if that was their last online device,
# and counts the user out of their partition's online count. Returns 1 when the user
# went offline, else 0 (also for a device that was not online: nothing is published).
_OFFLINE = (
    "local function offline(count, key, devices, online, userid, clientid)\n"
    "  if redis.call('SREM', online, clientid) == 0 then return 0 end\n"
    "  local device = redis.call('HGET', devices, clientid)\n"
    "  local space = device and string.find(device, ' ', 1, true)\n"
    "  if space then\n"
    "    redis.call('PUBLISH', key, cjson.encode({userid = userid, clientid = clientid,\n"
    "      online = false, time = tonumber(string.sub(device, 1, space - 1)),\n"
    "      status = string.sub(device, space + 1)}))\n"
    "  end\n"
    "  if redis.call('SCARD', online) > 0 then return 0 end\n"
    "  redis.call('DECR', count)\n"
    "  local user = redis.pcall('HMGET', key, 'time', 'status')\n"
    "  if not user.err and user[1] and user[2] then\n"
    "    redis.call('PUBLISH', key, cjson.encode({userid = userid, online = false,\n"
    "      time = tonumber(user[1]), status = user[2]}))\n"
    "  end\n"
    "  return 1\n"
    "end\n"
)

# The server's clock, which every instance shares: deadlines never depend on whose
# clock took the ping.
_NOW = (
    "local clock = redis.call('TIME')\n"
    "local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000\n"
)

# KEYS: per ping, the user's key (also their channel), devices hash, online set, deadline
# partition and the partition's online count. ARGV: the timeout, then per ping
# :func:`ping_args`: its user, time, status, device, deadline member and event message.
# A ping with no message hides (HIDDEN_STATUSES): its deadline is armed, but to watchers
# its device goes offline (as a sweep would take it), and nothing of it is stored.
# Returns, per ping, 1 once stored, armed and published (2 when a ping that hides took
# the user offline), or the error that kept it from being stored (the user's key
# holding something else): the other pings of the call are stored all the same.
STORE_AND_PUBLISH = Script(
    _OFFLINE + _NOW
    + "local deadline = string.format('%.6f', now + tonumber(ARGV[1]))\n"
    "local results = {}\n"
    "for i = 1, #KEYS / 5 do\n"
    "  local key, devices, online, deadlines, count = KEYS[5 * i - 4], KEYS[5 * i - 3],\n"
    "    KEYS[5 * i - 2], KEYS[5 * i - 1], KEYS[5 * i]\n"
    "  local a = 6 * i - 4\n"
    "  local userid, time, status, clientid, member, message = ARGV[a], ARGV[a + 1],\n"
    "    ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]\n"
    "  if message == '' then\n"
    "    redis.call('ZADD', deadlines, deadline, member)\n"
    "    results[i] = 1 + offline(count, key, devices, online, userid, clientid)\n"
    "  else\n"
    "    local stored = redis.pcall('HSET', key, 'time', time, 'status', status)\n"
    "    if type(stored) == 'table' and stored.err then\n"
    "      results[i] = stored.err\n"
    "    else\n"
    "      redis.call('HSET', devices, clientid, time .. ' ' .. status)\n"
    "      if redis.call('SADD', online, clientid) == 1 and redis.call('SCARD', online) == 1 then\n"
    "        redis.call('INCR', count)\n"
    "      end\n"
    "      redis.call('ZADD', deadlines, deadline, member)\n"
    "      redis.call('PUBLISH', key, message)\n"
    "      results[i] = 1\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return results\n"
)

# KEYS: every deadline partition, then every partition's online count. ARGV: the most
# entries to take from one partition. Returns the users online (the counts' sum), then
# each due entry as its partition's index and its member. Reads only: an entry is
# claimed by EXPIRE_DUE, so instances sweeping at the same moment claim it once.
DUE = Script(
    _NOW
    + "local partitions = #KEYS / 2\n"
    "local out = {0}\n"
    "local users = 0\n"
    "for i = 1, partitions do\n"
    "  users = users + (tonumber(redis.call('GET', KEYS[partitions + i])) or 0)\n"
    "  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', string.format('%.6f', now),\n"
    "    'LIMIT', 0, ARGV[1])\n"
    "  for _, member in ipairs(due) do\n"
    "    out[#out + 1] = i - 1\n"
    "    out[#out + 1] = member\n"
    "  end\n"
    "end\n"
    "out[1] = users\n"
    "return out\n"
)

# KEYS: per entry, its partition, the partition's count, and the user's key, devices and
# online set. ARGV: per entry its member, user and device. Each entry still due is
# removed, and only if this call's ZREM removed it is the device taken offline and
# published, in the same atomic step: an entry claimed twice is published once. A ping
# since the DUE read moved the deadline on, and the entry is left. Returns the users
# taken offline.
EXPIRE_DUE = Script(
    _OFFLINE + _NOW
    + "local gone = 0\n"
    "for i = 1, #ARGV / 3 do\n"
    "  local k = 5 * i - 4\n"
    "  local member = ARGV[3 * i - 2]\n"
    "  local score = redis.call('ZSCORE', KEYS[k], member)\n"
    "  if score and tonumber(score) <= now and redis.call('ZREM', KEYS[k], member) == 1 then\n"
    "    gone = gone + offline(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4],\n"
    "      ARGV[3 * i - 1], ARGV[3 * i])\n"
    "  end\n"
    "end\n"
    "return gone\n"
)

# KEYS: the device's partition and its count, the user's key, devices and online set.
# ARGV: the device's member, user and device. Returns 1 when the user went offline.
LEAVE = Script(
    _OFFLINE
    + "redis.call('ZREM', KEYS[1], ARGV[1])\n"
    "return offline(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2], ARGV[3])\n"
)

# KEYS: the user's key, devices hash, online set, deadline partition and its count. ARGV:
# the user's latest time and status, then per device its id, "time status", deadline
# ('' for one offline) and deadline member. Puts back a user another store kept
# (``python -m heartbeat.store.export``), publishing nothing. Returns 1.
RESTORE = Script(
    "redis.call('HSET', KEYS[1], 'time', ARGV[1], 'status', ARGV[2])\n"
    "local was = redis.call('SCARD', KEYS[3])\n"
    "for i = 3, #ARGV, 4 do\n"
    "  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])\n"
    "  if ARGV[i + 2] ~= '' then\n"
    "    redis.call('SADD', KEYS[3], ARGV[i])\n"
    "    redis.call('ZADD', KEYS[4], ARGV[i + 2], ARGV[i + 3])\n"
    "  end\n"
    "end\n"
    "if was == 0 and redis.call('SCARD', KEYS[3]) > 0 then redis.call('INCR', KEYS[5]) end\n"
    "return 1\n"
)

# KEYS: per user their key, devices hash and online set. Returns per user
# [time, status, devices as field/value pairs, online devices] (nils and empty lists
# when absent, or when a key holds something else).
READ_MANY = Script(
    "local states = {}\n"
    "for i = 1, #KEYS / 3 do\n"
    "  local ping = redis.pcall('HMGET', KEYS[3 * i - 2], 'time', 'status')\n"
    "  if ping.err then ping = {false, false} end\n"
    "  local devices = redis.pcall('HGETALL', KEYS[3 * i - 1])\n"
    "  if devices.err then devices = {} end\n"
    "  local online = redis.pcall('SMEMBERS', KEYS[3 * i])\n"
    "  if online.err then online = {} end\n"
    "  states[i] = {ping[1], ping[2], devices, online}\n"
    "end\n"
    "return states\n"
)


def ping_args(ping: Ping, hides: bool) -> tuple[object, ...]:
    """One ping's arguments to :data:`STORE_AND_PUBLISH`; a ping that hides has no message."""
    message = "" if hides else ping_message(ping)
    return (ping.userid, ping.time, ping.status, ping.clientid,
            deadline_member(ping.userid, ping.clientid), message)


def ping_message(ping: Ping) -> str:
    """What a ping publishes: its device's event, which is also the user's.

    A ping makes the user's ``time`` and ``status`` its own and the user
    online, so one message says both; :func:`from_message` reads it back
    as the two changes.
    """
    device = Presence(ping.userid, ping.time, ping.status, True, ping.clientid)
    return json.dumps(device.as_event(), separators=(",", ":"))


def deadline_member(userid: str, clientid: str) -> str:
    """A device's member in its deadline partition: both ids, unambiguously."""
    return json.dumps([userid, clientid], separators=(",", ":"))


def from_member(member: str) -> tuple[str, str] | None:
    try:
        userid, clientid = json.loads(member)
    except (ValueError, TypeError):
        return None
    if not (isinstance(userid, str) and isinstance(clientid, str)):
        return None
    return userid, clientid


def from_message(userid: str, text: str) -> tuple[Presence, ...]:
    """The changes a message on ``userid``'s channel carries.

    A JSON object with ``time`` and ``status`` (and optionally ``online``,
    default true) is the user's change; with a string ``clientid`` too, the
    device's, and when it is online (a ping) the user's as well. The Go
    service's ``"time status"`` text is still read, as the user's change.
    Anything else is ignored.
    """
    if not text.startswith("{"):
        stamp, _, text_status = text.partition(" ")
        ping = _ping(userid, stamp, text_status)
        return () if ping is None else (Presence(userid, ping.time, ping.status),)
    try:
        event = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(event, dict):
        return ()
    time, status, online = event.get("time"), event.get("status"), event.get("online", True)
    if (type(time) is not int or time < 0 or not isinstance(status, str) or not status
            or not isinstance(online, bool)):
        return ()
    clientid = event.get("clientid")
    user = Presence(userid, time, status, online)
    if not isinstance(clientid, str):
        return (user,)
    device = Presence(userid, time, status, online, clientid)
    return (user, device) if online else (device,)


def relay(listener: BusListener | None, prefix: str, channel: str, text: object) -> None:
    """Hand the changes a bus message on ``channel`` carries to ``listener``.

    An exception here would escape into the subscriber protocol and drop
    the subscriber connection for every stream of this process: logged instead.
    """
    if not (isinstance(text, str) and channel.startswith(prefix)):
        return
    changes = from_message(channel[len(prefix):], text)
    if changes and listener is not None:
        try:
            for change in changes:
                listener.deliver(change)
        except Exception:
            log.failure("delivering a ping failed")



def from_row(userid: str, row: Sequence[Any]) -> UserState | None:
    """A user's state from :data:`READ_MANY`'s row: None if they never pinged."""
    time, status, fields, online = row
    latest = _ping(userid, time, status)
    if latest is None:
        return None
    up = set(online)
    devices = {}
    for clientid, value in zip(fields[::2], fields[1::2]):
        ping = _ping(userid, *value.partition(" ")[::2])
        if ping is not None:
            devices[clientid] = Presence(userid, ping.time, ping.status, clientid in up, clientid)
    return UserState(Presence(userid, latest.time, latest.status, bool(up)), devices)


def _ping(userid: str, time: str | None, status: str | None) -> Ping | None:
    # Anything not written by heartbeat (or its Go predecessor) reads as no ping.
    if not time or not status or not (time.isascii() and time.isdigit()):
        return None
    return Ping(userid, int(time), status)
