"""JSON on the hot path: orjson (C) where its result is the standard library's.

Every ping parses a claim and a body and encodes an event (and, over Redis,
a bus message and a deadline member), so JSON is a visible share of a ping's
cost. The bytes heartbeat writes must stay exactly ``json.dumps``'s, ASCII
with every other code point escaped (SSE frames, the Redis wire format other
instances and versions read), and what it accepts must stay what
``json.loads`` accepts. So orjson is used only where it gives the same
answer, and the standard library does the rest: a value with a non-ASCII or
DEL character is encoded again by ``json``, and a document orjson refuses
(NaN, a lone surrogate, a huge number, another encoding), or one with a
number orjson would read as a float where ``json`` reads an int (19 digits
or more), is parsed by ``json``, which accepts or refuses it as before.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# Integers past 64 bits come back from orjson as floats: such documents go to json.
_LONG = re.compile(r"\d{19}")
_LONG_BYTES = re.compile(rb"\d{19}")


def dumps(value: object) -> bytes:
    """``json.dumps(value, separators=(",", ":"))`` as ASCII bytes.

    For values made of str, int, bool, None, lists and dicts with str keys
    (orjson writes floats differently, so they are not for this).
    """
    try:
        out = orjson.dumps(value)
    except TypeError:  # e.g. an int beyond 64 bits
        out = b"\x80"
    # orjson writes non-ASCII (and DEL) as they are; json escapes them.
    if out.isascii() and b"\x7f" not in out:
        return out
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def loads(document: bytes | str) -> Any:
    """As ``json.loads(document)``: the same value, or the same ``ValueError``."""
    if isinstance(document, str):
        long = _LONG.search(document) is not None
    else:
        long = _LONG_BYTES.search(document) is not None
    if not long:
        try:
            return orjson.loads(document)
        except orjson.JSONDecodeError:
            pass
    return json.loads(document)
