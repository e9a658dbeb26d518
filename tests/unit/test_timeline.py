"""streams.domain.timeline: event-time order up to the watermark, timers, segment changes, triggers."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from schemas.timeparse import parse_timestamp
from streams.domain.config import PipelineConfig
from streams.domain.identity import profile_key
from streams.domain.merge import merge_states
from streams.domain.timeline import RuleSet, advance, next_due, receive, trigger_id
from streams.ingest import Accepted, Source, decode

T0 = "2026-03-01T10:00:00Z"
MIN = 60_000
DAY = 86_400_000
RULES = RuleSet.build(PipelineConfig(), 7 * DAY)


def ms(iso: str) -> int:
    return parse_timestamp(iso)


def ev(event_id: str, etype: str, at: int, user: str = "u-1", **extra: Any) -> dict[str, Any]:
    """A decoded (accepted) event, as the ingest agent forwards it."""
    raw = {"event_id": event_id, "type": etype, "timestamp": at, "user_id": user, **extra}
    result = decode(orjson.dumps(raw), Source("t", 0, 0, None, 0), 0)
    assert isinstance(result, Accepted), result
    return result.event


class Person:
    """One profile driven through receive/advance, collecting what it emits."""

    def __init__(self, rules: RuleSet = RULES) -> None:
        self.rules = rules
        self.state: dict[str, Any] | None = None
        self.changes: list[tuple[str, str, str]] = []
        self.triggers: list[dict[str, Any]] = []
        self.scores: list[dict[str, Any]] = []
        self.suppressed: list[tuple[str, str]] = []
        self.late = 0
        self.watermark: int | None = None

    def arrive(self, *events: dict[str, Any]) -> Person:
        for event in events:
            got = receive(self.state, profile_key(event), event, self.watermark, self.rules)
            self.state = got.state
            self.late += got.late
        return self

    def to(self, watermark: int) -> Person:
        self.watermark = watermark
        assert self.state is not None
        out = advance(self.state, watermark, self.rules, 0)
        self.changes += [(c["segment"], c["change"], c["at"]) for c in out.segment_changes]
        self.triggers += out.triggers
        self.scores += out.scores
        self.suppressed += out.suppressed
        return self

    def types(self) -> list[tuple[str, str]]:
        return [(t["type"], t["at"]) for t in self.triggers]


def test_events_wait_for_the_watermark_and_are_applied_in_event_time_order() -> None:
    t = ms(T0)
    person = Person().arrive(ev("p-1", "purchase", t + 10 * MIN, order_id="o-1", total=20.0),
                             ev("k-1", "cart_add", t, product_id="sku-1", price=20.0))
    assert person.state is not None and person.state["profile"]["version"] == 0  # parked
    assert next_due(person.state) == t
    person.to(t + 5 * MIN)
    assert person.state["profile"]["cart"] != {}
    assert ("cart_holders", "entered", "2026-03-01T10:00:00.000Z") in person.changes
    person.to(t + 60 * MIN)
    # the purchase read first still closes the cart it followed: no abandonment
    assert person.types() == []
    assert ("cart_holders", "exited", "2026-03-01T10:10:00.000Z") in person.changes


def test_cart_abandoned_exactly_at_the_delay_and_not_when_bought_a_second_earlier() -> None:
    t = ms(T0)
    left = Person().arrive(ev("k-1", "cart_add", t, product_id="sku-1", price=5.0)).to(t + 30 * MIN - 1)
    assert left.types() == []
    left.to(t + 30 * MIN)
    assert left.types() == [("cart_abandoned", "2026-03-01T10:30:00.000Z")]
    assert left.triggers[0]["trigger_id"] == trigger_id(left.state["profile"]["profile_id"], "cart_abandoned", "k-1")  # type: ignore[index]

    bought = Person().arrive(ev("k-1", "cart_add", t, product_id="sku-1", price=5.0),
                             ev("p-1", "purchase", t + 30 * MIN - 1000, order_id="o", total=5.0)).to(t + 2 * 60 * MIN)
    assert [tr for tr in bought.types() if tr[0] == "cart_abandoned"] == []

    # a purchase stamped exactly at the deadline comes too late: the timer at T fires before events at T
    late_buy = Person().arrive(ev("k-1", "cart_add", t, product_id="sku-1", price=5.0),
                               ev("p-1", "purchase", t + 30 * MIN, order_id="o", total=5.0)).to(t + 2 * 60 * MIN)
    assert ("cart_abandoned", "2026-03-01T10:30:00.000Z") in late_buy.types()


def test_cart_abandoned_once_per_cart_and_new_activity_moves_the_deadline() -> None:
    t = ms(T0)
    person = Person().arrive(ev("k-1", "cart_add", t, product_id="a", price=1.0),
                             ev("k-2", "cart_add", t + 20 * MIN, product_id="b", price=1.0)).to(t + 45 * MIN)
    assert person.types() == []  # the second add moved the deadline to 10:50
    person.to(t + 50 * MIN)
    assert person.types() == [("cart_abandoned", "2026-03-01T10:50:00.000Z")]
    assert person.triggers[0]["trigger_id"].startswith(trigger_id(person.state["profile"]["profile_id"],  # type: ignore[index]
                                                                  "cart_abandoned", "k-2")[:8])
    person.arrive(ev("k-3", "cart_add", t + 60 * MIN, product_id="c", price=1.0)).to(t + 3 * 60 * MIN)
    assert len(person.types()) == 1  # same cart: once
    # bought, then a new cart: a new abandonment is due (and held back by the 1-per-type-per-day cap)
    person.arrive(ev("p-1", "purchase", t + 4 * 60 * MIN, order_id="o", total=3.0),
                  ev("k-4", "cart_add", t + 5 * 60 * MIN, product_id="d", price=1.0)).to(t + 6 * 60 * MIN)
    assert person.suppressed == [("cart_abandoned", "per_type_cap")]
    person.arrive(ev("k-5", "cart_add", t + DAY + 6 * 60 * MIN, product_id="e", price=1.0)).to(t + 2 * DAY)
    assert len(person.types()) == 1  # still the same (unbought) cart: once


def test_time_alone_moves_segments_with_the_exact_event_time() -> None:
    t = ms(T0)
    person = Person().arrive(ev("v-1", "product_view", t, product_id="sku-1")).to(t)
    assert person.changes == [("recent_browsers", "entered", "2026-03-01T10:00:00.000Z")]
    person.to(t + 2 * DAY - 1)
    assert len(person.changes) == 1
    person.to(t + 10 * DAY)  # nobody sent anything: the watermark alone passed 48 h
    assert person.changes[1] == ("recent_browsers", "exited", "2026-03-03T10:00:00.000Z")


def test_lapsed_customer_and_winback_after_90_days_without_a_purchase() -> None:
    t = ms(T0)
    person = Person().arrive(ev("p-1", "purchase", t, order_id="o-1", total=600.0)).to(t + 200 * DAY)
    entered = {(seg, at) for seg, change, at in person.changes if change == "entered"}
    assert ("high_value", "2026-03-01T10:00:00.000Z") in entered
    assert ("recent_buyers", "2026-03-01T10:00:00.000Z") in entered
    assert ("lapsed_customers", "2026-05-30T10:00:00.000Z") in entered
    assert ("recent_buyers", "exited", "2026-03-31T10:00:00.000Z") in person.changes
    assert ("winback", "2026-05-30T10:00:00.000Z") in person.types()
    assert ("post_purchase", "2026-03-04T10:00:00.000Z") in person.types()


def test_welcome_and_birthday_and_consent() -> None:
    t = ms(T0)
    person = Person().arrive(ev("i-1", "identify", t, traits={"email": "a@example.com", "birthday": "1990-03-05",
                                                             "first_name": "Ana"})).to(t + 400 * DAY)
    types = person.types()
    assert types[0] == ("welcome", "2026-03-01T10:00:00.000Z")
    assert ("birthday", "2026-03-05T09:00:00.000Z") in types and ("birthday", "2027-03-05T09:00:00.000Z") in types
    assert person.triggers[0]["payload"]["first_name"] == "Ana"

    refused = Person().arrive(ev("i-1", "identify", t, traits={"email": "b@example.com"}, consent={"email": False}),
                              ev("k-1", "cart_add", t + MIN, product_id="x", price=1.0)).to(t + DAY)
    assert refused.triggers == []
    assert sorted(refused.suppressed) == [("cart_abandoned", "consent_false"), ("welcome", "consent_false")]


@pytest.mark.parametrize(
    ("stored", "require", "expected"),
    [
        ({"Email": False}, False, [("cart_abandoned", "consent_false")]),
        ({"email": True, " EMAIL": False}, False, [("cart_abandoned", "consent_false")]),  # one time: withdrawn
        ({"Email": True}, True, []),
        ({"Emails": False, "sms": False}, True, [("cart_abandoned", "no_consent")]),
    ],
)
def test_a_consent_stored_under_another_spelling_is_read_as_events_name_it_now(
        stored: dict[str, bool], require: bool, expected: list[tuple[str, str]]) -> None:
    """A state an earlier version stored keeps the channel names its events gave (``{"Email": false}``):
    the step reads them as events name them now, so a withdrawal so spelled holds triggers back."""
    t = ms(T0)
    rules = RuleSet.build(PipelineConfig.model_validate({"guardrails": {"require_consent": require}}), 7 * DAY)
    person = Person(rules).arrive(ev("i-1", "identify", t, traits={"email": "a@example.com"})).to(t)
    assert person.state is not None
    person.state["profile"]["consent"] = dict(stored)
    person.state["profile"]["consent_times"] = {name: [t, "i-1"] for name in stored}
    person.triggers, person.suppressed = [], []  # (the identify's welcome)
    person.arrive(ev("k-1", "cart_add", t + MIN, product_id="x", price=1.0)).to(t + DAY)
    assert person.suppressed == expected and len(person.triggers) == (not expected)
    assert all(name == name.strip().casefold() for name in person.state["profile"]["consent"])


def test_a_consent_given_again_after_a_withdrawal_stored_under_another_spelling_counts() -> None:
    """The newest word wins, as between events: a withdrawal stored as ``{"Email": false}`` before channel
    names were folded does not outweigh the person's later consent (it did, read beside ``email``)."""
    t = ms(T0)
    person = Person().arrive(ev("i-1", "identify", t, traits={"email": "a@example.com"})).to(t)
    assert person.state is not None
    person.state["profile"]["consent"] = {"Email": False}
    person.state["profile"]["consent_times"] = {"Email": [t, "i-1"]}
    person.triggers = []  # (the identify's welcome)
    person.arrive(ev("i-2", "identify", t + MIN, consent={"email": True}),
                  ev("k-1", "cart_add", t + 2 * MIN, product_id="x", price=1.0)).to(t + DAY)
    assert person.state["profile"]["consent"] == {"email": True}
    assert person.suppressed == [] and [t["type"] for t in person.triggers] == ["cart_abandoned"]


