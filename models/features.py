"""The model features of one profile at one event time: the one feature code of training, offline
scoring and the stream.

A row is computed from the profile as :mod:`streams.domain.profile` keeps it (epoch-ms times) and its open
cart (:func:`streams.domain.profile.cart_view`), at time ``at``: the profile must hold the person's events
up to ``at`` and no later ones (the timeline scores at a timer's event time; training and offline
scoring fold the history up to the cut-off first).  Times become days before ``at``; a time that
does not exist yet (no purchase) is missing (NaN), which LightGBM handles as its own branch.

Purchase-history features (for sparse histories: most people buy a few times a year) come from the
profile's list of its newest purchases (``aggregates.purchases``, ``[ts_ms, total]``, at most
``streams.domain.profile.MOST_PURCHASES``) together with the exact lifetime aggregates (orders,
spend, first and last purchase): purchases and spend in the last 30/90/180/365 days; the intervals
between purchases (mean, spread, days since the last purchase in mean intervals); BG/NBD's summary
of a customer, ``x`` (repeat purchases), ``t_x`` (days from the first purchase to the last) and ``T``
(days since the first purchase: ``days_since_first_purchase``); the trend of the purchase rate
(recent against older); the spread of the order values.  Purchases the list does not hold are
approximated: a profile stored before the list existed reads as its orders spread evenly from its
first purchase to its last (:func:`streams.domain.profile.listed_purchases`, which also starts the list when
such a profile folds its next purchase); purchases older than the list's bound are taken to lie
evenly between the first purchase and the oldest one held, with an equal share of the spend the list
does not account for.  Counts and times are exact where the list is complete.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping
from typing import Any

from streams.domain.profile import listed_purchases, spent

DAY_MS = 86_400_000
MISSING = math.nan

#: Event types counted over the profile's lifetime (``aggregates.event_counts``).
COUNTED_TYPES = ("page_view", "product_view", "category_view", "search", "cart_add", "cart_remove",
                 "checkout_started", "email_open", "email_click", "identify")

#: Windows (days before the time of scoring) of the purchase and spend counts.
WINDOWS = (30, 90, 180, 365)
#: Most days of the "recent" part of :func:`purchase_trend`.
TREND_DAYS = 90.0
#: Shortest time since the first purchase (days) with a trend; a shorter one is missing.
TREND_MIN_DAYS = 14.0

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
    *(f"purchases_{days}d" for days in WINDOWS),
    *(f"spend_{days}d" for days in WINDOWS),
    "interval_mean_days",
    "interval_std_days",
    "recency_over_interval",
    "repeat_purchases",
    "purchase_span_days",
    "purchase_trend",
    "order_value_std",
)


def _days_before(at: int, ts: int | None) -> float:
    return MISSING if ts is None else max(0.0, (at - ts) / DAY_MS)


def purchase_history(agg: dict[str, Any], at: int) -> list[tuple[int, float]]:
    """``(ts_ms, total)`` of every purchase up to ``at``, oldest first: the profile's list, plus the
    older purchases it does not hold placed as the module docstring says."""
    kept = listed_purchases(agg)
    history = [(int(ts), float(total)) for ts, total in kept]
    missing = agg["orders"] - len(history)
    first, last = agg["first_purchase_at"], agg["last_purchase_at"]
    if missing > 0 and first is not None and last is not None:
        share = max(0.0, spent(agg) - sum(total for _, total in history)) / missing
        if history:  # the oldest ones: from the first purchase up to (not at) the oldest one held
            end, steps = min(history[0][0], last), missing
        else:  # none held: from the first purchase to the last one
            end, steps = last, max(missing - 1, 1)
        older = [(first + round((end - first) * i / steps), share) for i in range(missing)]
        history = older + history
    return [(ts, total) for ts, total in history if ts <= at]


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((value - mean) ** 2 for value in values) / len(values))


def purchase_trend(times: list[int], at: int) -> float:
    """The repeat-purchase rate of the recent part minus that of the older part of the time since the
    first purchase (purchases per 30 days): the recent part is the last :data:`TREND_DAYS` days, or
    the last half when the first purchase is less than twice that long ago.  Missing without a
    purchase, or when the first is less than :data:`TREND_MIN_DAYS` days ago.  ``times``: ascending."""
    if not times:
        return MISSING
    tenure = (at - times[0]) / DAY_MS
    if tenure < TREND_MIN_DAYS:
        return MISSING
    recent_days = min(TREND_DAYS, tenure / 2)
    recent = len(times) - max(1, bisect.bisect_right(times, at - recent_days * DAY_MS))
    older = len(times) - 1 - recent
    return 30.0 * (recent / recent_days - older / (tenure - recent_days))


#: The purchase part of the row of a profile without a purchase: nothing in any window, no intervals.
_NO_PURCHASES = (*(0.0 for _ in WINDOWS), *(0.0 for _ in WINDOWS), *(MISSING for _ in range(7)))


def _purchase_features(agg: dict[str, Any], at: int) -> list[float]:
    """The purchase-history part of the row (module docstring), in :data:`FEATURES` order."""
    first, last = agg["first_purchase_at"], agg["last_purchase_at"]
    if first is None or last is None or not agg["orders"]:
        return list(_NO_PURCHASES)
    history = purchase_history(agg, at)
    times = [ts for ts, _ in history]
    totals = [total for _, total in history]
    running = list(itertools.accumulate(totals, initial=0.0))
    counts: list[float] = []
    spends: list[float] = []
    for days in WINDOWS:
        since = bisect.bisect_right(times, at - days * DAY_MS)
        counts.append(float(len(times) - since))
        spends.append(round(running[-1] - running[since], 2))
    repeats = agg["orders"] - 1
    span = max(0.0, (min(last, at) - first) / DAY_MS)
    mean_interval = span / repeats if repeats else MISSING
    gaps = [(b - a) / DAY_MS for a, b in itertools.pairwise(times)]
    recency = max(0.0, (at - last) / DAY_MS)
    return [
        *counts,
        *spends,
        mean_interval,
        _std(gaps) if len(gaps) >= 2 else MISSING,
        recency / max(mean_interval, 1 / 24) if repeats else MISSING,
        float(repeats),
        span,
        purchase_trend(times, at),
        _std(totals) if len(totals) >= 2 else MISSING,
    ]


def feature_row(profile: Mapping[str, Any], cart: dict[str, Any] | None, at: int) -> list[float]:
    """The :data:`FEATURES` of ``profile`` at event time ``at`` (epoch ms)."""
    agg = profile["aggregates"]
    counts: dict[str, int] = agg["event_counts"]
    first_seen: dict[str, int] = agg["first_seen"]
    last_seen: dict[str, int] = agg["last_seen"]
    first = min(first_seen.values()) if first_seen else profile["created_at"]
    last = max(last_seen.values()) if last_seen else None
    orders: int = agg["orders"]
    spend = spent(agg)
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
        *_purchase_features(agg, at),
    ]
