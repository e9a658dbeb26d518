"""A second, independent reference for one narrow slice of contract sections 4 and 5, written from
CONTRACT.md and the README's rules (not from ``streams/``), driven with the watermark moving between
arrivals, so that events arrive late, ahead of the watermark and at equal times across topics.

Slice: one person (every event carries ``user_id``), cart / purchase / identify events, ticks.
Rules as the documents state them:

- each event waits until the watermark reaches it and is then applied in (timestamp, identities <
  clicks < carts < purchases, event id) order; a timer due at T fires before events stamped T; an
  event older than the watermark (late) is applied at once; what was emitted is not taken back;
- the profile's clock is the latest time it was walked to (events and timers applied: the cart,
  post-purchase and winback timers, and the newest purchase's 30 d and 90 d window ends); a segment
  change is stamped with that clock (a late event's change: the clock, not its own older time);
- segments: ``cart_holders`` (non-empty cart), ``recent_buyers`` (a purchase in (t - 30 d, t]),
  ``lapsed_customers`` (a purchase, none in (t - 90 d, t]), ``high_value`` (spend >= 500);
- cart: adds and removes after the last purchase, replayed in event-time order, a quantity never
  below 0; a purchase closes every cart event at or before it;
- triggers (``at`` = the time they are due): ``cart_abandoned`` at the last cart activity + 30 min if
  the cart is still non-empty and no purchase came, once per cart (a cart ends when bought or
  emptied); ``post_purchase`` at the newest purchase + 72 h; ``winback`` at the newest purchase + 90 d;
  ``welcome`` at the first identify that gives the profile an e-mail;
- guardrails: consent ``email`` false (newest by event time) holds a trigger back; at most
  ``per_type`` of a type and ``per_profile`` in all in any 24 h of event time (a window [a, a + 24 h)),
  late triggers counted against those sent after them too (events here are at most 5 days late: the
  README keeps a profile's sends for the dedupe retention, 7 days, and a day).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.timeparse import parse_timestamp
from streams.domain import identity_graph as graph
from streams.domain.config import PipelineConfig
from streams.domain.dispatch import dispatch
from streams.domain.identity import profile_key
from streams.domain.timeline import RuleSet, advance
from tests.integration.expected import accepted_events

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
START = parse_timestamp("2026-03-02T00:00:00Z")
KIND = {"identify": 0, "cart_add": 2, "cart_remove": 2, "checkout_started": 2, "purchase": 3}
SEGMENTS = {"cart_holders", "recent_buyers", "lapsed_customers", "high_value"}


def iso(t: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(t / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Model:
    def __init__(self, per_type: int, per_profile: int) -> None:
        self.per_type, self.per_profile = per_type, per_profile
        self.watermark: int | None = None
        self.parked: list[dict[str, Any]] = []
        self.applied: list[dict[str, Any]] = []
        self.clock: int | None = None
        self.segments: set[str] = set()
        self.changes: list[tuple[str, str, int]] = []
        self.triggers: list[tuple[str, int]] = []
        self.suppressed: list[tuple[str, int, str]] = []
        self.sent: list[tuple[int, str]] = []
        self.email = False
        self.cart_done: int | None = None  # cart_abandoned was due for the cart opened then
        self.timers: dict[str, int] = {}
        self.newest: int | None = None

    # --- derived facts -------------------------------------------------------------------------
    def purchases(self) -> list[dict[str, Any]]:
        return [e for e in self.applied if e["type"] == "purchase"]

    def last_purchase(self) -> int | None:
        return max((e["ts"] for e in self.purchases()), default=None)

    def cart_events(self) -> list[dict[str, Any]]:
        last = self.last_purchase()
        return sorted((e for e in self.applied if KIND.get(e["type"]) == 2 and (last is None or e["ts"] > last)),
                      key=lambda e: (e["ts"], e["event_id"]))

    def cart_items(self) -> int:
        qty: Counter[str] = Counter()
        for e in self.cart_events():
            if e["type"] == "cart_add":
                qty[e["product_id"]] += e.get("quantity", 1)
            elif e["type"] == "cart_remove":
                qty[e["product_id"]] = max(0, qty[e["product_id"]] - e.get("quantity", 1))
        return sum(qty.values())

    def consent(self) -> bool | None:
        given_ = [(e["ts"], e["event_id"], e["consent"]["email"]) for e in self.applied
                  if e["type"] == "identify" and "email" in e.get("consent", {})]
        return max(given_)[2] if given_ else None

    def members(self, t: int) -> set[str]:
        out = set()
        if self.cart_items() > 0:
            out.add("cart_holders")
        times = [e["ts"] for e in self.purchases()]
        if any(t - 30 * DAY < p <= t for p in times):
            out.add("recent_buyers")
        if times and not any(t - 90 * DAY < p <= t for p in times):
            out.add("lapsed_customers")
        if sum(e["total"] for e in self.purchases()) >= 500:
            out.add("high_value")
        return out

    # --- steps ----------------------------------------------------------------------------------
    def fire(self, kind: str, at: int) -> None:
        if self.consent() is False:
            self.suppressed.append((kind, at, "consent_false"))
            return
        if self.per_type and sum(1 for s, k in self.sent if k == kind and abs(s - at) < DAY) >= self.per_type:
            self.suppressed.append((kind, at, "per_type_cap"))
            return
        if self.per_profile:
            for a in [at] + [s for s, _ in self.sent if at - DAY < s <= at]:
                if sum(1 for s, _ in self.sent if a <= s < a + DAY) + 1 > self.per_profile:
                    self.suppressed.append((kind, at, "per_profile_cap"))
                    return
        self.sent.append((at, kind))
        self.triggers.append((kind, at))

    def rearm(self) -> None:
        """Timers as the applied events now say."""
        items = self.cart_items()
        cart = self.cart_events()
        if items > 0 and self.cart_done is None:
            self.timers["cart_abandoned"] = max(e["ts"] for e in cart) + 30 * MIN
        else:
            self.timers.pop("cart_abandoned", None)
        # segment boundaries: only to walk the clock there (a change is evaluated at every step)
        self.timers.pop("segments", None)
        last = self.last_purchase()
        bounds = [] if last is None else [last + 30 * DAY, last + 90 * DAY]
        bounds = [b for b in bounds if self.clock is None or b > self.clock]
        if bounds:
            self.timers["segments"] = min(bounds)

    def apply(self, event: dict[str, Any]) -> None:
        had_email = self.email
        self.applied.append(event)
        if KIND[event["type"]] >= 2 and self.cart_items() == 0:
            self.cart_done = None  # the cart was bought or emptied: a new one may be abandoned again
        if event["type"] == "purchase" and event["ts"] >= (self.newest or event["ts"]):
            # the newest purchase (one at the same time as the newest, read later, counts as newer)
            self.newest = event["ts"]
            self.timers["post_purchase"] = event["ts"] + 72 * HOUR
            self.timers["winback"] = event["ts"] + 90 * DAY
        if event["type"] == "identify" and (event.get("email") or event.get("traits", {}).get("email")):
            self.email = True
            if not had_email:
                self.fire("welcome", event["ts"])
        self.rearm()

    def walk(self) -> None:
        w = self.watermark
        if w is None:
            return
        while True:
            self.parked.sort(key=lambda e: (e["ts"], KIND[e["type"]], e["event_id"]))
            name, due = min(self.timers.items(), key=lambda kv: kv[1], default=(None, None))
            nxt = self.parked[0]["ts"] if self.parked else None
            if due is not None and due <= w and (nxt is None or due <= nxt):
                assert name is not None
                del self.timers[name]
                self.clock = due if self.clock is None else max(self.clock, due)
                if name == "cart_abandoned":
                    self.cart_done = due
                    self.fire("cart_abandoned", due)
                elif name == "post_purchase":
                    self.fire("post_purchase", due)
                elif name == "winback":
                    self.fire("winback", due)
                self.rearm()
            elif nxt is not None and nxt <= w:
                event = self.parked.pop(0)
                self.clock = event["ts"] if self.clock is None else max(self.clock, event["ts"])
                self.apply(event)
            else:
                break
            assert self.clock is not None
            now = self.members(self.clock)
            for seg in sorted(now ^ self.segments):
                self.changes.append((seg, "entered" if seg in now else "exited", self.clock))
            self.segments = now

    def arrive(self, event: dict[str, Any]) -> None:
        self.parked.append(event)
        self.walk()

    def tick(self, t: int) -> None:
        self.watermark = t if self.watermark is None else max(self.watermark, t)
        self.walk()


class Pipeline:
    """The profile hop without a broker, with the watermark given to every record as the stream does."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.states: dict[str, Any] = {}
        self.watermark: int | None = None
        self.changes: list[tuple[str, str, int]] = []
        self.triggers: list[tuple[str, int]] = []

    def _walk(self) -> None:
        for state in self.states.values():
            if graph.holds_someone(state):
                out = advance(state, self.watermark, self.rules, 0)
                self.changes += [(c["segment"], c["change"], parse_timestamp(c["at"])) for c in out.segment_changes
                                 if c["segment"] in SEGMENTS]
                self.triggers += [(t["type"], parse_timestamp(t["at"])) for t in out.triggers]

    def arrive(self, event: dict[str, Any]) -> None:
        queue: deque[tuple[str, dict[str, Any]]] = deque([(profile_key(event), event)])
        while queue:
            key, message = queue.popleft()
            queue.extend(dispatch(self.states, {}, key, message, self.watermark, self.rules).send)
        self._walk()

    def tick(self, t: int) -> None:
        self.watermark = t if self.watermark is None else max(self.watermark, t)
        self._walk()


