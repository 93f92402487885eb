"""The app's backend routes on Redis, two instances sharing one server, and on a
Cluster: keys, bulk status, paging who is online, erasure (no key left with the
id), disconnect ending streams on both instances, device retention."""

from __future__ import annotations

import json

import pytest

from tests.helpers.backend_calls import (
    KEY,
    ROUTES,
    changes_since,
    old_device_is_forgotten,
    page_through,
    ping_many,
    request,
    status,
)
from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.processes import RedisServer
from tests.helpers.waiting import wait_for


def two_instances(start_daemon, redis: str, **env: str) -> list:
    settings = {"REDIS": redis, "API_KEY": f"{KEY},rotated-key", **env}
    daemons = [start_daemon(env=settings) for _ in range(2)]
    for daemon in daemons:  # the count is known from the first sweep on, within a second
        wait_for(lambda d=daemon: request(d.port, "GET", "/online")[0] == 200, 10)
    return daemons


# Every key of a node whose name holds ARGV[1], or which is a sorted set with a member
# that does: one scan inside the server (a node of a Cluster too), not a command per key.
_KEYS_WITH = """#!lua flags=no-writes,allow-cross-slot-keys
local found, cursor = {}, '0'
repeat
  local reply = redis.call('SCAN', cursor, 'COUNT', 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    if string.find(key, ARGV[1], 1, true) then
      found[#found + 1] = key
    elseif redis.call('TYPE', key).ok == 'zset' then
      for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
        if string.find(member, ARGV[1], 1, true) then
          found[#found + 1] = key
          break
        end
      end
    end
  end
until cursor == '0'
return found
"""


def keys_with(redis_server, text: str) -> list[bytes]:
    """Every key whose name holds ``text``, and every sorted set with a member that does."""
    reply = redis_server.command("EVAL", _KEYS_WITH, "0", text)
    assert not reply.startswith(b"ERR"), reply
    return reply.split()


def test_backend_routes_on_two_instances(start_daemon, redis_server):
    a, b = two_instances(start_daemon, redis_server.address)
    for daemon in (a, b):
        for method, path, body in ROUTES:
            assert request(daemon.port, method, path, body, {})[0] == 401
            assert request(daemon.port, method, path, body,
                           {"Authorization": "Bearer wrong"})[0] == 401
            code = request(daemon.port, method, path, body,
                           {"Authorization": "Bearer rotated-key"})[0]
            assert code in (200, 204), (method, path, code)

    online = [f"user-{i:05d}" for i in range(0, 10_000, 20)]
    ping_many(a.port, online)
    users = [f"user-{i:05d}" for i in range(10_000)]
    states = status(b.port, users)
    assert list(states) == users and sum(s is not None for s in states.values()) == len(online)
    assert list(status(b.port, users, "?online=only")) == online
    wait_for(lambda: json.loads(request(b.port, "GET", "/online")[1])["count"] == len(online), 10)
    seen = page_through(b.port, 64)
    assert sorted(seen) == online and len(seen) == len(set(seen))


def test_erase_and_disconnect_across_instances(start_daemon, redis_server, tmp_path):
    a, b = two_instances(start_daemon, redis_server.address)
    gone = "erase-me-5c1d"
    for clientid in ("phone", "web"):
        claim = {"X-User-Claim": json.dumps({"userid": gone, "clientid": clientid})}
        assert post_ping(a.port, "0", headers=claim)[0] == 200
    assert request(a.port, "POST", "/leave",
                   headers={"X-User-Claim": json.dumps({"userid": gone, "clientid": "web"})})[0] == 200
    ping_many(a.port, ["keeper"])
    assert keys_with(redis_server, gone)
    watcher = SSEClient(b.port, f"/subscribe/{gone}")
    assert watcher.event()["userid"] == gone
    owner = {"X-User-Claim": json.dumps({"userid": gone})}
    own = [SSEClient(d.port, "/subscribe/keeper", owner) for d in (a, b)]
    for stream in own:
        assert stream.event()["userid"] == "keeper"

    assert request(a.port, "DELETE", f"/users/{gone}")[0] == 204
    assert watcher.event() == {"userid": gone, "online": False, "erased": True}
    assert all(stream.ended() for stream in own)
    assert keys_with(redis_server, gone) == []
    assert status(b.port, [gone]) == {gone: None}
    b.stop()
    b = start_daemon(env={"REDIS": redis_server.address, "API_KEY": KEY})
    assert status(b.port, [gone]) == {gone: None}
    watcher.close()

    # A logout everywhere: the user's own streams end on both instances.
    assert post_ping(b.port, "0", userid="dave")[0] == 200
    own = [SSEClient(d.port, "/subscribe/keeper", {"X-User-Claim": json.dumps({"userid": "dave"})})
           for d in (a, b)]
    other = SSEClient(a.port, "/subscribe/dave")
    assert other.event()["online"] is True
    assert request(b.port, "POST", "/users/dave/disconnect?leave=1")[0] == 204
    assert all(stream.ended() for stream in own)
    assert other.event()["online"] is False
    other.close()


def test_a_device_past_device_retention_is_forgotten_on_redis(start_daemon, redis_server):
    a, b = two_instances(start_daemon, redis_server.address, DEVICE_RETENTION="2s")
    old_device_is_forgotten(a.port, b.port)


