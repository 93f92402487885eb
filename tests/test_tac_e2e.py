"""``twistd -ny heartbeat.tac`` starts the same service, configured from the environment."""

from __future__ import annotations

from tests.helpers.clients import SSEClient, get, post_ping
from tests.helpers.processes import REPO, TWISTD, Daemon, free_port


class TacDaemon(Daemon):
    """Configured only by the environment, as the tac file is."""

    def command(self) -> list[str]:
        return [TWISTD, "-n", "--pidfile=", "-y", str(REPO / "heartbeat.tac")]


def test_tac_serves_ping_subscribe_and_health(tmp_path):
    port = free_port()
    daemon = TacDaemon(tmp_path, port=port, env={
        "LISTEN": f"127.0.0.1:{port}", "KEEPALIVE": "0.2"}).start()
    try:
        assert post_ping(daemon.port, '{"status": "1"}')[0] == 200
        stream = SSEClient(daemon.port, "/subscribe/alice")
        assert stream.event()["status"] == "1"
        assert stream.frame() == b":\n"  # KEEPALIVE from the environment took effect
        assert get(daemon.port, "/health")[0] == 200
        stream.close()
    finally:
        daemon.stop()
    assert "heartbeat starting with LISTEN=127.0.0.1:" in daemon.output()
