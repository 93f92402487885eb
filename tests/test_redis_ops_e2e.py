"""Redis as run in production, against real processes: TLS, ACL users, dead connections."""

from __future__ import annotations

import json
import time

from tests.redis_ops import SilentProxy, make_ca, tls_redis, wait_until
from tests.support import RedisServer, SSEClient, get, post_ping
from tests.test_redis_e2e import assert_unavailable, numsub, ping_until_stored


def healthy(daemon) -> bool:
    return get(daemon.port, "/health")[0] == 200


def metric(daemon, name: str) -> float:
    """The sum of a metric's samples in ``/metrics``."""
    body = get(daemon.port, "/metrics")[2].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_tls_with_a_private_ca_carries_pings_and_streams(start_daemon, tmp_path):
    server, ca_file = tls_redis(tmp_path)
    server.start()
    try:
        daemon = start_daemon(env={"REDIS": f"rediss://127.0.0.1:{server.port}",
                                   "REDIS_CA_FILE": str(ca_file)})
        stream = SSEClient(daemon.port, "/subscribe/alice")
        wait_until(lambda: numsub(server, "heartbeat:alice") == 1)
        assert post_ping(daemon.port, "1")[0] == 200
        assert stream.event()["status"] == "1"
        assert server.command("HGET", "heartbeat:alice", "status") == b"1\n"
        stream.close()
    finally:
        server.stop()


def test_an_untrusted_certificate_is_a_logged_error_and_503s(start_daemon, tmp_path):
    server, _ = tls_redis(tmp_path)
    server.start()
    other_ca, _, _ = make_ca(tmp_path, "other-ca")
    try:
        daemon = start_daemon(env={"REDIS": f"rediss://127.0.0.1:{server.port}",
                                   "REDIS_CA_FILE": str(other_ca)}, healthy=False)
        wait_until(lambda: "certificate verify failed" in daemon.output())
        line = next(line for line in daemon.output().splitlines() if "certificate verify" in line)
        assert "TLS" in line and "REDIS" in line
        assert_unavailable(post_ping(daemon.port, "1"))
        assert get(daemon.port, "/health")[0] == 503
        assert daemon.proc.poll() is None
        assert "Traceback" not in daemon.output()
    finally:
        server.stop()


def test_an_acl_user_works_and_a_wrong_password_is_an_error_not_a_crash(start_daemon, tmp_path):
    server = RedisServer(tmp_path, args=[
        "--user", "app", "on", ">app-secret", "~*", "&*", "+@all", "--user", "default", "off"],
        cli_args=["--user", "app", "--pass", "app-secret", "--no-auth-warning"]).start()
    try:
        daemon = start_daemon(["--redis", f"redis://app:app-secret@127.0.0.1:{server.port}/1"])
        stream = SSEClient(daemon.port, "/subscribe/alice")
        wait_until(lambda: numsub(server, "heartbeat:alice") == 1)
        assert post_ping(daemon.port, "2")[0] == 200
        assert stream.event()["status"] == "2"
        assert server.command("-n", "1", "HGET", "heartbeat:alice", "status") == b"2\n"
        stream.close()
        assert "app-secret" not in daemon.output()

        wrong = start_daemon(["--redis", f"redis://app:nope@127.0.0.1:{server.port}"],
                             healthy=False)
        wait_until(lambda: "could not auth" in wrong.output())
        assert "REDIS" in wrong.output()
        assert_unavailable(post_ping(wrong.port, "1"))
        assert get(wrong.port, "/health")[0] == 503
        assert "nope" not in wrong.output()
    finally:
        server.stop()


def test_a_connection_that_goes_silent_is_found_dropped_and_made_again(
        start_daemon, redis_server):
    proxy = SilentProxy(redis_server.port)
    try:
        daemon = start_daemon(["--redis", f"127.0.0.1:{proxy.port}"])
        stream = SSEClient(daemon.port, "/subscribe/alice")
        wait_until(lambda: numsub(redis_server, "heartbeat:alice") == 1)
        assert post_ping(daemon.port, "1")[0] == 200
        assert stream.event()["status"] == "1"

        proxy.forwarding.clear()
        # Another instance's ping, which this one's silent subscriber misses.
        redis_server.command("HSET", "heartbeat:alice", "time", "1700000000", "status", "7")
        redis_server.command("PUBLISH", "heartbeat:alice", "1700000000 7")
        found = wait_until(lambda: not healthy(daemon), timeout=15)
        print(f"\nsilent connection found after {found:.1f}s")
        assert_unavailable(post_ping(daemon.port, "2"))
        time.sleep(1)
        assert not healthy(daemon)  # new connections through the silent proxy are no better
        assert metric(daemon, "heartbeat_store_liveness_failures_total") >= 1

        proxy.forwarding.set()
        wait_until(lambda: healthy(daemon), timeout=15)
        assert stream.event(10) == {"time": 1700000000, "status": "7", "userid": "alice"}
        ping_until_stored(daemon.port, "3")
        assert stream.event()["status"] == "3"
        assert json.loads(get(daemon.port, "/health")[2])["status"] == "ok"
        stream.close()
    finally:
        proxy.close()
