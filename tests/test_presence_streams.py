"""Presence streams (SPEC §2 ``presence=``, §3): renewal and ``LEAVE_GRACE`` on a fake clock."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from heartbeat.core.holder import PresenceHolder, renewal_period
from heartbeat.core.presence import Ping
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.memory import MemoryStore
from heartbeat.web.peers import find_dead_peers
from tests.helpers.claims import claim, claim_header
from tests.helpers.in_memory import MemoryServer, response, seen, watch
from tests.test_sqlite_store import Listener

T = 60.0  # PRESENCE_TIMEOUT's default
GRACE = 5.0  # LEAVE_GRACE's default
START = 1_800_000_000


class Heard(Listener):
    """The store's listener: every change it published."""

    def user(self) -> list[bool]:
        """The user's online/offline events, in order."""
        return [c.online for c in self.changes if c.clientid is None]


class CountingStore(MemoryStore):
    """The memory store, counting the deadline moves and able to fail them."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, T)
        self.rearms: list[tuple[tuple[tuple[str, str], ...], float, float]] = []
        self.down = False

    def ping(self, ping: Ping) -> Deferred[None]:
        if self.down:
            return fail(StoreUnavailable())
        return super().ping(ping)

    def rearm(self, devices: Sequence[tuple[str, str]], after: float) -> Deferred[None]:
        if self.down:
            return fail(StoreUnavailable())
        self.rearms.append((tuple(devices), after, self._clock.seconds()))
        return super().rearm(devices, after)


def setup(grace: float = GRACE) -> tuple[Clock, CountingStore, PresenceHolder, Heard]:
    clock = Clock()
    clock.advance(START)
    store = CountingStore(clock)
    heard = Heard()
    store.listener = heard
    store.subscribe("alice")
    return clock, store, PresenceHolder(store, clock, T, grace), heard


def opening(userid: str = "alice", clientid: str = "web", status: str = "0",
            time: int = START) -> Ping:
    return Ping(userid, time, status, clientid)


def run(clock: Clock, seconds: float, step: float = 0.25) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


def test_opening_is_a_ping_and_the_stream_holds_the_device_with_no_other_ping():
    clock, store, holder, heard = setup()
    holder.opened(opening(status="1"))
    assert [(c.clientid, c.status, c.time, c.online) for c in heard.changes] == [
        (None, "1", START, True), ("web", "1", START, True)]
    run(clock, 10 * T)
    assert heard.user() == [True]
    assert holder.streams == 1


def test_renewals_come_at_least_every_third_of_the_timeout_and_half_the_grace():
    clock, store, holder, _ = setup()
    holder.opened(opening())
    run(clock, 5 * T)
    times = [START] + [at for _, _, at in store.rearms]
    gaps = [b - a for a, b in zip(times, times[1:])]
    longest = renewal_period(T, GRACE)
    assert longest == GRACE / 2
    assert gaps and max(gaps) <= longest and min(gaps) >= longest / 2
    assert {after for _, after, _ in store.rearms} == {T}


def test_the_renewal_period_follows_the_timeout_when_it_is_short_and_never_goes_below_a_second():
    assert renewal_period(3, 5) == 1
    assert renewal_period(60, 0) == 1
    assert renewal_period(60, 30) == 15


def test_many_streams_are_renewed_in_one_store_call_per_turn():
    clock, store, holder, _ = setup()
    for i in range(1000):
        holder.opened(opening(userid=f"u{i}"))
    run(clock, T)
    assert store.rearms
    assert all(len(devices) == 1000 for devices, _, _ in store.rearms)
    assert len({at for _, _, at in store.rearms}) == len(store.rearms)


def test_the_last_stream_closed_takes_the_device_offline_after_the_grace_not_before():
    clock, store, holder, heard = setup()
    holder.opened(opening())
    run(clock, 2 * T)
    holder.closed(opening())
    clock.advance(0)
    assert store.rearms[-1][1] == GRACE
    run(clock, GRACE - 0.25)
    assert heard.user() == [True]
    run(clock, 1.25)  # the sweep's second
    assert heard.user() == [True, False]
    run(clock, 2 * T)
    assert heard.user() == [True, False]
    assert holder.streams == 0


def test_a_stream_reopened_within_the_grace_shows_no_offline():
    clock, store, holder, heard = setup()
    holder.opened(opening())
    holder.closed(opening())
    clock.advance(0)
    run(clock, GRACE - 1)
    holder.opened(opening(time=int(clock.seconds())))
    run(clock, 3 * T)
    assert heard.user() == [True, True]


def test_closed_and_reopened_in_one_turn_sends_no_grace():
    clock, store, holder, heard = setup()
    holder.opened(opening())
    holder.closed(opening())
    holder.opened(opening())
    run(clock, 3 * T)
    assert all(after == T for _, after, _ in store.rearms)
    assert False not in heard.user()


def test_a_ping_within_the_grace_keeps_the_device_for_its_timeout():
    clock, store, holder, heard = setup()
    holder.opened(opening())
    holder.closed(opening())
    run(clock, 2)
    store.ping(Ping("alice", int(clock.seconds()), "0", "web"))
    run(clock, T - 1)
    assert heard.user() == [True, True]
    run(clock, 2)
    assert heard.user() == [True, True, False]


def test_two_streams_of_one_device_hold_it_until_both_end():
    clock, store, holder, heard = setup()
    holder.opened(opening())
    holder.opened(opening())
    holder.closed(opening())
    run(clock, 3 * T)
    assert heard.user() == [True, True]
    holder.closed(opening())
    run(clock, GRACE + 1)
    assert heard.user() == [True, True, False]


def test_leave_is_immediate_and_the_open_stream_then_holds_nothing():
    clock, store, holder, heard = setup()
    holder.opened(opening())
    run(clock, 10)
    holder.left("alice", "web")
    store.leave("alice", "web")
    assert heard.user() == [True, False]
    run(clock, 3 * T)
    holder.closed(opening())
    run(clock, 3 * T)
    assert heard.user() == [True, False]
    assert holder.streams == 0


def test_a_renewal_only_moves_the_deadline_of_an_online_device():
    clock, store, _, heard = setup()
    store.rearm([("alice", "web")], T)
    run(clock, 2)
    assert heard.changes == []
    assert store.online_users() == 0


def test_a_renewal_the_store_missed_becomes_a_ping_once_it_is_back():
    clock, store, holder, heard = setup()
    holder.opened(opening())
    store.down = True
    run(clock, T + 2)
    assert heard.user() == [True, False]  # the deadline passed while the store was away
    store.down = False
    run(clock, T / 3)
    assert heard.user() == [True, False, True]
    assert heard.changes[-1].time == START  # the stream's opening, as SPEC §3 says
    run(clock, 3 * T)
    assert heard.user() == [True, False, True]


def test_a_ping_that_failed_at_the_opening_is_sent_again():
    clock, store, holder, heard = setup()
    store.down = True
    holder.opened(opening())
    assert heard.changes == []
    store.down = False
    run(clock, T / 3)
    assert heard.user() == [True]


def test_close_sends_the_grace_of_the_streams_that_just_ended_and_stops_renewing():
    clock, store, holder, heard = setup()
    holder.opened(opening())
    holder.opened(opening(userid="bob"))
    holder.closed(opening())
    holder.closed(opening(userid="bob"))
    done = holder.close()
    assert done.called
    assert store.rearms[-1][:2] == ((("alice", "web"), ("bob", "web")), GRACE)
    run(clock, GRACE + 1)
    assert heard.user() == [True, False]


def test_a_grace_of_zero_is_offline_at_the_next_sweep():
    clock, store, holder, heard = setup(grace=0)
    holder.opened(opening())
    holder.closed(opening())
    run(clock, 1)
    assert heard.user() == [True, False]


# Over the wire: the real edge, routes and store on a fake clock.

def presence_stream(server: MemoryServer, path: str = "/subscribe/bob?presence=0"):  # type: ignore[no-untyped-def]
    return watch(server, path, claim_header("alice", "web"))


@pytest.mark.parametrize("path", [
    "/subscribe/bob?presence=2", "/subscribe?user=bob&presence=2",
    "/subscribe/bob/client/x?presence=2", "/subscribe/bob?changes=only&presence=2",
    "/subscribe/bob?batch=5&snapshot=1&presence=2",
])
def test_every_subscribe_route_takes_presence(path):
    server = MemoryServer()
    watcher = watch(server)
    stream = presence_stream(server, path)
    assert stream.response().status == 200
    assert seen(watcher) == [("2", True)]
    server.clock.advance(0)
    for _ in range(30):
        server.clock.advance(T / 10)
    assert seen(watcher) == [("2", True)]
    stream.close()
    for _ in range(int(GRACE) * 4 + 4):
        server.clock.advance(0.25)
    assert seen(watcher) == [("2", True), ("2", False)]


@pytest.mark.parametrize("query", ["presence=", "presence=" + "x" * 65, "presence=%01",
                                   "presence=%ff"])
def test_a_bad_presence_status_is_a_400_as_for_a_ping(query):
    server = MemoryServer()
    answer = presence_stream(server, "/subscribe/bob?" + query).response()
    assert answer.status == 400 and b"error" in answer.body
    assert server.hub.holder.streams == 0


def test_a_presence_stream_needs_credentials_naming_a_user():
    server = MemoryServer()
    assert watch(server, "/subscribe/bob?presence=0").response().status == 400
    assert server.store.online_users() == 0


def test_a_presence_stream_with_a_token_holds_its_clientid():
    import jwt

    secret = "a-test-secret-of-at-least-32-bytes!"
    server = MemoryServer(JWT_SECRET=secret)
    token = jwt.encode({"userid": "alice", "clientid": "tab"}, secret, algorithm="HS256")
    assert watch(server, f"/subscribe/alice?presence=1&token={token}").response().status == 200
    assert server.store._users["alice"].devices["tab"].status == "1"
    assert watch(server, "/subscribe/alice?presence=1").response().status == 401


def test_post_leave_is_immediate_with_a_presence_stream_open():
    server = MemoryServer()
    watcher = watch(server)
    presence_stream(server)
    status, _ = response(server.send("POST", "/leave", b"", {"X-User-Claim": claim("alice", "web")}).take())
    assert status == 200
    assert seen(watcher) == [("0", True), ("0", False)]
    for _ in range(30):
        server.clock.advance(T / 10)
    assert seen(watcher) == [("0", True), ("0", False)]


# Dead clients: keepalive and user timeout, set on the listening socket.

def _dead_peer_options(sock: socket.socket) -> tuple[int, int | None, int | None]:
    keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    user_timeout = (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                    if hasattr(socket, "TCP_USER_TIMEOUT") else None)
    probing = None
    if hasattr(socket, "TCP_KEEPIDLE"):
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        assert idle >= 1
        probing = idle + sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) * interval
    return keepalive, user_timeout, probing


def test_every_accepted_connection_is_told_to_find_a_vanished_client_within_the_timeout():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        find_dead_peers(listening, 60)
        with socket.create_connection(listening.getsockname()):
            accepted, _ = listening.accept()
            with accepted:
                keepalive, user_timeout, probing = _dead_peer_options(accepted)
    assert keepalive == 1
    assert user_timeout in (None, 60_000)
    assert probing is None or probing <= 60


def test_a_unix_listening_socket_is_left_alone(tmp_path):
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "s"))
        find_dead_peers(listening, 60)
        assert listening.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
