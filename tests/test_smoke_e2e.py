"""The daemon as a new user meets it: ping, subscribe, over real sockets."""

from tests.helpers.clients import SSEClient, post_ping


def test_ping_then_subscribe_gets_stored_then_live(daemon):
    assert post_ping(daemon.port, '{"status": "1"}')[0] == 200
    stream = SSEClient(daemon.port, "/subscribe/alice")
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream"
    first = stream.event()
    assert (first["status"], first["userid"]) == ("1", "alice")
    assert post_ping(daemon.port, "status=2", content_type="application/x-www-form-urlencoded")[0] == 200
    assert stream.event()["status"] == "2"
    stream.close()
