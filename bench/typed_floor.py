"""A lower bound for the typed-state redesign of the profile hop: what the per-event work costs when
the state is typed msgspec ``Struct`` records (``array_like``, ``gc=False``), decoded and encoded as
MessagePack, and the fold touches only what an event changes.

Not product code, and not a second pipeline: it does a subset of what the real step does per event
(decode the person's state, drop a repeat, fold counts, times, the cart and purchases, keep the
windowed history, set the trigger timers, evaluate the real compiled segments, find the next due
time, encode the state, build and encode the published snapshot) and leaves out the rest (identity
placement and links, parking until the watermark, possible matches, guardrails, trigger payloads,
scoring, the record plumbing).  So its figure is a floor for the work it models, not the gain of
typed state alone: the gap to the real hop also holds what the floor leaves out.

Printed beside it, in the same run: decode + route of the same events (``make bench-hop``'s baseline)
and the real profile hop on the same events.  ``make bench-floor``; BENCH_EVENTS (30000),
BENCH_MIX (``people``; its identifies are folded here without the links the real hop makes).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import msgspec
import orjson

from bench.common import events_end, mixed_events
from bench.profile_hop import internal_records, run_hop
from schemas.timeparse import format_ms
from streams.domain.config import PipelineConfig
from streams.domain.timeline import RuleSet
from streams.gc_tuning import tune_garbage_collector

KINDS = {"product_view": "clicks", "cart_add": "carts", "purchase": "purchases", "identify": "identities"}
MOST_SEEN = 64


class Timer(msgspec.Struct, array_like=True, gc=False):
    due: int
    cause: str
    details: dict[str, Any] | None = None


class Aggregates(msgspec.Struct, array_like=True, gc=False):
    event_counts: dict[str, int] = {}
    kind_counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    orders: int = 0
    total_spend: float = 0.0
    first_purchase_at: int | None = None
    last_purchase_at: int | None = None
    purchases: list[tuple[int, float]] = []


class CartLine(msgspec.Struct, array_like=True, gc=False):
    moves: list[tuple[int, str, int]]
    price: float | None = None


class Profile(msgspec.Struct, array_like=True, gc=False):
    profile_id: str
    key: str
    user_id: str | None
    created_at: int
    updated_at: int
    email: str | None = None
    identifiers: dict[str, dict[str, int]] = {}
    traits: dict[str, Any] = {}
    consent: dict[str, Any] = {}
    context: dict[str, Any] = {}
    aggregates: Aggregates = msgspec.field(default_factory=Aggregates)
    cart: dict[str, CartLine] = {}
    segments: list[str] = []
    predictions: dict[str, Any] | None = None
    version: int = 0


class Rules(msgspec.Struct, array_like=True, gc=False):
    clock: int | None = None
    history: dict[str, list[int]] = {}
    timers: dict[str, Timer] = {}
    flags: dict[str, bool] = {}


class State(msgspec.Struct, array_like=True, gc=False):
    due: int | None
    profile: Profile
    seen: dict[str, int] = {}
    rules: Rules = msgspec.field(default_factory=Rules)
    published: bool = False


class Floor:
    """The subset of the per-event work named in the module docstring, over a dict of encoded states."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.table: dict[str, bytes] = {}
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(State).decode
        self.publish = msgspec.json.Encoder().encode
        cfg = rules.config.triggers
        self.browse_ms = int(cfg.browse_abandoned.delay_minutes * 60_000)
        self.cart_ms = int(cfg.cart_abandoned.delay_minutes * 60_000)
        self.winback_ms = int(cfg.winback.after_days * 86_400_000)
        self.sent = 0

    def apply(self, event: dict[str, Any]) -> None:
        key = "u:" + event["user_id"]
        raw = self.table.get(key)
        ts: int = event["ts"]
        state = self.decode(raw) if raw is not None else State(None, Profile("p-" + key, key, event["user_id"], ts, ts))
        if event["event_id"] in state.seen:
            return
        state.seen[event["event_id"]] = ts
        if len(state.seen) > MOST_SEEN:
            del state.seen[min(state.seen, key=state.seen.__getitem__)]
        p, rs, etype, kind = state.profile, state.rules, event["type"], event["kind"]
        agg = p.aggregates
        agg.event_counts[etype] = agg.event_counts.get(etype, 0) + 1
        agg.kind_counts[kind] = agg.kind_counts.get(kind, 0) + 1
        agg.first_seen[kind] = min(agg.first_seen.get(kind, ts), ts)
        agg.last_seen[kind] = max(agg.last_seen.get(kind, ts), ts)
        p.updated_at = max(p.updated_at, ts)
        p.version += 1
        timers = rs.timers
        if etype == "product_view":
            timers["browse_abandoned"] = Timer(ts + self.browse_ms, event["event_id"],
                                               {"product_id": event.get("product_id")})
        elif etype == "cart_add":
            line = p.cart.get(event["product_id"])
            if line is None:
                line = p.cart[event["product_id"]] = CartLine([], event.get("price"))
            line.moves.append((ts, event["event_id"], int(event.get("quantity", 1))))
            timers["cart_abandoned"] = Timer(ts + self.cart_ms, event["event_id"])
            timers.pop("browse_abandoned", None)
        elif etype == "purchase":
            agg.orders += 1
            agg.total_spend = round(agg.total_spend + float(event.get("total", 0.0)), 2)
            agg.purchases.append((ts, float(event.get("total", 0.0))))
            agg.first_purchase_at = ts if agg.first_purchase_at is None else min(agg.first_purchase_at, ts)
            agg.last_purchase_at = ts if agg.last_purchase_at is None else max(agg.last_purchase_at, ts)
            p.cart = {}
            timers.pop("cart_abandoned", None)
            timers["winback"] = Timer(ts + self.winback_ms, event["event_id"])
        elif etype == "identify":
            p.email = event.get("email") or p.email
            p.traits.update(event.get("traits") or {})
            p.consent.update(event.get("consent") or {})
        window = self.rules.windows.get(etype)
        if window is not None:
            times = rs.history.setdefault(etype, [])
            times.append(ts)
            while times and times[0] <= ts - window:
                del times[0]
        rs.clock = ts if rs.clock is None else max(rs.clock, ts)
        items = sum(max(0, sum(move[2] for move in line.moves)) for line in p.cart.values())
        value = sum((line.price or 0.0) * sum(move[2] for move in line.moves) for line in p.cart.values())
        facts = {"aggregates": {"orders": agg.orders, "total_spend": agg.total_spend}, "traits": p.traits,
                 "consent": p.consent, "context": p.context, "cart": {"item_count": items, "value": value},
                 "predictions": p.predictions or {}}
        members, next_change = self.rules.evaluate_segments(facts, rs.history, rs.clock)
        if next_change is None:
            timers.pop("segments", None)
        else:
            timers["segments"] = Timer(next_change, "")
        p.segments = sorted(members)
        state.due = min((timer.due for timer in timers.values()), default=None)
        self.table[key] = self.encode(state)
        snapshot = {
            "profile_id": p.profile_id, "user_id": p.user_id, "email": p.email, "identifiers": p.identifiers,
            "traits": p.traits, "consent": p.consent, "context": p.context,
            "aggregates": {"event_counts": agg.event_counts, "kind_counts": agg.kind_counts,
                           "first_seen": {k: format_ms(v) for k, v in agg.first_seen.items()},
                           "last_seen": {k: format_ms(v) for k, v in agg.last_seen.items()},
                           "orders": agg.orders, "total_spend": agg.total_spend},
            "cart": {"item_count": items, "value": value} if items else None,
            "segments": p.segments, "predictions": p.predictions,
            "created_at": format_ms(p.created_at), "updated_at": format_ms(p.updated_at), "version": p.version,
        }
        self.sent += len(self.publish(snapshot))


