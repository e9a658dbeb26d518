"""The unified profile: ``(state, event) -> (state, outputs)``.

Pure and order-tolerant: counts add up, first/last times take min/max, traits and consent keep the
newest value per field by event time, and cart lines older than the last purchase stay closed.  So
the same events give the same profile whatever order partitions and workers read them in.

``state`` is a plain dict (stored as JSON bytes in the RocksDB table)::

    {"profile": {...snapshot fields, times as epoch ms...},
     "seen": {event_id: ts_ms}}          # exact dedupe, pruned to the retention window
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.timeparse import format_ms
from streams.identity import profile_id_for

State = dict[str, Any]
Event = dict[str, Any]

CART_LINE_INTERNAL = frozenset(("ts", "added_at", "cart_id"))
ID_FIELDS = (("user_id", "user_ids"), ("anonymous_id", "anonymous_ids"), ("email", "emails"),
             ("phone", "phones"))


@dataclass(frozen=True, slots=True)
class Applied:
    """Result of applying one event."""

    state: State | None  # None: the profile is gone (erased)
    changed: bool
    duplicate: bool = False
    erased: bool = False


def new_state(key: str, ts: int) -> State:
    """An empty profile for ``key``."""
    return {
        "profile": {
            "profile_id": profile_id_for(key),
            "key": key,
            "user_id": None,
            "email": None,
            "identifiers": {"user_ids": {}, "anonymous_ids": {}, "emails": {}, "phones": {}},  # value -> first ts
            "traits": {},
            "trait_times": {},
            "consent": {},
            "consent_times": {},
            "context": {},
            "context_times": {},
            "aggregates": {
                "event_counts": {},
                "kind_counts": {},
                "first_seen": {},
                "last_seen": {},
                "orders": 0,
                "total_spend": 0.0,
                "spend_by_currency": {},
                "first_purchase_at": None,
                "last_purchase_at": None,
            },
            "cart": {},  # product_id -> {product_id, quantity, category, price, currency, cart_id, added_at, ts}
            "cart_meta": {"updated_at": None},  # last cart activity, removals included
            "segments": [],
            "predictions": None,
            "possible_matches": [],
            "created_at": ts,
            "updated_at": ts,
            "version": 0,
        },
        "seen": {},
    }


def _add_identifier(profile: dict[str, Any], field: str, value: str | None, ts: int) -> None:
    if not value:
        return
    bucket: dict[str, int] = profile["identifiers"][field]
    bucket[value] = min(bucket.get(value, ts), ts)


def _ordered(bucket: dict[str, int]) -> list[str]:
    """Identifiers oldest first (ties by value): the same whatever order events arrived in."""
    return [value for value, _ in sorted(bucket.items(), key=lambda item: (item[1], item[0]))]


def _apply_identifiers(profile: dict[str, Any], event: Event, ts: int) -> None:
    for single, plural in ID_FIELDS:
        _add_identifier(profile, plural, event.get(single), ts)
    traits = event.get("traits") or {}
    _add_identifier(profile, "emails", traits.get("email"), ts)
    _add_identifier(profile, "phones", traits.get("phone"), ts)
    ids = profile["identifiers"]
    profile["user_id"] = next(iter(_ordered(ids["user_ids"])), None)
    profile["email"] = next(iter(_ordered(ids["emails"])), None)


def _apply_newest(
    values: dict[str, Any], times: dict[str, list[Any]], updates: dict[str, Any], ts: int, event_id: str
) -> None:
    """Newest non-empty value per field by event time; equal times: the larger event_id wins."""
    stamp = [ts, event_id]
    for field, value in updates.items():
        if value is None or value == "":
            continue
        if stamp >= times.get(field, [-1, ""]):
            values[field] = value
            times[field] = stamp


def _apply_cart(profile: dict[str, Any], event: Event, ts: int) -> None:
    """Cart lines carry their own times, so the cart does not depend on arrival order."""
    agg = profile["aggregates"]
    last_purchase = agg["last_purchase_at"]
    if last_purchase is not None and ts <= last_purchase:
        return  # cart activity before the last purchase: that cart was bought already
    cart = profile["cart"]
    etype = event["type"]
    product = event.get("product_id")
    if etype == "cart_add" and product:
        line = cart.get(product) or {"product_id": product, "quantity": 0, "added_at": ts, "ts": ts}
        line["quantity"] += event.get("quantity", 1)
        for field in ("category", "price", "currency"):
            if event.get(field) is not None:
                line[field] = event[field]
        line["added_at"] = min(line["added_at"], ts)
        if ts >= line["ts"]:
            line["ts"] = ts
            if event.get("cart_id"):
                line["cart_id"] = event["cart_id"]
        cart[product] = line
    elif etype == "cart_remove" and product and product in cart:
        line = cart[product]
        line["quantity"] -= event.get("quantity", 1)
        if line["quantity"] <= 0:
            del cart[product]
    meta = profile["cart_meta"]
    if not cart:
        meta["updated_at"] = None
    else:
        meta["updated_at"] = ts if meta["updated_at"] is None else max(meta["updated_at"], ts)


def _apply_purchase(profile: dict[str, Any], event: Event, ts: int) -> None:
    agg = profile["aggregates"]
    agg["orders"] += 1
    total = float(event.get("total", 0.0))
    agg["total_spend"] = round(agg["total_spend"] + total, 2)
    currency = event.get("currency", "USD")
    agg["spend_by_currency"][currency] = round(agg["spend_by_currency"].get(currency, 0.0) + total, 2)
    first, last = agg["first_purchase_at"], agg["last_purchase_at"]
    agg["first_purchase_at"] = ts if first is None else min(first, ts)
    if last is None or ts > last:
        agg["last_purchase_at"] = ts
        # The purchase closes every cart line last touched at or before it.
        cart = profile["cart"]
        for product in [p for p, line in cart.items() if line.get("ts", 0) <= ts]:
            del cart[product]
        if not cart:
            profile["cart_meta"]["updated_at"] = None


def _prune_seen(seen: dict[str, int], newest: int, retention_ms: int) -> None:
    horizon = newest - retention_ms
    for event_id in [e for e, t in seen.items() if t < horizon]:
        del seen[event_id]


def apply_event(state: State | None, key: str, event: Event, retention_ms: int) -> Applied:
    """Apply one accepted, non-tick event to the profile state of ``key``."""
    ts: int = event["ts"]
    if state is not None:
        seen = state["seen"]
        if event["event_id"] in seen:
            return Applied(state, changed=False, duplicate=True)
    if event["type"] == "erase":
        return Applied(None, changed=state is not None, erased=True)
    if state is None:
        state = new_state(key, ts)
    profile = state["profile"]
    seen = state["seen"]
    seen[event["event_id"]] = ts
    newest = max(seen.values())
    if len(seen) > 64:  # amortize: prune only once the map has grown a little
        _prune_seen(seen, newest, retention_ms)

    _apply_identifiers(profile, event, ts)
    agg = profile["aggregates"]
    etype, kind = event["type"], event["kind"]
    agg["event_counts"][etype] = agg["event_counts"].get(etype, 0) + 1
    agg["kind_counts"][kind] = agg["kind_counts"].get(kind, 0) + 1
    first, last = agg["first_seen"].get(kind), agg["last_seen"].get(kind)
    agg["first_seen"][kind] = ts if first is None else min(first, ts)
    agg["last_seen"][kind] = ts if last is None else max(last, ts)
    if context := event.get("context"):
        _apply_newest(profile["context"], profile["context_times"], context, ts, event["event_id"])

    if kind == "carts":
        _apply_cart(profile, event, ts)
    elif kind == "purchases":
        _apply_purchase(profile, event, ts)
    elif etype == "identify":
        traits = event.get("traits") or {}
        event_id = event["event_id"]
        _apply_newest(profile["traits"], profile["trait_times"], traits, ts, event_id)
        _apply_newest(profile["consent"], profile["consent_times"], event.get("consent") or {}, ts, event_id)

    profile["created_at"] = min(profile["created_at"], ts)
    profile["updated_at"] = max(profile["updated_at"], ts)
    profile["version"] += 1
    return Applied(state, changed=True)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)


def snapshot(state: State) -> dict[str, Any]:
    """The profile as published on ``profiles`` (contract section 5): times as ISO-8601 UTC."""
    p = state["profile"]
    agg = p["aggregates"]
    lines = sorted(p["cart"].values(), key=lambda line: line["product_id"])
    items = [{k: v for k, v in line.items() if k not in CART_LINE_INTERNAL} for line in lines]
    cart = None
    if items:
        newest = max(lines, key=lambda line: (line["ts"], line["product_id"]))
        cart = {
            "cart_id": newest.get("cart_id"),
            "items": items,
            "item_count": sum(line["quantity"] for line in items),
            "value": round(sum(line.get("price", 0.0) * line["quantity"] for line in items), 2),
            "opened_at": _iso(min(line["added_at"] for line in lines)),
            "updated_at": _iso(p["cart_meta"]["updated_at"]),
        }
    return {
        "profile_id": p["profile_id"],
        "user_id": p["user_id"],
        "email": p["email"],
        "identifiers": {field: _ordered(bucket) for field, bucket in p["identifiers"].items()},
        "traits": p["traits"],
        "consent": p["consent"],
        "context": p["context"],
        "aggregates": {
            "event_counts": agg["event_counts"],
            "kind_counts": agg["kind_counts"],
            "first_seen": {k: _iso(v) for k, v in agg["first_seen"].items()},
            "last_seen": {k: _iso(v) for k, v in agg["last_seen"].items()},
            "orders": agg["orders"],
            "total_spend": agg["total_spend"],
            "spend_by_currency": agg["spend_by_currency"],
            "first_purchase_at": _iso(agg["first_purchase_at"]),
            "last_purchase_at": _iso(agg["last_purchase_at"]),
        },
        "cart": cart,
        "segments": p["segments"],
        "predictions": p["predictions"],
        "possible_matches": p["possible_matches"],
        "created_at": _iso(p["created_at"]),
        "updated_at": _iso(p["updated_at"]),
        "version": p["version"],
    }
