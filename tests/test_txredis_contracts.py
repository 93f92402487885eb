"""What heartbeat needs of txredisapi's internals (heartbeat/store/redis/txredis.py).

Each test pins one function of the adapter against the installed txredisapi,
so that a release that moves one fails here, by name, not in a daemon.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import RedisFactory, RedisProtocol, ResponseError, SubscriberProtocol
from txredisapi import TimeoutError as RedisTimeoutError
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



@pytest.mark.parametrize("args", [
    ("EVALSHA", "a" * 40, 2, "heartbeat:{ü}", "k", 60.0, 0.5, 1733380000123, "", b"\x00raw"),
    ("PING",),
])
def test_a_batch_command_is_encoded_as_txredisapi_encodes_it(args):
    assert txredis.encode(args) == RedisProtocol()._build_command(*args)
    assert txredis.encode(args[2:], args[:2]) == RedisProtocol()._build_command(*args)


def batch_connection(clock=None):
    conn = RedisProtocol(replyTimeout=5 if clock else None)
    if clock is not None:
        conn.callLater = clock.callLater
    transport = connected(conn)
    conn.connected = 1
    return conn, transport


def test_a_batch_is_written_once_and_its_replies_come_back_as_one_list():
    conn, transport = batch_connection()
    first = conn.execute_command("GET", "before")  # a command already waiting keeps its reply
    commands = txredis.encode(("GET", "a")) + txredis.encode(("GET", "b"))
    replies = []
    txredis.send(conn, commands, 2).addCallback(replies.append)
    after = conn.execute_command("GET", "after")
    assert transport.value().endswith(commands + txredis.encode(("GET", "after")))
    conn.dataReceived(b"$1\r\nx\r\n$1\r\ny\r\n")
    assert first.result == "x" and replies == []
    conn.dataReceived(b"-ERR wrong\r\n$1\r\nz\r\n")
    assert after.result == "z"
    value, error = replies[0]
    assert value == "y" and isinstance(error, ResponseError) and "wrong" in str(error)


def test_a_reply_already_queued_goes_to_the_batch_as_it_would_to_a_command():
    conn, _ = batch_connection()
    conn.replyReceived("early")
    replies = []
    txredis.send(conn, txredis.encode(("GET", "a")) * 2, 2).addCallback(replies.append)
    conn.dataReceived(b"$4\r\nlate\r\n")
    assert replies == [["early", "late"]]


def test_a_lost_connection_fails_each_command_of_a_batch():
    conn, _ = batch_connection()
    replies = []
    txredis.send(conn, txredis.encode(("GET", "a")) * 2, 2).addCallback(replies.append)
    conn.dataReceived(b"$1\r\n1\r\n")
    conn.connectionLost(Failure(ConnectionDone()))
    assert replies[0][0] == 1 and isinstance(replies[0][1], RedisConnectionError)


def test_a_batch_with_no_reply_in_time_times_out_and_drops_the_connection():
    clock = Clock()
    conn, transport = batch_connection(clock)
    replies = []
    txredis.send(conn, txredis.encode(("GET", "a")) * 2, 2).addCallback(replies.append)
    clock.advance(4.9)
    assert replies == []
    clock.advance(0.2)
    assert [type(reply) for reply in replies[0]] == [RedisTimeoutError, RedisTimeoutError]
    assert transport.disconnecting


def test_a_batch_answered_in_time_leaves_no_timer():
    clock = Clock()
    conn, _ = batch_connection(clock)
    txredis.send(conn, txredis.encode(("GET", "a")), 1)
    conn.dataReceived(b"$1\r\n1\r\n")
    assert clock.getDelayedCalls() == []


def test_a_batch_on_a_closed_connection_is_refused_at_once():
    conn = RedisProtocol()
    with pytest.raises(RedisConnectionError):
        txredis.send(conn, txredis.encode(("GET", "a")), 1)
