"""streams.domain.profile: (state, event) -> state; order tolerance and dedupe."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from schemas.outputs import Profile
from streams.domain.profile import apply_event, fold_event, remember, snapshot

DAY = 86_400_000
T0 = 1_772_359_200_000
RET = 7 * DAY


def ev(event_id: str, etype: str, ts: int, **fields: Any) -> dict[str, Any]:
    kind = {"purchase": "purchases", "identify": "identities", "erase": "identities"}.get(etype)
    if kind is None:
        kind = "carts" if etype.startswith("cart") or etype == "checkout_started" else "clicks"
    return {"event_id": event_id, "type": etype, "ts": ts, "kind": kind, "user_id": "u-1",
            "src": [kind, 0, 0, ts], **fields}


def run(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    state = None
    for event in events:
        state = apply_event(state, "u:u-1", event, RET).state
        state = orjson.loads(orjson.dumps(state)) if state else None  # as stored in the table
    return snapshot(state) if state else None


HISTORY = [
    ev("c1", "product_view", T0, product_id="sku-1", context={"timezone": "Europe/Berlin"}),
    ev("k1", "cart_add", T0 + 60_000, product_id="sku-1", price=10.0, quantity=2),
    ev("k2", "cart_add", T0 + 120_000, product_id="sku-2", price=5.0, cart_id="cart-1"),
    ev("o1", "purchase", T0 + 180_000, order_id="o1", total=25.0, currency="USD"),
    ev("k3", "cart_add", T0 + 240_000, product_id="sku-3", price=7.5),
    ev("i1", "identify", T0 + 10, email="ana@example.com", traits={"first_name": "Ana"}, consent={"email": True}),
    ev("i2", "identify", T0 + 20, traits={"first_name": "Anna", "city": "Berlin"}, consent={"email": False}),
]


def test_aggregates_cart_traits_and_consent() -> None:
    snap = run(HISTORY)
    assert snap is not None
    Profile.model_validate(snap)
    agg = snap["aggregates"]
    assert agg["orders"] == 1 and agg["total_spend"] == 25.0
    assert agg["event_counts"] == {"product_view": 1, "cart_add": 3, "purchase": 1, "identify": 2}
    assert snap["cart"]["items"] == [{"product_id": "sku-3", "quantity": 1, "price": 7.5}]
    assert snap["traits"] == {"first_name": "Anna", "city": "Berlin"}
    assert snap["consent"] == {"email": False}
    assert snap["user_id"] == "u-1" and snap["email"] == "ana@example.com"
    assert snap["context"] == {"timezone": "Europe/Berlin"}


def test_same_profile_whatever_the_arrival_order() -> None:
    expected = run(HISTORY)
    for order in itertools.islice(itertools.permutations(HISTORY), 0, None, 97):
        got = run(list(order))
        assert got is not None and expected is not None
        assert {k: v for k, v in got.items() if k != "version"} == \
            {k: v for k, v in expected.items() if k != "version"}


def test_purchase_read_before_the_cart_add_it_closed() -> None:
    late_cart = [HISTORY[3], HISTORY[1], HISTORY[2]]
    snap = run(late_cart)
    assert snap is not None and snap["cart"] is None


def test_cart_remove_empties_the_cart() -> None:
    snap = run([HISTORY[1], ev("r1", "cart_remove", T0 + 70_000, product_id="sku-1", quantity=2)])
    assert snap is not None and snap["cart"] is None


def test_duplicate_event_id_has_no_effect() -> None:
    state = apply_event(None, "u:u-1", HISTORY[3], RET).state
    again = apply_event(state, "u:u-1", HISTORY[3], RET)
    assert again.duplicate and not again.changed
    assert again.state is not None and again.state["profile"]["aggregates"]["orders"] == 1


def test_dedupe_memory_is_bounded_by_retention() -> None:
    state = None
    for n in range(500):
        state = apply_event(state, "u:u-1", ev(f"v{n}", "page_view", T0 + n * DAY // 10), RET).state
    assert state is not None
    assert len(state["seen"]) <= 7 * 10 + 64 + 1


def test_dedupe_memory_is_bounded_by_count_and_a_forgotten_id_still_counts_as_a_repeat() -> None:
    """A bot under one id, 10,000 events in an hour (all within the retention): the state keeps at most
    ``limits.seen_ids`` ids, the rest are counted, and an old one sent again is still a repeat."""
    from streams.domain.profile import DEFAULT_LIMITS, Limits, remember, repeated

    for limits in (DEFAULT_LIMITS, Limits(seen_ids=300)):
        _bot_under_one_id(limits, remember, repeated)


def _bot_under_one_id(limits: Any, remember: Any, repeated: Any) -> None:
    most = limits.seen_ids

    state = apply_event(None, "u:u-1", ev("v0", "page_view", T0), RET).state
    assert state is not None
    dropped: dict[str, int] = {}
    for n in range(1, 10_000):
        event = ev(f"v{n}", "page_view", T0 + n * 360)
        assert not repeated(state, event)
        assert remember(state, event, RET, dropped, limits)
    assert most - 32 <= len(state["seen"]) <= most + 32
    assert dropped["seen"] == 10_000 - len(state["seen"])
    assert repeated(state, ev("v5", "page_view", T0 + 5 * 360))  # forgotten, still not counted twice
    assert repeated(state, ev("v9999", "page_view", T0 + 9999 * 360))  # held
    assert not repeated(state, ev("new", "page_view", T0 + 10_000 * 360))


def test_erase_removes_the_profile() -> None:
    state = apply_event(None, "u:u-1", HISTORY[0], RET).state
    gone = apply_event(state, "u:u-1", ev("x1", "erase", T0 + 1), RET)
    assert gone.erased and gone.state is None


def test_same_product_added_before_and_after_a_purchase_in_any_order() -> None:
    # Found by the kill -9 test: a line that summed both adds was kept whole (its newest add was
    # after the purchase) when the second add arrived before the purchase.
    events = [ev("k1", "cart_add", T0, product_id="sku-1", price=9.5, quantity=1),
              ev("o1", "purchase", T0 + 60_000, order_id="o1", total=9.5),
              ev("k2", "cart_add", T0 + 120_000, product_id="sku-1", price=9.0, quantity=3),
              ev("r1", "cart_remove", T0 + 130_000, product_id="sku-1", quantity=1)]
    for order in itertools.permutations(events):
        snap = run(list(order))
        assert snap is not None and snap["cart"] is not None, order
        assert snap["cart"]["items"] == [{"product_id": "sku-1", "quantity": 2, "price": 9.0}]
        assert snap["cart"]["opened_at"] == "2026-03-01T10:02:00.000Z"
        assert snap["cart"]["updated_at"] == "2026-03-01T10:02:10.000Z"


def test_remove_read_before_its_add_still_removes() -> None:
    add = ev("k1", "cart_add", T0, product_id="sku-1", quantity=2)
    remove = ev("r1", "cart_remove", T0 + 1000, product_id="sku-1", quantity=2)
    assert run([remove, add]) == run([add, remove])
    snap = run([remove, add])
    assert snap is not None and snap["cart"] is None


@pytest.mark.parametrize("small", [False, True], ids=["defaults", "configured"])
def test_what_events_add_to_a_profile_is_bounded_and_each_drop_counted(small: bool) -> None:
    from streams.domain.profile import DEFAULT_LIMITS, Limits, cart_view, fold_event, new_state

    limits = Limits(traits=7, consent=3, context=2, cart_lines=5, cart_moves=4) if small else DEFAULT_LIMITS
    profile = new_state("u:u-1", T0)["profile"]
    dropped: dict[str, int] = {}
    for n in range(150):  # an upstream that sends a new trait name with every identify
        fold_event(profile, ev(f"i{n}", "identify", T0 + n, traits={f"field_{n}": "x"}, consent={f"c{n}": True},
                               context={f"x{n}": "y"}), dropped=dropped, limits=limits)
    assert len(profile["traits"]) == limits.traits and len(profile["consent"]) == limits.consent
    assert dropped["traits"] == 150 - limits.traits
    assert dropped["consent"] == 150 - limits.consent
    assert len(profile["context"]) == limits.context and dropped["context"] == 150 - limits.context
    for n in range(130):  # a bot filling the cart
        fold_event(profile, ev(f"k{n}", "cart_add", T0 + 1000 + n, product_id=f"sku-{n}", price=1.0),
                   dropped=dropped, limits=limits)
    assert len(profile["cart"]) == limits.cart_lines and dropped["cart_lines"] == 130 - limits.cart_lines
    for n in range(120):  # one line added and removed again and again: its moves are combined
        kind = "cart_add" if n % 2 == 0 else "cart_remove"
        fold_event(profile, ev(f"m{n}", kind, T0 + 5000 + n, product_id="sku-0", quantity=2), dropped=dropped,
                   limits=limits)
    assert len(profile["cart"]["sku-0"]["moves"]) <= limits.cart_moves
    assert dropped["cart_moves"] == 121 - limits.cart_moves
    view = cart_view(profile)
    assert view is not None and next(i for i in view["items"] if i["product_id"] == "sku-0")["quantity"] == 1


def test_an_email_consent_past_the_consent_bound_is_kept_so_a_withdrawal_always_counts() -> None:
    from streams.domain.profile import Limits, fold_event, new_state

    limits = Limits(consent=3)
    profile = new_state("u:u-1", T0)["profile"]
    dropped: dict[str, int] = {}
    for n in range(5):  # an upstream that fills the consent keys first
        fold_event(profile, ev(f"c{n}", "identify", T0 + n, consent={f"c{n}": True}), dropped=dropped, limits=limits)
    fold_event(profile, ev("off", "identify", T0 + 10, consent={"email": False, "sms": True}), dropped=dropped,
               limits=limits)
    assert profile["consent"]["email"] is False and "sms" not in profile["consent"]
    assert len(profile["consent"]) == limits.consent + 1 and dropped["consent"] == 3


def test_a_merge_of_two_profiles_at_every_bound_keeps_the_bounds_and_counts_each_drop() -> None:
    """Two profiles can hold up to twice the bounds together (here each side was folded under the
    default bounds, the merge runs under smaller ones): the absorb keeps the merged profile within
    them (the newest fields, the cart lines moved last, moves combined, the newest purchases), the
    e-mail consent whatever its age, and counts what went by collection."""
    from streams.domain.config import PipelineConfig
    from streams.domain.dispatch import dispatch
    from streams.domain.profile import Limits, cart_view
    from streams.domain.timeline import RuleSet

    limits = Limits(traits=6, consent=4, context=3, cart_lines=5, cart_moves=4)
    config = PipelineConfig.model_validate({"limits": {"traits": 6, "consent": 4, "context": 3, "cart_lines": 5,
                                                       "cart_moves": 4}})
    rules = RuleSet.build(config, RET)
    assert rules.limits.cart_moves == limits.cart_moves
    states: dict[str, Any] = {}
    for side, key in enumerate(("u:a", "u:b")):
        state = None
        t = T0 + side * 1000

        def fold(event: dict[str, Any], key: str = key) -> None:
            nonlocal state
            state = apply_event(state, key, event, RET).state

        if side == 0:  # the e-mail withdrawal is the oldest field of all
            fold(ev(f"{key}-email", "identify", T0 - 5000, consent={"email": False}))
        for n in range(limits.traits):
            fold(ev(f"{key}-i{n}", "identify", t + n, traits={f"{key}-t{n}": "x"}, context={"timezone": "UTC"}
                    if n == 0 else {}, consent={f"{key}-c{n}": True} if n < limits.consent - (side == 0) else {}))
        for n in range(limits.cart_lines):
            fold(ev(f"{key}-k{n}", "cart_add", t + 100 + n, product_id=f"{key}-sku{n}", price=1.0))
        for n in range(limits.cart_moves):  # both sides move one shared line
            fold(ev(f"{key}-m{n}", "cart_add", t + 200 + n, product_id="shared", price=1.0))
        for n in range(60):
            fold(ev(f"{key}-o{n}", "purchase", t - 4000 + n, order_id=f"{key}-o{n}", total=1.0))
        assert state is not None
        states[key] = orjson.loads(orjson.dumps(state))
    absorbed = states.pop("u:b")
    effects = dispatch(states, {}, "u:a", {"type": "_absorb", "from": "u:b", "state": absorbed}, None, rules)
    profile = states["u:a"]["profile"]
    assert len(profile["traits"]) == limits.traits and len(profile["consent"]) == limits.consent + 1
    assert profile["consent"]["email"] is False
    assert set(profile["trait_times"]) == set(profile["traits"])
    assert set(profile["consent_times"]) == set(profile["consent"])
    assert len(profile["cart"]) == limits.cart_lines and len(profile["cart"]["shared"]["moves"]) == limits.cart_moves
    assert len(profile["aggregates"]["purchases"]) == 100 and profile["aggregates"]["orders"] == 120
    assert effects.merge_dropped == {"traits": limits.traits, "consent": limits.consent - 1, "cart_lines": 6,
                                     "cart_moves": limits.cart_moves, "purchases": 20}
    view = cart_view(profile)
    assert view is not None and len(view["items"]) == limits.cart_lines


def test_a_state_stored_with_null_spend_is_repaired_by_the_next_purchase_merge_and_score() -> None:
    """An older version let two huge totals overflow to infinity, stored (and published) as null:
    such a state reads as the spend it still knows, and the next purchase, a merge and the model's
    features go on from there instead of raising."""
    from models.features import feature_row
    from streams.domain.merge import merge_states

    state = apply_event(None, "u:u-1", HISTORY[3], RET).state
    assert state is not None
    agg = state["profile"]["aggregates"]
    agg["total_spend"], agg["spend_by_currency"] = None, {"USD": None, "EUR": 12.5}
    stored = orjson.loads(orjson.dumps(state))
    snap = snapshot(stored)
    Profile.model_validate(snap)
    assert snap["aggregates"]["total_spend"] == 12.5 and snap["aggregates"]["spend_by_currency"]["USD"] == 0.0

    later = apply_event(stored, "u:u-1", ev("o2", "purchase", T0 + DAY, order_id="o2", total=5.0, currency="USD"), RET)
    assert later.state is not None
    agg = later.state["profile"]["aggregates"]
    assert agg["total_spend"] == 17.5 and agg["spend_by_currency"] == {"USD": 5.0, "EUR": 12.5}

    other = apply_event(None, "u:u-2", {**HISTORY[3], "event_id": "o9", "user_id": "u-2"}, RET).state
    assert other is not None
    merged = merge_states(other, orjson.loads(orjson.dumps(state)), "u:u-2")
    assert merged["profile"]["aggregates"]["total_spend"] == 37.5
    from models.features import FEATURES
    row = dict(zip(FEATURES, feature_row(orjson.loads(orjson.dumps(state))["profile"], None, T0 + DAY), strict=True))
    assert row["total_spend"] == 12.5


def test_large_trait_values_are_held_to_a_byte_budget_in_a_fold_and_in_a_merge() -> None:
    """Each message is under the input limit, but forty of them with 56 KB of traits each would make
    a 2 MB state, past the broker's message limit: the largest values go first (counted), a small
    trait such as a first name stays, and the encoded state stays near the budget."""
    from streams.domain.config import PipelineConfig
    from streams.domain.dispatch import dispatch
    from streams.domain.profile import DEFAULT_LIMITS, fold_event, new_state
    from streams.domain.timeline import RuleSet

    profile = new_state("u:u-1", T0)["profile"]
    dropped: dict[str, int] = {}
    fold_event(profile, ev("name", "identify", T0, traits={"first_name": "Ana"}), dropped=dropped)
    for n in range(40):
        fold_event(profile, ev(f"big{n}", "identify", T0 + 1 + n, traits={f"k{n}": ["x" * 4000] * 14}),
                   dropped=dropped)
    assert profile["traits"]["first_name"] == "Ana"
    assert len(orjson.dumps(profile["traits"])) <= DEFAULT_LIMITS.trait_bytes
    assert dropped["traits"] == 40 - (len(profile["traits"]) - 1)
    assert set(profile["trait_times"]) == set(profile["traits"])

    # two profiles each at the budget, merged by an absorb: the merge trims too, and counts it
    rules = RuleSet.build(PipelineConfig(), RET)
    states: dict[str, Any] = {}
    for key in ("u:a", "u:b"):
        state = None
        for n in range(12):
            event = ev(f"{key}-{n}", "identify", T0 + n, traits={f"{key}-{n}": ["y" * 4000] * 3})
            state = apply_event(state, key, event, RET).state
        states[key] = state
    absorbed = states.pop("u:b")
    held = len(states["u:a"]["profile"]["traits"]) + len(absorbed["profile"]["traits"])  # 5 + 5: each at its budget
    effects = dispatch(states, {}, "u:a", {"type": "_absorb", "from": "u:b", "state": absorbed}, None, rules)
    merged = states["u:a"]
    assert merged is not None and len(orjson.dumps(merged["profile"]["traits"])) <= DEFAULT_LIMITS.trait_bytes
    assert effects.merge_dropped["traits"] == held - len(merged["profile"]["traits"]) > 0


def test_long_event_ids_are_held_to_a_byte_budget_and_their_replays_still_count_as_repeats() -> None:
    from streams.domain.profile import DEFAULT_LIMITS

    state = None
    events = [ev(f"{n:06d}" + "e" * 500, "product_view", T0 + n, product_id="sku-1") for n in range(2_000)]
    for event in events:
        state = apply_event(state, "u:u-1", event, RET).state
    assert state is not None
    assert sum(map(len, state["seen"])) <= DEFAULT_LIMITS.seen_id_bytes + 32 * 506
    assert len(orjson.dumps(state)) < 400_000
    assert all(apply_event(state, "u:u-1", event, RET).duplicate for event in events[::97])
    assert state["profile"]["aggregates"]["event_counts"] == {"product_view": 2_000}


def test_shrink_halves_only_the_collections_that_make_a_state_big_and_counts_what_went() -> None:
    from streams.domain.profile import DEFAULT_LIMITS, fold_event, new_state, remember, repeated, shrink

    state = new_state("u:u-1", T0)
    profile = state["profile"]
    fold_event(profile, ev("name", "identify", T0, traits={"first_name": "Ana"}))
    for n in range(1000):  # long ids: the seen ids are most of the state
        remember(state, ev(f"{n:04d}".ljust(128, "x"), "page_view", T0 + n), RET)
    state.setdefault("rules", {})["history"] = {"product_view": list(range(10))}
    dropped: dict[str, int] = {}
    held = len(state["seen"])
    assert shrink(state, DEFAULT_LIMITS, dropped)
    assert len(state["seen"]) <= held // 2 + 1 and dropped["seen"] == held - len(state["seen"])
    assert state["rules"]["history"]["product_view"] == list(range(10))  # small: kept
    assert profile["traits"] == {"first_name": "Ana"} and "history" not in dropped
    assert repeated(state, ev("0000".ljust(128, "x"), "page_view", T0))  # a forgotten id still repeats
    while shrink(state, DEFAULT_LIMITS, dropped):
        pass
    assert len(state["seen"]) <= 32 and profile["traits"] == {"first_name": "Ana"}


def test_spend_by_currency_is_held_to_its_bound_in_a_fold_and_in_a_merge_and_the_total_keeps_all() -> None:
    """Purchases in forty currencies (the ingest takes any three letters): the profile keeps the 16 whose
    codes sort first, counts each one dropped, and its total spend and orders count every purchase; a
    fold in any order and a merge of two parts keep the same."""
    import random

    from streams.domain.config import PipelineConfig
    from streams.domain.dispatch import dispatch
    from streams.domain.profile import DEFAULT_LIMITS, fold_event, new_state
    from streams.domain.timeline import RuleSet

    def code(n: int) -> str:
        return "Q" + chr(65 + n // 26) + chr(65 + n % 26)

    purchases = [ev(f"o{n}-{k}", "purchase", T0 + 40 * k + n, order_id=f"o{n}-{k}", total=float(n + 1),
                    currency=code(n)) for k in range(2) for n in range(40)]  # each currency twice
    kept = {code(n): 2.0 * (n + 1) for n in range(16)}
    for order in range(3):
        random.Random(order).shuffle(purchases)
        profile = new_state("u:u-1", T0)["profile"]
        dropped: dict[str, int] = {}
        for purchase in purchases:
            fold_event(profile, purchase, dropped=dropped)
        agg = profile["aggregates"]
        assert DEFAULT_LIMITS.currencies == 16 and agg["spend_by_currency"] == kept
        # each of the 24 codes past the bound dropped once per purchase, or once for both when it was
        # still among the 16 lowest codes at its first purchase
        assert 24 <= dropped["currencies"] <= 48 and agg["orders"] == 80 and agg["total_spend"] == 2 * sum(range(1, 41))

    # two profiles holding parts of them, merged by an absorb: the same 16 kept, the rest counted
    rules = RuleSet.build(PipelineConfig(), RET)
    states: dict[str, Any] = {}
    for key, part in (("u:a", purchases[:30]), ("u:b", purchases[30:])):
        state = None
        for purchase in part:
            state = apply_event(state, key, {**purchase, "event_id": f"{key}-{purchase['event_id']}"}, RET).state
        states[key] = state
    absorbed = states.pop("u:b")
    union = {*states["u:a"]["profile"]["aggregates"]["spend_by_currency"],
             *absorbed["profile"]["aggregates"]["spend_by_currency"]}
    effects = dispatch(states, {}, "u:a", {"type": "_absorb", "from": "u:b", "state": absorbed}, None, rules)
    merged = states["u:a"]
    assert merged is not None and merged["profile"]["aggregates"]["spend_by_currency"] == kept
    assert len(union) > 16 and effects.merge_dropped["currencies"] == len(union) - 16
    assert merged["profile"]["aggregates"]["total_spend"] == 2 * sum(range(1, 41))


def test_an_absorb_delivered_again_after_a_merge_past_the_seen_bound_is_not_merged_twice() -> None:
    """A merge cuts the union of both sides' seen ids to the bound at once (a profile that took in k
    others held up to k times the bound until its next events), and the absorb is remembered by its
    mark (:func:`streams.domain.profile.absorb_mark`): delivered again, right after the merge or after
    later events cut the ids again, it is not merged twice.  (The ids alone were the guard before: kept
    whole at the merge, and gone after the next cut.)"""
    from streams.domain.config import PipelineConfig
    from streams.domain.dispatch import dispatch
    from streams.domain.timeline import RuleSet

    config = PipelineConfig.model_validate({"limits": {"seen_ids": 64}})
    rules = RuleSet.build(config, RET)
    states: dict[str, Any] = {}
    for side, key in enumerate(("u:a", "u:b")):
        state = None
        for n in range(40):
            state = apply_event(state, key, ev(f"{key}-{n}", "page_view", T0 + side + 2 * n), RET).state
        states[key] = state
    absorbed = states.pop("u:b")
    message = {"type": "_absorb", "from": "u:b", "state": absorbed}
    effects = dispatch(states, {}, "u:a", message, None, rules)
    assert len(states["u:a"]["seen"]) <= 64 and effects.merge_dropped["seen"] == 80 - len(states["u:a"]["seen"])
    counted = dict(states["u:a"]["profile"]["aggregates"]["event_counts"])
    assert not dispatch(states, {}, "u:a", message, None, rules).merges
    assert states["u:a"]["profile"]["aggregates"]["event_counts"] == counted == {"page_view": 80}
    merged = states["u:a"]
    for n in range(40, 140):  # later events: the ids are cut again, the absorb's all gone
        event = ev(f"u:a-{n}", "page_view", T0 + 2 * n)
        assert remember(merged, event, RET, limits=rules.limits)
        fold_event(merged["profile"], event)
    assert not set(absorbed["seen"]) & set(merged["seen"])
    states["u:a"] = merged
    assert not dispatch(states, {}, "u:a", message, None, rules).merges
    assert states["u:a"]["profile"]["aggregates"]["event_counts"] == {"page_view": 180}


def test_a_profile_that_takes_in_many_others_keeps_its_seen_ids_and_marks_within_their_bounds() -> None:
    from streams.domain.config import PipelineConfig
    from streams.domain.dispatch import dispatch
    from streams.domain.profile import ABSORBS_KEPT
    from streams.domain.timeline import RuleSet

    rules = RuleSet.build(PipelineConfig.model_validate({"limits": {"seen_ids": 64}}), RET)
    states: dict[str, Any] = {"u:a": apply_event(None, "u:a", ev("u:a-0", "page_view", T0), RET).state}
    for other in range(ABSORBS_KEPT + 4):
        key, state = f"u:b{other:02d}", None
        for n in range(50):
            state = apply_event(state, key, ev(f"{key}-{n}", "page_view", T0 + 100 * other + n), RET).state
        dispatch(states, {}, "u:a", {"type": "_absorb", "from": key, "state": state}, None, rules)
        assert len(states["u:a"]["seen"]) <= 64
    assert len(states["u:a"]["absorbed"]) == ABSORBS_KEPT
    assert states["u:a"]["profile"]["aggregates"]["event_counts"] == {"page_view": 1 + 50 * (ABSORBS_KEPT + 4)}


@pytest.mark.parametrize("char", ["\x01", "\"", "\U0001f600", "é"])
def test_the_trait_byte_bound_holds_for_text_that_takes_more_bytes_as_json_than_characters(char: str) -> None:
    """``limits.trait_bytes`` bounds the traits as JSON: a control character is written as six bytes
    (``\\u0001``), a quote as two, an emoji as four.  Counted as one character each, traits of such
    text were kept at six times the bound (384 KB stored, and published with every change of the
    profile)."""
    from streams.domain.profile import DEFAULT_LIMITS, fold_event, new_state

    profile = new_state("u:u-1", T0)["profile"]
    for n in range(40):
        fold_event(profile, ev(f"t{n}", "identify", T0 + n, traits={f"k{n}": [char * 4000] * 2}))
    assert len(orjson.dumps(profile["traits"])) <= DEFAULT_LIMITS.trait_bytes


@pytest.mark.parametrize("text", ["", "plain", 'a "quoted" \\ path', "\x00\x1f\x7f", "\b\t\n\f\r", "é ñ", "€ 中",
                                  "\U0001f600\U0001f4a9", "mixed é € \U0001f600 \x02 \""])
def test_text_is_sized_as_json_writes_it(text: str) -> None:
    """A trait's text is sized as the bytes JSON writes it in: two for an accented letter, three for
    a euro sign, four for an emoji, six for a control character, quotes included."""
    from streams.domain.profile import approx_size, text_size

    assert text_size(text) == len(orjson.dumps(text))
    assert approx_size({text: [text]}) == len(orjson.dumps({text: [text]})) + 2  # (a separator after each entry)
