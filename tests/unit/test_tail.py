"""``mailpulse tail``'s rendering of one message (contract section 1: JSON lines, a tombstone as null)."""

from __future__ import annotations

import json

import pytest

from streams.tools.tail import render


@pytest.mark.parametrize("value", [
    b'{"total": 12345678901234567890123}',  # past 64 bits: JSON, but no 64-bit integer
    b'{"id": 18446744073709551616, "n": [-9223372036854775809]}',
])
def test_a_json_message_with_a_long_integer_is_printed_with_that_integer(value: bytes) -> None:
    """A producer's number past 64 bits was printed as a float (``1.2345678901234568e+22``): the line did
    not show what the message holds."""
    assert json.loads(render(value)) == json.loads(value)
    assert isinstance(json.loads(render(value)), dict)


def test_json_is_printed_compact_a_tombstone_as_null_and_anything_else_as_a_string() -> None:
    assert render(b'{"a": [1, 2.5, "x"]}') == b'{"a":[1,2.5,"x"]}'
    assert render(None) == b"null"
    assert json.loads(render(b"not json")) == "not json"
    assert json.loads(render(b'{"a": 1e400}')) == '{"a": 1e400}'  # (no JSON number holds it)
    assert json.loads(render(b'{"a": NaN}')) == '{"a": NaN}'
    assert json.loads(render(b'{"a": "\\ud800"}')) == {"a": "\ufffd"}  # (as the worker reads it)
    assert json.loads(render(b'{"a": "12345678901234567890123"}')) == {"a": "12345678901234567890123"}


def test_a_message_the_worker_reads_as_json_is_printed_as_that_json() -> None:
    """A value with a byte-order mark, or with half of an emoji's escape, which the worker reads as
    JSON, was printed as a JSON string of its text."""
    assert json.loads(render(b'\xef\xbb\xbf{"a": 1}')) == {"a": 1}
    assert json.loads(render(b'\xef\xbb\xbf{"a": 12345678901234567890123}')) == {"a": 12345678901234567890123}
    assert json.loads(render(b'{"q": "hi \\ud83d"}')) == {"q": "hi \ufffd"}


def test_a_long_number_and_half_of_an_emoji_s_escape_are_printed_as_the_worker_reads_them() -> None:
    """A value with 19 digits or more (read by the standard library, which keeps an integer whole) and
    an escaped surrogate that is not half of a pair: the worker reads it as JSON with U+FFFD."""
    assert json.loads(render(b'{"q": "hi \\ud83d", "n": 12345678901234567890123}')) == \
        {"q": "hi \ufffd", "n": 12345678901234567890123}
    assert json.loads(render(b'{"order_id": "12345678901234567890", "q": "\\udc00"}')) == \
        {"order_id": "12345678901234567890", "q": "\ufffd"}
    assert json.loads(render(b'{"q": "\\ud83d\\ude00", "n": 12345678901234567890123}')) == \
        {"q": "\U0001f600", "n": 12345678901234567890123}  # (a pair: the emoji)
