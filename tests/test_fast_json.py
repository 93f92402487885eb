"""heartbeat/core/fast_json.py: orjson only where its answer is the standard library's."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heartbeat.core import fast_json

# What heartbeat encodes: events and deadline members (no floats).
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def reference(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("ascii")


@given(values)
def test_dumps_writes_exactly_what_json_writes(value):
    assert fast_json.dumps(value) == reference(value)


@pytest.mark.parametrize("text", [chr(n) for n in range(128)] + ["é", "\u2028", "\ud800", "😀"])
def test_every_ascii_character_and_the_awkward_others_are_written_as_json_writes_them(text):
    value = {"userid": text, "time": 2**70, "online": True, "clientid": None}
    assert fast_json.dumps(value) == reference(value)
    assert fast_json.dumps([text, "c"]) == reference([text, "c"])


def same_as_json(document: bytes | str) -> None:
    try:
        expected = json.loads(document)
    except ValueError as error:
        with pytest.raises(ValueError) as raised:
            fast_json.loads(document)
        assert type(raised.value) is type(error)
        return
    got = fast_json.loads(document)
    assert got == expected and type(got) is type(expected)


@given(st.text())
def test_loads_of_any_text_answers_as_json(document):
    same_as_json(document)


@given(values)
def test_loads_of_json_documents_answers_as_json(value):
    same_as_json(reference(value))


@pytest.mark.parametrize("document", [
    '{"status":NaN}', '{"status":"\\ud800"}', '{"status":1e400}', '{"a":1,"a":2}',
    str(2**80), '"\\u0000"', '{"status": "s"} ', "[1.0, -0, 1E2]", "\ufeff{}",
    '{"status":"x"}'.encode("utf-16"), b'{"userid":"\xc3\xa9"}', b"\xff", "", "{",
])
def test_loads_of_documents_orjson_and_json_disagree_on_answers_as_json(document):
    same_as_json(document)
