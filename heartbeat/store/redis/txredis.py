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
- :data:`FACTORY_HOOKS`, :data:`PROTOCOL_HOOKS`: the undocumented methods
  our subclasses override (a connection handed out or lost, AUTH refused,
  every reply received).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITransport
from txredisapi import RedisFactory, RedisProtocol

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
