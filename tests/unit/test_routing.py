"""streams.routing: partitions of profile keys and batch records of the internal topic."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ingest import IngestPolicy
from streams.routing import HeldEvents, PartitionBatches, partition_for, route_batch
from streams.watermark import merge_clocks, watermark


def test_partition_of_a_key_is_stable_and_in_range() -> None:
    assert partition_for("u:u-1", 8) == partition_for("u:u-1", 8)
    assert {partition_for(f"u:u-{i}", 8) for i in range(200)} == set(range(8))


def test_records_keep_order_per_partition_and_stay_under_the_limit() -> None:
    batches = PartitionBatches(limit=1000)
    early: list[tuple[int, bytes]] = []
    for i in range(25):
        full = batches.add(i % 2, f"k-{i}", {"n": i}, 150)
        if full is not None:
            early.append((i % 2, full))
    records = early + list(batches.records())
    for partition in (0, 1):
        pairs = [pair for p, record in records if p == partition for pair in orjson.loads(record)]
        assert [n["n"] for _, n in pairs] == list(range(partition, 25, 2))
    assert all(len(orjson.loads(record)) <= 6 for _, record in records)  # 6 x 150 <= 1000 < 7 x 150
    assert len(early) == 3  # partition 0: 13 pairs = 6 + 6 (cut early) + 1; partition 1: 12 = 6 (cut early) + 6


def test_route_batch_sends_events_then_clocks_per_partition_and_rejects_to_dead_letter() -> None:
    good = orjson.dumps({"event_id": "e-1", "type": "page_view", "timestamp": 1772359200000, "user_id": "u-1"})
    tick = orjson.dumps({"type": "tick", "timestamp": 1772359260000})
    sent: list[tuple[int, list[Any]]] = []
    dead: list[tuple[str, str, bytes | None]] = []
    route_batch([("clicks", 0, 5, None, good, None), ("clicks", 1, 6, b"k", b"{broken", None),
                 ("carts", 0, 7, None, tick, None)], 4, 1772359300000, IngestPolicy(),
                lambda partition, record: sent.append((partition, orjson.loads(record))),
                lambda topic, code, key, letter: dead.append((topic, code, key)))
    assert dead == [("clicks", "not_json", b"k")]
    assert sorted(partition for partition, _ in sent) == [0, 1, 2, 3]  # every partition hears the clocks
    [(partition, pairs)] = [(partition, pairs) for partition, pairs in sent if pairs[0][0] is not None]
    assert partition == partition_for("u:u-1", 4)
    (key, event), (none, update) = pairs  # the event first, then the clocks the batch moved
    assert key == "u:u-1" and event["event_id"] == "e-1" and event["src"][:3] == ["clicks", 0, 5]
    assert none is None and sorted(update["clocks"]) == [["carts", 0, 1772359260000], ["clicks", 0, 1772359200000]]


def _event(n: int, ts: int, user: str = "u-1") -> bytes:
    """An event ``ts`` ms after :data:`T0`."""
    return orjson.dumps({"event_id": f"e-{n}", "type": "page_view", "timestamp": T0 + ts, "user_id": user})


def _route(inputs: list[tuple[str, int, bytes]], held: HeldEvents | None, wall_floor: int | None = None,
           partitions: int = 4) -> list[tuple[int, list[Any]]]:
    sent: list[tuple[int, list[Any]]] = []
    route_batch([(topic, n, offset, None, raw, None) for offset, (topic, n, raw) in enumerate(inputs)], partitions,
                NOW, IngestPolicy(), lambda partition, record: sent.append((partition, orjson.loads(record))),
                lambda *_: None, held, wall_floor)
    return sent


NOW = 1772400000000
T0 = NOW - 3_600_000


def _taken(held: HeldEvents) -> list[tuple[int, list[str]]]:
    """What a commit's cut sends of ``held``: (partition, event ids) per record."""
    return [(partition, [event["event_id"] for _, event in orjson.loads(record)])
            for partition, record in held.take_all()]


