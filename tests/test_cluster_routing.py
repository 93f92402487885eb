"""The cluster routing: the parsing of what Redis answers (slot maps, redirects), batches."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from txredisapi import RedisProtocol

from heartbeat.store.redis.address import Server, parse_redis
from heartbeat.store.redis.cluster import Cluster, _Node, parse_slots, redirect
from heartbeat.store.redis.link import RedisLink
from heartbeat.store.redis.lua import scripts


def test_the_slot_map_names_each_slots_master():
    reply = [
        [0, 5460, ["127.0.0.1", 7000, "id0"], ["127.0.0.1", 7003, "id3"]],
        [5461, 10922, ["", 7001, "id1"]],  # "": the node that was asked
        [10923, 16383, ["10.0.0.3", 7002, "id2"]],
    ]
    owners = parse_slots(reply, ("10.0.0.9", 7001))
    assert owners[0] == owners[5460] == ("127.0.0.1", 7000)
    assert owners[5461] == owners[10922] == ("10.0.0.9", 7001)
    assert owners[10923] == owners[16383] == ("10.0.0.3", 7002)
    assert len(owners) == 16384


def test_slots_no_master_serves_are_none():
    owners = parse_slots([[0, 99, ["h", 1, "x"]]], ("h", 1))
    assert owners[99] == ("h", 1) and owners[100] is None and owners[16383] is None


def test_redirects_say_kind_slot_and_node():
    assert redirect("MOVED 3999 127.0.0.1:6381") == ("MOVED", 3999, ("127.0.0.1", 6381))
    assert redirect("ASK 12182 10.0.0.2:7002") == ("ASK", 12182, ("10.0.0.2", 7002))
    assert redirect("MOVED 1 ::1:7000") == ("MOVED", 1, ("::1", 7000))
    assert redirect("TRYAGAIN Multiple keys request during rehashing of slot") is None
    assert redirect("WRONGTYPE Operation against a key") is None


def routed_cluster() -> tuple[Cluster, dict[Server, StringTransport]]:
    """A Cluster of two masters (slots below 8,192 on the first), connected to StringTransports."""
    address = parse_redis("redis+cluster://127.0.0.1:1")
    assert address is not None
    cluster = Cluster(Clock(), address, None, 0, lambda: None, lambda: None, lambda: None)
    a, b = ("127.0.0.1", 7000), ("127.0.0.1", 7001)
    cluster._owners = [a] * 8192 + [b] * 8192
    transports = {}
    for server in (a, b):
        conn = RedisProtocol()
        transports[server] = StringTransport()
        conn.makeConnection(transports[server])
        conn.connected = 1
        node = cluster._nodes[server] = _Node(RedisLink.__new__(RedisLink))
        node.conn = conn
    return cluster, transports


def test_the_calls_to_one_master_are_written_together_and_a_moved_one_follows_alone():
    cluster, transports = routed_cluster()
    a, b = transports
    script = scripts("cluster").ping
    calls = [(1, ["k1"], ["x"]), (8200, ["k2"], ["y"]), (2, ["k3"], ["z"])]
    results: list = []
    cluster.run_all(script, calls).addCallback(results.extend)
    assert transports[a].value() == script.command(["k1"], ["x"]) + script.command(["k3"], ["z"])
    assert transports[b].value() == script.command(["k2"], ["y"])
    cluster._nodes[b].conn.dataReceived(b"$2\r\nok\r\n")
    transports[a].clear()
    cluster._nodes[a].conn.dataReceived(b"-WRONGTYPE no\r\n-MOVED 2 127.0.0.1:7001\r\n")
    # The moved call is sent again alone, to its new master; the script error is its result.
    assert transports[a].value() == b""
    assert transports[b].value().endswith(script.command(["k3"], ["z"]))
    assert cluster.owner(2) == b and results == []
    cluster._nodes[b].conn.dataReceived(b"$5\r\nmoved\r\n")
    assert results[1] == "ok" and results[2] == "moved"
    assert isinstance(results[0], Failure) and "WRONGTYPE" in str(results[0].value)
