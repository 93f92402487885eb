"""Webhooks from three instances on one redis-server (SPEC §8): one delivers, another
takes over when it is killed mid-batch; what it had not confirmed arrives, and the
repeats are counted."""

from __future__ import annotations

import json
import signal

from tests.helpers.clients import get, post_ping
from tests.helpers.waiting import wait_for
from tests.helpers.webhook_receiver import SECRET, Receiver


def test_the_instance_delivering_is_killed_mid_batch_and_another_delivers(
        start_daemon, redis_server):
    receiver = Receiver().start()
    receiver.answers = ["hang"]  # the first request is never answered in time
    try:
        env = {"REDIS": redis_server.address, "API_KEY": "k", "WEBHOOK_URL": receiver.url,
               "WEBHOOK_SECRET": SECRET, "PRESENCE_TIMEOUT": "60"}
        daemons = [start_daemon(env=env) for _ in range(3)]
        for n in range(90):
            claim = json.dumps({"userid": f"u{n}", "clientid": "web"})
            port = daemons[n % 3].port
            assert post_ping(port, "0", userid=None, headers={"X-User-Claim": claim})[0] == 200
        wait_for(lambda: receiver.requests, timeout=15)
        lease = redis_server.command("KEYS", "*claim*").split()
        (key,) = lease
        holder = int(redis_server.command("GET", key).decode().split(":")[1])
        (delivering,) = [d for d in daemons if d.proc.pid == holder]
        delivering.stop(signal.SIGKILL)  # mid-batch: its request is still unanswered
        code, _, body = get(daemons[0 if delivering is not daemons[0] else 1].port,
                            "/changes?limit=1000", headers={"Authorization": "Bearer k"})
        recorded = [c["id"] for c in json.loads(body)["changes"]]
        assert len(recorded) == 180
        receiver.wait_for(set(recorded), timeout=40)
        got = [c["id"] for _, changes in receiver.requests for c in changes]
        duplicates = len(got) - len(set(got))
        print(f"three instances, holder killed mid-batch: {len(set(got))} changes, "
              f"{duplicates} repeats, {len(receiver.requests)} requests")
        assert receiver.bad_signatures == 0
        # Only the unconfirmed batch came twice: every repeat is in the first request.
        first = {c["id"] for c in receiver.requests[0][1]}
        assert duplicates <= len(first)
        assert all(i in first for i in got if got.count(i) > 1)
    finally:
        receiver.stop()
