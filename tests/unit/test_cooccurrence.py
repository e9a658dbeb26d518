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


def test_a_full_buffer_says_so_and_a_record_holds_a_bounded_number_of_products() -> None:
    buffer = PairBuffer(1, most_products=3)
    assert not buffer.add(0, {"a": [["x", 1]], "b": [["x", 1]]})
    assert not buffer.add(0, {"a": [["y", 1]]})  # a product already held adds nothing to the count
    assert buffer.add(0, {"c": [["x", 1]]})
    many = PairBuffer(1)
    many.add(0, {f"p{n}": [["x", 1]] for n in range(cooccurrence.PRODUCTS_PER_RECORD + 1)})
    records = many.take()
    assert [len(orjson.loads(value)) for _, value in records] == [cooccurrence.PRODUCTS_PER_RECORD, 1]


def test_the_pairs_of_a_lost_partition_are_dropped_and_the_rest_kept() -> None:
    buffer = PairBuffer(8)
    buffer.add(0, {"a": [["b", 1]]})
    buffer.add(3, {"a": [["b", 2]], "c": [["d", 1]]})
    buffer.drop({3, 6})
    assert buffer.held == 1
    assert sent(buffer.take()) == {"a": {"b": 1}}
