"""A cart line's stored summary (``view``) is what replaying its moves gives, whatever the order the
moves arrive in, the bounds that combine them, the purchases that close them and the merges that
join two carts: so :func:`streams.domain.profile.cart_view` can read it instead of replaying each move."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from streams.domain.merge import merge_profiles
from streams.domain.profile import (
    DEFAULT_LIMITS,
    VIEW_FROM_MOVES,
    VIEWS_OF,
    Limits,
    cart_view,
    fold_event,
    line_view,
    new_state,
)

T0 = 1_772_359_200_000
LIMITS = Limits(cart_moves=12)  # combines moves of a busy line, past VIEW_FROM_MOVES


def cart_event(index: int, etype: str, ts: int, product: int, quantity: int) -> dict[str, Any]:
    kind = "purchases" if etype == "purchase" else "carts"
    ev: dict[str, Any] = {"event_id": f"e-{index % 7}-{index}", "type": etype, "ts": T0 + ts, "kind": kind,
                          "user_id": "u-1", "src": [kind, 0, index, T0]}
    if etype == "purchase":
        ev.update(order_id=f"o-{index}", total=10.0, currency="USD")
    else:
        ev.update(product_id=f"sku-{product}", quantity=quantity, price=2.5, currency="USD", cart_id=f"c-{ts % 3}")
    return ev


#: (type, seconds after T0, product, quantity): two products, so lines pass VIEW_FROM_MOVES and the
#: bound of LIMITS, with moves out of time order; a purchase is early in time, so it closes some
#: moves and later ones still count.
moves = st.lists(st.tuples(st.sampled_from(["cart_add", "cart_add", "cart_remove", "purchase"]),
                           st.integers(0, 200), st.integers(0, 1), st.integers(1, 3)), min_size=15, max_size=60)


def folded(steps: list[tuple[str, int, int, int]], offset: int = 0, limits: Limits = LIMITS) -> dict[str, Any]:
    profile: dict[str, Any] = new_state("u:u-1", T0)["profile"]
    for index, (etype, ts, product, quantity) in enumerate(steps):
        if etype == "purchase":
            etype, ts = ("purchase", ts // 10) if index % 5 == 0 else ("cart_add", ts)  # rarer, early
        fold_event(profile, cart_event(index + offset, etype, ts * 1000, product, quantity), limits=limits)
    return profile


def replayed(profile: dict[str, Any]) -> dict[str, Any] | None:
    """cart_view of the profile with every stored summary left out: each line replayed."""
    bare = copy.deepcopy(profile)
    for line in bare["cart"].values():
        line.pop("view", None)
    bare["cart_meta"].pop(VIEWS_OF, None)
    return cart_view(bare)


def assert_views_hold(profile: dict[str, Any]) -> None:
    for line in profile["cart"].values():
        if len(line["moves"]) > VIEW_FROM_MOVES:
            assert line["view"] == line_view(line["moves"])
        else:
            assert "view" not in line


@settings(max_examples=300, deadline=None)
@given(moves)
def test_the_stored_summary_is_the_replayed_line_in_any_arrival_order(steps: list[tuple[str, int, int, int]]) -> None:
    profile = folded(steps)
    event("summary", any("view" in line for line in profile["cart"].values()))
    assert_views_hold(profile)
    assert cart_view(profile) == replayed(profile)


@settings(max_examples=150, deadline=None)
@given(moves, moves)
def test_a_merged_cart_keeps_the_summaries_of_its_lines_in_either_order(first: list[Any], second: list[Any]) -> None:
    a, b = folded(first), folded(second, offset=1000)
    merged, other_way = merge_profiles(a, b, "u:u-1"), merge_profiles(b, a, "u:u-1")
    assert (merged["cart"], merged["cart_meta"]) == (other_way["cart"], other_way["cart_meta"])
    assert_views_hold(merged)
    if any("view" in line for line in merged["cart"].values()):
        assert merged["cart_meta"][VIEWS_OF] == merged["version"]  # read, not replayed
    assert cart_view(merged) == replayed(merged)


def test_the_summary_is_kept_past_the_threshold_and_read_instead_of_the_moves() -> None:
    profile = folded([("cart_add", ts, 0, 1) for ts in range(VIEW_FROM_MOVES + 1)])
    line = profile["cart"]["sku-0"]
    assert line["view"][0] == VIEW_FROM_MOVES + 1
    line["view"][0] = 99  # cart_view reads the summary, not the moves
    assert cart_view(profile)["items"][0]["quantity"] == 99  # type: ignore[index]


def test_a_hoarders_cart_at_the_default_bounds_reads_the_same_from_its_summaries() -> None:
    """100 lines of 50 moves: ~85 us to read against ~1,150 us to replay (docs/performance.md)."""
    profile = folded([("cart_add" if i % 3 else "cart_remove", i, i % 100, 1) for i in range(5000)],
                     limits=DEFAULT_LIMITS)
    assert len(profile["cart"]) == 100 and all(len(line["moves"]) == 50 for line in profile["cart"].values())
    assert_views_hold(profile)
    assert cart_view(profile) == replayed(profile)


def _old_combine(moves: list[list[Any]], most: int) -> None:
    """What a version before the summaries did past the move bound: it knew nothing of ``view``."""
    if len(moves) > most:
        moves.sort(key=lambda move: (move[0], move[1]))
        while len(moves) > most:
            first, second = moves[0], moves[1]
            moves[:2] = [[second[0], second[1], first[2] + second[2]]]


@settings(max_examples=300, deadline=None)
@given(moves, st.lists(st.tuples(st.integers(0, 200), st.integers(-2, 3)), min_size=1, max_size=5),
       st.sampled_from(["append", "append and combine", "close", "shrink"]))
def test_a_summary_left_stale_by_an_older_version_is_replayed_not_trusted(
        steps: list[tuple[str, int, int, int]], later: list[tuple[int, int]], how: str) -> None:
    """In a rolling upgrade a partition can go back to a worker of the version before, which keeps a
    line's summary as it was: it folds cart adds, removes and purchases (each adding 1 to the
    profile's version), and halves busy lines of a state too big to store (adding nothing)."""
    profile = folded(steps)
    lines = [line for line in profile["cart"].values() if "view" in line]
    if not lines:
        return
    line = lines[0]
    for index, (ts, delta) in enumerate(later):
        if how == "shrink":
            _old_combine(line["moves"], len(line["moves"]) // 2)
            break
        if how == "close":
            line["moves"] = [move for move in line["moves"] if move[0] > T0 + ts * 1000]
        else:
            line["moves"].append([T0 + ts * 1000, f"old-{index}", delta or 1])
            if how == "append and combine":
                _old_combine(line["moves"], len(line["moves"]) - 1)
        profile["version"] += 1
    if not line["moves"]:
        return
    assert cart_view(profile) == replayed(profile)
    fold_event(profile, cart_event(99, "cart_add", 300_000, 0, 1), limits=LIMITS)  # this version again
    assert cart_view(profile) == replayed(profile)
