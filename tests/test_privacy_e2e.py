"""Who may watch whom, against the real daemon in JWT mode (SPEC §1)."""

from __future__ import annotations

import json
import time

import jwt

from tests.helpers.clients import SSEClient, get, post_ping

SECRET = "an end-to-end privacy test secret, long enough for HS256 to like it"


def token(userid: str = "alice", **claims: object) -> str:
    return jwt.encode({"userid": userid, **claims}, SECRET, algorithm="HS256")


def test_a_stream_ends_cleanly_when_its_token_expires_and_a_fresh_token_reconnects(start_daemon):
    daemon = start_daemon(env={"JWT_SECRET": SECRET})
    assert post_ping(daemon.port, "0", None,
                     headers={"Authorization": f"Bearer {token('bob')}"})[0] == 200
    exp = int(time.time()) + 2
    stream = SSEClient(daemon.port, f"/subscribe/bob?token={token(exp=exp)}")
    assert stream.status == 200
    assert stream.event()["userid"] == "bob"
    assert stream.ended(timeout=10), "the stream was dropped, not ended"
    assert time.time() >= exp, "ended before the token expired"
    stream.close()
    # What EventSource does next: reconnect, with the page's fresh token.
    again = SSEClient(daemon.port, f"/subscribe/bob?token={token(exp=int(time.time()) + 60)}")
    assert again.status == 200
    assert again.event()["status"] == "0"
    again.close()


def test_watch_scopes_reads_on_the_real_daemon(start_daemon):
    daemon = start_daemon(env={"JWT_SECRET": SECRET})
    scoped = {"Authorization": f"Bearer {token(watch=['bob'])}"}
    status, headers, body = get(daemon.port, "/status?user=bob&user=alice", scoped)
    assert status == 200
    status, headers, body = get(daemon.port, "/status?user=bob&user=eve", scoped)
    assert status == 403 and headers["content-type"] == "application/json"
    assert "1 of the 2" in json.loads(body)["error"] and "eve" not in body.decode()
    refused = SSEClient(daemon.port, "/subscribe/eve", scoped)
    assert refused.status == 403
    refused.close()
    bad = {"Authorization": f"Bearer {token(watch='bob')}"}
    assert get(daemon.port, "/subscribe/bob", bad)[0] == 401
    assert post_ping(daemon.port, "0", None, headers=bad)[0] == 401
