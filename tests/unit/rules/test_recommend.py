"""streams.domain.rules.recommend: co-occurrence pairs, bounded counts, ranked recommendations."""

from __future__ import annotations

from streams.domain.rules import recommend


def test_pairs_both_ways_with_recent_products_and_purchases_weigh_more() -> None:
    recent: list[str] = []
    assert recommend.note_products(recent, ["a"], purchased=False) == []
    assert recommend.note_products(recent, ["b"], purchased=False) == [("b", "a", 1), ("a", "b", 1)]
    assert sorted(recommend.note_products(recent, ["c"], purchased=True)) == [
        ("a", "c", 3), ("b", "c", 3), ("c", "a", 3), ("c", "b", 3)]
    assert recent == ["a", "b", "c"]
    recommend.note_products(recent, ["a"], purchased=False)
    assert recent == ["b", "c", "a"]  # newest last, no repeats
    for n in range(30):
        recommend.note_products(recent, [f"p{n}"], purchased=False)
    assert len(recent) == recommend.RECENT_PRODUCTS


def test_counts_stay_bounded_and_top_is_ordered() -> None:
    neighbours: dict[str, int] = {}
    for n in range(80):
        neighbours = recommend.count_pairs(neighbours, [(f"p{n:02d}", 1 + n % 5)])
    assert len(neighbours) == recommend.NEIGHBOURS_KEPT
    top = recommend.top_neighbours(neighbours, 3)
    assert top == ["p04", "p09", "p14"]  # weight 5, ties by id


def test_recommend_ranks_over_seeds_and_leaves_out_cart_and_bought() -> None:
    published = {"a": ["b", "c", "d"], "x": ["c", "e"]}
    got = recommend.recommend(published.get, ["a", "x"], exclude={"d"})
    assert got == ["c", "b", "e"]  # c: 1/2 + 1 from both seeds
    assert recommend.recommend(published.get, ["a"], exclude={"b", "c", "d"}) == []
    assert recommend.recommend(published.get, ["unknown"], exclude=set()) == []
