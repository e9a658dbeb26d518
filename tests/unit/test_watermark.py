"""streams.watermark: clocks, the watermark, and the due index."""

from __future__ import annotations

from streams.watermark import DueIndex, expected_clocks, merge_clocks, watermark


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
