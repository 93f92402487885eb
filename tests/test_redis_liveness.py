"""A quiet Redis connection is PINGed, and dropped when the PING goes unanswered."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from heartbeat.store.redis.link import QUIET, Liveness


class Conn:
    """What Liveness uses of a txredisapi protocol."""

    def __init__(self) -> None:
        self.factory = SimpleNamespace(replyTimeout=5.0)
        self.transport = StringTransport()
        self.heard = 0.0
        self.sent: list[tuple[tuple, dict, Deferred]] = []

    def execute_command(self, *args: object, **kwargs: object) -> Deferred:
        d: Deferred = Deferred()
        self.sent.append((args, kwargs, d))
        return d


def test_a_quiet_connection_is_pinged_and_kept_while_it_answers():
    clock, conn, failures = Clock(), Conn(), []
    check = Liveness(conn, clock, failures.append)
    check.start()
    clock.advance(1)
    conn.heard = clock.seconds()  # traffic: not quiet
    for _ in range(int(QUIET) - 1):
        clock.advance(1)
    assert conn.sent == []
    clock.advance(1)
    assert [(args, kwargs) for args, kwargs, _ in conn.sent] == [(("PING",), {"apply_timeout": False})]
    clock.advance(2)
    assert len(conn.sent) == 1  # one PING at a time
    conn.sent[0][2].callback("PONG")
    clock.advance(10)
    assert not conn.transport.disconnecting and failures == []
    check.stop()
    assert clock.getDelayedCalls() == []


def test_an_unanswered_ping_drops_the_connection_within_its_reply_timeout():
    clock, conn, failures = Clock(), Conn(), []
    Liveness(conn, clock, failures.append).start()
    clock.advance(QUIET + 1)
    assert len(conn.sent) == 1
    clock.advance(conn.factory.replyTimeout - 0.5)
    assert failures == [] and not conn.transport.disconnecting
    clock.advance(0.5)
    assert failures == [conn]
    assert conn.transport.disconnecting  # aborted, not waiting for a FIN
