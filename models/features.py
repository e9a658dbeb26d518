"""The model features of one profile at one event time: the one feature code of training, offline
scoring and the stream.

A row is computed from the profile as :mod:`streams.profile` keeps it (epoch-ms times) and its open
cart (:func:`streams.profile.cart_view`), at time ``at``: the profile must hold the person's events
up to ``at`` and no later ones (the timeline scores at a timer's event time; training and offline
scoring fold the history up to the cut-off first).  Times become days before ``at``; a time that
does not exist yet (no purchase) is missing (NaN), which LightGBM handles as its own branch.
"""

from __future__ import annotations

import math
from typing import Any

DAY_MS = 86_400_000
MISSING = math.nan

#: Event types counted over the profile's lifetime (``aggregates.event_counts``).
COUNTED_TYPES = ("page_view", "product_view", "category_view", "search", "cart_add", "cart_remove",
                 "checkout_started", "email_open", "email_click", "identify")

#: Column names, in row order.  Saved with every model; a model trained with other features is refused.
FEATURES: tuple[str, ...] = (
    "days_since_first_seen",
    "days_since_last_activity",
    "days_since_last_purchase",
    "days_since_first_purchase",
    "days_since_last_click",
    "days_since_last_cart",
    "orders",
    "total_spend",
    "average_order_value",
    "orders_per_30_days",
    *(f"count_{name}" for name in COUNTED_TYPES),
    "cart_items",
    "cart_value",
    "has_email",
    "email_consent",
)


def _days_before(at: int, ts: int | None) -> float:
    return MISSING if ts is None else max(0.0, (at - ts) / DAY_MS)


def feature_row(profile: dict[str, Any], cart: dict[str, Any] | None, at: int) -> list[float]:
    """The :data:`FEATURES` of ``profile`` at event time ``at`` (epoch ms)."""
    agg = profile["aggregates"]
    counts: dict[str, int] = agg["event_counts"]
    first_seen: dict[str, int] = agg["first_seen"]
    last_seen: dict[str, int] = agg["last_seen"]
    first = min(first_seen.values()) if first_seen else profile["created_at"]
    last = max(last_seen.values()) if last_seen else None
    orders: int = agg["orders"]
    spend = float(agg["total_spend"])
    tenure_days = max((at - first) / DAY_MS, 1.0)
    consent = profile["consent"].get("email")
    return [
        _days_before(at, first),
        _days_before(at, last),
        _days_before(at, agg["last_purchase_at"]),
        _days_before(at, agg["first_purchase_at"]),
        _days_before(at, last_seen.get("clicks")),
        _days_before(at, last_seen.get("carts")),
        float(orders),
        spend,
        spend / orders if orders else MISSING,
        orders * 30.0 / tenure_days,
        *(float(counts.get(name, 0)) for name in COUNTED_TYPES),
        float(cart["item_count"]) if cart else 0.0,
        float(cart["value"]) if cart else 0.0,
        1.0 if profile["email"] else 0.0,
        MISSING if consent is None else float(bool(consent)),
    ]
