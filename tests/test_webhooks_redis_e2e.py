"""Webhooks from three instances on one redis-server and on a Redis Cluster (SPEC §8):
one delivers, another takes over when it is killed mid-batch; what it had not
confirmed arrives, and the repeats are counted. On a Cluster, the same across a
master failover."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from heartbeat.store.redis.keys import slot
from tests.helpers.backend_calls import (
    KEY,
    FeedFollower,
    changes_since,
    in_user_order,
    statuses_changed,
)
from tests.helpers.clients import PingLoad, get, post_ping
from tests.helpers.processes import RedisServer
from tests.helpers.redis_cluster import moved_off, user_slot, users_on_every_master
from tests.helpers.waiting import wait_for
from tests.helpers.webhook_receiver import SECRET, Receiver


@pytest.fixture(params=["single", "cluster"])
def feed_redis(request: pytest.FixtureRequest) -> tuple[str, RedisServer]:
    """(``REDIS``, the node holding the feed's own keys, the README's
    ``{heartbeat:changes}``): a redis-server of the test's own, or the module's Cluster."""
    if request.param == "single":
        server = request.getfixturevalue("redis_server")
        return server.address, server
    cluster = request.getfixturevalue("cluster")
    return cluster.url, cluster.owner(slot("{heartbeat:changes}"))


def test_the_instance_delivering_is_killed_mid_batch_and_another_delivers(
        start_daemon, feed_redis):
    url, feed_node = feed_redis
    receiver = Receiver().start()
    receiver.answers = ["hang"]  # the first request is never answered in time
    try:
        env = {"REDIS": url, "API_KEY": KEY, "WEBHOOK_URL": receiver.url,
               "WEBHOOK_SECRET": SECRET, "PRESENCE_TIMEOUT": "60"}
        daemons = [start_daemon(env=env) for _ in range(3)]
        users = [f"batch-{n}" for n in range(90)]  # a Cluster has other tests' too
        cursor = get(daemons[0].port, "/status?user=batch-0")[1]["heartbeat-cursor"]
        for n, userid in enumerate(users):
            claim = json.dumps({"userid": userid, "clientid": "web"})
            port = daemons[n % 3].port
            assert post_ping(port, "0", userid=None, headers={"X-User-Claim": claim})[0] == 200
        wait_for(lambda: receiver.requests, timeout=15)
        lease = feed_node.command("KEYS", f"*claim*{receiver.url}").split()
        (key,) = lease
        holder = int(feed_node.command("GET", key).decode().split(":")[1])
        (delivering,) = [d for d in daemons if d.proc.pid == holder]
        delivering.stop(signal.SIGKILL)  # mid-batch: its request is still unanswered
        reader = daemons[0 if delivering is not daemons[0] else 1]
        recorded = [c["id"] for c in changes_since(reader.port, cursor) if c["userid"] in users]
        assert len(recorded) == 180
        receiver.wait_for(set(recorded), timeout=40)
        got = [c["id"] for _, changes in receiver.requests for c in changes]
        duplicates = len(got) - len(set(got))
        print(f"three instances, holder killed mid-batch: {len(set(got))} changes, "
              f"{duplicates} repeats, {len(receiver.requests)} requests")
        assert receiver.bad_signatures == 0
        # Only the unconfirmed batch came twice: every repeat is in the first request.
        first = {c["id"] for c in receiver.requests[0][1]}
        assert duplicates <= len(first)
        assert all(i in first for i in got if got.count(i) > 1)
    finally:
        receiver.stop()


def test_three_instances_on_a_cluster_deliver_every_acknowledged_change_across_a_failover(
        start_daemon, cluster):
    """A master is SIGKILLed while pings go on; its replica is promoted. With
    ``REDIS_WAIT_REPLICAS=1`` every change of a ping answered 200 survives, and reaches
    the receiver (at least once, signed, each user's in order); repeats are counted."""
    receiver = Receiver().start()
    users = users_on_every_master(cluster, 2)
    # The master killed holds the feed's own keys (the README's ``{heartbeat:changes}``:
    # its epoch, where each webhook is, who delivers), and users' changes.
    master = cluster.owner(slot("{heartbeat:changes}"))
    victim = next(userid for userid in users if cluster.owner(user_slot(userid)) is master)
    try:
        env = {"REDIS": cluster.url, "REDIS_WAIT_REPLICAS": "1", "API_KEY": KEY,
               "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET}
        daemons = [start_daemon(env=env) for _ in range(3)]
        cursor = get(daemons[0].port, "/status?" + "&".join(f"user={u}" for u in users))[1][
            "heartbeat-cursor"]
        follower = FeedFollower(daemons[2].port, cursor)
        follower.start()
        status_answers: list[tuple[int, bytes]] = []
        reading = threading.Event()

        def read_status() -> None:  # a client reading /status through the failover
            while not reading.is_set():
                code, _, body = get(daemons[1].port, "/status?" + "&".join(
                    f"user={u}" for u in users))
                status_answers.append((code, body))
                time.sleep(0.05)

        status_reader = threading.Thread(target=read_status, daemon=True)
        status_reader.start()
        load = PingLoad([d.port for d in daemons], users)
        load.start()
        try:
            wait_for(lambda: load.answered(3))
            master.stop()  # SIGKILL
            wait_for(lambda: moved_off(cluster, victim, master), timeout=30)
            # Back, as the promoted one's replica: a replica to WAIT for again.
            master.start()
            cluster.wait_ok()
            acknowledged = len(load.acknowledged[victim])
            wait_for(lambda: len(load.acknowledged[victim]) >= acknowledged + 3, timeout=30)
        finally:
            load.stop()
            reading.set()
        followed = follower.stop()
        status_reader.join()
        failed = [answer for answer in status_answers if answer[0] not in (200, 503)]
        assert load.refused, "the failover refused no ping: it did not happen under load"

        recorded = [c for c in changes_since(daemons[1].port, cursor) if c["userid"] in users]
        for userid in users:
            changed = statuses_changed(recorded, userid)
            assert changed == sorted(set(changed)), (userid, changed)  # once each, in order
            lost = sorted(set(load.acknowledged[userid]) - set(changed))
            assert not lost, (userid, lost)
        # The changes of acknowledged pings (a refused one's may be lost, or delivered
        # from the dead master before it died).
        wanted = [c for c in recorded if int(c["status"]) in load.acknowledged[c["userid"]]]

        def delivered() -> list[dict]:
            with receiver.lock:
                return [c for c in receiver.accepted if c["userid"] in users]

        def missing() -> set[str]:
            return {c["id"] for c in wanted} - {c["id"] for c in delivered()}

        deadline = time.monotonic() + 90
        while missing() and time.monotonic() < deadline:
            time.sleep(0.1)
        got = delivered()
        ids = [c["id"] for c in got]
        repeats = {i: ids.count(i) for i in set(ids) if ids.count(i) > 1}
        summary = (f"{len(wanted)} changes of acknowledged pings, {len(set(ids))} delivered, "
                   f"{sum(repeats.values()) - len(repeats)} repeats of {len(repeats)} changes, "
                   f"{len(receiver.requests)} requests, {load.refused} pings refused, "
                   f"long polls answered 503 {follower.unavailable} times, another 5xx "
                   f"{len(follower.failed)} times; /status 503 "
                   f"{sum(code == 503 for code, _ in status_answers)} of {len(status_answers)}")
        print(f"webhooks across a Cluster failover: {summary}")
        assert not missing(), f"not delivered: {sorted(missing())}; {summary}"
        assert receiver.bad_signatures == 0, summary
        by_id = {c["id"]: c for c in wanted}
        assert all(c == by_id[c["id"]] for c in got if c["id"] in by_id), summary
        in_user_order(got, wanted)
        # A backend that followed /changes through the failover read them all too.
        assert not {c["id"] for c in wanted} - {c["id"] for c in followed}, summary
        in_user_order(followed, wanted)
        # SPEC §2: the store away is 503 (with the feed's epoch key's master dead too).
        assert follower.failed == [], summary
        assert not failed, f"/status answered {failed[:1]} ({len(failed)} of {len(status_answers)})"
        assert status_answers[-1][0] == 200, status_answers[-1]
    finally:
        receiver.stop()
        if master.proc is None or master.proc.poll() is not None:
            master.start()
            cluster.wait_ok()
