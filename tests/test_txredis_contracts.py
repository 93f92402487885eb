"""What heartbeat needs of txredisapi's internals (heartbeat/store/redis/txredis.py).

Each test pins one function of the adapter against the installed txredisapi,
so that a release that moves one fails here, by name, not in a daemon.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from txredisapi import RedisFactory, RedisProtocol, SubscriberProtocol
from zope.interface import implementer

from heartbeat.store.redis import txredis


@implementer(IStreamClientEndpoint)
class Never:
    """An endpoint whose connection attempts never finish."""

    def connect(self, factory: object) -> Deferred:
        return Deferred()


def connected(conn: RedisProtocol) -> StringTransport:
    transport = StringTransport()
    conn.makeConnection(transport)
    return transport


@pytest.mark.parametrize("name", txredis.FACTORY_HOOKS)
def test_the_factory_hooks_our_link_overrides_exist(name):
    assert callable(getattr(RedisFactory, name))


@pytest.mark.parametrize("name", txredis.PROTOCOL_HOOKS)
def test_the_protocol_hooks_our_subscriber_overrides_exist(name):
    assert callable(getattr(SubscriberProtocol, name))


def test_a_factory_s_slots_can_be_taken_and_stopped():
    factory = RedisFactory(None, None, 1, isLazy=True)
    factory.startConnecting(Never())
    slots = txredis.take_slots(factory)
    assert len(slots) == 1 and txredis.take_slots(factory) == []
    assert txredis.slot_transport(slots[0]) is None  # still connecting
    stopped = txredis.stop_slot(slots[0])
    assert isinstance(stopped, Deferred)
    assert not txredis.disconnecting(factory)
    factory.disconnect()
    assert txredis.disconnecting(factory)


def test_a_slot_s_transport_is_its_connection_s():
    factory = RedisFactory(None, None, 1, isLazy=True)
    factory.startConnecting(Never())
    slot = txredis.take_slots(factory)[0]
    conn = RedisProtocol()
    transport = connected(conn)
    slot.protocol = conn
    assert txredis.slot_transport(slot) is transport


def test_the_pool_holds_the_connections_handed_out():
    factory = RedisFactory(None, None, 1, isLazy=True)
    conn = RedisProtocol()
    conn.factory = factory
    connected(conn)
    assert txredis.pooled(factory) == []
    factory.addConnection(conn)
    assert txredis.pooled(factory) == [conn]
    factory.delConnection(conn)
    assert txredis.pooled(factory) == []


def test_a_command_is_encoded_as_resp():
    assert txredis.encode_command(RedisProtocol(), "SUNSUBSCRIBE", "heartbeat:a") == (
        b"*2\r\n$12\r\nSUNSUBSCRIBE\r\n$11\r\nheartbeat:a\r\n")


def test_a_queued_reply_answers_the_oldest_waiting_command():
    conn = SubscriberProtocol()
    transport = connected(conn)
    answers: list[object] = []
    conn.execute_command("SSUBSCRIBE", "c", apply_timeout=False).addCallback(answers.append)
    assert transport.value() == b"*2\r\n$10\r\nSSUBSCRIBE\r\n$1\r\nc\r\n"
    txredis.queue_reply(conn, ["ssubscribe", "c", 1])
    assert answers == [["ssubscribe", "c", 1]]

