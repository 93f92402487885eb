"""The cluster routing's parsing of what Redis answers: slot maps and redirects."""

from __future__ import annotations

from heartbeat.store.redis.cluster import parse_slots, redirect


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
