"""Event ids: one per ping, safe in a frame, telling pings apart."""

from heartbeat.core.presence import Presence
from heartbeat.core.sse import encode_event, event_id


def test_the_frame_carries_the_id_then_the_data():
    ping = Presence("alice", 1700000000, "0")
    frame = encode_event(ping)
    assert frame.startswith(b"id: %s\ndata: {" % event_id(ping).encode())
    assert frame.endswith(b"}\n\n") and frame.count(b"\n") == 3


def test_ids_stay_one_ascii_line_whatever_the_user_id():
    for userid in ("a\nb", "a\rid: x", "élodie", "\ud800", "x" * 10_000):
        ping_id = event_id(Presence(userid, 1, "0"))
        assert ping_id.isascii() and ping_id.isprintable() and len(ping_id) < 40


def test_ids_differ_by_user_time_and_status():
    base = Presence("alice", 1700000000, "0")
    variants = [base, Presence("bob", base.time, "0"), Presence("alice", base.time + 1, "0"),
                Presence("alice", base.time, "1"), Presence("alice\x000", base.time, "")]
    assert len({event_id(p) for p in variants}) == len(variants)
    assert event_id(Presence("alice", base.time, "0")) == event_id(base)
