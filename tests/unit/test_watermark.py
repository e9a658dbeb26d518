"""streams.watermark: clocks, the watermark, and the due index."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.tables import PENDING_WRITES, RocksDBDueIndex, RocksDBMemory
from streams.watermark import DueIndex, DueOrder, due_first, expected_clocks, merge_clocks, stored_due, watermark


def test_watermark_is_the_smallest_clock_and_waits_for_every_partition() -> None:
    expected = expected_clocks({"clicks": 2, "carts": 1})
    clocks: dict[str, int] = {}
    assert merge_clocks(clocks, [["clicks", 0, 50], ["clicks", 1, 70]])
    assert watermark(clocks, expected) is None  # carts/0 has carried nothing
    assert watermark(clocks, expected, wall_ms=10) == 10
    merge_clocks(clocks, [["carts", 0, 60]])
    assert watermark(clocks, expected) == 50
    assert not merge_clocks(clocks, [["clicks", 0, 40]])  # clocks never go back
    assert watermark(clocks, expected, wall_ms=55) == 55


def test_due_index_pops_each_key_once_at_its_current_time_and_stays_bounded() -> None:
    index = DueIndex()
    index.build([(0, 100, b"a"), (1, 50, b"b")])
    index.push(0, 300, b"a")  # moved later: the entry at 100 is stale
    assert index.pop_due(0, 200) == []
    assert index.pop_due(0, 300) == [(300, b"a")]
    assert index.pop_due(0, 300) == []
    index.push(1, 80, b"c")
    index.discard(1, b"b")
    assert index.pop_due(1, 1000) == [(80, b"c")]
    for n in range(10_000):  # one key whose due time keeps moving far ahead
        index.push(2, 10**12 + n, b"busy")
    assert len(index) < 3000
    assert index.pop_due(2, 10**13) == [(10**12 + 9_999, b"busy")]


@pytest.fixture(params=["memory", "rocksdb"])
def due_order(request: pytest.FixtureRequest, tmp_path: Path) -> DueOrder:
    if request.param == "memory":
        return DueIndex()
    return RocksDBDueIndex(tmp_path / "due-index", RocksDBMemory.with_budget(4))


def test_both_due_indexes_pop_what_is_due_once_in_due_order(due_order: DueOrder) -> None:
    # pushed as the profile agent does: with the due time the key was pushed with before
    index = due_order
    index.build([(0, 100, b"a"), (1, 50, b"b"), (0, -5, b"early")])
    assert index.built
    index.push(0, 300, b"a", previous=100)  # moved later
    assert index.pop_due(0, 200) == [(-5, b"early")]
    assert index.pop_due(0, 300) == [(300, b"a")]
    assert index.pop_due(0, 300) == []
    index.push(0, 250, b"late")  # due before what was already popped: the next pop still has it
    index.push(0, 400, b"z")
    index.push(0, 400, b"y")
    assert index.pop_due(0, 1000) == [(250, b"late"), (400, b"y"), (400, b"z")]
    index.push(1, 80, b"c")
    index.discard(1, b"b", previous=50)
    assert index.pop_due(1, 1000) == [(80, b"c")]
    previous = None
    for n in range(2_000):  # one key whose due time keeps moving ahead
        index.push(2, 10**12 + n, b"busy", previous)
        previous = 10**12 + n
    assert index.pop_due(2, 10**13) == [(10**12 + 1_999, b"busy")]
    assert index.pop_due(2, 10**13) == []
    index.push(2, 10**13, b"at the watermark")  # due where the last pop reached: the same pop finds it
    assert index.pop_due(2, 10**13) == [(10**13, b"at the watermark")]
    index.push(3, 10, b"d")
    index.reset()
    assert not index.built
    index.build([(3, 20, b"e")])  # what the table holds now; nothing from before the reset
    assert index.pop_due(3, 100) == [(20, b"e")]


def test_the_stored_due_index_drops_the_scratch_database_of_an_earlier_run(tmp_path: Path) -> None:
    path = tmp_path / "due-index"
    first = RocksDBDueIndex(path)
    first.build([(0, 1, b"left-over")])
    first.close()
    index = RocksDBDueIndex(path)  # a restart: the scratch database of the last run is dropped
    index.build([(0, 2, b"k")])
    assert index.pop_due(0, 10) == [(2, b"k")]
    index.close()


def test_stored_due_reads_the_due_time_of_a_state_written_due_first() -> None:
    state = {"profile": {"traits": {"due": 5}}, "pending": [], "due": 1772359200000}
    stored = orjson.dumps(due_first(state))
    assert stored.startswith(b'{"due":1772359200000,')
    assert stored_due(stored) == 1772359200000
    assert orjson.loads(stored) == state
    assert stored_due(orjson.dumps(due_first({"profile": {}}))) is None
    assert stored_due(b'{"due":7}') == 7
    # any other layout is decoded whole: a "due" nested deeper is not the state's
    assert stored_due(orjson.dumps({"profile": {"traits": {"due": 5}}, "due": 9})) == 9
    assert stored_due(orjson.dumps({"profile": {"traits": {"due": 5}}})) is None
    assert stored_due(orjson.dumps({"erased_at": 3})) is None
    read_back = orjson.loads(stored)
    assert due_first(read_back) is read_back  # stored once, never copied again


def test_changes_made_while_the_watermark_stands_still_are_written_in_bounded_batches(tmp_path: Path) -> None:
    index = RocksDBDueIndex(tmp_path / "due-index", RocksDBMemory.with_budget(4))
    index.build([])
    assert index.pop_due(0, 1_000) == []
    for n in range(3 * PENDING_WRITES):  # events parked past a watermark held back upstream
        index.push(0, 2_000 + n, b"key-%d" % n)
        assert index.pop_due(0, 1_000) == []  # nothing can be due: no seek
        assert len(index._pending) < PENDING_WRITES
    assert index.pop_due(0, 2_001) == [(2_000, b"key-0"), (2_001, b"key-1")]
    for n in range(3 * PENDING_WRITES):  # no pop at all: the watermark is not known yet
        index.push(1, 5_000 + n, b"new-%d" % n)
        assert len(index._pending) < PENDING_WRITES
    assert index.pop_due(1, 5_000) == [(5_000, b"new-0")]
