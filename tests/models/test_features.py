"""models.features: one row per profile at a time, the same in training, offline scoring and the stream."""

from __future__ import annotations

import math

from models.features import FEATURES, feature_row
from streams.profile import apply_event, cart_view
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
