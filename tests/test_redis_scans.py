"""The keyspace walks' parts: which key is whose, and the control channel's messages."""

from __future__ import annotations

import pytest

from heartbeat.core.presence import erased
from heartbeat.store.redis.codec import (
    disconnect_message,
    erased_message,
    from_control,
    from_message,
)
from heartbeat.store.redis.keys import control_channel, user_keys
from heartbeat.store.redis.scans import pattern, user_of


@pytest.mark.parametrize("userid", ["alice", "a}b", "a{b}c", "{heartbeat:z}", "x:online", "é*?"])
@pytest.mark.parametrize("cluster", [False, True])
def test_each_users_keys_are_known_as_theirs(userid, cluster):
    keys = user_keys("heartbeat:", userid, cluster)
    assert user_of(keys.online, "heartbeat:", cluster) == userid
    assert user_of(keys.devices, "heartbeat:", cluster, "devices") == userid
    assert user_of(keys.key, "heartbeat:", cluster) is None
    assert user_of(keys.devices, "heartbeat:", cluster) is None


@pytest.mark.parametrize("key", ["{other}:online", "{heartbeat:}:online", "heartbeat:a:online",
                                 "{heartbeat:a:online", "{}:online", "{:online",
                                 "{x}heartbeat:a:online", control_channel("heartbeat:")])
def test_other_keys_are_nobodys(key):
    assert user_of(key, "heartbeat:", False) is None


def test_patterns_escape_the_prefix():
    assert pattern("hb*[1]:", "online") == "{*hb\\*\\[1\\]:*:online"


def test_control_messages_and_the_erased_event():
    assert from_control(disconnect_message("dave")) == "dave"
    for text in ("", "{}", '{"disconnect": 3}', '{"disconnect": ""}', "[1]", None):
        assert from_control(text) is None
    assert from_message("alice", erased_message("alice")) == (erased("alice"),)
    assert not control_channel("heartbeat:").startswith("heartbeat:")
