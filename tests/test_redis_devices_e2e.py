"""Devices are bounded in Redis too (SPEC §3): one Redis and a Cluster, one Lua fragment."""

from __future__ import annotations

import json
import time

from tests.helpers.claims import claim
from tests.helpers.clients import SSEClient, get, post_ping


def _ping(port: int, device: str) -> None:
    assert post_ping(port, "1", None, headers={"X-User-Claim": claim("alice", device)})[0] == 200


def _devices(port: int) -> list[str]:
    code, _, body = get(port, "/status?user=alice")
    assert code == 200
    return sorted(json.loads(body)["alice"]["devices"])


def test_a_new_device_past_the_limit_forgets_the_least_recently_seen(any_redis, start_daemon):
    daemon = start_daemon(["--redis", any_redis.url], env={"MAX_DEVICES_PER_USER": "3"})
    user = SSEClient(daemon.port, "/subscribe/alice")
    oldest = SSEClient(daemon.port, "/subscribe/alice/client/a")
    # A device's last ping is known to the second: a is seen a second before the others.
    _ping(daemon.port, "a")
    assert oldest.event()["online"] is True
    time.sleep(1.1)
    _ping(daemon.port, "b")
    _ping(daemon.port, "c")
    assert post_ping(daemon.port, "", None, path="/leave",
                     headers={"X-User-Claim": claim("alice", "c")})[0] == 200
    _ping(daemon.port, "d")  # c, offline, goes before the older online a
    assert _devices(daemon.port) == ["a", "b", "d"]
    _ping(daemon.port, "e")  # all online: a, the least recently seen, goes offline first
    assert _devices(daemon.port) == ["b", "d", "e"]
    gone = oldest.event()
    while gone["online"]:  # a repeat of its online event (a Cluster may send one)
        gone = oldest.event()
    assert (gone["clientid"], gone["online"]) == ("a", False)
    # The user stayed online throughout: every event on their stream says so.
    seen = []
    try:
        while True:
            seen.append(user.event(timeout=0.5)["online"])
    except TimeoutError:
        pass
    assert len(seen) >= 5 and all(seen), seen
