"""streams.watermark: clocks, the watermark, and the due index."""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.tables import PENDING_WRITES, RocksDBDueIndex, RocksDBMemory, TieredDueIndex
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


@pytest.fixture(params=["memory", "rocksdb", "tiered", "tiered, little memory"])
def due_order(request: pytest.FixtureRequest, tmp_path: Path) -> DueOrder:
    if request.param == "memory":
        return DueIndex()
    if request.param == "rocksdb":
        return RocksDBDueIndex(tmp_path / "due-index", RocksDBMemory.with_budget(4))
    if request.param == "tiered":  # a horizon that some of the test's due times fall within, some not
        return TieredDueIndex(tmp_path / "due-index", RocksDBMemory.with_budget(4), near_ms=120)
    return TieredDueIndex(tmp_path / "due-index", near_ms=10**13, near_keys=1)


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


# (operation, partition, key, due): push (due), discard, or pop (due: the watermark).
_ops = st.lists(st.tuples(st.sampled_from(["push", "push", "discard", "pop"]), st.integers(0, 1),
                          st.sampled_from([b"a", b"b", b"c"]), st.integers(-10, 120)), min_size=4, max_size=80)


@settings(max_examples=400, deadline=None)
@given(ops=_ops, near_ms=st.sampled_from([0, 10, 40, 10**6]), near_keys=st.integers(0, 3),
       rebuild_at=st.integers(0, 100))
def test_the_tiered_due_index_pops_what_the_in_memory_one_pops(ops: list[tuple[str, int, bytes, int]], near_ms: int,
                                                                near_keys: int, rebuild_at: int) -> None:
    # The reference is the in-memory index.  The tiered one is driven as the profile agent drives it:
    # each push and discard names the due time the key was last pushed with (the state's "due").
    # A rebuild part-way (a rebalance) starts it again from what the reference holds.
    with tempfile.TemporaryDirectory() as folder:
        tiered = TieredDueIndex(Path(folder) / "due-index", near_ms=near_ms, near_keys=near_keys)
        try:
            reference = DueIndex()
            tiered.build([])
            reference.build([])
            current: dict[tuple[int, bytes], int] = {}  # what each key was last pushed with
            for step, (op, partition, key, due) in enumerate(ops):
                if step == rebuild_at:
                    tiered.reset()
                    assert not tiered.built
                    tiered.build([(p, at, k) for (p, k), at in current.items()])
                previous = current.get((partition, key))
                if op == "push":
                    tiered.push(partition, due, key, previous)
                    reference.push(partition, due, key, previous)
                    current[partition, key] = due
                elif op == "discard":
                    tiered.discard(partition, key, previous)
                    reference.discard(partition, key, previous)
                    current.pop((partition, key), None)
                else:
                    popped = tiered.pop_due(partition, due)
                    assert popped == reference.pop_due(partition, due)
                    for _, popped_key in popped:
                        del current[partition, popped_key]
                held = sum(len(tiered.near.keys(p)) for p in (0, 1))
                assert held == tiered.near_count <= near_keys
            for partition in (0, 1):
                assert tiered.pop_due(partition, 10**6) == reference.pop_due(partition, 10**6)
        finally:  # an open database left behind can hold up the interpreter's exit
            tiered.close()


def test_the_tiered_due_index_reads_rocksdb_about_once_per_horizon(tmp_path: Path) -> None:
    # A live flow: each event parks at its own time and is folded when the watermark passes it,
    # setting a timer an hour ahead; the watermark moves at every record.
    index = TieredDueIndex(tmp_path / "due-index", near_ms=60_000)
    try:
        index.build([])
        seeks = 0
        pop_far = index.far.pop_due

        def counted(partition: int, upto: int, most: int | None = None) -> list[tuple[int, bytes]]:
            nonlocal seeks
            seeks += most is None  # a read of what is due now (a second one reads ahead)
            return pop_far(partition, upto, most)

        index.far.pop_due = counted  # type: ignore[method-assign]
        fired = []
        due: dict[bytes, int] = {}
        for second in range(2 * 3_600):  # two hours, a record a second
            t = second * 1_000
            key = b"person-%d" % (second % 5_000)  # 5,000 people, each back after 5,000 s
            index.push(0, t + 500, key, due.get(key))
            due[key] = t + 500
            for at, popped in index.pop_due(0, t):
                fired.append((at, popped))
                timer = at + 3_600_001 if at % 1_000 == 500 else None  # a folded event sets an hour's timer
                if timer is not None:
                    index.push(0, timer, popped)
                    due[popped] = timer
                else:
                    del due[popped]
            assert len(index.near.keys(0)) == index.near_count <= 200  # a minute's events and timers
        assert len(fired) >= 7_199 + 3_599  # every event folded, and the timers set in the first hour fired
        assert seeks <= 2 * 60 + 2  # one per minute of event time, not one per record
    finally:
        index.close()


def test_a_stored_due_index_may_hold_what_is_due_at_its_lowest_time(tmp_path: Path) -> None:
    index = RocksDBDueIndex(tmp_path / "due-index")
    try:
        index.build([])
        assert index.may_hold(0, 100)  # never popped: anything may be stored
        assert index.pop_due(0, 100) == []
        assert not index.may_hold(0, 100)
        assert index.may_hold(0, 101)
        index.push(0, 50, b"late")
        assert index.may_hold(0, 50)  # due exactly at the watermark: popped there
        assert index.pop_due(0, 50) == [(50, b"late")]
    finally:
        index.close()


def test_a_stored_due_index_pops_at_most_what_it_is_asked_for(tmp_path: Path) -> None:
    index = RocksDBDueIndex(tmp_path / "due-index")
    try:
        index.build([(0, 5, b"a"), (0, 5, b"b"), (0, 5, b"c"), (0, 9, b"d")])
        assert index.pop_due(0, 10, most=2) == [(5, b"a"), (5, b"b")]
        assert index.may_hold(0, 5)  # the next pop starts at the first entry left, due at 5 too
        assert index.pop_due(0, 10) == [(5, b"c"), (9, b"d")]
    finally:
        index.close()


def test_a_full_memory_leaves_the_rest_in_rocksdb_without_moving_it_back_and_forth(tmp_path: Path) -> None:
    index = TieredDueIndex(tmp_path / "due-index", near_ms=10_000, near_keys=10)
    try:
        index.build([(0, due, b"k%04d" % due) for due in range(1, 1_001)])
        assert index.pop_due(0, 0) == []
        assert index.near_count == 10  # 1-10 read ahead, as many as memory holds
        assert [due for due, _ in index.pop_due(0, 5)] == [1, 2, 3, 4, 5]
        assert [due for due, _ in index.pop_due(0, 12)] == list(range(6, 13))
        assert index.near_count == 10  # 13-22
        for upto in range(13, 1_001):
            assert index.pop_due(0, upto) == [(upto, b"k%04d" % upto)]
            assert index.near_count <= 10
            assert len(index.far._pending) == 0  # nothing read ahead was written back
    finally:
        index.close()
