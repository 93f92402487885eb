"""Redis Cluster hash slots, as Redis defines them (CRC16-XMODEM of the key or its hash tag)."""

from __future__ import annotations

import pytest

from heartbeat.store.redis.keys import (
    PARTITIONS,
    hash_tag,
    partition_keys,
    slot,
    slot_tag,
    user_keys,
)


def test_crc16_of_the_reference_string():
    # The Redis Cluster specification's test vector: CRC16("123456789") = 0x31C3.
    assert slot("123456789") == 0x31C3 % 16384 == 12739


@pytest.mark.parametrize(("key", "expected"), [
    ("foo", 12182), ("bar", 5061), ("heartbeat:alice", 1123), ("", 0),
])
def test_slots_match_cluster_keyslot(key, expected):
    # Values from CLUSTER KEYSLOT on redis-server 7.
    assert slot(key) == expected


def test_keys_with_one_tag_share_a_slot():
    assert slot("{user1000}.following") == slot("{user1000}.followers") == slot("user1000")


@pytest.mark.parametrize(("key", "tag", "expected"), [
    ("foo{}{bar}", None, 8363),     # an empty first tag: the whole key is hashed
    ("foo{{bar}}zap", "{bar", 4015),  # the tag ends at the first }
    ("foo{bar}{zap}", "bar", 5061),   # only the first tag counts
    ("{bar", None, 4015),           # no closing brace: the whole key
])
def test_hash_tags_follow_the_redis_rules(key, tag, expected):
    # Expected slots from CLUSTER KEYSLOT on redis-server 7.
    assert hash_tag(key) == tag
    assert slot(key) == expected


def test_a_users_keys_are_in_their_compat_keys_slot():
    for userid in ["alice", "bob", "x{y}z", "{tagged}", "ünïcode"]:
        user = user_keys("heartbeat:", userid)
        assert slot(user.devices) == slot(user.online) == slot(user.deadlines) == slot(user.key)


@pytest.mark.parametrize("userid", ["a}b", "}", "a{}b}", "x}{"])
def test_ids_with_a_closing_brace_get_a_slot_tag_in_a_cluster(userid):
    user = user_keys("heartbeat:", userid, cluster=True)
    assert slot(user.devices) == slot(user.online) == slot(user.deadlines) == slot(user.key)
    # On one Redis their layout is what it always was.
    assert user_keys("heartbeat:", userid).devices == "{}heartbeat:" + userid + ":devices"


def test_every_slot_has_a_tag():
    assert all(slot("{" + slot_tag(n) + "}") == n for n in range(16384))


def test_deadline_partitions_are_spread_over_three_masters():
    # redis-cli --cluster create gives three masters 0-5460, 5461-10922, 10923-16383.
    owners = {min(slot(partition_keys("heartbeat:", n)[0]) // 5461, 2) for n in range(PARTITIONS)}
    assert owners == {0, 1, 2}
    for n in range(PARTITIONS):
        deadlines, count = partition_keys("heartbeat:", n)
        assert slot(deadlines) == slot(count)
