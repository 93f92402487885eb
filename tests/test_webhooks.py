"""Webhook settings and the sender (SPEC §8) on a fake clock, against the memory store's feed.

Every request the fake receiver gets is verified with the ``standardwebhooks``
package, as a receiver would.
"""

from __future__ import annotations

import base64
import json

import pytest
from standardwebhooks import Webhook
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.usage import UsageError

from heartbeat.core.hidden_statuses import Hiding
from heartbeat.core.presence import Ping
from heartbeat.daemon.config import load_settings, parse_duration
from heartbeat.daemon.webhooks import BATCH, MAX_BACKOFF, WebhookSender
from heartbeat.store.memory import MemoryStore

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef01234567").decode()
URL = "http://hooks.example/presence"


def settings(**env: str):
    return load_settings({}, environ=env, dotenv={})


@pytest.mark.parametrize("value, seconds", [
    ("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("30d", 2_592_000), ("1.5h", 5400),
])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds
    assert settings(CHANGES_RETENTION=value).changes_retention == seconds


@pytest.mark.parametrize("env, names", [
    ({"CHANGES_RETENTION": "0"}, "CHANGES_RETENTION"),
    ({"CHANGES_RETENTION": "1w"}, "CHANGES_RETENTION"),
    ({"CHANGES_RETENTION": "h"}, "CHANGES_RETENTION"),
    ({"WEBHOOK_URL": "ftp://x/hook", "WEBHOOK_SECRET": SECRET}, "WEBHOOK_URL"),
    ({"WEBHOOK_URL": "hooks.example/presence", "WEBHOOK_SECRET": SECRET}, "WEBHOOK_URL"),
    ({"WEBHOOK_URL": f"{URL},http://", "WEBHOOK_SECRET": SECRET}, "WEBHOOK_URL"),
    ({"WEBHOOK_URL": URL}, "WEBHOOK_SECRET"),
    ({"WEBHOOK_URL": URL, "WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"short").decode()},
     "WEBHOOK_SECRET"),
    ({"WEBHOOK_URL": URL, "WEBHOOK_SECRET": "0123456789abcdef0123456789abcdef"},
     "WEBHOOK_SECRET"),
    ({"WEBHOOK_URL": URL, "WEBHOOK_SECRET": "whsec_not base64!!"}, "WEBHOOK_SECRET"),
    ({"WEBHOOK_EVENTS": "online,typing"}, "WEBHOOK_EVENTS"),
    ({"WEBHOOK_EVENTS": ","}, "WEBHOOK_EVENTS"),
])
def test_bad_webhook_settings_name_the_setting_in_one_line(env, names):
    with pytest.raises(UsageError, match=f"^bad setting {names}") as refused:
        settings(**env)
    assert "\n" not in str(refused.value)


def test_webhook_settings():
    got = settings(WEBHOOK_URL=f"{URL}, https://b.example/h", WEBHOOK_SECRET=SECRET,
                   WEBHOOK_EVENTS="online,offline")
    assert got.webhook_url == (URL, "https://b.example/h")
    assert got.webhook_events == ("online", "offline")
    assert settings().webhook_events == (
        "online", "offline", "status", "device_online", "device_offline", "erased")


class Receiver:
    """Answers each POST with the next of ``answers`` (then 200), verifying it first."""

    def __init__(self, answers=()) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[dict, list]] = []
        self.verifier = Webhook(SECRET)

    def __call__(self, url: str, headers: dict, body: bytes) -> Deferred:
        assert url == URL
        payload = self.verifier.verify(body, headers)
        self.requests.append((headers, payload["changes"]))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            return fail(answer)
        if answer is None:
            return Deferred()  # never answers (the real post times out)
        return succeed(answer)


def make(receiver: Receiver, events=None, retention: float = 3600, start: bool = True):
    clock = Clock()
    clock.advance(1_800_000_000)
    store = MemoryStore(clock, 10, Hiding(), changes_retention=retention)
    sender = WebhookSender(store, URL, SECRET, events or ("online", "offline", "status",
                                                         "device_online", "device_offline"),
                           clock, receiver, retention, jitter=lambda: 1.0)
    if start:
        sender.startService()
    return store, clock, sender


def delivered(receiver: Receiver) -> list[tuple[str, str]]:
    return [(c["type"], c["userid"]) for _, changes in receiver.requests for c in changes]


def test_changes_go_out_signed_in_order_and_the_position_moves_only_on_2xx():
    receiver = Receiver([500, ConnectionRefusedError("down"), 200])
    store, clock, sender = make(receiver)
    store.ping(Ping("alice", 1, "0"))
    assert len(receiver.requests) == 1 and sender.failed == 1
    assert store.delivered(URL).result != store.position().result
    clock.advance(1)  # backoff 1 s (jitter 1.0), then refused
    assert len(receiver.requests) == 2 and sender.failed == 2
    clock.advance(1.9)
    assert len(receiver.requests) == 2
    clock.advance(0.1)  # backoff 2 s: delivered
    assert len(receiver.requests) == 3 and sender.delivered == 1
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert len(ids) == 1  # one request, retried
    assert delivered(receiver)[:2] == [("online", "alice"), ("device_online", "alice")]
    assert store.delivered(URL).result == store.position().result
    store.ping(Ping("alice", 2, "1"))
    assert delivered(receiver)[-1] == ("status", "alice")
    assert sender.oldest_pending is None


def test_a_batch_holds_at_most_100_and_only_the_events_asked_for():
    receiver = Receiver([500])
    store, clock, sender = make(receiver, events=("online",), start=False)
    for n in range(150):
        store.ping(Ping(f"u{n:03}", 1, "0"))
    sender.startService()
    clock.advance(1)
    sizes = [len(changes) for _, changes in receiver.requests]
    # The first page (100 changes: 50 users) was refused once, then sent; then the rest.
    assert sizes == [BATCH // 2, BATCH // 2, BATCH // 2, BATCH // 2]
    assert [userid for kind, userid in delivered(receiver)[BATCH // 2:]] == [
        f"u{n:03}" for n in range(150)]
    assert {kind for kind, _ in delivered(receiver)} == {"online"}


def test_backoff_doubles_up_to_five_minutes():
    receiver = Receiver([500] * 12)
    store, clock, sender = make(receiver)
    store.ping(Ping("alice", 1, "0"))
    waits = []
    while len(receiver.requests) < 12:
        before = len(receiver.requests)
        step = 0
        while len(receiver.requests) == before:
            clock.advance(1)
            step += 1
        waits.append(step)
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, MAX_BACKOFF, MAX_BACKOFF]


def test_a_batch_past_retention_is_dropped_and_the_sender_goes_on():
    receiver = Receiver([500] * 20)
    store, clock, sender = make(receiver, retention=60)
    store.ping(Ping("alice", 1, "0"))
    clock.pump([1] * 200)
    failed = sender.failed
    assert failed < 20 and receiver.answers  # it gave up, past retention
    receiver.answers.clear()
    store.ping(Ping("bob", 1, "0"))
    assert delivered(receiver)[-2:] == [("online", "bob"), ("device_online", "bob")]


def test_stopping_cancels_the_request_under_way_and_a_new_sender_sends_it_again():
    receiver = Receiver([None])
    store, clock, sender = make(receiver)
    store.ping(Ping("alice", 1, "0"))
    sender.stopService()
    again = WebhookSender(store, URL, SECRET, sender._events, clock, receiver, 3600)
    again.startService()
    first, second = receiver.requests
    assert first[0]["webhook-id"] == second[0]["webhook-id"]
    assert json.dumps(first[1]) == json.dumps(second[1])


def test_with_two_instances_one_delivers_and_the_other_takes_over_when_its_claim_lapses():
    from heartbeat.daemon.webhooks import LEASE

    receiver = Receiver([None])  # the first request never comes back
    store, clock, first = make(receiver, start=False)
    leases: dict = {}

    def claim(name, owner, seconds):
        holder = leases.get(name)
        if holder and holder[0] != owner and holder[1] > clock.seconds():
            return succeed(False)
        leases[name] = (owner, clock.seconds() + seconds)
        return succeed(True)

    def set_delivered(name, position, owner=""):
        if leases[name][0] != owner:
            return succeed(False)
        return store.feed.set_delivered(name, position)

    store.claim, store.set_delivered = claim, set_delivered
    second = WebhookSender(store, URL, SECRET, first._events, clock, receiver, 3600,
                           jitter=lambda: 1.0)
    first.startService()
    second.startService()
    store.ping(Ping("alice", 1, "0"))
    clock.pump([1] * 5)
    assert len(receiver.requests) == 1 and leases[URL][0] == first.owner
    first.stopService()  # it dies holding the claim, its request unanswered
    clock.pump([1] * int(LEASE + LEASE / 3 + 1))
    assert leases[URL][0] == second.owner
    assert len(receiver.requests) == 2 and second.delivered == 1
    (_, changes_a), (_, changes_b) = receiver.requests
    # The unacknowledged changes again (with those made since): each repeat has its id.
    assert changes_b[:len(changes_a)] == changes_a
    store.ping(Ping("bob", 1, "0"))
    assert len(receiver.requests) == 3 and first.delivered == 0


def test_a_failing_store_is_retried_each_second_and_logged_once():
    from twisted.logger import globalLogPublisher

    receiver = Receiver()
    store, clock, sender = make(receiver, start=False)
    lines: list[str] = []

    def observe(event) -> None:
        from twisted.logger import formatEvent

        if "webhooks to" in (event.get("log_format") or ""):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        failing = {"on": True}
        changes = store.changes
        store.changes = lambda *a: fail(ConnectionError("redis away")) if failing["on"] else changes(*a)
        sender.startService()
        clock.pump([1] * 5)
        assert len([line for line in lines if "the store failed" in line]) == 1
        failing["on"] = False
        store.ping(Ping("alice", 1, "0"))
        clock.pump([1] * 2)
        assert delivered(receiver)[:1] == [("online", "alice")]
        assert any("answers again" in line for line in lines)
    finally:
        globalLogPublisher.removeObserver(observe)
        sender.stopService()