def test_caps_hold_back_a_second_trigger_of_a_type_within_24_hours() -> None:
    t = ms(T0)
    person = Person().arrive(ev("k-1", "cart_add", t, product_id="a", price=1.0),
                             ev("r-1", "cart_remove", t + MIN, product_id="a"),
                             ev("k-2", "cart_add", t + 2 * MIN, product_id="b", price=1.0)).to(t + 40 * MIN)
    assert person.suppressed == []  # the emptied cart's timer was cancelled: nothing to hold back
    assert person.types() == [("cart_abandoned", "2026-03-01T10:32:00.000Z")]
    person.arrive(ev("p-1", "purchase", t + 60 * MIN, order_id="o", total=1.0),
                  ev("k-3", "cart_add", t + 2 * 60 * MIN, product_id="c", price=1.0)).to(t + DAY)
    assert person.suppressed == [("cart_abandoned", "per_type_cap")]
    # exactly 24 h after the first one, the cap allows the next
    person.arrive(ev("p-2", "purchase", t + DAY, order_id="o2", total=1.0),
                  ev("k-4", "cart_add", t + DAY + 2 * MIN, product_id="d", price=1.0)).to(t + 2 * DAY)
    assert person.types()[-1] == ("cart_abandoned", "2026-03-02T10:32:00.000Z")


