"""A Cluster's change feed merged from its masters' answers (no Redis: canned answers).

What ``lua/slot_changes.lua`` answers per master is given by the test, so the
merge's rules are pinned exactly: order by (stream id, slot), nothing past the
earliest master's clock, a slot its master could not read read alone, and a
slot read nowhere never skipped. ``test_redis_feed`` runs the same on a real
Cluster.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import ResponseError

from heartbeat.core.changes import Position, PositionGone
from heartbeat.core.store_contract import StoreUnavailable
from heartbeat.store.redis.feed import MAX_SEQ, ClusterReader, RedisFeed, feed_keys, slot_streams
from heartbeat.store.redis.lua import scripts

_SCRIPTS = scripts("cluster")
A, B = ("10.0.0.1", 7000), ("10.0.0.2", 7000)
NOT_LOCAL = "ERR Script attempted to access a non local key in a cluster node"


def entry(stream_id: str, userid: str = "u") -> list[Any]:
    return [stream_id, ["t", "online", "u", userid, "tm", "1", "s", "0", "o", "1", "at", "5"]]


class Canned:
    """A Cluster stand-in: master A holds slots 0, 5 and 9, B slot 12000; each read is
    answered with what the test set, and recorded."""

    complete = True
    # What the epoch key's master answers instead of the epoch (its failover).
    epoch_error: Exception | None = None

    def __init__(self) -> None:
        self.answers: dict[Any, list[Any]] = {}
        self.alone: dict[int, Any] = {}
        self.asked: list[tuple[Any, list[object]]] = []
        self.held = [(A, [0, 5, 9]), (B, [12000])]
        self.refreshed = 0

    def masters(self) -> list[tuple[Any, list[int]]]:
        return self.held

    def refresh_soon(self) -> None:
        self.refreshed += 1

    def run_at(self, server: Any, script: Any, keys: list[str], args: list[object]) -> Deferred:
        self.asked.append((server, args))
        answer = self.answers[server]
        return succeed(answer(args) if callable(answer) else answer)

    def commands(self, slot: int) -> Any:
        cluster = self

        class Slot:
            def execute_command(self, *command: object) -> Deferred:
                if command[3] == feed_keys("hb:")[1]:
                    if cluster.epoch_error is not None:
                        return fail(cluster.epoch_error)
                    return succeed("ep")  # the epoch
                cluster.asked.append((slot, list(command[4:])))
                answer = cluster.alone[slot]
                return fail(answer) if isinstance(answer, Exception) else succeed(answer)
        return Slot()


def feed_over(cluster: Canned, retention: float = 0.5) -> RedisFeed:
    reader = ClusterReader(cluster, "hb:", _SCRIPTS)  # type: ignore[arg-type]
    return RedisFeed("hb:", retention, Clock(), reader, _SCRIPTS,
                     lambda *_: pytest.fail("no claims here"), lambda *_: pytest.fail("no"))


def result(d: Deferred) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_entries_merge_by_stream_id_then_slot_up_to_the_earliest_masters_clock():
    cluster = Canned()
    cluster.answers[A] = ["1000", 1, [entry("998-0", "a"), entry("999-1", "c")],
                          2, [entry("999-0", "b")], 3, NOT_LOCAL]
    cluster.answers[B] = ["1001", 1, [entry("999-0", "d"), entry("1000-0", "late")]]
    cluster.alone[9] = ["1002", 1, [entry("999-0", "moved")]]
    page = result(feed_over(cluster).changes(None, 10))
    assert [str(p) for p in page.positions] == [
        "ep_998-0.0", "ep_999-0.5", "ep_999-0.9", "ep_999-0.12000", "ep_999-1.0"]
    assert [c.userid for c in page.changes] == ["a", "b", "moved", "d", "c"]
    assert page.changes[0].id == "ep-998-0.0"
    # Not full: it goes on from the tip, before 1000-0 (B's clock may still stamp it).
    assert page.next == Position("ep", (f"999-{MAX_SEQ}", "16383"))
    # The failed slot was read alone, from the oldest kept by the masters' clock (1000 ms,
    # less the retention), through the window's end, its stream named as its key.
    assert cluster.asked[-1] == (9, [f"499-{MAX_SEQ}", 1, 10, 500, "10499",
                                     slot_streams("hb:")[9]])


def test_a_full_page_ends_at_its_last_change_and_each_slot_resumes_exactly():
    cluster = Canned()
    cluster.answers[A] = ["1000", 1, [entry("998-0"), entry("999-1")], 2, [entry("999-0")]]
    cluster.answers[B] = ["1001", 1, [entry("999-0")]]
    feed = feed_over(cluster)
    page = result(feed.changes(None, 2))
    assert page.next == Position("ep", ("999-0", "5"))
    cluster.asked.clear()
    result(feed.changes(page.next, 2))
    # After 999-0 of slot 5: slots 0 and 5 read after that id, 9 and 12000 from it.
    (_, on_a), (_, on_b) = cluster.asked
    assert on_a[:5] == ["999-0", 2, 2, 500, "10999"] and on_a[5:] == [
        slot_streams("hb:")[n] for n in (0, 5, 9)]
    assert on_b[:5] == ["999-0", 0, 2, 500, "10999"]


@pytest.mark.parametrize("alone", [ResponseError("MOVED 9 10.0.0.3:7000"), ["1002", 1, NOT_LOCAL]])
def test_a_slot_read_nowhere_is_never_skipped(alone):
    cluster = Canned()
    cluster.answers[A] = ["1000", 3, NOT_LOCAL]
    cluster.answers[B] = ["1001", 1, [entry("999-0")]]
    cluster.alone[9] = alone
    feed = feed_over(cluster)
    after = Position("ep", ("700-0", "3"))
    page = result(feed.changes(after, 10))
    assert page.changes == () and page.next == after
    assert cluster.refreshed  # the slot was not where the map said
    with pytest.raises(StoreUnavailable):
        result(feed.changes(None, 10))


def test_positions_of_another_shape_epoch_or_far_ahead_are_gone_a_little_ahead_waits():
    cluster = Canned()
    cluster.answers[A] = ["1000"]
    cluster.answers[B] = ["1001"]
    feed = feed_over(cluster)
    for gone in ("ep_999-0", "ep_999-0.16384", "ep_999.3", "other_999-0.3", "ep_5000-0.3",
                 "ep_100-0.3"):
        with pytest.raises(PositionGone):
            result(feed.changes(Position.parse(gone), 10))
    ahead = Position("ep", ("1000-0", "3"))  # past the tip, within the masters' skew
    assert result(feed.changes(ahead, 10)).next == ahead


def test_a_bus_position_is_made_whole_with_the_epoch_read_and_the_users_slot():
    cluster = Canned()
    cluster.answers[A] = ["1000"]
    cluster.answers[B] = ["1001"]
    feed = feed_over(cluster)
    with pytest.raises(PositionGone):  # no epoch read yet
        feed.bus_position("hb:alice", "999-0")
    result(feed.position())
    from heartbeat.store.redis.keys import slot

    assert str(feed.bus_position("hb:alice", "999-0")) == f"ep_999-0.{slot('hb:alice')}"


def test_a_reader_far_behind_reads_window_by_window_and_a_short_page_reads_on():
    cluster = Canned()
    found = {"11000": [1, [entry("5000-0", "a")]], "31000": [1, [entry("30000-0", "b")]]}
    cluster.answers[A] = lambda args: ["100000", *found.get(args[4], [])]
    cluster.answers[B] = ["100000"]
    feed = feed_over(cluster, retention=3600)
    page = result(feed.changes(Position("ep", ("1000-0", "3")), 10))
    assert [c.userid for c in page.changes] == ["a", "b"]
    assert page.next == Position("ep", (f"99999-{MAX_SEQ}", "16383"))
    # Each window twice the last while pages come back short, until past the tip.
    assert [args[4] for server, args in cluster.asked if server == A] == [
        "11000", "31000", "71000", "151000"]


def test_the_window_shrinks_when_the_masters_send_far_more_than_a_page():
    cluster = Canned()
    cluster.held = [(A, list(range(6))), (B, [12000])]
    cluster.answers[A] = ["100000", *[x for n in range(6) for x in (
        n + 1, [entry(f"{2000 + 10 * n}-0")])]]
    cluster.answers[B] = ["100000", 1, [entry("3000-0")]]
    reader = ClusterReader(cluster, "hb:", _SCRIPTS)  # type: ignore[arg-type]
    read = result(reader.read("ep", Position("ep", ("1000-0", "3")), 1, 3600000))
    # Every stream sent its one: the page is complete up to the earliest of them.
    assert [str(p) for p, _ in read.entries] == ["ep_2000-0.0"]
    assert read.tip == Position("ep", ("2000-0", "0"))
    assert reader._window_ms == 2500


@pytest.mark.parametrize("error", [RedisConnectionError("Lost connection"),
                                   ResponseError("CLUSTERDOWN The cluster is down")])
def test_the_epoch_keys_master_failing_over_makes_reads_unavailable_not_an_error(error):
    # SPEC §2: the store unreachable is a 503 with Retry-After, for /changes and for
    # /status's cursor alike, not a 500.
    cluster = Canned()
    cluster.answers[A] = ["1000"]
    cluster.answers[B] = ["1001"]
    cluster.epoch_error = error
    feed = feed_over(cluster)
    with pytest.raises(StoreUnavailable):
        result(feed.changes(None, 10))
    with pytest.raises(StoreUnavailable):
        result(feed.position())
