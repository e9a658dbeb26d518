"""streams.domain.merge: two profiles of one person merge into the profile of all their events."""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
import pytest

from schemas.timeparse import parse_timestamp
from streams.domain.config import PipelineConfig
from streams.domain.identity import profile_id_for
from streams.domain.merge import merge_states
from streams.domain.profile import snapshot
from streams.domain.rules import recommend
from streams.domain.state import State
from streams.domain.timeline import RuleSet, advance, receive
from streams.ingest import Accepted, Source, decode

MIN = 60_000
DAY = 86_400_000
T = parse_timestamp("2026-03-01T10:00:00Z")
RULES = RuleSet.build(PipelineConfig(), 7 * DAY)
KEY = "u:u-1"


def ev(event_id: str, etype: str, at: int, **extra: Any) -> dict[str, Any]:
    """A decoded (accepted) event, as the ingest agent forwards it."""
    raw = {"event_id": event_id, "type": etype, "timestamp": at, **extra}
    if not any(raw.get(name) for name in ("user_id", "anonymous_id", "email")):
        raw["anonymous_id"] = "anon-1"
    result = decode(orjson.dumps(raw), Source("t", 0, 0, None, 0), 0)
    assert isinstance(result, Accepted), result
    return result.event


def build(events: list[dict[str, Any]], watermark: int, key: str = KEY) -> State:
    """One profile that received ``events`` (earliest first, then as given) and advanced to ``watermark``."""
    state: State | None = None
    first = min(events, key=lambda e: (e["ts"], e["event_id"]))
    for event in [first, *(e for e in events if e is not first)]:
        state = receive(state, key, event, None, RULES).state
    assert state is not None
    advance(state, watermark, RULES, 0)
    return state


def content(state: State) -> dict[str, Any]:
    """The published profile, apart from segments (the caller re-evaluates them after a merge)."""
    snap = snapshot(state)
    del snap["segments"]
    return snap


def raw_profile(state: State) -> dict[str, Any]:
    profile = dict(state["profile"])
    del profile["segments"]
    return profile


# --- random histories ---------------------------------------------------------------------------------

PRODUCTS = ("sku-1", "sku-2", "sku-3", "sku-4")
PRICES = (4.99, 9.5, 12.25, 30.0)