def test_paging_25000_online_users_across_a_cluster(cluster, start_daemon):
    a, b = two_instances(start_daemon, cluster.url)
    online = [f"c-{i:05d}" for i in range(25_000)]
    ping_many(a.port, online)
    wait_for(lambda: json.loads(request(b.port, "GET", "/online")[1])["count"] == len(online), 15)
    seen = page_through(b.port, 1000)
    assert len(seen) == len(online) and set(seen) == set(online)


def test_erase_disconnect_and_retention_on_a_cluster(cluster, start_daemon):
    a, b = two_instances(start_daemon, cluster.url, DEVICE_RETENTION="2s")
    gone = "cluster-gone-77"
    assert post_ping(a.port, "0", userid=gone)[0] == 200
    watcher = SSEClient(b.port, f"/subscribe/{gone}")
    assert watcher.event()["userid"] == gone
    own = [SSEClient(d.port, "/subscribe/x", {"X-User-Claim": json.dumps({"userid": gone})})
           for d in (a, b)]
    assert request(b.port, "DELETE", f"/users/{gone}")[0] == 204
    assert watcher.event() == {"userid": gone, "online": False, "erased": True}
    assert all(stream.ended() for stream in own)
    assert status(a.port, [gone]) == {gone: None}
    for node in cluster.alive():
        assert not [k for k in node.command("--scan").split() if gone.encode() in k]
    watcher.close()
    old_device_is_forgotten(a.port, b.port)


def test_erase_from_the_command_line_on_redis(start_daemon, redis_server, tmp_path):
    import subprocess
    import sys

    daemon = start_daemon(env={"REDIS": redis_server.address, "API_KEY": KEY})
    ping_many(daemon.port, ["keep", "cli-gone-42"])
    watcher = SSEClient(daemon.port, "/subscribe/cli-gone-42")
    assert watcher.event()["userid"] == "cli-gone-42"
    done = subprocess.run([sys.executable, "-m", "heartbeat.admin", "erase", "cli-gone-42"],
                          cwd=tmp_path, env=daemon.environment(), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert watcher.event() == {"userid": "cli-gone-42", "online": False, "erased": True}
    assert keys_with(redis_server, "cli-gone-42") == []
    assert status(daemon.port, ["keep", "cli-gone-42"])["cli-gone-42"] is None
    watcher.close()


def test_backend_routes_through_sentinel(start_daemon, redis_server, tmp_path):
    from tests.helpers.redis_ops import Sentinel

    sentinel = Sentinel(tmp_path, redis_server.port).start()
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster"
        a, b = two_instances(start_daemon, url)
        ping_many(a.port, [f"s-{i:03d}" for i in range(300)])
        wait_for(lambda: json.loads(request(b.port, "GET", "/online")[1])["count"] == 300, 10)
        assert sorted(page_through(b.port, 64)) == [f"s-{i:03d}" for i in range(300)]
        own = [SSEClient(d.port, "/subscribe/s-001",
                         {"X-User-Claim": json.dumps({"userid": "s-000"})}) for d in (a, b)]
        assert request(b.port, "DELETE", "/users/s-000")[0] == 204
        assert all(stream.ended() for stream in own)
        assert keys_with(redis_server, "s-000") == []
    finally:
        sentinel.stop()


@pytest.fixture(params=["single", "cluster"])
def redis_nodes(request: pytest.FixtureRequest) -> tuple[str, list[RedisServer]]:
    """(``REDIS``, its masters) of a redis-server of the test's own, or of the module's
    Cluster (where other tests' users and changes are)."""
    if request.param == "single":
        server = request.getfixturevalue("redis_server")
        return server.address, [server]
    cluster = request.getfixturevalue("cluster")
    return cluster.url, [cluster.node(address) for address in cluster.masters()]


def test_an_erasure_on_redis_is_one_erased_change_in_the_feed(start_daemon, redis_nodes):
    url, nodes = redis_nodes
    daemon = start_daemon(env={"REDIS": url, "API_KEY": KEY, "PRESENCE_TIMEOUT": "2"})
    cursor = get(daemon.port, "/status?user=feed-gone")[1]["heartbeat-cursor"]
    ping_many(daemon.port, ["feed-gone", "feed-kept"])
    claim = {"X-User-Claim": json.dumps({"userid": "feed-gone", "clientid": "phone"})}
    assert post_ping(daemon.port, "1", headers=claim)[0] == 200
    before = changes_since(daemon.port, cursor)
    assert {c["type"] for c in before if c["userid"] == "feed-gone"} >= {"online", "status",
                                                                       "device_online"}
    assert request(daemon.port, "DELETE", "/users/feed-gone")[0] == 204
    changes = changes_since(daemon.port, cursor)
    mine = [c for c in changes if c["userid"] == "feed-gone"]
    assert [c["type"] for c in mine] == ["erased"]
    assert mine[0].keys() == {"id", "type", "userid", "at"}
    # Another user's changes stay (more may have come: a timeout), and nothing is left
    # named for the erased user (in a Cluster the deadline index's entries go with the
    # sweep, within PRESENCE_TIMEOUT: README).
    kept = [c for c in before if c["userid"] == "feed-kept"]
    assert [c for c in changes if c["userid"] == "feed-kept"][:len(kept)] == kept
    wait_for(lambda: [key for node in nodes for key in keys_with(node, "feed-gone")] == [])
