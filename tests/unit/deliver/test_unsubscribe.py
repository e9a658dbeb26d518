"""Signed unsubscribe links and the retry schedule of the deliver targets."""

from __future__ import annotations

import random
import urllib.parse

import pytest

from streams.deliver import unsubscribe
from streams.deliver.targets import Permanent, Sent, Temporary, with_retries

SECRET = b"k" * 32


def test_a_link_verifies_and_a_changed_one_does_not() -> None:
    url = unsubscribe.link("https://shop.example.com/", SECRET, "p-1", "ana+news@example.com")
    query = urllib.parse.urlsplit(url).query
    assert url.startswith("https://shop.example.com/unsubscribe?")
    assert unsubscribe.verify(SECRET, query) == ("p-1", "ana+news@example.com")
    assert unsubscribe.verify(b"other" * 8, query) is None
    assert unsubscribe.verify(SECRET, query.replace("p-1", "p-2")) is None
    assert unsubscribe.verify(SECRET, "p=p-1") is None
    assert unsubscribe.verify(SECRET, "p=p-1&e=a%40b.c&t=%C3%A9%C3%A9") is None  # not ASCII: refused, not a 500
    assert unsubscribe.headers(url) == {"List-Unsubscribe": f"<{url}>",
                                        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    event = unsubscribe.consent_withdrawn("ana@example.com", 1_772_359_200_000, "unsubscribe")
    assert event["type"] == "identify" and event["consent"] == {"email": False}


def test_retries_back_off_exponentially_with_jitter_and_give_up() -> None:
    waits: list[float] = []
    calls = iter([Temporary("a"), Temporary("b"), None])

    def send() -> Sent:
        error = next(calls)
        if error is not None:
            raise error
        return Sent()

    _, attempts = with_retries(send, 5, 1.0, lambda: None, waits.append, random.Random(1))
    assert attempts == 3 and len(waits) == 2 and 0 <= waits[0] <= 1.0 and 0 <= waits[1] <= 2.0
    waits.clear()
    with pytest.raises(Temporary):
        with_retries(lambda: (_ for _ in ()).throw(Temporary("x")), 4, 0.5, lambda: None, waits.append)
    assert len(waits) == 3
    with pytest.raises(Permanent):  # no retry for a permanent failure
        with_retries(lambda: (_ for _ in ()).throw(Permanent("x")), 4, 0.5, lambda: None, waits.append)
    assert len(waits) == 3
