"""The Redis links as the store builds them: on the reactor it is given, and named
alike whoever names the server (IPv6 included)."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from heartbeat.store.redis.address import parse_redis
from heartbeat.store.redis.link import QUIET, peer
from heartbeat.store.redis.sentinel import SentinelRoute, _where
from heartbeat.store.redis.store import RedisStore

# A Clock resolves no names; these links never connect, so it never has to.
pytestmark = pytest.mark.filterwarnings("ignore:Passing HostnameEndpoint a reactor:DeprecationWarning")


class Conn:
    """What a RedisLink uses of a txredisapi connection."""

    def __init__(self, peer: IPv4Address | IPv6Address) -> None:
        self.connected = 1
        self.transport = StringTransport(peerAddress=peer)
        self.sent: list[tuple] = []
        self.factory: object = None

    def whenDisconnected(self) -> Deferred:
        return Deferred()

    def execute_command(self, *args: object, **kwargs: object) -> Deferred:
        self.sent.append(args)
        return Deferred()


def test_the_store_s_links_check_liveness_on_the_reactor_they_are_given():
    clock = Clock()
    store = RedisStore(parse_redis("redis://127.0.0.1:1/0"), "hb:", clock, 60)
    link = store._topology._command_link  # type: ignore[attr-defined]
    conn = Conn(IPv4Address("TCP", "127.0.0.1", 1))
    conn.factory = link
    link._usable(conn)
    assert conn in link.pool
    clock.advance(QUIET + 1)  # quiet on the given clock: PINGed
    assert conn.sent == [("PING",)]
    clock.advance(link.replyTimeout)
    assert link.liveness_failures == 1 and conn.transport.disconnecting


def test_the_sentinel_watchers_run_on_the_reactor_they_are_given():
    clock = Clock()
    route = SentinelRoute(clock, parse_redis("redis+sentinel://[::1]:26379/mymaster"), None)
    assert [watcher.clock for watcher in route.watchers] == [clock]


def test_a_server_on_ipv6_is_named_alike_by_the_link_and_the_sentinel_route():
    conn = Conn(IPv6Address("TCP", "::1", 6380))
    assert peer(conn) == _where(("::1", 6380)) == "[::1]:6380"
    route = SentinelRoute(Clock(), parse_redis("redis+sentinel://[::1]:26379/mymaster"), None)
    route._master = ("::1", 6380)
    # A link that landed on a replica at [::1]:6380 sends the route back to the Sentinels.
    route.replica_found(peer(conn))
    assert route._master is None
