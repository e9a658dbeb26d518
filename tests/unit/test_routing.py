"""streams.routing: partitions of profile keys and batch records of the internal topic."""

from __future__ import annotations

from typing import Any

import orjson

from streams.ingest import IngestPolicy
from streams.routing import PartitionBatches, partition_for, route_batch


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
