"""Property test of contract 3 (v1.1): whatever the input (any JSON type in any field, any nesting, any
size, numbers that overflow), ingest either accepts it with finite numbers or dead-letters it with a
code, and nothing escapes.  What is accepted must also encode, route, fold, score and publish.

Each hypothesis example is a batch of events (one ingest batch), so the 2,000 examples of a run
cover over 100,000 inputs; ``derandomize`` keeps CI's cases the same from run to run.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.bundle import SHIPPED_DIR, ModelBundle
from models.scoring import Predictor
from schemas.events import KNOWN_TYPES
from streams.domain.config import PipelineConfig
from streams.domain.dispatch import LocalPipeline
from streams.domain.timeline import RuleSet
from streams.ingest import Accepted, IngestPolicy, Rejected, Source, decode
from streams.routing import route_batch

EXAMPLES = int(os.environ.get("PROP_EXAMPLES", "2000"))
BATCH = 55
#: Event types each drawn damage is applied to.
PER_DAMAGE = 5
NOW = 1_772_400_000_000
POLICY = IngestPolicy(max_future_ms=86_400_000)
T0 = 1_772_359_200_000
CODES = {"empty", "too_large", "not_json", "not_object", "unknown_type", "missing_field", "bad_timestamp",
         "invalid_identifier", "schema", "future_timestamp"}

#: A valid event of each type, which the fuzzer then damages field by field.
VALID: dict[str, dict[str, Any]] = {
    "product_view": {"product_id": "sku-1", "category": "books", "url": "https://shop/p/1",
                     "context": {"device": "mobile", "timezone": "Europe/Berlin"}},
    "search": {"query": "red shoes"},
    "email_click": {"campaign_id": "c-1"},
    "cart_add": {"product_id": "sku-1", "quantity": 2, "price": 9.5, "currency": "eur", "cart_id": "k-1"},
    "cart_remove": {"product_id": "sku-1"},
    "checkout_started": {},
    "purchase": {"order_id": "o-1", "total": 19.0, "items": [{"product_id": "sku-1", "quantity": 2, "price": 9.5}]},
    "identify": {"traits": {"first_name": "Ana", "last_name": "Lee", "email": "ana@example.com",
                            "phone": "+14155550100", "birthday": "1990-02-28", "city": "Lyon", "postcode": "69001",
                            "tier": "gold"},
                 "consent": {"email": True}, "source": "crm", "phone": "+14155550101"},
    "erase": {},
    "tick": {},
}
#: Paths the fuzzer may set, top level and nested.
PATHS = ["event_id", "type", "timestamp", "user_id", "anonymous_id", "email", "phone", "context",
         "context.timezone", "context.device", "url", "product_id", "category", "query", "campaign_id", "cart_id",
         "quantity", "price", "currency", "order_id", "total", "items", "items.0", "items.0.price",
         "items.0.quantity", "items.0.product_id", "traits", "traits.first_name", "traits.email", "traits.phone",
         "traits.birthday", "traits.tier", "traits.extra", "consent", "consent.email", "source"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e308, -1e308, 0.0, 2**63, 2**64])
           | st.text(max_size=20) | st.sampled_from(["", " ", "undefined", "NULL", "2026-03-01T10:00:00Z",
                                                     "x" * 600, "a@b.co", "+1 415 555 0100"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


@st.composite
def damages(draw: st.DrawFn) -> tuple[int, Any, list[tuple[list[str], Any]]]:
    """What to do to an event: (seed of its id, time and identifier; a whole message instead, or None;
    the (path, value) pairs to set)."""
    whole = json.dumps(draw(json_values)).encode() if draw(st.integers(0, 19)) == 0 else None
    changes = []
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS)).split(".")
        value = draw(json_values) if draw(st.integers(0, 9)) else _nested(draw(st.sampled_from([9, 60, 300, 900])))
        changes.append((path, value))
    return draw(st.integers(0, 10**6)), whole, changes


TYPES = sorted(VALID)
IDENTIFIERS = [("user_id", "u-1"), ("anonymous_id", "a-1"), ("email", "b@example.com"), ("user_id", "u-2"),
               ("anonymous_id", "undefined")]


def damaged(seed: int, whole: Any, changes: list[tuple[list[str], Any]], etype: str) -> bytes:
    """A valid event of ``etype`` with ``changes`` applied (or the ``whole`` message), as JSON bytes."""
    if whole is not None:
        return bytes(whole)
    field, value_ = IDENTIFIERS[seed % len(IDENTIFIERS)]
    event: dict[str, Any] = {"event_id": f"e-{seed % 300}", "type": etype,
                             "timestamp": T0 + seed * 1000 % (3 * 86_400_000), field: value_,
                             **json.loads(json.dumps(VALID[etype]))}
    for path, value in changes:
        target: Any = event
        for part in path[:-1]:
            nxt = target.get(part) if isinstance(target, dict) else (
                target[int(part)] if isinstance(target, list) and part.isdigit() and int(part) < len(target) else None)
            if not isinstance(nxt, dict | list):
                break
            target = nxt
        else:
            last = path[-1]
            if isinstance(target, dict):
                target[last] = value
            elif isinstance(target, list) and last.isdigit() and int(last) < len(target):
                target[int(last)] = value
    return json.dumps(event).encode()  # the standard library writes big ints, orjson would refuse them


def _all_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


RULES = RuleSet.build(PipelineConfig(), 7 * 86_400_000, Predictor(ModelBundle.load(SHIPPED_DIR)))


def test_any_input_is_accepted_safely_or_dead_lettered_with_a_code() -> None:
    seen = {"inputs": 0, "accepted": 0, "outputs": 0}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(damages(), min_size=BATCH // PER_DAMAGE, max_size=BATCH // PER_DAMAGE))
    def batch(drawn: list[tuple[int, Any, list[tuple[list[str], Any]]]]) -> None:
        # each damage applied to several event types: many inputs for few (costly) draws
        raws = [damaged(seed, whole, changes, TYPES[(seed + k) % len(TYPES)])
                for seed, whole, changes in drawn for k in range(PER_DAMAGE)]
        accepted = []
        for n, raw in enumerate(raws):
            result = decode(raw, Source("clicks", 0, n, None, NOW), NOW, POLICY)  # nothing may escape
            if isinstance(result, Rejected):
                assert result.code in CODES, result.record["error"]
                orjson.dumps(result.record)
            else:
                assert isinstance(result, Accepted)
                assert result.event["type"] in KNOWN_TYPES and _all_finite(result.event)
                orjson.dumps(result.event)
                if result.event["type"] != "tick":
                    accepted.append(result.event)
        seen["inputs"] += len(raws)
        seen["accepted"] += len(accepted)
        # the same batch through the ingest agent's routing: nothing raised inside it either
        codes: list[str] = []
        route_batch([("clicks", 0, n, None, raw, None) for n, raw in enumerate(raws)], 4, NOW, POLICY,
                    lambda partition, record: None, lambda topic, code, key, letter: codes.append(code))
        assert "processing_error" not in codes
        # fold, score and publish what was accepted
        local = LocalPipeline(RULES)
        local.feed(accepted)
        run = local.advance(T0 + 40 * 86_400_000)
        for output in (*run.profiles.values(), *run.segment_changes, *run.triggers, *run.scores):
            assert _all_finite(output), output
            orjson.dumps(output)
            seen["outputs"] += 1

    batch()
    print(f"{seen['inputs']:,} inputs, {seen['accepted']:,} accepted, {seen['outputs']:,} outputs")
    assert seen["inputs"] >= 100_000
    assert seen["accepted"] > 10_000 and seen["outputs"] > 10_000  # the fuzzer does reach the rules
