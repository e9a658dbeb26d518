"""Identity resolution on the broker: merges across partitions and workers, fuzzy matches, erase."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from streams.domain.identity import profile_id_for
from streams.tools.generate import generate_history
from tests.households import households

from .conftest import latest_by_key, read_topic, wait_until_shared
from .expected import expected_run
from .test_crash import assert_profiles, join_and_leave_mid_stream, start_replay
from .test_pipeline import replay, write_jsonl

pytestmark = pytest.mark.integration

UNTIL = "2026-03-08T00:00:00Z"


def _history() -> list[dict[str, Any]]:
    return generate_history(120, 6, 3, date(2026, 3, 1))


def _processed(workers: list[Any]) -> float:
    return sum(w.metric("mailpulse_events_total", outcome="processed") for w in workers)


@pytest.mark.parametrize("workers", [1, 2])
def test_generated_history_gives_one_profile_per_person_with_one_worker_or_two(
    broker, start_worker, tmp_path: Path, workers: int
) -> None:
    events = _history()
    expected = expected_run(events, UNTIL)
    running = [start_worker(data_dir=f"w{n}") for n in range(workers)]
    if workers > 1:
        wait_until_shared(running)
    replay(broker, write_jsonl(tmp_path / "history.jsonl", events), UNTIL)
    deadline = time.monotonic() + 120
    while _processed(running) < len(events) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _processed(running) == len(events)
    if workers == 2:
        assert all(w.metric("mailpulse_events_total", outcome="processed") > 0 for w in running), "one worker idle"

    got = assert_profiles(broker.bootstrap, expected.profiles)  # says which profiles and fields differ if not
    merges = {kind: sum(w.metric("mailpulse_profile_merges_total", kind=kind) for w in running)
              for kind in ("exact", "fuzzy")}
    assert merges["exact"] > 0 and merges["fuzzy"] > 0, merges
    # fewer profiles than identifier keys: anonymous visitors and CRM records joined their people
    keys = {e.get("user_id") or e.get("email") or e.get("anonymous_id") for e in events if e["type"] != "tick"}
    assert len(got) < len(keys)


def test_possible_matches_between_merging_people_come_out_the_same_with_two_workers(
    broker, start_worker, tmp_path: Path
) -> None:
    """Families at shared addresses: pairs of people are possible matches while each of them merges
    across partitions (their keys route to both workers), so ``_possible`` and ``_alias`` messages
    cross between the workers in whatever order the topics deliver them."""
    events = households(seed=3, addresses=8)
    expected = expected_run(events, "2026-03-02T00:00:00Z")
    assert sum(len(p["possible_matches"]) for p in expected.profiles.values()) > 20
    running = [start_worker(data_dir=f"w{n}") for n in range(2)]
    wait_until_shared(running)
    replay(broker, write_jsonl(tmp_path / "households.jsonl", events), "2026-03-02T00:00:00Z")
    assert_profiles(broker.bootstrap, expected.profiles)
    assert all(w.metric("mailpulse_events_total", outcome="processed") > 0 for w in running), "one worker idle"


@pytest.mark.chaos  # with the other rebalance tests: `make chaos`
def test_a_worker_joining_and_one_leaving_while_identities_merge_change_no_profile(
    broker, start_worker, tmp_path: Path
) -> None:
    """The join/leave test of test_crash.py on a history whose people are merged across partitions
    (links, absorbs and fuzzy blocks in flight while partitions move)."""
    events = generate_history(600, 6, 3, date(2026, 3, 1))
    expected = expected_run(events, UNTIL)
    half = len(events) // 2
    second = join_and_leave_mid_stream(start_worker, lambda first: start_replay(
        broker, tmp_path, events[:half] if first else events[half:], 500, None if first else UNTIL,
        "first" if first else "second"))
    assert_profiles(broker.bootstrap, expected.profiles)
    assert second.metric("mailpulse_profile_merges_total") > 0


def test_erase_removes_the_person_from_every_output_also_after_a_replay(broker, start_worker, tmp_path) -> None:
    person = [
        {"event_id": "v-1", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z", "anonymous_id": "a-9",
         "product_id": "sku-1"},
        {"event_id": "i-1", "type": "identify", "timestamp": "2026-03-01T10:05:00Z", "anonymous_id": "a-9",
         "user_id": "u-9", "traits": {"email": "nina@example.com", "first_name": "Nina"}, "consent": {"email": True}},
        {"event_id": "k-1", "type": "cart_add", "timestamp": "2026-03-01T10:06:00Z", "email": "nina@example.com",
         "product_id": "sku-2", "price": 5.0},
    ]
    erase = [{"event_id": "x-1", "type": "erase", "timestamp": "2026-03-01T10:10:00Z", "user_id": "u-9"}]
    worker = start_worker()
    replay(broker, write_jsonl(tmp_path / "before.jsonl", person), "2026-03-01T10:07:00Z")
    pid = profile_id_for("u:u-9")
    read_topic(broker.bootstrap, "profiles", lambda m: pid.encode() in latest_by_key(m))
    replay(broker, write_jsonl(tmp_path / "erase.jsonl", erase), "2026-03-01T10:11:00Z")
    read_topic(broker.bootstrap, "profiles", lambda m: pid.encode() not in latest_by_key(m))
    counts = {topic: len(read_topic(broker.bootstrap, topic)) for topic in ("segment-changes", "triggers")}

    # the whole history again, then time passes far beyond the cart's 30 minutes
    replay(broker, write_jsonl(tmp_path / "again.jsonl", person + erase), "2026-03-03T00:00:00Z")
    worker.wait_metric("mailpulse_events_total", len(person) * 2 + 2)
    time.sleep(3)
    assert pid.encode() not in latest_by_key(read_topic(broker.bootstrap, "profiles"))
    for topic, before in counts.items():
        after = read_topic(broker.bootstrap, topic)
        assert len(after) == before, f"{topic} got {after[before:]}"
    triggers = read_topic(broker.bootstrap, "triggers")
    assert not [t for _, t in triggers if t["type"] == "cart_abandoned"]  # the erased cart never fires


def test_typo_crm_records_merge_and_a_borderline_pair_is_only_a_possible_match(broker, start_worker, tmp_path) -> None:
    address = {"street": "12 Baker Street", "city": "London", "postcode": "NW1 6XE"}
    records = [
        {"event_id": "c-1", "type": "identify", "timestamp": "2026-03-01T10:00:00Z", "source": "crm",
         "email": "jonathan.smith@example.com",
         "traits": {"first_name": "Jonathan", "last_name": "Smith", "birthday": "1988-04-12", **address}},
        {"event_id": "c-2", "type": "identify", "timestamp": "2026-03-01T10:01:00Z", "source": "form",
         "email": "jsmith@work.example",
         "traits": {"first_name": "Jon", "last_name": "Smtih", "birthday": "1988-04-12", **address}},
        {"event_id": "h-1", "type": "identify", "timestamp": "2026-03-01T10:02:00Z", "email": "mary@example.com",
         "traits": {"first_name": "Mary", "last_name": "Smith", **address}},
    ]
    worker = start_worker()
    expected = expected_run(records, "2026-03-01T11:00:00Z")
    replay(broker, write_jsonl(tmp_path / "crm.jsonl", records), "2026-03-01T11:00:00Z")
    got = latest_by_key(read_topic(broker.bootstrap, "profiles", lambda m: latest_by_key(m) == expected.profiles))
    assert got == expected.profiles
    jonathan = got[profile_id_for("e:jonathan.smith@example.com").encode()]
    mary = got[profile_id_for("e:mary@example.com").encode()]
    assert len(got) == 2 and jonathan["identifiers"]["emails"] == ["jonathan.smith@example.com",
                                                                   "jsmith@work.example"]
    assert [m["profile_id"] for m in mary["possible_matches"]] == [jonathan["profile_id"]]
    assert 0.5 <= mary["possible_matches"][0]["score"] < 0.9
    assert worker.metric("mailpulse_profile_merges_total", kind="fuzzy") == 1
