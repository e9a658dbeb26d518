"""models.features: one row per profile at a time, the same in training, offline scoring and the stream."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from models.features import FEATURES, WINDOWS, feature_row
from streams.domain.merge import merge_states
from streams.domain.profile import MOST_PURCHASES, apply_event, cart_view, fold_event, new_state
from tests.unit.test_timeline import DAY, MIN, T0, ev, ms


def test_a_row_names_every_feature_and_counts_days_before_its_time() -> None:
    t = ms(T0)
    state = None
    for event in (ev("v-1", "product_view", t, product_id="a"),
                  ev("k-1", "cart_add", t + MIN, product_id="a", price=12.5, quantity=2),
                  ev("o-1", "purchase", t + 2 * DAY, order_id="o-1", total=40.0),
                  ev("k-2", "cart_add", t + 3 * DAY, product_id="b", price=5.0)):
        state = apply_event(state, "u:u-1", event, 7 * DAY).state
    assert state is not None
    profile = state["profile"]
    row = dict(zip(FEATURES, feature_row(profile, cart_view(profile), t + 5 * DAY), strict=True))
    assert len(row) == len(FEATURES)
    assert row["days_since_first_seen"] == 5.0
    assert row["days_since_last_activity"] == 2.0
    assert row["days_since_last_purchase"] == 3.0
    assert row["days_since_last_cart"] == 2.0
    assert row["orders"] == 1.0 and row["total_spend"] == 40.0 and row["average_order_value"] == 40.0
    assert row["count_product_view"] == 1.0 and row["count_cart_add"] == 2.0
    assert row["cart_items"] == 1.0 and row["cart_value"] == 5.0  # the first cart was bought
    assert row["has_email"] == 0.0 and math.isnan(row["email_consent"])


def test_what_has_not_happened_is_missing_not_zero() -> None:
    t = ms(T0)
    state = apply_event(None, "u:u-1", ev("i-1", "identify", t, traits={"email": "a@example.com"},
                                          consent={"email": False}), 7 * DAY).state
    assert state is not None
    row = dict(zip(FEATURES, feature_row(state["profile"], None, t), strict=True))
    assert math.isnan(row["days_since_last_purchase"]) and math.isnan(row["average_order_value"])
    assert row["orders"] == 0.0 and row["has_email"] == 1.0 and row["email_consent"] == 0.0


# --- the purchase history -------------------------------------------------------------------------

#: (day, total) of a customer's purchases; the row is taken on day 400.
BOUGHT = ((0, 10.0), (100, 20.0), (300, 30.0), (380, 40.0), (395, 50.0))


def customer(purchases: Iterable[tuple[int, float]], user: str = "u-1") -> dict[str, Any]:
    t = ms(T0)
    state = None
    for n, (day, total) in enumerate(purchases):
        state = apply_event(state, f"u:{user}", ev(f"o-{user}-{day}-{n}", "purchase", t + day * DAY, user=user,
                                                   order_id=f"o-{n}", total=total), 7 * DAY).state
    assert state is not None
    return state


def row_of(profile: dict[str, Any], day: int = 400) -> dict[str, float]:
    return dict(zip(FEATURES, feature_row(profile, cart_view(profile), ms(T0) + day * DAY), strict=True))


def test_purchase_windows_intervals_and_the_bgnbd_summary_of_a_known_history() -> None:
    profile = customer(BOUGHT)["profile"]
    assert profile["aggregates"]["purchases"] == [[ms(T0) + day * DAY, total] for day, total in BOUGHT]
    row = row_of(profile)
    # bought 400, 300, 100, 20 and 5 days before the row's time
    assert [row[f"purchases_{d}d"] for d in WINDOWS] == [2.0, 2.0, 3.0, 4.0]
    assert [row[f"spend_{d}d"] for d in WINDOWS] == [90.0, 90.0, 120.0, 140.0]
    assert row["repeat_purchases"] == 4.0  # BG/NBD's x
    assert row["purchase_span_days"] == 395.0  # t_x
    assert row["days_since_first_purchase"] == 400.0  # T
    assert row["days_since_last_purchase"] == 5.0
    gaps = [100.0, 200.0, 80.0, 15.0]
    assert row["interval_mean_days"] == pytest.approx(395.0 / 4)
    assert row["interval_std_days"] == pytest.approx(float(np.std(gaps)))
    assert row["recency_over_interval"] == pytest.approx(5.0 / (395.0 / 4))
    # the last 90 days hold 2 repeat purchases, the 310 before them 2 more
    assert row["purchase_trend"] == pytest.approx(30.0 * (2 / 90 - 2 / 310))
    assert row["order_value_std"] == pytest.approx(float(np.std([10.0, 20.0, 30.0, 40.0, 50.0])))
    assert row["average_order_value"] == 30.0 and row["orders"] == 5.0


def test_one_purchase_has_no_intervals_and_none_has_no_purchase_features() -> None:
    row = row_of(customer([(390, 25.0)])["profile"])
    assert row["repeat_purchases"] == 0.0 and row["purchase_span_days"] == 0.0
    assert row["purchases_30d"] == 1.0 and row["spend_365d"] == 25.0
    for name in ("interval_mean_days", "interval_std_days", "recency_over_interval", "order_value_std",
                 "purchase_trend"):  # the first purchase is 10 days old: too soon for a trend
        assert math.isnan(row[name]), name
    t = ms(T0)
    state = apply_event(None, "u:u-2", ev("v-1", "product_view", t, user="u-2", product_id="a"), 7 * DAY).state
    assert state is not None
    row = row_of(state["profile"], 10)
    assert [row[f"purchases_{d}d"] for d in WINDOWS] == [0.0] * 4 and row["spend_365d"] == 0.0
    assert math.isnan(row["repeat_purchases"]) and math.isnan(row["purchase_span_days"])


def test_purchases_arriving_out_of_order_or_in_two_merged_profiles_give_the_same_list() -> None:
    in_order = customer(BOUGHT)["profile"]
    assert customer(reversed(BOUGHT))["profile"]["aggregates"]["purchases"] == in_order["aggregates"]["purchases"]
    # the person's first purchases under one key, the rest under another, then merged
    a, b = customer(BOUGHT[:2]), customer(BOUGHT[2:], user="u-2")
    for merged in (merge_states(a, b, "u:u-1"), merge_states(b, a, "u:u-1")):
        assert merged["profile"]["aggregates"]["purchases"] == in_order["aggregates"]["purchases"]
        np.testing.assert_equal(row_of(merged["profile"]), row_of(in_order))  # NaN equal to NaN


def test_the_list_keeps_the_newest_purchases_and_counts_the_rest_as_dropped() -> None:
    bound = MOST_PURCHASES
    daily = [(day, 1.0) for day in range(bound + 5)]  # one a day for 105 days
    profile = new_state("u:u-1", ms(T0))["profile"]
    dropped: dict[str, int] = {}
    for n, (day, total) in enumerate(daily):
        fold_event(profile, ev(f"o-{n}", "purchase", ms(T0) + day * DAY, order_id=f"o-{n}", total=total),
                   dropped=dropped)
    purchases = profile["aggregates"]["purchases"]
    assert len(purchases) == bound and purchases[0][0] == ms(T0) + 5 * DAY and dropped == {"purchases": 5}
    # one more, older than all kept: not kept, counted
    fold_event(profile, ev("o-old", "purchase", ms(T0) - DAY, order_id="o-old", total=1.0), dropped=dropped)
    assert profile["aggregates"]["purchases"][0][0] == ms(T0) + 5 * DAY and dropped == {"purchases": 6}
    # the purchases the list left out still count: lifetime figures are exact, the oldest are spread
    row = row_of(profile, bound + 5)
    assert row["orders"] == bound + 6 and row["purchases_365d"] == bound + 6 and row["spend_365d"] == bound + 6
    assert row["purchases_30d"] == 29.0  # days 76 to 104 (day 75 is exactly 30 days before)
    merged = merge_states({"profile": profile, "seen": {}}, customer([(200, 3.0)], user="u-2"), "u:u-1")
    assert len(merged["profile"]["aggregates"]["purchases"]) == bound
    assert merged["profile"]["aggregates"]["purchases"][-1] == [ms(T0) + 200 * DAY, 3.0]


def test_a_profile_stored_before_the_purchase_list_existed_still_gives_its_features() -> None:
    state = customer(BOUGHT)
    del state["profile"]["aggregates"]["purchases"]
    row = row_of(state["profile"])
    # exact from the lifetime aggregates
    assert row["repeat_purchases"] == 4.0 and row["purchase_span_days"] == 395.0
    assert row["days_since_first_purchase"] == 400.0 and row["interval_mean_days"] == pytest.approx(98.75)
    # the five purchases taken as evenly spread over days 0 to 395 (5, 103.75, 202.5, 301.25, 400 days before)
    assert [row[f"purchases_{d}d"] for d in WINDOWS] == [1.0, 1.0, 2.0, 4.0]
    assert row["spend_365d"] == 120.0  # four of them at the mean order value, 30
    # its next purchase starts the list with the same spread (the old last purchase stays where it was)
    spread = [[ms(T0) + round(day * DAY), 30.0] for day in (0, 98.75, 197.5, 296.25, 395)]
    later = apply_event(state, "u:u-1", ev("o-new", "purchase", ms(T0) + 399 * DAY, order_id="o-new", total=5.0),
                        7 * DAY).state
    assert later is not None
    assert later["profile"]["aggregates"]["purchases"] == [*spread, [ms(T0) + 399 * DAY, 5.0]]
    row = row_of(later["profile"])
    assert row["orders"] == 6.0 and row["purchases_30d"] == 2.0 and row["spend_30d"] == 35.0
    # and a merge with it too
    old, new = customer(BOUGHT[:2]), customer(BOUGHT[2:], user="u-2")
    del old["profile"]["aggregates"]["purchases"]
    assert merge_states(old, new, "u:u-1")["profile"]["aggregates"]["purchases"] == \
        [[ms(T0), 15.0], [ms(T0) + 100 * DAY, 15.0], *new["profile"]["aggregates"]["purchases"]]
