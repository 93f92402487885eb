"""The real daemon (embedded store) delivering webhooks to a real receiver (SPEC §8).

The receiver is an HTTP server this test starts; it verifies every request's
signature with the ``standardwebhooks`` package. It answers 500, lets one
request time out, and is down a while (the issue's 60 s, scaled down), while
changes keep coming: everything arrives afterwards, in per-user order.
"""

from __future__ import annotations

import json
import signal
import time

from tests.helpers.backend_calls import in_user_order
from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.webhook_receiver import SECRET, Receiver

KEY = "backend-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


def ping(port: int, userid: str, clientid: str, status: str) -> None:
    claim = json.dumps({"userid": userid, "clientid": clientid})
    assert post_ping(port, status, userid=None, headers={"X-User-Claim": claim})[0] == 200


def feed(port: int, after: str = "") -> dict:
    code, _, body = get(port, f"/changes?limit=1000&after={after}", headers=AUTH)
    assert code == 200, body
    return json.loads(body)


def env(receiver: Receiver, **more: str) -> dict[str, str]:
    return {"API_KEY": KEY, "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET,
            "PRESENCE_TIMEOUT": "2", **more}


def test_every_change_arrives_signed_and_in_user_order_after_500s_a_timeout_and_an_outage(
        start_daemon):
    receiver = Receiver().start()
    receiver.answers = [500, "hang"]
    try:
        daemon = start_daemon(env=env(receiver))
        for n in range(3):
            ping(daemon.port, f"u{n}", "web", "0")
        time.sleep(1)
        for n in range(3):
            ping(daemon.port, f"u{n}", "web", "1")
        # The receiver goes down for a while (after the hung request), changes go on.
        deadline = time.monotonic() + 30
        while len(receiver.requests) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        receiver.stop()
        for n in range(3):
            ping(daemon.port, f"u{n}", "phone", "2")
        time.sleep(3)  # u0..u2 time out meanwhile (PRESENCE_TIMEOUT=2)
        receiver.start()
        recorded = feed(daemon.port)["changes"]
        kinds = {c["type"] for c in recorded}
        assert kinds == {"online", "device_online", "status", "device_offline", "offline"}
        receiver.wait_for({c["id"] for c in recorded})
        assert receiver.bad_signatures == 0
        in_user_order(receiver.accepted, recorded)
        code, _, body = get(daemon.port, "/metrics")
        metrics = body.decode()
        assert "heartbeat_webhook_requests_failed" in metrics
        assert f"heartbeat_changes_recorded_total {float(len(recorded))}" in metrics
    finally:
        receiver.stop()


def test_a_change_recorded_but_not_acknowledged_is_delivered_after_kill_9(start_daemon):
    receiver = Receiver().start()
    receiver.answers = [500] * 1000
    try:
        daemon = start_daemon(env=env(receiver, PRESENCE_TIMEOUT="60"))
        ping(daemon.port, "alice", "web", "0")
        deadline = time.monotonic() + 15
        while not receiver.requests:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = feed(daemon.port)
        stream = SSEClient(daemon.port, "/changes", headers=AUTH)
        first = stream.frame()
        assert first.startswith(b"retry:")
        frame = stream.frame()
        resume = frame.split(b"\n")[0].split(b": ", 1)[1].decode()  # the first event's id
        daemon.stop(signal.SIGKILL)
        receiver.answers = []
        again = start_daemon(env=env(receiver, PRESENCE_TIMEOUT="60"), port=daemon.port)
        receiver.wait_for({c["id"] for c in before["changes"]})
        # The feed resumes exactly across the restart, as JSON and as a stream.
        assert feed(again.port)["changes"] == before["changes"]
        ping(again.port, "bob", "web", "0")
        after = feed(again.port, before["next"])["changes"]
        assert [(c["type"], c["userid"]) for c in after] == [("online", "bob"),
                                                               ("device_online", "bob")]
        resumed = SSEClient(again.port, "/changes", headers={**AUTH, "Last-Event-ID": resume})
        events = [resumed.event() for _ in range(3)]
        assert [e["id"] for e in events] == [before["changes"][1]["id"], after[0]["id"],
                                             after[1]["id"]]
        stale = get(again.port, "/changes?after=zz99_1", headers=AUTH)
        assert stale[0] == 410
    finally:
        receiver.stop()


def test_stopping_ends_an_open_feed_stream_cleanly_and_at_once(start_daemon):
    daemon = start_daemon(env={"API_KEY": KEY})
    stream = SSEClient(daemon.port, "/changes", headers=AUTH)
    assert stream.status == 200 and stream.frame().startswith(b"retry:")
    started = time.monotonic()
    daemon.stop(signal.SIGTERM)
    assert stream.ended(5)
    assert time.monotonic() - started < 2