def rules_for(per_type: int, per_profile: int) -> RuleSet:
    return RuleSet.build(PipelineConfig.model_validate({
        "scoring": {"enabled": False},
        "guardrails": {"per_type_per_day": per_type, "per_profile_per_day": per_profile},
        "triggers": {"browse_abandoned": {"enabled": False}, "birthday": {"enabled": False},
                     "churn_risk": {"enabled": False}},
    }), 7 * DAY)


def history(rng: random.Random) -> list[tuple[str, Any]]:
    """Arrivals: ("event", raw) and ("tick", t), in the order they reach the profile."""
    t = START
    timed: list[tuple[int, int, str, Any]] = []
    for n in range(rng.randint(2, 14)):
        t += rng.choice([0, 0, MIN, 10 * MIN, 29 * MIN, 30 * MIN, 31 * MIN, 2 * HOUR, 20 * HOUR, DAY,
                         3 * DAY, 29 * DAY, 31 * DAY])
        r = rng.random()
        raw: dict[str, Any] = {"event_id": f"e{n:02d}", "timestamp": iso(t), "user_id": "u-1"}
        if r < 0.3:
            raw |= {"type": "cart_add", "product_id": rng.choice("pq"), "quantity": rng.randint(1, 2), "price": 10.0}
        elif r < 0.42:
            raw |= {"type": "cart_remove", "product_id": rng.choice("pq"), "quantity": rng.randint(1, 2)}
        elif r < 0.5:
            raw |= {"type": "checkout_started"}
        elif r < 0.72:
            raw |= {"type": "purchase", "order_id": f"o{n}", "total": rng.choice([100.0, 250.0, 600.0])}
        else:
            raw |= {"type": "identify"}
            if rng.random() < 0.6:
                raw["traits"] = {"email": "ana@example.com"}
            if rng.random() < 0.6:
                raw["consent"] = {"email": rng.random() < 0.7}
        # most arrive at their time, some late (after ticks past them)
        delay = 0 if rng.random() < 0.6 else rng.choice([MIN, 40 * MIN, 5 * HOUR, 2 * DAY, 5 * DAY])
        timed.append((t + delay, rng.randrange(2), "event", raw))
        if rng.random() < 0.5:
            tick = t + rng.choice([0, MIN, 30 * MIN, 3 * HOUR, 2 * DAY])
            timed.append((tick, rng.randrange(2), "tick", tick))
    end = t + rng.choice([HOUR, 100 * DAY])
    timed.append((end + 50 * DAY, 0, "tick", end))
    timed.sort(key=lambda x: (x[0], x[1]))
    return [(kind, value) for _, _, kind, value in timed]


