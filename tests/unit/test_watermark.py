"""streams.watermark: clocks, the watermark, and the due index."""

from __future__ import annotations

import orjson

from streams.watermark import DueIndex, due_first, expected_clocks, merge_clocks, stored_due, watermark


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
