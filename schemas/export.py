"""``mailpulse schemas``: one JSON Schema file per topic message type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter

from schemas import events, outputs

#: file stem -> what it describes (topic message types)
SCHEMAS: dict[str, Any] = {
    "input-event": events.INPUT_EVENT_ADAPTER,
    "clicks": events.ClickEvent,
    "carts": events.CartEvent,
    "purchases": events.PurchaseEvent,
    "identities.identify": events.IdentifyEvent,
    "identities.erase": events.EraseEvent,
    "tick": events.TickEvent,
    "profiles": outputs.Profile,
    "segment-changes": outputs.SegmentChange,
    "triggers": outputs.Trigger,
    "scores": outputs.Score,
    "dead-letter": outputs.DeadLetter,
    "delivery-failed": outputs.DeliveryFailed,
}


def json_schema(target: Any) -> dict[str, Any]:
    if isinstance(target, TypeAdapter):
        schema: dict[str, Any] = target.json_schema()
    else:
        schema = target.model_json_schema()
    schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
    return schema


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, target in SCHEMAS.items():
        path = out_dir / f"{stem}.schema.json"
        path.write_bytes(orjson.dumps(json_schema(target), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        written.append(path)
    return written
