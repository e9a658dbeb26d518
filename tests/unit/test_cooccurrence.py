"""streams.cooccurrence: the profile agent's co-occurrence pairs, summed until the next commit's cut."""

import orjson

from streams import cooccurrence
from streams.cooccurrence import PairBuffer
from streams.routing import partition_for


def sent(records: list[tuple[int, bytes]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for target, value in records:
        for product, counted in orjson.loads(value):
            assert partition_for(product, 8) == target  # each product goes to its own partition
            assert product not in out  # once
            out[product] = dict(counted)
    return out


def test_pairs_of_several_steps_and_partitions_are_summed_per_product() -> None:
    buffer = PairBuffer(8)
    assert not buffer.add(0, {"a": [["b", 1]], "b": [["a", 1]]})
    assert not buffer.add(0, {"a": [["b", 3], ["c", 1]]})
    assert not buffer.add(5, {"a": [["b", 1]]})  # another profile partition's events
    assert sent(buffer.take()) == {"a": {"b": 5, "c": 1}, "b": {"a": 1}}
    assert buffer.held == 0 and buffer.take() == []  # taken once


def test_a_full_buffer_says_so() -> None:
    buffer = PairBuffer(1, most_pairs=3)
    assert not buffer.add(0, {"a": [["x", 1]], "b": [["x", 1]]})
    assert not buffer.add(0, {"a": [["x", 4]]})  # a pair already held adds nothing to the count
    assert buffer.add(0, {"a": [["y", 1]]})


def test_records_stay_under_their_size_however_many_neighbours_one_product_gathered() -> None:
    buffer = PairBuffer(1)
    buffer.add(0, {"popular": [[f"sku-{n:06d}", 1] for n in range(30_000)], "quiet": [["sku-1", 2]]})
    records = buffer.take()
    assert len(records) > 1
    assert all(len(value) <= cooccurrence.RECORD_BYTES + 64 for _, value in records)
    counted: dict[str, dict[str, int]] = {}
    for _, value in records:
        for product, pairs in orjson.loads(value):
            assert pairs  # no empty entry
            for other, weight in pairs:
                counted.setdefault(product, {})[other] = counted.get(product, {}).get(other, 0) + weight
    assert len(counted["popular"]) == 30_000 and counted["quiet"] == {"sku-1": 2}  # nothing lost or doubled


def test_the_pairs_of_a_lost_partition_are_dropped_and_the_rest_kept() -> None:
    buffer = PairBuffer(8)
    buffer.add(0, {"a": [["b", 1]]})
    buffer.add(3, {"a": [["b", 2]], "c": [["d", 1]]})
    buffer.drop({3, 6})
    assert buffer.held == 1  # one (product, other) count
    assert sent(buffer.take()) == {"a": {"b": 1}}