def test_late_event_is_applied_and_counted_but_decisions_stay() -> None:
    t = ms(T0)
    person = Person().arrive(ev("k-1", "cart_add", t, product_id="a", price=1.0)).to(t + 40 * MIN)
    assert [x[0] for x in person.types()] == ["cart_abandoned"]
    person.arrive(ev("p-1", "purchase", t + 20 * MIN, order_id="o", total=1.0))
    assert person.late == 1
    person.to(t + 40 * MIN)
    assert person.state is not None and person.state["profile"]["aggregates"]["orders"] == 1
    assert [x[0] for x in person.types()] == ["cart_abandoned"]  # not taken back


def _history(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    t = ms(T0)
    events = []
    for n in range(120):
        t += rng.randint(0, 40) * MIN
        kind = rng.choice(["product_view", "cart_add", "cart_add", "cart_remove", "purchase", "email_open",
                           "identify"])
        extra: dict[str, Any] = {}
        if kind in ("cart_add", "cart_remove", "product_view"):
            extra["product_id"] = rng.choice("abc")
        if kind == "cart_add":
            extra["price"] = 10.0
        if kind == "purchase":
            extra.update(order_id=f"o-{n}", total=float(rng.randint(1, 300)))
        if kind == "identify":
            extra["traits"] = {"email": "x@example.com", "birthday": "1991-03-02"}
        events.append(ev(f"e-{n}", kind, t, **extra))
    return events


def _scored_rules() -> RuleSet:
    from models.bundle import SHIPPED_DIR, ModelBundle
    from models.scoring import Predictor

    return RuleSet.build(PipelineConfig(), 7 * DAY, Predictor(ModelBundle.load(SHIPPED_DIR)))


@pytest.mark.parametrize("scored", [False, True], ids=["no-model", "shipped-model"])
@pytest.mark.parametrize("seed", range(8))
def test_same_outputs_whatever_the_arrival_order_and_watermark_steps(seed: int, scored: bool) -> None:
    rules = _scored_rules() if scored else RULES
    events = _history(seed)
    end = events[-1]["ts"] + 200 * DAY
    in_order = Person(rules)
    for event in events:
        in_order.arrive(event).to(event["ts"])
    in_order.to(end)

    rng = random.Random(seed)
    shuffled = Person(rules)
    pending = list(events)
    rng.shuffle(pending)
    # arrival out of order, but the watermark only passes what has arrived (no late events)
    while pending:
        chunk, pending = pending[: rng.randint(1, 15)], pending
        pending = pending[len(chunk):]
        shuffled.arrive(*chunk)
        missing = [e["ts"] for e in pending]
        if missing:
            shuffled.to(min(missing) - 1)
    shuffled.to(end)
    assert shuffled.late == 0
    assert sorted(t["trigger_id"] for t in shuffled.triggers) == sorted(t["trigger_id"] for t in in_order.triggers)
    assert shuffled.changes == in_order.changes
    assert in_order.triggers  # the history does produce triggers
    assert shuffled.state is not None and in_order.state is not None
    assert shuffled.state["profile"]["segments"] == in_order.state["profile"]["segments"]
    assert shuffled.state["profile"]["predictions"] == in_order.state["profile"]["predictions"]
    assert (shuffled.state["profile"]["predictions"] is not None) == scored


def test_erase_forgets_the_person_and_a_replay_of_older_events_brings_nothing_back() -> None:
    t = ms(T0)
    history = [ev("i-1", "identify", t, traits={"email": "a@example.com"}),
               ev("k-1", "cart_add", t + MIN, product_id="a", price=1.0)]
    person = Person().arrive(*history).to(t + 2 * MIN)
    person.arrive(ev("x-1", "erase", t + 3 * MIN))
    assert person.state == {"erased_at": t + 3 * MIN}
    person.arrive(*history, ev("x-1", "erase", t + 3 * MIN)).to(t + DAY)
    assert person.state == {"erased_at": t + 3 * MIN}
    assert [x[0] for x in person.types()] == ["welcome"]  # from before the erasure; the cart timer is gone
    # activity after the erasure is a new profile (that still ignores the old events)
    person.arrive(ev("v-9", "product_view", t + DAY + MIN, product_id="b")).to(t + DAY + MIN)
    assert person.state is not None and person.state["profile"]["aggregates"]["event_counts"] == {"product_view": 1}
    person.arrive(*history).to(t + DAY + 2 * MIN)
    assert person.state["profile"]["aggregates"]["event_counts"] == {"product_view": 1}


def test_an_erase_stamped_before_the_window_of_remembered_ids_still_erases() -> None:
    """Past the bound of seen ids the oldest are forgotten, and anything stamped before the newest of
    them counts as a repeat.  An erase is never a repeat: one that arrives late, stamped before that
    window, erased nothing before (the person's profile stayed as it was)."""
    t = ms(T0)
    got = receive(None, "u:u-1", ev("v-1", "product_view", t + 10 * MIN, product_id="a"), None, RULES)
    assert got.state is not None
    got.state["seen_from"] = t + 8 * MIN  # ids of events before this were forgotten
    erased = receive(got.state, "u:u-1", ev("x-1", "erase", t + 5 * MIN), None, RULES)
    assert erased.outcome == "erased"
    assert erased.state is not None and erased.state["erased_at"] == t + 5 * MIN
    assert [entry[2] for entry in erased.state["pending"]] == ["v-1"]  # stamped after it: a new profile


@pytest.mark.parametrize("most", [1000, 40])
def test_a_profile_parks_at_most_a_bound_while_the_watermark_is_held_back(most: int) -> None:
    rules = RULES if most == 1000 else RuleSet.build(PipelineConfig.model_validate(
        {"limits": {"parked_events": most}}), RULES.retention_ms)
    assert rules.limits.parked_events == most
    state = None
    t0 = ms("2026-03-01T10:00:00Z")
    for n in range(most + 200):
        got = receive(state, "u:u-1", ev(f"v{n}", "product_view", t0 + n, product_id="sku-1"), None, rules)
        state = got.state
    assert state is not None and len(state["pending"]) == most + 200
    out = advance(state, None, rules, 0)  # no watermark at all: an input partition carried nothing
    assert out.released_early == 200 and len(out.released) == 200
    assert len(state["pending"]) == most
    assert [e["event_id"] for e in out.released] == [f"v{n}" for n in range(200)]  # the oldest first
    assert state["profile"]["aggregates"]["event_counts"] == {"product_view": 200}


def test_an_event_older_than_the_dedupe_window_is_a_duplicate_that_says_so() -> None:
    """A person active for 20 days forgets the ids of their first 13 (the 7-day retention): an event
    stamped back then with an id never seen is dropped as a duplicate (a replay must not count twice),
    flagged ``before_dedupe`` so it is counted apart; a repeat of a held id is not flagged."""

    state: Any = None
    t = ms(T0)
    for n in range(200):
        got = receive(state, "u:u-1", ev(f"v{n}", "product_view", t + n * DAY // 10, product_id="a"), None, RULES)
        assert got.outcome == "processed"
        state = got.state
    old = receive(state, "u:u-1", ev("new-old", "product_view", t + DAY, product_id="a"), None, RULES)
    assert old.outcome == "duplicate" and old.before_dedupe
    again = receive(state, "u:u-1", ev("v199", "product_view", t + 199 * DAY // 10, product_id="a"), None, RULES)
    assert again.outcome == "duplicate" and not again.before_dedupe
    recent = receive(state, "u:u-1", ev("new-recent", "product_view", t + 19 * DAY, product_id="a"), None, RULES)
    assert recent.outcome == "processed" and not recent.before_dedupe


def test_a_late_events_trigger_counts_against_the_caps_with_the_triggers_sent_after_it() -> None:
    """Contract 5: at most three triggers per profile in any 24 h.  Three went out from 07:00 to 09:00;
    a late identify stamped 05:00 then gives the profile its e-mail, and its welcome (05:00) would be
    the fourth within 24 h: it is held back, as it would have been in time order."""
    hour = 60 * MIN
    t = ms("2026-03-02T06:00:00Z")
    p = Person()
    p.arrive(ev("i-1", "identify", t - 10 * hour, traits={"birthday": "1990-03-02"}))  # no e-mail yet
    p.arrive(ev("v-1", "product_view", t, product_id="sku-1"))  # browse_abandoned 07:00
    p.arrive(ev("k-1", "cart_add", t + 90 * MIN, product_id="sku-2", price=5.0))  # cart_abandoned 08:00
    p.to(t + 4 * hour)  # and the birthday at 09:00
    assert len(p.triggers) == 3, p.types()
    p.arrive(ev("i-2", "identify", t - hour, traits={"email": "ana@example.com"}))
    p.to(t + 5 * hour)
    assert len(p.triggers) == 3, p.types()
    assert ("welcome", "per_profile_cap") in p.suppressed


@pytest.mark.parametrize(("zone", "expected"), [("America/Los_Angeles", "2026-03-05T17:00:00.000Z"),
                                                ("Pacific/Auckland", "2026-03-04T20:00:00.000Z")])
def test_the_birthday_follows_a_time_zone_learnt_after_the_birthday(zone: str, expected: str) -> None:
    """README: the birthday at ``hour`` (9) in the profile's time zone.  The zone came with a later
    event's context; the timer had been set in UTC and stayed there (in Auckland the e-mail then
    landed on the day after the birthday)."""
    t = ms("2026-03-01T10:00:00Z")
    p = Person()
    p.arrive(ev("i-1", "identify", t, traits={"birthday": "1990-03-05"}))
    p.arrive(ev("c-1", "page_view", t + MIN, context={"timezone": zone}))
    p.to(t + 6 * DAY)
    assert [at for kind, at in p.types() if kind == "birthday"] == [expected]


def test_a_time_zone_that_puts_the_birthday_before_the_clock_fires_it_at_once() -> None:
    """09:00 in Tokyo on 5 March is 00:00 UTC; the zone comes at 08:00 UTC that day, with the UTC timer
    (09:00) not fired yet: this year's birthday goes out, stamped with its moment, not next year's."""
    t = ms("2026-03-05T08:00:00Z")
    p = Person()
    p.arrive(ev("i-1", "identify", t - 2 * DAY, traits={"birthday": "1990-03-05"}))
    p.to(t - MIN)
    p.arrive(ev("c-1", "page_view", t, context={"timezone": "Asia/Tokyo"}))
    p.to(t + MIN)
    assert [at for kind, at in p.types() if kind == "birthday"] == ["2026-03-05T00:00:00.000Z"]
    assert p.state["rules"]["timers"]["birthday"][1] == "birthday:2027"


def test_a_time_zone_west_of_utc_learnt_after_the_utc_moment_keeps_this_years_birthday() -> None:
    """The birthday learnt at 10:00 UTC on the day (after 09:00 UTC: the timer went to next year), the
    zone a minute later: 09:00 in Los Angeles is 17:00 UTC, still to come.  It was skipped to 2027."""
    t = ms("2026-03-05T10:00:00Z")
    p = Person()
    p.arrive(ev("i-1", "identify", t, traits={"birthday": "1990-03-05"}),
             ev("c-1", "page_view", t + MIN, context={"timezone": "America/Los_Angeles"}))
    p.to(t + 2 * DAY)
    assert [at for kind, at in p.types() if kind == "birthday"] == ["2026-03-05T17:00:00.000Z"]
    assert p.state is not None and p.state["rules"]["timers"]["birthday"][1] == "birthday:2027"


def test_a_birthday_that_fired_is_not_sent_again_when_the_zone_moves_west() -> None:
    t = ms("2026-03-01T10:00:00Z")
    p = Person()
    p.arrive(ev("i-1", "identify", t, traits={"birthday": "1990-03-05"}, context={"timezone": "Asia/Tokyo"}))
    p.to(ms("2026-03-05T01:00:00Z"))  # fired at 00:00 UTC (09:00 in Tokyo)
    p.arrive(ev("c-1", "page_view", ms("2026-03-05T02:00:00Z"), context={"timezone": "America/Los_Angeles"}))
    p.to(t + 10 * DAY)
    assert [at for kind, at in p.types() if kind == "birthday"] == ["2026-03-05T00:00:00.000Z"]


@pytest.mark.parametrize(
    ("birthday_a", "context_b", "birthday_b", "expected"),
    [("1990-03-05", {"timezone": "Pacific/Auckland"}, None, "2026-03-04T20:00:00.000Z"),  # 09:00 in Auckland
     ("1990-07-01", {}, "1990-03-05", "2026-03-05T09:00:00.000Z")],  # the merged (newest) birthday's day
)
def test_a_merge_reads_the_birthday_timer_with_the_merged_trait_and_time_zone(
        birthday_a: str, context_b: dict[str, str], birthday_b: str | None, expected: str) -> None:
    """Two profiles of one person merged: the birthday timer kept (the later of the two) was read with
    neither the merged time zone (09:00 UTC, 22:00 in Auckland: sent the day after the birthday) nor
    the merged birthday (the older trait's day, 1 July, for a person whose birthday is 5 March)."""
    t = ms("2026-03-01T10:00:00Z")
    a = Person().arrive(ev("i-1", "identify", t, traits={"birthday": birthday_a})).to(t)
    traits = {"birthday": birthday_b} if birthday_b else {}
    b = Person().arrive(ev("i-2", "identify", t + MIN, user="u-2", traits=traits, context=context_b)).to(t + MIN)
    assert a.state is not None and b.state is not None
    merged = merge_states(a.state, b.state, a.state["profile"]["key"])
    merged["rules"]["dirty"] = True  # as the identity graph marks a merged profile
    out = advance(merged, t + 200 * DAY, RULES, 0)
    assert [tr["at"] for tr in out.triggers if tr["type"] == "birthday"] == [expected]


def test_an_identify_that_repeats_the_birthday_with_a_time_zone_keeps_this_years_birthday() -> None:
    """A CRM's sync sends every trait again, now with a time zone that puts this year's birthday behind
    the clock: it fires at once, as with any other event bringing that zone (it was set again for the
    next birthday after the clock, so this year's was skipped)."""
    t = ms("2026-03-05T08:00:00Z")
    p = Person()
    p.arrive(ev("i-1", "identify", t - 2 * DAY, traits={"birthday": "1990-03-05"}))
    p.to(t - MIN)
    p.arrive(ev("i-2", "identify", t, traits={"birthday": "1990-03-05"}, context={"timezone": "Asia/Tokyo"}))
    p.to(t + 2 * DAY)
    assert [at for kind, at in p.types() if kind == "birthday"] == ["2026-03-05T00:00:00.000Z"]
    assert p.state["rules"]["timers"]["birthday"][1] == "birthday:2027"


def test_an_identify_with_a_new_birthday_sets_the_timer_from_it() -> None:
    t = ms("2026-03-03T08:00:00Z")
    p = Person()
    p.arrive(ev("i-1", "identify", t - DAY, traits={"birthday": "1990-03-05"}))
    p.to(t - MIN)
    p.arrive(ev("i-2", "identify", t, traits={"birthday": "1990-03-01"}))  # corrected: already past this year
    p.to(t + 3 * DAY)
    assert [kind for kind, _ in p.types() if kind == "birthday"] == []
    assert p.state["rules"]["timers"]["birthday"][:2] == [ms("2027-03-01T09:00:00Z"), "birthday:2027"]


@pytest.mark.parametrize(("retention_days", "caps", "most_kept"), [(36_500, True, 8), (7, False, 0)])
def test_a_profile_keeps_its_sends_for_a_week_and_a_day_at_most_and_none_without_caps(
        retention_days: int, caps: bool, most_kept: int) -> None:
    """The caps read a profile's sends, kept for triggers up to the dedupe retention late: with a
    retention of a century every browse abandonment of a daily visitor stayed in the state."""
    guardrails = {} if caps else {"guardrails": {"per_type_per_day": 0, "per_profile_per_day": 0}}
    rules = RuleSet.build(PipelineConfig.model_validate(guardrails), retention_days * DAY)
    t = ms(T0)
    p = Person(rules)
    for day in range(30):
        p.arrive(ev(f"v-{day}", "product_view", t + day * DAY, product_id="sku-1")).to(t + day * DAY + 2 * 3_600_000)
    assert len([kind for kind, _ in p.types() if kind == "browse_abandoned"]) == 30
    assert p.state is not None and len(p.state["rules"]["sent"]) == most_kept


def _withdrawals(*watermarks: int) -> list[int | None]:
    """The consent withdrawal time of each pass, for a cart left at 21:30 (its trigger due at 22:00 is
    sent at 08:00, after quiet hours), consent withdrawn at 22:30 and given again at 23:00."""
    t = ms("2026-03-01T21:30:00Z")
    person = Person().arrive(ev("k-1", "cart_add", t, product_id="a", price=1.0),
                             ev("i-1", "identify", t + 60 * MIN, email="ana@example.com", consent={"email": False}),
                             ev("i-2", "identify", t + 90 * MIN, consent={"email": True}))
    said = []
    for watermark in watermarks:
        assert person.state is not None
        said.append(advance(person.state, watermark, RULES, 0).withdrawn)
    return said


def test_consent_withdrawn_and_given_again_withdraws_what_was_on_its_way_whatever_the_passes() -> None:
    """README "Withdrawn upstream": a trigger made before a withdrawal is not sent, also when it is read
    after consent was given again (the event times decide); contract 4: the same outputs whatever the
    watermark's steps.  The 22:00 trigger (sent at 08:00) was withdrawn when the watermark stopped
    between the withdrawal and the new consent, and went out when one pass took both (the new consent
    took the withdrawal back)."""
    t = ms("2026-03-01T21:30:00Z")
    assert _withdrawals(t + 75 * MIN, t + 2 * 60 * MIN) == [t + 60 * MIN, None]
    assert _withdrawals(t + 2 * 60 * MIN) == [t + 60 * MIN]


def test_a_late_older_purchase_moves_neither_winback_nor_post_purchase() -> None:
    """winback and post_purchase run from the newest purchase: an older one read late (after a newer
    one was applied) changes neither timer."""
    t = ms(T0)
    person = Person().arrive(ev("p-2", "purchase", t + 10 * DAY, order_id="o-2", total=20.0)).to(t + 10 * DAY + MIN)
    person.arrive(ev("p-1", "purchase", t, order_id="o-1", total=20.0))
    assert person.late == 1
    person.to(t + 200 * DAY)
    assert person.state is not None and person.state["profile"]["aggregates"]["orders"] == 2
    assert sorted(person.types()) == [("post_purchase", "2026-03-14T10:00:00.000Z"),
                                      ("winback", "2026-06-09T10:00:00.000Z")]


def test_no_welcome_for_an_identify_that_does_not_give_the_address() -> None:
    """welcome: the first identify that gives the profile an e-mail address.  A profile that already
    has one (from a purchase) gets none from a later identify, with or without the same address."""
    t = ms(T0)
    person = Person().arrive(ev("p-1", "purchase", t, order_id="o-1", total=20.0, email="ana@example.com"),
                             ev("i-1", "identify", t + MIN, traits={"first_name": "Ana"}),
                             ev("i-2", "identify", t + 2 * MIN, traits={"email": "ana@example.com"}))
    person.to(t + DAY)
    assert person.state is not None and person.state["profile"]["email"] == "ana@example.com"
    assert person.types() == []  # (post_purchase comes after 72 h)


def test_an_event_stamped_at_the_erasure_is_forgotten_with_it() -> None:
    """An erase forgets everything at or before it: an event stamped at the erase's very time, read
    after it, is the erased person's and starts no new profile."""
    t = ms(T0)
    person = Person().arrive(ev("v-1", "product_view", t - MIN, product_id="a"), ev("x-1", "erase", t))
    got = receive(person.state, "u:u-1", ev("k-1", "cart_add", t, product_id="a", price=1.0), None, RULES)
    assert got.outcome == "forgotten" and got.state == {"erased_at": t}
    after = receive(got.state, "u:u-1", ev("k-2", "cart_add", t + 1, product_id="a", price=1.0), None, RULES)
    assert after.outcome == "processed" and "profile" in after.state  # a millisecond later: a new profile


def test_only_an_event_older_than_the_watermark_is_late() -> None:
    """Late means older than the watermark (contract 4): one stamped at the watermark is not."""
    t = ms(T0)
    person = Person().arrive(ev("v-1", "product_view", t, product_id="a")).to(t + 10 * MIN)
    person.arrive(ev("v-2", "product_view", t + 10 * MIN, product_id="a"))
    assert person.late == 0
    person.arrive(ev("v-3", "product_view", t + 10 * MIN - 1, product_id="a"))
    assert person.late == 1


def test_at_equal_timestamps_an_identify_comes_before_the_click() -> None:
    """The identify stamped with a view is applied first: the view's segment change already names the
    address it gave."""
    t = ms(T0)
    state = None
    for event in (ev("v-1", "product_view", t, product_id="sku-1"),
                  ev("i-1", "identify", t, traits={"email": "ana@example.com"})):
        state = receive(state, "u:u-1", event, None, RULES).state
    assert state is not None
    out = advance(state, t, RULES, 0)
    [entered] = [c for c in out.segment_changes if c["segment"] == "recent_browsers"]
    assert entered["email"] == "ana@example.com" and entered["at"] == "2026-03-01T10:00:00.000Z"


def test_a_late_older_cart_event_or_view_does_not_pull_the_abandonment_deadline_back() -> None:
    """cart_abandoned is due 30 minutes after the last cart activity, browse_abandoned an hour after the
    last product view: a late event older than the last one moves neither deadline earlier."""
    t = ms(T0)
    cart = Person().arrive(ev("k-2", "cart_add", t + 20 * MIN, product_id="a", price=1.0)).to(t + 21 * MIN)
    cart.arrive(ev("k-1", "cart_add", t, product_id="b", price=1.0))
    assert cart.late == 1
    cart.to(t + 2 * 60 * MIN)
    assert cart.types() == [("cart_abandoned", "2026-03-01T10:50:00.000Z")]
    view = Person().arrive(ev("v-2", "product_view", t + 20 * MIN, product_id="a")).to(t + 21 * MIN)
    view.arrive(ev("v-1", "product_view", t, product_id="b"))
    view.to(t + 3 * 60 * MIN)
    assert view.types() == [("browse_abandoned", "2026-03-01T11:20:00.000Z")]


def test_a_purchase_line_that_names_no_product_counts_in_the_order_and_is_no_product_bought() -> None:
    """A shipping line (no ``product_id``): the order and its total count; only the products are bought."""
    at = ms(T0)
    person = Person().arrive(ev("o-1", "purchase", at, order_id="o-1", total=25.0, items=[
        {"product_id": "sku-1", "price": 20.0}, {"category": "shipping", "price": 5.0}])).to(at + MIN)
    assert person.state is not None
    assert person.state["profile"]["aggregates"]["orders"] == 1
    assert person.state["profile"]["aggregates"]["total_spend"] == 25.0
    assert person.state["rules"]["bought"] == ["sku-1"]


def test_the_segment_rules_are_compiled_to_one_function_when_the_rules_are_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At start, not at the first event: a large rule set takes seconds to compile, and that stalled the
    first event's record."""
    from streams.domain.rules import segments

    compiled: list[int] = []
    real = segments.compile_evaluator

    def counting(rules: Any) -> Any:
        compiled.append(len(rules))
        return real(rules)

    monkeypatch.setattr(segments, "compile_evaluator", counting)
    config = PipelineConfig.model_validate({"segments": {"vip": {"rule": {"field": {"path": "cart.value", "gt": 1}}}}})
    rules = RuleSet.build(config, DAY)
    assert compiled == [9]
    assert rules.evaluate_segments({"cart": {"value": 2}}, {}, 0)[0] == {"vip"}
    assert compiled == [9]


def test_a_triggers_payload_names_the_segments_the_profile_is_in_at_its_time() -> None:
    """The churn_risk trigger and the churn_risk segment come from one score: the payload's segments
    hold the segment entered at the trigger's own time, as `segment-changes` says (they were the
    segments of the step before)."""
    def scorer(profile: Any, cart: Any, at: int) -> dict[str, Any]:
        return {"churn_probability": 0.9, "purchase_probability": 0.1, "model_version": "v1", "at": at}

    t = ms(T0)
    person = Person(RuleSet.build(PipelineConfig(), 7 * DAY, scorer)).arrive(
        ev("p-1", "purchase", t, order_id="o", total=600.0)).to(t + DAY)
    churn = [trigger for trigger in person.triggers if trigger["type"] == "churn_risk"]
    assert len(churn) == 1
    entered = [at for segment, change, at in person.changes if segment == "churn_risk" and change == "entered"]
    assert entered == [churn[0]["at"]]
    assert churn[0]["payload"]["segments"] == ["churn_risk", "high_value", "recent_buyers"]

    # a welcome's identify that puts the profile in a segment: the welcome names it
    rules = RuleSet.build(PipelineConfig.model_validate(
        {"segments": {"named": {"rule": {"field": {"path": "traits.first_name", "exists": True}}}}}), 7 * DAY)
    welcomed = Person(rules).arrive(ev("i-1", "identify", t, traits={"email": "a@example.com",
                                                                   "first_name": "Ana"})).to(t)
    assert welcomed.state is not None and "named" in welcomed.state["profile"]["segments"]
    assert [trigger["payload"]["segments"] for trigger in welcomed.triggers] == [["named"]]


def test_the_ids_an_erased_persons_later_activity_forgets_past_its_bound_are_counted() -> None:
    """Parked events stamped after an erasure that reached the profile before it start the later
    activity; with more of them than ``limits.seen_ids`` (parked events may be configured above it),
    the ids it forgets were not counted as a fold's are."""
    rules = RuleSet.build(PipelineConfig(limits={"seen_ids": 64, "parked_events": 500}), 7 * DAY)
    state = None
    for n in range(200):
        got = receive(state, "u:u-1", ev(f"v-{n}", "page_view", ms(T0) + (10 + n) * MIN), None, rules)
        state = got.state
    got = receive(state, "u:u-1", ev("x-1", "erase", ms(T0) + 5 * MIN), None, rules)
    assert got.outcome == "erased" and len(got.state["pending"]) == 200
    assert got.seen_dropped == 200 - len(got.state["seen"]) and len(got.state["seen"]) < 64 + 32  # (amortized)


def _parked_past_the_seen_bound(rules: RuleSet, key: str) -> dict[str, Any]:
    """A profile of one event before ``T0 + 5 min`` and 200 parked page views after it."""
    state = receive(None, key, ev("v-0", "page_view", ms(T0)), None, rules).state
    for n in range(200):
        state = receive(state, key, ev(f"v-{n + 1}", "page_view", ms(T0) + (10 + n) * 60_000), None, rules).state
    return state


def test_the_ids_an_erased_persons_later_activity_forgets_are_counted_on_every_way_an_erase_comes() -> None:
    """An erase that reaches a profile by a link (its root was erased) and a profile that arrives at
    an erased key: the later activity they keep forgets ids past ``limits.seen_ids``, counted as at
    an erase event."""
    from streams.domain import identity_graph as graph
    from streams.domain.dispatch import dispatch

    rules = RuleSet.build(PipelineConfig(limits={"seen_ids": 64, "parked_events": 500}), 7 * DAY)
    erased_at = ms(T0) + 5 * 60_000
    states: dict[str, Any] = {"a:anon-1": _parked_past_the_seen_bound(rules, "a:anon-1")}
    yes = {"type": graph.LINK, "root": "u:u-1", "kind": "exact", "ok": True, "erased_at": erased_at,
           "at": ms(T0)}
    effects = dispatch(states, {}, "a:anon-1", yes, None, rules)
    later = states["a:anon-1"]
    assert graph.is_live(later) and later["erased_at"] == erased_at and len(later["pending"]) == 200
    assert effects.seen_dropped == 200 - len(later["seen"]) > 0
    states = {"u:u-1": {"erased_at": erased_at}}
    absorb = {"type": graph.ABSORB, "from": "a:anon-1", "state": _parked_past_the_seen_bound(rules, "a:anon-1"),
              "at": ms(T0)}
    effects = dispatch(states, {}, "u:u-1", absorb, None, rules)
    assert effects.seen_dropped > 0
