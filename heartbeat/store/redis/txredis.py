"""Every txredisapi internal heartbeat reaches into, each behind one named function.

txredisapi is barely maintained and has no Cluster support, so heartbeat
builds on a few of its non-public parts. They live here and nowhere else,
each covered by a contract test (``tests/test_txredis_contracts.py``) that
fails loudly when a txredisapi release moves them; the rest of the store
uses txredisapi's public API and these functions.

What is used, and why:

- :func:`take_slots`, :func:`slot_transport`, :func:`stop_slot`: a
  ``RedisFactory``'s ``slots`` (one ``_PoolSlot`` per pooled connection,
  each owning a ``ClientService``), to drop a link and connect again at
  once, past the backoff a dead master built up (``RedisLink.reconnect_now``).
- :func:`pooled`: the factory's ``pool``, the connections it hands out.
- :func:`disconnecting`: the factory's ``disconnectCalled``.
- :func:`queue_reply`: a protocol's ``replyQueue``, to hand a reply that
  txredisapi's subscriber protocol would treat as a message
  (``ssubscribe``'s confirmation) to the command waiting for it.
- :func:`encode_command`: ``RedisProtocol._build_command``, to write a
  command whose reply must not be waited for (``SUNSUBSCRIBE``).
- :func:`encode` and :func:`send`: a batch's commands encoded at once
  (as ``_build_command`` would, but in C through hiredis) and written in
  one piece, their replies taken from the protocol's ``replyQueue`` by one
  collector and handed back as one list. txredisapi's ``execute_command``
  encodes argument by argument and spends a Deferred, a reply-timeout
  timer and a callback chain on every command; a Cluster batch sends one
  script call per user slot, so that was most of a ping's cost there. The
  reply timeout is kept, once per batch, as txredisapi applies it.
- :data:`FACTORY_HOOKS`, :data:`PROTOCOL_HOOKS`: the undocumented methods
  our subclasses override (a connection handed out or lost, AUTH refused,
  every reply received).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITransport
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import RedisFactory, RedisProtocol
from txredisapi import TimeoutError as RedisTimeoutError

# RedisFactory methods heartbeat's RedisLink overrides, called by txredisapi.
FACTORY_HOOKS = ("addConnection", "delConnection", "stopTrying", "connectionError")
# RedisProtocol methods the sharded subscriber overrides.
PROTOCOL_HOOKS = ("replyReceived",)


def take_slots(factory: RedisFactory) -> list[Any]:
    """The factory's pool slots, removed from it: stopping them is the caller's."""
    slots = list(factory.slots)
    del factory.slots[:]
    return slots


def slot_transport(slot: Any) -> ITransport | None:
    """The transport of a slot's connection, if it has one now."""
    protocol = slot.protocol
    return None if protocol is None else protocol.transport


def stop_slot(slot: Any) -> Deferred[None]:
    """Stop a slot's reconnecting service."""
    return slot.stop()


def pooled(factory: RedisFactory) -> list[RedisProtocol]:
    """The connections the factory hands out now."""
    return factory.pool


def disconnecting(factory: RedisFactory) -> bool:
    """Whether ``disconnect`` was called: nothing may connect again."""
    return bool(factory.disconnectCalled)


def queue_reply(conn: RedisProtocol, reply: Any) -> None:
    """Hand ``reply`` to the oldest command waiting on ``conn``."""
    conn.replyQueue.put(reply)


def encode_command(conn: RedisProtocol, *args: object) -> bytes:
    """``args`` as the RESP command ``conn`` would write."""
    return conn._build_command(*args)


def encode(args: Sequence[object], plain: Sequence[str | int | bytes] = ()) -> bytes:
    """``plain`` then ``args`` as one RESP command, byte for byte as ``_build_command``
    writes them.

    Floats are written as txredisapi writes them (``format(x, "f")``);
    hiredis would write their shortest repr. ``plain`` holds none, so it is
    not looked through (a script's keys).
    """
    packed: Any = (*plain, *[format(arg, "f") if type(arg) is float else arg for arg in args])
    return hiredis.pack_command(packed)


def send(conn: RedisProtocol, commands: bytes, count: int) -> Deferred[list[Any]]:
    """Write ``count`` encoded ``commands`` at once; their replies, in order, as one list.

    An error reply is in the list as its exception (``ResponseError``), not
    raised; so are a lost connection (``ConnectionError``) and a reply
    timeout (``TimeoutError``, then the connection is dropped, as
    txredisapi does). Raises ``ConnectionError`` if ``conn`` is not
    connected, as ``execute_command`` does.
    """
    if conn.connected == 0:
        raise RedisConnectionError("Not connected")
    conn.transport.write(commands)
    replies = _Replies(conn, count)
    queue = conn.replyQueue
    # As DeferredQueue.get: a reply already queued goes to the first command waiting.
    while queue.pending and count:
        count -= 1
        replies.callback(queue.pending.pop(0))
    queue.waiting.extend([replies] * count)
    return replies.done


class _Replies:
    """Stands in the reply queue for each command of a batch: ``put`` calls ``callback``."""

    def __init__(self, conn: RedisProtocol, count: int) -> None:
        self.done: Deferred[list[Any]] = Deferred()
        self._conn = conn
        self._count = count
        self._replies: list[Any] = []
        self._timer = None
        if conn.replyTimeout:
            self._timer = conn.callLater(conn.replyTimeout, self._timed_out)

    def callback(self, reply: Any) -> None:
        replies = self._replies
        replies.append(reply)
        if len(replies) == self._count:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self.done.callback(replies)

    def _timed_out(self) -> None:
        # As txredisapi's own timeout: every command waiting on the connection fails.
        error = RedisTimeoutError(
            f"Not received Redis response in {self._conn.replyTimeout} seconds")
        queue = self._conn.replyQueue
        while queue.waiting:
            queue.put(error)
        self._conn.transport.abortConnection()

