"""streams.cooccurrence: the profile agent's co-occurrence pairs, summed until the next commit's cut."""

import orjson
import pytest

from streams.cooccurrence import CountedProducts, PairBuffer
from streams.routing import RECORD_BYTES, partition_for


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


def summed(records: list[tuple[int, bytes]]) -> dict[str, dict[str, int]]:
    counted: dict[str, dict[str, int]] = {}
    for _, value in records:
        for product, pairs in orjson.loads(value):
            assert pairs  # no empty entry
            for other, weight in pairs:
                counted.setdefault(product, {})[other] = counted.get(product, {}).get(other, 0) + weight
    return counted


@pytest.mark.parametrize("name", [
    "sku-{:06d}",
    "\u5546\u54c1-{:06d}-" + "\u00e9" * 40,  # 3- and 2-byte UTF-8: more bytes than characters
    "\x01\x1f-{:06d}-" + "\x07" * 30,  # control characters: orjson writes each as 6 bytes (\u0007)
])
def test_records_stay_under_their_size_however_many_neighbours_one_product_gathered(name: str) -> None:
    buffer = PairBuffer(1)
    popular = "popular-" + "\u00fc" * 200
    buffer.add(0, {"quiet": [["sku-1", 2]], popular: [[name.format(n), 1] for n in range(30_000)]})
    buffer.add(0, {popular: [[name.format(n), 123_456] for n in range(0, 30_000, 7)]})  # longer weights
    records = buffer.take()
    assert len(records) > 1
    assert all(len(value) <= RECORD_BYTES for _, value in records)
    assert max(len(value) for _, value in records) > RECORD_BYTES * 0.9  # the records are filled
    counted = summed(records)
    assert len(counted[popular]) == 30_000 and counted["quiet"] == {"sku-1": 2}  # nothing lost or doubled
    assert counted[popular][name.format(7)] == 123_457 and counted[popular][name.format(8)] == 1


def test_a_product_that_does_not_fit_the_rest_of_a_record_starts_the_next_one_whole() -> None:
    buffer = PairBuffer(1)
    big = [[f"{n:0500d}", 1] for n in range(500)]  # ~254 KB of pairs each
    buffer.add(0, {"first": big, "second": big})
    records = buffer.take()
    assert all(len(value) <= RECORD_BYTES for _, value in records)
    assert summed(records) == {"first": dict(map(tuple, big)), "second": dict(map(tuple, big))}


def test_the_pairs_of_a_lost_partition_are_dropped_and_the_rest_kept() -> None:
    buffer = PairBuffer(8)
    buffer.add(0, {"a": [["b", 1]]})
    buffer.add(3, {"a": [["b", 2]], "c": [["d", 1]]})
    buffer.drop({3, 6})
    assert buffer.held == 1  # one (product, other) count
    assert sent(buffer.take()) == {"a": {"b": 1}}


def test_a_pair_larger_than_a_record_goes_alone_and_no_record_is_empty() -> None:
    buffer = PairBuffer(1)
    huge = "x" * (RECORD_BYTES + 10)  # not a product id ingest lets through (512 characters at most)
    buffer.add(0, {"a": [[huge, 1], ["b", 1]], "c": [["d", 1], [huge, 1]]})
    records = buffer.take()
    assert [len(orjson.loads(value)) for _, value in records] == [1, 2, 1]
    assert summed(records) == {"a": {huge: 1, "b": 1}, "c": {"d": 1, huge: 1}}


def test_a_table_far_past_its_bound_shrinks_by_one_product_per_count_not_all_at_once() -> None:
    stored = [(b"\xffapplied|0", b"7"), *((f"p{n}".encode(), orjson.dumps({"x": n + 1})) for n in range(10))]
    products = CountedProducts(3, lambda partition: iter(stored))
    assert products.counted(0, b"new") == [b"p0", b"p1"]  # the fewest counts first, two at most
    assert products.counted(0, b"p9") == [b"p2", b"p3"]
    gone = [products.counted(0, b"p9") for _ in range(4)]  # (the marker is never one of them)
    assert gone == [[b"p4", b"p5"], [b"p6", b"p7"], [], []]


def test_a_product_whose_stored_counts_cannot_be_read_is_the_first_to_go() -> None:
    """A damaged value (not JSON, or counts that are no whole numbers) weighs nothing: it goes first,
    and is still one of the products the bound counts."""
    stored = [(b"p0", orjson.dumps({"x": 1})), (b"bad", b"{not json"), (b"odd", orjson.dumps({"x": 1.5})),
              (b"p1", orjson.dumps({"x": 2}))]
    products = CountedProducts(3, lambda partition: iter(stored))
    assert products.counted(0, b"new") == [b"bad", b"odd"]
    assert products.counted(0, b"newer") == [b"p0"]