def random_events(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """One person's events over a few hours on a 5-minute grid (so equal timestamps happen)."""
    events = []
    for i in range(n):
        at = T + rng.randrange(60) * 5 * MIN
        ident: dict[str, Any] = rng.choice([{"user_id": "u-1"}, {"user_id": rng.choice(["u-1", "u-2"])},
                                            {"anonymous_id": rng.choice(["anon-1", "anon-2"])},
                                            {"email": rng.choice(["ann@example.com", "a.n@example.com"])}])
        if rng.random() < 0.3:
            ident["context"] = {"timezone": rng.choice(["Europe/Paris", "America/New_York"]),
                                "device": rng.choice(["mobile", "desktop"])}
        eid = f"e-{i:03d}"
        kind = rng.choices(["identify", "view", "cart_add", "cart_remove", "checkout", "purchase", "email"],
                           weights=[2, 3, 5, 2, 2, 2, 2])[0]
        product = rng.choice(PRODUCTS)
        if kind == "identify":
            traits = {name: rng.choice(values) for name, values in (
                ("first_name", ["Ann", "Anna"]), ("city", ["Lyon", "Paris", "Oslo"]),
                ("email", ["ann@example.com", "anna@example.com"])) if rng.random() < 0.6}
            consent = {"email": rng.random() < 0.7} if rng.random() < 0.5 else {}
            events.append(ev(eid, "identify", at, traits=traits, consent=consent, **ident))
        elif kind == "view":
            events.append(ev(eid, rng.choice(["product_view", "page_view"]), at, product_id=product, **ident))
        elif kind == "cart_add":
            optional = (("price", rng.choice(PRICES)), ("cart_id", f"c-{rng.randint(1, 3)}"),
                        ("category", rng.choice(["shoes", "hats"])))
            line = {name: value for name, value in optional if rng.random() < 0.7}
            events.append(ev(eid, "cart_add", at, product_id=product, quantity=rng.randint(1, 3), **line, **ident))
        elif kind == "cart_remove":
            events.append(ev(eid, "cart_remove", at, product_id=product, quantity=rng.randint(1, 2), **ident))
        elif kind == "checkout":
            events.append(ev(eid, "checkout_started", at, **ident))
        elif kind == "purchase":
            events.append(ev(eid, "purchase", at, order_id=f"o-{i}", total=rng.choice(PRICES),
                             currency=rng.choice(["USD", "EUR"]), items=[{"product_id": product}], **ident))
        else:
            events.append(ev(eid, rng.choice(["email_open", "email_click"]), at, **ident))
    return events


def split(rng: random.Random, events: list[dict[str, Any]], parts: int, watermark: int) -> list[list[dict[str, Any]]]:
    """A random split in which every part folds at least one event (an unfolded profile's
    created_at/updated_at carry the first *received* time, a quirk of new_state, not of merging)."""
    early = [e for e in events if e["ts"] <= watermark]
    rng.shuffle(early)
    groups: list[list[dict[str, Any]]] = [[early[i]] for i in range(parts)]
    for event in events:
        if not any(event is g[0] for g in groups):
            groups[rng.randrange(parts)].append(event)
    return groups


@pytest.mark.parametrize("seed", range(30))
def test_merging_random_splits_gives_the_profile_of_all_events(seed: int) -> None:
    rng = random.Random(seed)
    events = random_events(rng, rng.randint(20, 60))
    watermark = T + rng.choice([150, 250, 400]) * MIN  # some events stay parked
    parts = 2 + seed % 2
    groups = split(rng, events, parts, watermark)
    states = [build(group, watermark, key=f"a:part-{i}") for i, group in enumerate(groups)]
    whole = build(events, watermark)

    merged = states[0]
    for state in states[1:]:
        merged = merge_states(merged, state, KEY)

    assert content(merged) == content(whole)
    assert merged["profile"]["profile_id"] == profile_id_for(KEY) and merged["profile"]["key"] == KEY
    assert merged["seen"] == whole["seen"]
    assert [entry[2] for entry in merged["pending"]] == [entry[2] for entry in whole["pending"]]
    assert merged["rules"]["clock"] <= watermark  # the parts' timers may have fired at other times
    # the hour buckets depend on the time zone each profile knew when it folded the open/click
    assert sum(merged["rules"]["engagement"] or []) == sum(whole["rules"]["engagement"] or [])
    assert "due" not in merged and "segments" not in merged["rules"]["timers"]

    # The merged state keeps going like the whole one: fold the rest and compare again.
    advance(merged, T + DAY, RULES, 0)
    advance(whole, T + DAY, RULES, 0)
    assert content(merged) == content(whole)


def test_the_random_histories_close_carts_across_the_halves() -> None:
    """The property above exercises a purchase in one part closing cart moves of another."""
    closed = 0
    for seed in range(30):
        rng = random.Random(seed)
        events = random_events(rng, rng.randint(20, 60))
        watermark = T + rng.choice([150, 250, 400]) * MIN
        groups = split(rng, events, 2 + seed % 2, watermark)
        lasts = [max((e["ts"] for e in g if e["type"] == "purchase" and e["ts"] <= watermark), default=None)
                 for g in groups]
        for i, group in enumerate(groups):
            others = [last for j, last in enumerate(lasts) if j != i and last is not None]
            closed += any(e["kind"] == "carts" and e["ts"] <= max(others) for e in group if others)
    assert closed >= 10


@pytest.mark.parametrize("seed", range(20))
def test_merge_is_commutative_and_associative_in_profile_content(seed: int) -> None:
    rng = random.Random(1000 + seed)
    events = random_events(rng, 45)
    watermark = T + 300 * MIN
    a, b, c = (build(group, watermark, key=f"a:part-{i}") for i, group in enumerate(split(rng, events, 3, watermark)))
    frozen = copy.deepcopy((a, b, c))

    assert raw_profile(merge_states(a, b, KEY)) == raw_profile(merge_states(b, a, KEY))
    left = merge_states(merge_states(a, b, KEY), c, KEY)
    right = merge_states(a, merge_states(b, c, KEY), KEY)
    assert left["profile"] == right["profile"]  # segments too: the survivor's, a's, both ways
    assert left["seen"] == right["seen"] and left["pending"] == right["pending"]
    assert (a, b, c) == frozen  # inputs untouched


# --- the rules one by one -----------------------------------------------------------------------------


def test_identifiers_union_with_the_first_time_and_primary_ids_recomputed() -> None:
    a = build([ev("a1", "page_view", T + 10 * MIN, user_id="u-2", email="zed@example.com"),
               ev("a2", "page_view", T + 30 * MIN, user_id="u-1")], T + DAY, key="u:u-2")
    b = build([ev("b1", "page_view", T + 5 * MIN, user_id="u-1", email="amy@example.com"),
               ev("b2", "page_view", T + 20 * MIN, user_id="u-2", email="zed@example.com")], T + DAY)
    assert a["profile"]["user_id"] == "u-2"
    merged = merge_states(a, b, KEY)["profile"]
    assert merged["identifiers"]["user_ids"] == {"u-1": T + 5 * MIN, "u-2": T + 10 * MIN}
    assert merged["user_id"] == "u-1"  # the oldest
    assert merged["email"] == "amy@example.com"
    assert merged["identifiers"]["anonymous_ids"] == {}


def test_primary_email_ties_go_to_the_smaller_value() -> None:
    a = build([ev("a1", "page_view", T, email="zed@example.com")], T + DAY, key="e:zed@example.com")
    b = build([ev("b1", "page_view", T, email="amy@example.com")], T + DAY, key="e:amy@example.com")
    assert merge_states(a, b, KEY)["profile"]["email"] == "amy@example.com"
    assert merge_states(b, a, KEY)["profile"]["email"] == "amy@example.com"


def test_traits_consent_and_context_keep_the_newest_stamp_per_field() -> None:
    paris = {"timezone": "Europe/Paris"}
    a = build([ev("a1", "identify", T + 10 * MIN, user_id="u-1", traits={"first_name": "Ann", "city": "Oslo"},
                  consent={"email": True}, context=paris),
               ev("a2", "identify", T + 30 * MIN, user_id="u-1", traits={"city": "Lyon"})], T + DAY)
    b = build([ev("b1", "identify", T + 20 * MIN, user_id="u-1", traits={"first_name": "Anna", "city": "Rome"},
                  consent={"email": False, "sms": True}, context={"timezone": "Asia/Tokyo"}),
               ev("z9", "identify", T + 30 * MIN, user_id="u-1", traits={"last_name": "Lee"})], T + DAY)
    for merged in (merge_states(a, b, KEY)["profile"], merge_states(b, a, KEY)["profile"]):
        assert merged["traits"] == {"first_name": "Anna", "city": "Lyon", "last_name": "Lee"}
        assert merged["trait_times"]["first_name"] == [T + 20 * MIN, "b1"]
        assert merged["consent"] == {"email": False, "sms": True}
        assert merged["context"] == {"timezone": "Asia/Tokyo"}


def test_equal_times_break_ties_by_event_id() -> None:
    a = build([ev("e-2", "identify", T, user_id="u-1", traits={"city": "Lyon"})], T + DAY)
    b = build([ev("e-1", "identify", T, user_id="u-1", traits={"city": "Oslo"})], T + DAY)
    assert merge_states(a, b, KEY)["profile"]["traits"]["city"] == "Lyon"
    assert merge_states(b, a, KEY)["profile"]["traits"]["city"] == "Lyon"


def test_aggregates_add_and_take_min_max() -> None:
    a = build([ev("a1", "purchase", T + 10 * MIN, user_id="u-1", order_id="o1", total=10.1),
               ev("a2", "page_view", T + 50 * MIN, user_id="u-1")], T + DAY)
    b = build([ev("b1", "purchase", T + 20 * MIN, user_id="u-1", order_id="o2", total=0.2, currency="EUR"),
               ev("b2", "purchase", T + 30 * MIN, user_id="u-1", order_id="o3", total=5.05)], T + DAY)
    agg = merge_states(a, b, KEY)["profile"]["aggregates"]
    assert agg["orders"] == 3 and agg["event_counts"] == {"page_view": 1, "purchase": 3}
    assert agg["total_spend"] == 15.35 and agg["spend_by_currency"] == {"EUR": 0.2, "USD": 15.15}
    assert (agg["first_purchase_at"], agg["last_purchase_at"]) == (T + 10 * MIN, T + 30 * MIN)
    assert agg["first_seen"]["purchases"] == T + 10 * MIN and agg["last_seen"]["clicks"] == T + 50 * MIN


def test_a_purchase_in_one_profile_closes_the_cart_moves_of_the_other() -> None:
    a_events = [ev("a1", "cart_add", T, user_id="u-1", product_id="sku-1", price=5.0, cart_id="c-1"),
                ev("a2", "checkout_started", T + 1 * MIN, user_id="u-1"),
                ev("a3", "cart_add", T + 10 * MIN, user_id="u-1", product_id="sku-2", price=7.0),
                ev("a4", "cart_add", T + 10 * MIN, user_id="u-1", product_id="sku-1", quantity=2)]
    b_events = [ev("b1", "purchase", T + 5 * MIN, user_id="u-1", order_id="o1", total=5.0),
                ev("b2", "cart_add", T + 5 * MIN, user_id="u-1", product_id="sku-3")]
    a, b = build(a_events, T + DAY, key="a:anon-1"), build(b_events, T + DAY)
    assert a["profile"]["cart"]["sku-1"]["fields"]["cart_id"] == [T, "a1", "c-1"]
    merged = merge_states(a, b, KEY)
    cart = merged["profile"]["cart"]
    assert sorted(cart) == ["sku-1", "sku-2"]  # sku-3 was added at the purchase's time: bought
    # the line's price and cart id came with the bought add
    assert cart["sku-1"] == {"moves": [[T + 10 * MIN, "a4", 2]], "fields": {"currency": [T + 10 * MIN, "a4", "USD"]}}
    assert merged["profile"]["cart_meta"]["touched"] is None  # the checkout preceded the purchase
    view = snapshot(merged)["cart"]
    assert view is not None and view["item_count"] == 3 and view["cart_id"] is None
    assert content(merged) == content(build(a_events + b_events, T + DAY))


def test_pending_events_are_merged_in_release_order_and_deduplicated() -> None:
    w = T + 10 * MIN
    shared = ev("x1", "purchase", T + 60 * MIN, user_id="u-1", order_id="o1", total=1.0)
    folded_in_b = ev("x2", "page_view", T + 5 * MIN, user_id="u-1")
    a = build([ev("a0", "page_view", T, user_id="u-1"), shared,
               ev("a1", "cart_add", T + 60 * MIN, user_id="u-1", product_id="sku-1")], T)
    a = merge_states(a, build([folded_in_b], T, key="u:other"), "u:u-1")  # parked in a now
    b = build([ev("b0", "page_view", T, user_id="u-1"), shared, folded_in_b,
               ev("b1", "identify", T + 60 * MIN, user_id="u-1"),
               ev("a9", "checkout_started", T + 30 * MIN, user_id="u-1")], w)
    assert "x2" in [entry[2] for entry in a["pending"]] and "x2" in b["seen"]
    merged = merge_states(a, b, KEY)
    ids = [entry[2] for entry in merged["pending"]]
    assert ids == ["a9", "b1", "a1", "x1"]  # by time, then identities < clicks < carts < purchases
    assert merged["profile"]["aggregates"]["event_counts"]["page_view"] == 3  # x2 folded once, in b


def test_timers_keep_the_later_due_and_drop_the_segments_timer() -> None:
    a = build([ev("a1", "page_view", T, user_id="u-1")], T)
    b = build([ev("b1", "page_view", T, user_id="u-1")], T)
    a["rules"]["timers"] = {"browse_abandoned": [T + 50, "a1", {"product_id": "sku-1"}],
                            "post_purchase": [T + 10, "a2", {}], "segments": [T + 5, "", {}]}
    b["rules"]["timers"] = {"browse_abandoned": [T + 40, "b1", {}], "post_purchase": [T + 20, "b2", {"total": 3}],
                            "winback": [T + 99, "b2", {}], "segments": [T + 1, "", {}]}
    for merged in (merge_states(a, b, KEY), merge_states(b, a, KEY)):
        assert merged["rules"]["timers"] == {"browse_abandoned": [T + 50, "a1", {"product_id": "sku-1"}],
                                             "post_purchase": [T + 20, "b2", {"total": 3}],
                                             "winback": [T + 99, "b2", {}]}


def test_flags_are_or_ed_and_an_empty_merged_cart_cancels_the_cart_rule() -> None:
    a = build([ev("a1", "cart_add", T, user_id="u-1", product_id="sku-1")], T + 2 * 60 * MIN)
    b = build([ev("b1", "identify", T, user_id="u-1", traits={"email": "ann@example.com"})], T)
    assert a["rules"]["flags"] == {"cart_fired": True} and b["rules"]["flags"] == {"welcomed": True}
    assert merge_states(a, b, KEY)["rules"]["flags"] == {"cart_fired": True, "welcomed": True}

    c = build([ev("c1", "purchase", T + 1 * MIN, user_id="u-1", order_id="o1", total=1.0)], T + 2 * MIN)
    a["rules"]["timers"]["cart_abandoned"] = [T + 60 * MIN, "a1", {}]
    merged = merge_states(a, c, KEY)
    assert merged["profile"]["cart"] == {}
    assert "cart_fired" not in merged["rules"]["flags"] and "cart_abandoned" not in merged["rules"]["timers"]


def test_engagement_counters_add_up() -> None:
    a = build([ev("a1", "email_open", T, user_id="u-1"), ev("a2", "email_click", T + 1 * MIN, user_id="u-1")], T + DAY)
    b = build([ev("b1", "email_open", T + 3 * 60 * MIN, user_id="u-1")], T + DAY)
    none = build([ev("n1", "page_view", T, user_id="u-1")], T + DAY)
    assert none["rules"]["engagement"] is None
    merged = merge_states(a, b, KEY)["rules"]["engagement"]
    assert merged[10] == 2 and merged[13] == 1 and sum(merged) == 3
    assert merge_states(none, a, KEY)["rules"]["engagement"] == a["rules"]["engagement"]
    assert merge_states(none, none, KEY)["rules"]["engagement"] is None


def test_history_sent_clock_recent_and_bought() -> None:
    a = build([ev("a1", "product_view", T, user_id="u-1", product_id="sku-1")], T)
    b = build([ev("b1", "product_view", T, user_id="u-1", product_id="sku-2")], T)
    a["rules"].update(clock=T + 5, sent=[[T + 3, "welcome"]], history={"cart_add": [T, T + 2]},
                      recent_products=["sku-1", "sku-2", "sku-3"], bought=["sku-9"])
    b["rules"].update(clock=None, sent=[[T + 1, "browse_abandoned"]], history={"cart_add": [T, T + 1]},
                      recent_products=["sku-1", "sku-4"], bought=["sku-9", "sku-8"])
    rules = merge_states(a, b, KEY)["rules"]
    assert rules["clock"] == T + 5
    assert rules["sent"] == [[T + 1, "browse_abandoned"], [T + 3, "welcome"]]
    assert rules["history"]["cart_add"] == [T, T, T + 1, T + 2]  # two events at T, one per profile
    assert rules["recent_products"] == ["sku-2", "sku-3", "sku-1", "sku-4"]
    assert rules["bought"] == ["sku-9", "sku-8"]
    b["rules"]["recent_products"] = [f"p-{i}" for i in range(20)]
    assert merge_states(a, b, KEY)["rules"]["recent_products"] == [f"p-{i}" for i in range(10, 20)]
    assert len(merge_states(a, b, KEY)["rules"]["recent_products"]) == recommend.RECENT_PRODUCTS


def test_possible_matches_predictions_and_bookkeeping() -> None:
    a = build([ev("a1", "page_view", T + 5 * MIN, user_id="u-1")], T + DAY)
    b = build([ev("b1", "page_view", T, anonymous_id="anon-9")], T + DAY, key="a:anon-9")
    a["due"], b["due"] = T, T
    a["profile"]["possible_matches"] = [{"profile_id": "p-x", "score": 0.5},
                                        {"profile_id": b["profile"]["profile_id"], "score": 0.9}]
    b["profile"]["possible_matches"] = [{"profile_id": "p-x", "score": 0.7}, {"profile_id": "p-y", "score": 0.7},
                                        {"profile_id": profile_id_for(KEY), "score": 0.8}]
    a["profile"]["predictions"] = {"churn_probability": 0.1, "purchase_probability": 0.2, "model_version": "m1",
                                   "at": "2026-03-01T12:00:00.000Z"}
    b["profile"]["predictions"] = {"churn_probability": 0.3, "purchase_probability": 0.4, "model_version": "m1",
                                   "at": "2026-03-02T12:00:00.000Z"}
    merged = merge_states(a, b, KEY)
    profile = merged["profile"]
    merged["links"] = ["a:anon-9"]  # what the absorb adds: the published view leaves out both ids
    assert snapshot(merged)["possible_matches"] == [{"profile_id": "p-x", "score": 0.7},
                                                    {"profile_id": "p-y", "score": 0.7}]
    assert profile["predictions"] == b["profile"]["predictions"]
    assert (profile["created_at"], profile["updated_at"], profile["version"]) == (T, T + 5 * MIN, 2)
    assert "due" not in merged
    b["profile"]["predictions"] = None
    assert merge_states(a, b, KEY)["profile"]["predictions"] == a["profile"]["predictions"]


def test_erasure_markers() -> None:
    live = build([ev("a1", "page_view", T, user_id="u-1"), ev("a2", "page_view", T + 60 * MIN, user_id="u-1")], T,
                 key="a:anon-1")
    assert merge_states({"erased_at": T}, {"erased_at": T + 1}, KEY) == {"erased_at": T + 1}
    for merged in (merge_states({"erased_at": T + 90 * MIN}, live, KEY),
                   merge_states(live, {"erased_at": T + 90 * MIN}, KEY)):
        assert merged["erased_at"] == T + 90 * MIN
        assert merged["profile"]["profile_id"] == profile_id_for(KEY)
        assert merged["pending"] == [] and "a2" not in merged["seen"]  # parked before the erasure: forgotten
    with pytest.raises(ValueError):
        merge_states({"merged_into": "u:u-0"}, live, KEY)


def test_a_parked_event_stamped_at_the_erasure_is_forgotten_in_a_merge_and_a_later_one_kept() -> None:
    """At or before the erasure is forgotten (as receive forgets it): the boundary, both ways round."""
    live = build([ev("a1", "page_view", T, user_id="u-1"), ev("a2", "page_view", T + 60 * MIN, user_id="u-1"),
                  ev("a3", "page_view", T + 60 * MIN + 1, user_id="u-1")], T, key="a:anon-1")
    for merged in (merge_states({"erased_at": T + 60 * MIN}, live, KEY),
                   merge_states(live, {"erased_at": T + 60 * MIN}, KEY)):
        assert [entry[2] for entry in merged["pending"]] == ["a3"]
        assert "a2" not in merged["seen"] and "a3" in merged["seen"]

def test_the_inputs_are_not_changed() -> None:
    a = build([ev("a1", "cart_add", T, user_id="u-1", product_id="sku-1", price=2.0),
               ev("a2", "identify", T + 99 * MIN, user_id="u-1", traits={"city": "Lyon"})], T + 5 * MIN)
    b = build([ev("b1", "purchase", T + 1 * MIN, user_id="u-1", order_id="o", total=2.0),
               ev("b2", "email_open", T + 2 * MIN, user_id="u-1")], T + DAY)
    before = copy.deepcopy((a, b))
    merged = merge_states(a, b, KEY)
    advance(merged, T + DAY, RULES, 0)
    merged["profile"]["traits"]["city"] = "Oslo"
    assert (a, b) == before
