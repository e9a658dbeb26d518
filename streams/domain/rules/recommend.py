"""Item-to-item recommendations from co-occurrence counts, kept up to date incrementally.

Each released product event of a person pairs the product with the person's recent products
(:func:`note_products`): co-viewed pairs count 1, pairs involving a purchase count 3.  Pairs travel
to the product's partition, where :func:`count_pairs` adds them to that product's neighbour counts
(the strongest :data:`NEIGHBOURS_KEPT` are kept, so the state per product is bounded).  Each product's
top neighbours are then published on a compacted topic that every worker reads back, and
:func:`recommend` ranks them for a trigger's payload, leaving out what the person has in the cart or
has bought.

The counts are approximate by design: after a crash, the pairs of events the profile hop folds again
can count twice (a record read again after a rebalance is not: the co-occurrence agent keeps each
partition's last counted offset).  Trigger ids never depend on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

RECENT_PRODUCTS = 10  # per person: the products new ones are paired with
BOUGHT_KEPT = 50  # per person: recently bought products, excluded from recommendations
NEIGHBOURS_KEPT = 50  # per product
TOP_PUBLISHED = 10  # per product, on the recommendations topic
VIEW_WEIGHT, PURCHASE_WEIGHT = 1, 3


def note_products(recent: list[str], products: Sequence[str], purchased: bool) -> list[tuple[str, str, int]]:
    """Pairs (product, other, weight) both ways between ``products`` and ``recent``; updates ``recent``
    (newest last, no repeats, bounded)."""
    weight = PURCHASE_WEIGHT if purchased else VIEW_WEIGHT
    pairs: list[tuple[str, str, int]] = []
    for product in products:
        for other in recent:
            if other != product:
                pairs.append((product, other, weight))
                pairs.append((other, product, weight))
    for product in products:
        if product in recent:
            recent.remove(product)
        recent.append(product)
    del recent[:-RECENT_PRODUCTS]
    return pairs


def count_pairs(neighbours: dict[str, int], pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Adds (other, weight) counts; keeps the strongest :data:`NEIGHBOURS_KEPT` (ties by product id)."""
    for other, weight in pairs:
        neighbours[other] = neighbours.get(other, 0) + weight
    if len(neighbours) > NEIGHBOURS_KEPT:
        kept = sorted(neighbours.items(), key=lambda item: (-item[1], item[0]))[:NEIGHBOURS_KEPT]
        neighbours = dict(kept)
    return neighbours


def top_neighbours(neighbours: Mapping[str, int], k: int = TOP_PUBLISHED) -> list[str]:
    return [other for other, _ in sorted(neighbours.items(), key=lambda item: (-item[1], item[0]))[:k]]


def recommend(neighbours_of: Callable[[str], Sequence[str] | None], seeds: Sequence[str], exclude: set[str],
              k: int = 5) -> list[str]:
    """Up to ``k`` products: each seed's published neighbours, scored by rank (the first neighbour of
    a seed scores most), summed over seeds; ``exclude`` and the seeds themselves left out."""
    scores: dict[str, float] = {}
    for seed in seeds:
        for rank, other in enumerate(neighbours_of(seed) or ()):
            if other in exclude or other in seeds:
                continue
            scores[other] = scores.get(other, 0.0) + 1.0 / (rank + 1)
    return [product for product, _ in sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]]