def main() -> None:
    n = int(os.environ.get("BENCH_EVENTS", "30000"))
    mix = os.environ.get("BENCH_MIX", "people")
    tune_garbage_collector()
    raw = mixed_events(n, mix)
    rules = RuleSet.build(PipelineConfig(), 7 * 86_400_000, None)
    events = []
    for value in raw:
        event = orjson.loads(value)
        event["ts"] = event.pop("timestamp")
        event["kind"] = KINDS[event["type"]]
        events.append(event)
    floor = Floor(rules)
    started = time.perf_counter()
    for event in events:
        floor.apply(event)
    floor_s = time.perf_counter() - started
    sizes = [len(value) for value in floor.table.values()]
    people = len(floor.table)
    del floor, events  # the real hop's garbage collector walks only what it holds
    records, routing = internal_records(raw)
    # a closing clock at the last event: the real hop releases every event, whichever topics carry them
    hop_s, applied, _, _ = asyncio.run(run_hop(records, events_end(n), "memory", None, True))
    print(f"typed floor: {n:,} events ({mix}), {people:,} people, "
          f"{sum(sizes) / len(sizes):.0f} bytes per state")
    print(f"  decode + route (baseline)  {routing / n * 1e6:7.1f} us per event")
    print(f"  typed floor                {floor_s / n * 1e6:7.1f} us per event")
    print(f"  profile hop (today)        {hop_s / n * 1e6:7.1f} us per event  ({applied:,.0f} applied)")


if __name__ == "__main__":
    main()
