"""Daemons sharing a real redis-server, over real sockets, as deployed."""

from __future__ import annotations

from tests.helpers.clients import SSEClient, post_ping
from tests.helpers.processes import RedisServer, free_port
from tests.helpers.redis_checks import assert_unavailable, numsub, ping_until_stored
from tests.helpers.waiting import wait_for


def statuses_until(stream: SSEClient, status: str) -> list[str]:
    """The statuses ``stream`` sends up to and including ``status``."""
    seen = [stream.event()["status"]]
    while seen[-1] != status:
        seen.append(stream.event()["status"])
    return seen


def test_two_instances_share_pings_and_channels_follow_streams(redis_server, start_daemon):
    args = ["--redis", redis_server.address]
    one, two = start_daemon(args), start_daemon(args)
    first = SSEClient(two.port, "/subscribe/alice")
    second = SSEClient(two.port, "/subscribe/alice/client/c1")  # post_ping's device
    wait_for(lambda: numsub(redis_server, "heartbeat:alice") == 1)
    assert post_ping(one.port, "1")[0] == 200
    assert (first.event()["status"], second.event()["status"]) == ("1", "1")

    first.close()
    assert post_ping(one.port, "2")[0] == 200
    event = second.event()
    assert (event["userid"], event["status"]) == ("alice", "2")
    assert numsub(redis_server, "heartbeat:alice") == 1
    second.close()
    wait_for(lambda: numsub(redis_server, "heartbeat:alice") == 0)
    assert redis_server.command("PUBSUB", "NUMPAT") == b"0\n"


def test_a_restarted_daemon_still_has_the_stored_ping(redis_server, start_daemon):
    args = ["--redis", redis_server.address]
    daemon = start_daemon(args)
    assert post_ping(daemon.port, '{"status": "2"}')[0] == 200
    daemon.stop()
    again = start_daemon(args)
    stream = SSEClient(again.port, "/subscribe/alice")
    event = stream.event()
    assert (event["userid"], event["status"]) == ("alice", "2")
    stream.close()


def test_redis_outage_gives_503s_keeps_streams_and_loses_nothing(redis_server, start_daemon):
    daemon = start_daemon(["--redis", redis_server.address])
    alice = SSEClient(daemon.port, "/subscribe/alice")
    bob = SSEClient(daemon.port, "/subscribe/bob")
    wait_for(lambda: numsub(redis_server, "heartbeat:bob") == 1)
    assert post_ping(daemon.port, "1")[0] == 200
    assert alice.event()["status"] == "1"
    # A ping whose publish this instance will miss: stored (and saved, so it
    # outlives the restart) without being published, as another instance's
    # ping is while the subscriber is away.
    redis_server.command("HSET", "heartbeat:bob", "time", "1700000000", "status", "7")
    redis_server.command("SAVE")

    redis_server.stop()
    for _ in range(3):
        assert_unavailable(post_ping(daemon.port, "2"))
    alice.no_event(0.2)  # still open: an ended stream raises instead

    redis_server.start()
    ping_until_stored(daemon.port, "3")
    # Nothing refused ever shows up; the stream ends with the latest ping.
    assert set(statuses_until(alice, "3")) == {"3"}
    # No heartbeat device ever pinged for bob: his state reads as offline.
    assert bob.event() == {"time": 1700000000, "status": "7", "userid": "bob", "online": False}
    assert post_ping(daemon.port, "8", "bob")[0] == 200
    assert bob.event()["status"] == "8"
    alice.close()
    bob.close()


def test_starts_with_redis_down_and_serves_once_it_comes(start_daemon, tmp_path):
    port = free_port()
    daemon = start_daemon(["--redis", f"127.0.0.1:{port}"], healthy=False)
    assert_unavailable(post_ping(daemon.port, "1"))
    stream = SSEClient(daemon.port, "/subscribe/alice")
    assert stream.status == 200
    server = RedisServer(tmp_path, port=port).start()
    try:
        ping_until_stored(daemon.port, "1")
        assert stream.event()["status"] == "1"
    finally:
        stream.close()
        server.stop()