def test_an_event_past_the_clocks_is_held_until_a_batch_moves_them_past_it_and_comes_ahead_of_that_clock() -> None:
    held = HeldEvents()
    first = _route([("clicks", 0, _event(1, 1000)), ("clicks", 1, _event(2, 2000))], held)
    assert len(held) == 1  # clicks/1 is at 2000, clicks/0 at 1000: the 2000 event waits
    assert [entry[1]["event_id"] for _, pairs in first for entry in pairs if entry[0]] == ["e-1"]
    second = _route([("clicks", 0, _event(3, 2500))], held)
    assert len(held) == 1  # clicks/0 now at 2500: e-2 goes; e-3 (2500) waits for clicks/1
    [(partition, pairs)] = [(p, pairs) for p, pairs in second if any(entry[0] for entry in pairs)]
    assert [entry[1]["event_id"] for entry in pairs[:-1]] == ["e-2"]
    assert pairs[-1] == [None, {"clocks": [["clicks", 0, T0 + 2500]]}]  # the event ahead of the clock that passes it
    assert _taken(held) == [(partition, ["e-3"])]
    assert len(held) == 0


def test_without_held_events_every_event_goes_with_its_batch() -> None:
    sent = _route([("clicks", 0, _event(1, 1000)), ("clicks", 1, _event(2, 2000))], None)
    assert sorted(entry[1]["event_id"] for _, pairs in sent for entry in pairs if entry[0]) == ["e-1", "e-2"]


def test_held_events_keep_a_bound_and_send_the_oldest_past_it() -> None:
    held = HeldEvents(most=2)
    _route([("clicks", 0, _event(0, 1000))], held)  # clicks/0 at 1000
    sent = _route([("clicks", 1, _event(n, 2000 + n)) for n in range(1, 6)], held)
    assert len(held) == 2
    assert sorted(entry[1]["event_id"] for _, pairs in sent for entry in pairs if entry[0]) == ["e-1", "e-2", "e-3"]
    assert sorted(n for _, ids in _taken(held) for n in ids) == ["e-4", "e-5"]


def test_an_event_the_wall_clock_passes_soon_is_not_held_and_forgotten_clocks_hold_nothing_back() -> None:
    held = HeldEvents()
    _route([("clicks", 0, _event(0, 1000))], held)
    _route([("clicks", 1, _event(1, 3000)), ("clicks", 1, _event(2, 5000))], held, wall_floor=T0 + 3000)
    assert [ids for _, ids in _taken(held)] == [["e-2"]]
    _route([("clicks", 1, _event(3, 6000))], held)
    assert len(held) == 1  # clicks/0 (1000) holds it back
    held.forget({("clicks", 0)})  # a rebalance took clicks/0 away
    sent = _route([("clicks", 1, _event(4, 6500))], held)
    assert sorted(entry[1]["event_id"] for _, pairs in sent for entry in pairs if entry[0]) == ["e-3", "e-4"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(0, 5), st.booleans()),
                         max_size=8), min_size=1, max_size=12),
       st.lists(st.booleans(), min_size=12, max_size=12), st.integers(1, 6))
def test_held_events_never_reach_a_profile_behind_its_watermark_and_none_is_lost_or_repeated(
        batches: list[list[tuple[int, int, int, bool]]], commits: list[bool], most: int) -> None:
    """Batches of events on four input partitions (each partition's times rise, so no input is
    late), commits at random points: replaying what each profile partition receives as the profile
    hop does, no event arrives behind the watermark, and every event arrives once."""
    held = HeldEvents(most=most)
    topics = [("clicks", 0), ("clicks", 1), ("carts", 0), ("carts", 1)]
    last = dict.fromkeys(topics, 0)
    expected = [f"{t}/{n}" for t, n in topics]
    received: dict[int, list[Any]] = {}
    number = 0
    for batch, commit in zip(batches, commits, strict=False):
        inputs = []
        for which, step, user, tick in batch:
            topic, n = topics[which]
            last[topic, n] += step
            if tick:
                inputs.append((topic, n, orjson.dumps({"type": "tick", "timestamp": T0 + last[topic, n]})))
            else:
                number += 1
                inputs.append((topic, n, _event(number, last[topic, n], f"u-{user}")))
        for partition, pairs in _route(inputs, held):
            received.setdefault(partition, []).extend(pairs)
        if commit:
            for partition, pairs in [(p, orjson.loads(r)) for p, r in held.take_all()]:
                received.setdefault(partition, []).extend(pairs)
    for partition, pairs in [(p, orjson.loads(r)) for p, r in held.take_all()]:
        received.setdefault(partition, []).extend(pairs)
    ids = []
    for pairs in received.values():
        clocks: dict[str, int] = {}
        for key, message in pairs:
            if key is None:
                merge_clocks(clocks, message["clocks"])
                continue
            low = watermark(clocks, expected)
            assert low is None or message["ts"] >= low, (message["event_id"], message["ts"], low)
            ids.append(message["event_id"])
    assert sorted(ids) == sorted(f"e-{n}" for n in range(1, number + 1))
