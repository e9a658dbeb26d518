"""Renders one example e-mail of every shipped template (HTML and text) into a folder:
``python -m streams.deliver.examples docs/emails``.  The examples under docs/ come from here, and a
test checks they are current."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from streams.deliver.render import Renderer

CART = {"items": [{"product_id": "sku-9", "name": "Stoneware mug, blue", "quantity": 2, "price": 12.5,
                   "currency": "EUR", "line_total": 25.0},
                  {"product_id": "sku-31", "name": "Loose-leaf green tea, 100 g", "quantity": 1, "price": 8.9,
                   "currency": "EUR", "line_total": 8.9}],
        "item_count": 3, "value": 33.9, "currency": "EUR"}
RECOMMENDATIONS = [{"product_id": "sku-12", "name": "Teapot, 1 l"}, {"product_id": "sku-40", "name": "Honey jar"},
                   {"product_id": "sku-7", "name": "Coasters (4)"}]
UNSUBSCRIBE = "https://shop.example.com/unsubscribe?p=p-1f2e3d&e=ana%40example.com&t=0123456789abcdef"


def examples() -> dict[str, dict[str, Any]]:
    base = {"profile_id": "p-1f2e3d", "user_id": "u-17", "email": "ana@example.com",
            "at": "2026-03-01T10:30:00.000Z", "send_at": "2026-03-01T10:30:00.000Z", "predictions": None}
    payload = {"first_name": "Ana", "greeting_name": "Ana", "recommendations": RECOMMENDATIONS,
               "segments": ["cart_holders", "recent_browsers"]}
    return {
        "cart_abandoned": {**base, "type": "cart_abandoned", "payload": {**payload, "cart": CART}},
        "browse_abandoned": {**base, "type": "browse_abandoned",
                             "payload": {**payload, "product_id": "sku-12", "product_name": "Teapot, 1 l"}},
        "post_purchase": {**base, "type": "post_purchase",
                          "payload": {**payload, "order_id": "o-1042", "total": 58.4, "currency": "EUR",
                                      "segments": ["high_value", "recent_buyers"]}},
        "winback": {**base, "type": "winback", "predictions": {"churn_probability": 0.64},
                    "payload": {**payload, "days_since_purchase": 90}},
        "churn_risk": {**base, "type": "churn_risk", "predictions": {"churn_probability": 0.78},
                       "payload": {**payload, "first_name": "there", "greeting_name": "there"}},
        "birthday": {**base, "type": "birthday", "payload": payload},
        "welcome": {**base, "type": "welcome", "payload": {**payload, "recommendations": []}},
    }


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    renderer = Renderer()
    written = []
    for kind, trigger in examples().items():
        out = renderer.render({"trigger_id": f"example-{kind}", **trigger}, UNSUBSCRIBE)
        html = folder / f"{kind}.html"
        html.write_text(out.html.replace("<title>", f"<!-- Subject: {out.subject} -->\n<title>", 1))
        (folder / f"{kind}.txt").write_text(f"Subject: {out.subject}\n\n{out.text}")
        written += [html, folder / f"{kind}.txt"]
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/emails")):
        print(path)
