"""streams.tools.generate: deterministic, valid, and carrying the signal later work needs."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

import orjson
import pytest

from schemas.timeparse import parse_timestamp
from streams.ingest import Accepted, Source, decode
from streams.tools.generate import generate_history, history_lines, live_events

START = date(2026, 1, 1)


def test_same_seed_same_history_other_seed_other_history() -> None:
    assert generate_history(50, 10, 3, START) == generate_history(50, 10, 3, START)
    assert generate_history(50, 10, 3, START) != generate_history(50, 10, 4, START)


def test_every_event_is_valid_unique_and_in_time_order() -> None:
    events = generate_history(300, 20, 1, START)
    assert len(events) > 3000
    assert len({e["event_id"] for e in events}) == len(events)
    times = [parse_timestamp(e["timestamp"]) for e in events]
    assert all(a // 1000 <= b // 1000 for a, b in itertools.pairwise(times))
    for n, event in enumerate(events):
        assert isinstance(decode(orjson.dumps(event), Source("t", 0, n, None, 0), 0), Accepted), event
    assert any(isinstance(e["timestamp"], int) for e in events)
    assert any(isinstance(e["timestamp"], str) and e["timestamp"].endswith("+01:00") for e in events)


def test_carts_are_abandoned_and_bought_crm_records_are_corrupted() -> None:
    events = generate_history(300, 20, 2, START)
    carts = {e["cart_id"] for e in events if e["type"] == "cart_add"}
    ordered = {e["order_id"].replace("o-", "cart-") for e in events if e["type"] == "purchase"}
    assert ordered and carts - ordered  # some bought, some abandoned
    forms = {e["traits"]["email"]: e["traits"] for e in events if e.get("source") == "form"}
    crm = [e["traits"] for e in events if e.get("source") == "crm"]
    assert crm
    differing = [t for t in crm if (f := forms.get(t["email"])) is None
                 or (t["first_name"], t["last_name"]) != (f["first_name"], f["last_name"])]
    assert differing, "no CRM record differs from its form record"
    assert all("user_id" not in e for e in events if e.get("source") == "crm")


def test_live_events_use_the_given_clock() -> None:
    stream = live_events(7, lambda: 1_772_359_200_000)
    batch = list(itertools.islice(stream, 200))
    assert {parse_timestamp(e["timestamp"]) for e in batch} == {1_772_359_200_000}
    assert len({e["event_id"] for e in batch}) == 200
    for n, event in enumerate(batch):
        assert isinstance(decode(orjson.dumps(event), Source("t", 0, n, None, 0), 0), Accepted)


def test_repeats_and_erasures_behind_flags() -> None:
    plain = generate_history(60, 20, 3, date(2026, 3, 1))
    assert generate_history(60, 20, 3, date(2026, 3, 1), 0.0, 0.0) == plain  # off: the same history
    damaged = generate_history(60, 20, 3, date(2026, 3, 1), repeats=0.1, erasures=0.3)
    erases = [e for e in damaged if e["type"] == "erase"]
    repeated = len(damaged) - len(erases) - len(plain)
    assert 0.07 * len(plain) < repeated < 0.13 * len(plain)
    assert len({e["event_id"] for e in damaged}) == len(plain) + len(erases)  # repeats keep their ids
    assert 5 <= len(erases) <= 30 and all(e["user_id"] for e in erases)
    times = [parse_timestamp(e["timestamp"]) for e in damaged]
    assert times == sorted(times)


@pytest.mark.parametrize("damage", [{}, {"repeats": 0.1}, {"erasures": 0.3}, {"repeats": 0.1, "erasures": 0.3},
                                    {"purchases": "btyd", "erasures": 0.5}])
def test_the_history_as_lines_is_the_history_byte_for_byte_whether_it_is_spilled_or_not(damage: dict) -> None:
    """``generate`` writes :func:`history_lines`: the same file for a seed as the list the tests and
    earlier versions take, also when it sorts in runs on disk (60 events in memory here)."""
    expected = [orjson.dumps(event) + b"\n" for event in generate_history(80, 20, 5, START, **damage)]
    assert len(expected) > 200
    assert list(history_lines(80, 20, 5, START, in_memory=60, **damage)) == expected
    assert list(history_lines(80, 20, 5, START, **damage)) == expected


def test_the_history_as_lines_holds_a_bounded_part_of_it_in_memory() -> None:
    """The whole history as a list of dicts took ~700 bytes an event (1.3 GB at 1.9M events): a
    large ``--users`` ran out of memory.  Lines now go through sorted runs on disk."""
    def peak(make: Callable[[], Iterable[Any]]) -> int:
        tracemalloc.start()
        try:
            assert sum(1 for _ in make()) > 15_000
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    listed = peak(lambda: generate_history(400, 30, 2, START))
    assert peak(lambda: history_lines(400, 30, 2, START, in_memory=3_000)) < listed / 4
    assert peak(lambda: history_lines(400, 30, 2, START, in_memory=3_000, erasures=0.3)) < listed / 4
