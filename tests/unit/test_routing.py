"""streams.routing: partitions of profile keys and batch records of the internal topic."""

from __future__ import annotations

import orjson

from streams.routing import PartitionBatches, partition_for


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