def run_both(arrivals: list[tuple[str, Any]], per_type: int, per_profile: int) -> tuple[Model, Pipeline]:
    model, pipe = Model(per_type, per_profile), Pipeline(rules_for(per_type, per_profile))
    for kind, value in arrivals:
        if kind == "tick":
            model.tick(value)
            pipe.tick(value)
        else:
            [event] = accepted_events([value])
            model.arrive(dict(event))
            pipe.arrive(event)
    return model, pipe


@pytest.mark.parametrize("caps", [(1, 3), (2, 3), (0, 2)])
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
def test_late_and_equal_time_histories_agree_with_the_reference(caps: tuple[int, int], seed: int) -> None:
    arrivals = history(random.Random(seed))
    model, pipe = run_both(arrivals, *caps)
    assert sorted(pipe.triggers) == sorted(model.triggers), arrivals
    assert pipe.changes == model.changes, arrivals


def test_a_late_cart_add_times_the_abandonment_from_the_last_cart_activity() -> None:
    """A cart_remove at 10:20 is applied while its cart_add of 10:00 is still on its way (another
    partition); the add arrives late, at a watermark of 10:45, leaving one item in the cart whose last
    activity is 10:20, and the person buys at 10:48.  The contract: no purchase for 30 minutes after
    the last cart activity, so no cart_abandoned.  Before, the late add timed it from its own 10:00,
    so one was sent at once, stamped 10:30, for a cart bought 28 minutes after its last activity."""
    def at(hour: int, minute: int) -> int:
        return START + hour * HOUR + minute * MIN

    def event(event_id: str, t: int, kind: str, **fields: Any) -> tuple[str, Any]:
        return "event", {"event_id": event_id, "timestamp": iso(t), "user_id": "u-1", "type": kind, **fields}

    arrivals = [("tick", at(10, 0)), event("b", at(10, 20), "cart_remove", product_id="p", quantity=1),
                ("tick", at(10, 45)), event("a", at(10, 0), "cart_add", product_id="p", quantity=2, price=1.0),
                event("d", at(10, 48), "purchase", order_id="o", total=1.0), ("tick", at(11, 30))]
    model, pipe = run_both(arrivals, 1, 3)
    assert model.triggers == []
    assert pipe.triggers == []
    # a cart still open: due 30 minutes after its last activity (10:20), not after the late add's time
    model, pipe = run_both([*arrivals[:4], ("tick", at(11, 30))], 1, 3)
    assert model.triggers == pipe.triggers == [("cart_abandoned", at(10, 50))]
