"""streams.domain.rules.payload: the trigger payload from a profile snapshot, with fallbacks."""

from __future__ import annotations

from typing import Any

import orjson

from streams.domain.profile import apply_event, snapshot
from streams.domain.rules.payload import FALLBACK_FIRST_NAME, build_payload

T0 = 1_772_359_200_000


def ev(event_id: str, etype: str, ts: int, **fields: Any) -> dict[str, Any]:
    kind = {"identify": "identities"}.get(etype, "carts" if etype.startswith("cart") else "clicks")
    return {"event_id": event_id, "type": etype, "ts": ts, "kind": kind, "user_id": "u-1", **fields}


def real_snapshot(*events: dict[str, Any]) -> dict[str, Any]:
    state = None
    for event in events:
        state = apply_event(state, "u:u-1", event, 7 * 86_400_000).state
    assert state is not None
    return snapshot(state)


def line(product_id: str, quantity: int, **fields: Any) -> dict[str, Any]:
    return {"product_id": product_id, "quantity": quantity, **fields}


def profile(**fields: Any) -> dict[str, Any]:
    return {"profile_id": "p-1", "traits": {}, "context": {}, "cart": None, **fields}


def test_from_a_real_snapshot() -> None:
    snap = real_snapshot(
        ev("i1", "identify", T0, traits={"first_name": " Ana ", "last_name": "Lima"},
           context={"timezone": "Europe/Berlin", "locale": "de-DE"}),
        ev("k1", "cart_add", T0 + 1, product_id="sku-1", price=10.0, quantity=2, currency="EUR", cart_id="c-1",
           category="shoes"),
        ev("k2", "cart_add", T0 + 2, product_id="sku-2", price=5.25, currency="EUR", cart_id="c-1"),
    )
    payload = build_payload(snap, "cart_abandoned", segments=["recent_browsers", "cart_holders"])
    assert payload == {
        "first_name": "Ana",
        "greeting_name": "Ana",
        "last_name": "Lima",
        "locale": "de-DE",
        "timezone": "Europe/Berlin",
        "cart": {
            "cart_id": "c-1",
            "items": [
                {"product_id": "sku-1", "name": "sku-1", "quantity": 2, "price": 10.0, "currency": "EUR",
                 "category": "shoes", "line_total": 20.0},
                {"product_id": "sku-2", "name": "sku-2", "quantity": 1, "price": 5.25, "currency": "EUR",
                 "category": None, "line_total": 5.25},
            ],
            "item_count": 3,
            "value": 25.25,
            "currency": "EUR",
        },
        "recommendations": [],
        "segments": ["cart_holders", "recent_browsers"],
    }
    assert orjson.loads(orjson.dumps(payload)) == payload  # plain JSON


def test_no_traits_no_context_no_cart() -> None:
    for bare in ({}, {"traits": None, "context": None, "cart": None}, profile()):
        payload = build_payload(bare, "welcome", segments=[])
        assert payload == {
            "first_name": FALLBACK_FIRST_NAME,
            "greeting_name": FALLBACK_FIRST_NAME,
            "last_name": None,
            "locale": None,
            "timezone": None,
            "cart": None,
            "recommendations": [],
            "segments": [],
        }


def test_blank_or_odd_first_name_falls_back() -> None:
    for name in ("", "   ", None, 42, ["Ana"]):
        payload = build_payload(profile(traits={"first_name": name, "last_name": "  "}), "welcome", segments=[])
        assert payload["first_name"] == payload["greeting_name"] == "there"
        assert payload["last_name"] is None


def test_blank_context_fields_are_none() -> None:
    payload = build_payload(profile(context={"locale": "", "timezone": "  "}), "welcome", segments=[])
    assert payload["locale"] is None and payload["timezone"] is None


