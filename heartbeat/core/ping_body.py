"""Reading a status out of a ping body, in the three styles clients send.

Beep's web client sends JSON, ``curl -d`` sends form-encoded (and labels JSON
as form), and the mobile client sends the bare status as plain text; the Go
service ignored ``Content-Type``, so the body's first character decides too.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from heartbeat.core import fast_json
from heartbeat.core.errors import BadInput

MAX_BODY = 4096
MAX_STATUS = 64
_BLANK = b" \t\r\n\x0b\x0c"
# Unicode category Cc is exactly C0, DEL and C1.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def parse_status(content_type: bytes | None, body: bytes) -> str:
    """The status a ping body gives, or a 400 saying why there is none."""
    if not body.strip(_BLANK):
        raise BadInput("empty body: send a status")
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media == b"application/json" or body.lstrip(_BLANK).startswith(b"{"):
        status = _from_json(body)
    elif media == b"application/x-www-form-urlencoded":
        status = _from_form(body)
    else:
        status = _decode(body).strip(_BLANK.decode())
    return validate_status(status)


def validate_status(status: str) -> str:
    if not status:
        raise BadInput("status is empty")
    if len(status) > MAX_STATUS:
        raise BadInput(f"status is longer than {MAX_STATUS} characters")
    if _CONTROL.search(status):
        raise BadInput("status contains control characters")
    return status


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("body is not valid UTF-8") from None


def _from_json(body: bytes) -> str:
    try:
        document = fast_json.loads(_decode(body))
    except ValueError:
        raise BadInput("body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadInput("JSON body must be an object")
    if "status" not in document:
        raise BadInput("JSON body has no status")
    status = document["status"]
    # bool is an int subclass, but true is no status code.
    if isinstance(status, int) and not isinstance(status, bool):
        return str(status)
    if not isinstance(status, str):
        raise BadInput("status must be a string or an integer")
    return status


def _from_form(body: bytes) -> str:
    try:
        fields = parse_qs(_decode(body), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise BadInput("form body is not valid UTF-8") from None
    values = fields.get("status")
    if not values:
        raise BadInput("form body has no status")
    return values[0]
