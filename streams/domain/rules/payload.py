"""The ``payload`` of a trigger (contract section 5): what an e-mail template needs, taken from the
published profile snapshot, with fallbacks so a sparse profile still renders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FALLBACK_FIRST_NAME = "there"  # "Hi there" when the first name is unknown
MAX_RECOMMENDATIONS = 5


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else empty: a missing or malformed section never raises."""
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    """A non-blank string, stripped; else None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _cart_item(item: Mapping[str, Any]) -> dict[str, Any]:
    product_id = item.get("product_id")
    quantity = item.get("quantity", 0)
    price = item.get("price")
    numbers = isinstance(price, int | float) and isinstance(quantity, int | float)
    line_total = round(price * quantity, 2) if numbers else None
    return {
        "product_id": product_id,
        "name": _text(item.get("name")) or product_id,
        "quantity": quantity,
        "price": price,
        "currency": item.get("currency"),
        "category": item.get("category"),
        "line_total": line_total,
    }


def _cart(cart: Mapping[str, Any]) -> dict[str, Any] | None:
    """The open cart as a template shows it; None when there is nothing in it."""
    items = [_cart_item(item) for item in cart.get("items") or () if isinstance(item, Mapping)]
    if not items:
        return None
    currencies = {item["currency"] for item in items}
    item_count = cart.get("item_count")
    if item_count is None:
        item_count = sum(item["quantity"] for item in items if isinstance(item["quantity"], int))
    return {
        "cart_id": cart.get("cart_id"),
        "items": items,
        "item_count": item_count,
        "value": cart.get("value"),
        # One currency for the cart only when every line agrees (a line without one disagrees).
        "currency": next(iter(currencies)) if len(currencies) == 1 else None,
    }


def build_payload(
    profile: Mapping[str, Any],
    trigger_type: str,
    *,
    segments: Sequence[str],
    recommendations: Sequence[Mapping[str, Any]] = (),
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The payload of a ``trigger_type`` trigger for ``profile`` (a :func:`streams.domain.profile.snapshot`).

    ``details`` are the trigger's own fields (order_id, product_id, ...) and are merged last, so they
    win over a same-named base field.  ``trigger_type`` is not used yet: every type shares the base
    fields, and it keeps the call sites stable when one needs its own.
    """
    traits = _mapping(profile.get("traits"))
    context = _mapping(profile.get("context"))
    first_name = _text(traits.get("first_name")) or FALLBACK_FIRST_NAME
    cart = profile.get("cart")
    return {
        "first_name": first_name,
        "greeting_name": first_name,
        "last_name": _text(traits.get("last_name")),
        "locale": _text(context.get("locale")),
        "timezone": _text(context.get("timezone")),
        "cart": _cart(cart) if isinstance(cart, Mapping) else None,
        "recommendations": [dict(rec) for rec in list(recommendations)[:MAX_RECOMMENDATIONS]],
        "segments": sorted(segments),
        **(details or {}),
    }