def test_cart_items_with_missing_fields() -> None:
    cart = {"cart_id": None, "items": [line("sku-1", 2, name="Red shoes"), line("sku-2", 1, price=3.0)],
            "item_count": 3, "value": 3.0}
    payload = build_payload(profile(cart=cart), "cart_abandoned", segments=[])
    first, second = payload["cart"]["items"]
    assert first == {"product_id": "sku-1", "name": "Red shoes", "quantity": 2, "price": None, "currency": None,
                     "category": None, "line_total": None}
    assert second["name"] == "sku-2" and second["line_total"] == 3.0
    assert payload["cart"]["currency"] is None and payload["cart"]["cart_id"] is None


def test_line_total_is_rounded() -> None:
    cart = {"items": [line("sku-1", 3, price=0.1)], "item_count": 3, "value": 0.3}
    assert build_payload(profile(cart=cart), "cart_abandoned", segments=[])["cart"]["items"][0]["line_total"] == 0.3


def test_cart_currency_only_when_all_lines_agree() -> None:
    def currency(*currencies: str | None) -> Any:
        items = [line(f"sku-{i}", 1, price=1.0, currency=c) for i, c in enumerate(currencies)]
        cart = {"items": items, "item_count": len(items), "value": float(len(items))}
        return build_payload(profile(cart=cart), "cart_abandoned", segments=[])["cart"]["currency"]

    assert currency("USD", "USD") == "USD"
    assert currency("USD", "EUR") is None
    assert currency("USD", None) is None
    assert currency(None) is None


def test_a_cart_without_items_or_a_sparse_cart() -> None:
    assert build_payload(profile(cart={"items": []}), "cart_abandoned", segments=[])["cart"] is None
    assert build_payload(profile(cart={}), "cart_abandoned", segments=[])["cart"] is None
    sparse = build_payload(profile(cart={"items": [line("sku-1", 2), line("sku-2", 1)]}), "x", segments=[])["cart"]
    assert sparse["item_count"] == 3 and sparse["value"] is None and sparse["cart_id"] is None


def test_recommendations_are_cut_at_five_and_copied() -> None:
    recs = [{"product_id": f"sku-{i}", "score": 1 - i / 10} for i in range(8)]
    payload = build_payload(profile(), "browse_abandoned", segments=[], recommendations=recs)
    assert payload["recommendations"] == recs[:5]
    payload["recommendations"][0]["score"] = 0
    assert recs[0]["score"] == 1
    assert build_payload(profile(), "x", segments=[], recommendations=recs[:2])["recommendations"] == recs[:2]


def test_segments_are_sorted_and_not_aliased() -> None:
    segments = ["recent_buyers", "high_value", "engaged_email"]
    payload = build_payload(profile(), "post_purchase", segments=segments)
    assert payload["segments"] == ["engaged_email", "high_value", "recent_buyers"]
    assert segments == ["recent_buyers", "high_value", "engaged_email"]
    assert build_payload(profile(), "x", segments=("b", "a"))["segments"] == ["a", "b"]


def test_details_are_merged() -> None:
    details = {"order_id": "o-1", "product_id": "sku-9", "days_since_purchase": 3}
    payload = build_payload(profile(traits={"first_name": "Ana"}), "post_purchase", segments=[], details=details)
    assert payload["order_id"] == "o-1" and payload["product_id"] == "sku-9" and payload["days_since_purchase"] == 3
    assert payload["first_name"] == "Ana"
    assert build_payload(profile(), "x", segments=[], details={})["first_name"] == "there"
    # Merged last: a trigger that names a base field decides it.
    assert build_payload(profile(), "x", segments=[], details={"cart": {"items": []}})["cart"] == {"items": []}


def test_the_profile_is_not_changed() -> None:
    cart = {"cart_id": "c-1", "items": [line("sku-1", 2, price=2.0)], "item_count": 2, "value": 4.0}
    snap = profile(traits={"first_name": " Ana "}, cart=cart)
    before = orjson.dumps(snap)
    payload = build_payload(snap, "cart_abandoned", segments=[])
    payload["cart"]["items"][0]["quantity"] = 99
    assert orjson.dumps(snap) == before
