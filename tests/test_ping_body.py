"""Ping bodies: the three styles and every way a status can be wrong."""

import pytest

from heartbeat.core.errors import BadInput
from heartbeat.core.identity import user_from_claim
from heartbeat.core.ping_body import parse_status

JSON = b"application/json"
FORM = b"application/x-www-form-urlencoded"


@pytest.mark.parametrize("content_type, body, status", [
    (JSON, b'{"status": "0"}', "0"),
    (JSON, b'{"status": 2}', "2"),
    (JSON, b'{"status": -7}', "-7"),
    (None, b'  {"status": "1"}', "1"),
    (FORM, b'{"status": "1"}', "1"),          # curl -d labels JSON as form
    (b"text/plain", b'{"status":"3"}', "3"),  # the Go service ignored the header
    (FORM, b"status=0", "0"),
    (FORM + b"; charset=utf-8", b"a=1&status=away+now&status=x", "away now"),
    (FORM, b"status=%C3%A9t%C3%A9", "été"),
    (None, b"2", "2"),
    (b"text/plain", b"  busy \r\n", "busy"),
    (None, "é" .encode() * 64, "é" * 64),     # 64 code points, 128 bytes
    (JSON, b'{"status": "\\u00e9"}', "é"),
])
def test_accepted(content_type, body, status):
    assert parse_status(content_type, body) == status


@pytest.mark.parametrize("content_type, body", [
    (None, b""), (None, b"  \n "), (JSON, b""),
    (JSON, b"[1]"), (JSON, b'"0"'), (JSON, b"1"), (JSON, b"{not json"),
    (None, b'{"status": "0"'), (JSON, b"{}"), (JSON, b'{"status": ""}'),
    (JSON, b'{"status": null}'), (JSON, b'{"status": true}'), (JSON, b'{"status": 1.5}'),
    (JSON, b'{"status": ["0"]}'), (JSON, b'{"status": "a\\nb"}'),
    (JSON, b'{"status": "\\u0085"}'), (JSON, b'{"status": "%s"}' % (b"x" * 65)),
    (FORM, b"state=0"), (FORM, b"status="), (FORM, b"status=%ff"), (FORM, b"status=a%0Ab"),
    (None, b"x" * 65), (None, b"\xff\xfe"), (None, b"a\x00b"), (None, b"a\x7fb"),
    (None, "a\u0090b".encode()),
])
def test_rejected_with_400(content_type, body):
    with pytest.raises(BadInput) as info:
        parse_status(content_type, body)
    assert info.value.message


@pytest.mark.parametrize("header", [
    None, b"", b"alice", b"[]", b'"alice"', b"{}", b'{"userid": ""}', b'{"userid": 5}',
    b'{"userid": null}', b'{"clientid": "c"}', b"{bad",
    b'{"userid": "alice", "clientid": 5}', b'{"userid": "alice", "clientid": ["c"]}',
])
def test_bad_claims_are_400(header):
    with pytest.raises(BadInput):
        user_from_claim(header)


@pytest.mark.parametrize(("header", "device"), [
    (b'{"userid": "alice", "clientid": "c1"}', "c1"),
    (b'{"userid": "alice", "clientid": ""}', ""),
    (b'{"userid": "alice", "clientid": null}', ""),
    (b'{"userid": "alice"}', ""),
])
def test_claim_gives_user_and_device(header, device):
    assert user_from_claim(header) == ("alice", device)
