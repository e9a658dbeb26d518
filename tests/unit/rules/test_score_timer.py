"""streams.domain.rules.score_timer and the timeline's ``score`` step: when profiles are scored, what a score emits."""

from __future__ import annotations

from typing import Any

import pytest

from models.bundle import SHIPPED_DIR, ModelBundle
from models.scoring import Predictor, predictions
from streams.domain.config import PipelineConfig, Scoring
from streams.domain.rules import score_timer
from streams.domain.timeline import RuleSet, trigger_id
from tests.unit.test_timeline import DAY, MIN, T0, Person, ev, ms


def away_scorer(profile: dict[str, Any], cart: dict[str, Any] | None, at: int) -> dict[str, Any]:
    """Purchase probability falls by 0.1 per day away (a model whose answers a test can foresee)."""
    last = score_timer.last_activity(profile) or at
    return predictions(max(0.0, 0.9 - 0.1 * (at - last) / DAY), "test-1", at)


SCORED = RuleSet.build(PipelineConfig(), 7 * DAY, away_scorer)


def scores_of(person: Person) -> list[tuple[str, float]]:
    return [(s["at"], s["churn_probability"]) for s in person.scores]


class ScoredPerson(Person):
    def __init__(self, rules: RuleSet = SCORED) -> None:
        super().__init__(rules)


def _profile(*times: int) -> dict[str, Any]:
    return {"aggregates": {"last_seen": {"clicks": max(times)}}, "predictions": None}


def test_the_timer_is_the_first_scheduled_time_after_the_last_score() -> None:
    cfg, rules = Scoring(idle_days=(1, 7)), {"timers": {}}
    score_timer.rearm(cfg, _profile(0), rules)
    assert rules["timers"]["score"] == [60 * MIN, "activity", {}]
    score_timer.rearm(cfg, _profile(30 * MIN), rules)  # more activity: later (a session is scored once)
    assert rules["timers"]["score"][0] == 90 * MIN
    rules["scored_at"] = 90 * MIN
    score_timer.rearm(cfg, _profile(30 * MIN), rules)
    assert rules["timers"]["score"] == [30 * MIN + DAY, "idle", {}]
    rules["scored_at"] = 30 * MIN + 7 * DAY
    score_timer.rearm(cfg, _profile(30 * MIN), rules)  # the schedule is over
    assert "score" not in rules["timers"]
    score_timer.rearm(cfg, _profile(10 * DAY), rules)  # until the next activity
    assert rules["timers"]["score"] == [10 * DAY + 60 * MIN, "activity", {}]


def test_scoring_times_follow_from_the_activity_times_alone() -> None:
    cfg = Scoring(delay_minutes=60, idle_days=(1, 7))
    # a session at 0-30 min, another at 2 d; until 10 d
    times = score_timer.scoring_times(cfg, [0, 30 * MIN, 2 * DAY], 10 * DAY)
    assert times == [90 * MIN, 30 * MIN + DAY, 2 * DAY + 60 * MIN, 3 * DAY, 9 * DAY]
    assert score_timer.scoring_times(cfg, [0, 60 * MIN], DAY) == [60 * MIN, 2 * 60 * MIN]  # a timer at T fires first


def _state(activity: list[int], clock: int, predictions: dict[str, Any] | None = None) -> dict[str, Any]:
    profile = _profile(*activity)
    profile["predictions"] = predictions
    return {"profile": profile, "rules": {"timers": {}, "clock": clock},
            "seen": {f"e-{n}": ts for n, ts in enumerate(activity)}}


def test_after_a_merge_the_person_is_scored_again_at_the_latest_time_passed() -> None:
    cfg = Scoring(idle_days=(1, 7))
    state = _state([0, DAY], 3 * DAY, predictions(0.5, "v", 60 * MIN))
    score_timer.past_changed(cfg, state, [predictions(0.5, "v", 60 * MIN), None])
    assert state["rules"]["timers"]["score"] == [2 * DAY, "idle", {}]  # then: the features of now


def test_after_a_merge_within_a_session_a_part_s_early_score_is_dropped() -> None:
    cfg = Scoring(idle_days=(1, 7))
    t = ms(T0)
    # one part was scored at 11:01 (its last event 10:01); merged, the person was active until 11:05
    part = predictions(0.3, "v", t + 61 * MIN)
    state = _state([t, t + MIN, t + 21 * MIN, t + 60 * MIN, t + 65 * MIN], t + 2 * 60 * MIN, part)
    score_timer.past_changed(cfg, state, [None, part])
    assert state["profile"]["predictions"] is None and state["rules"]["scored_at"] is None
    assert state["rules"]["timers"]["score"] == [t + 125 * MIN, "activity", {}]


def test_after_a_merge_a_score_the_merged_person_would_have_had_is_kept() -> None:
    cfg = Scoring(idle_days=(1, 7))
    t = ms(T0)
    old = predictions(0.2, "v", t + DAY)  # the user's, a day after their last visit
    newer = predictions(0.6, "v", t + 3 * DAY + 61 * MIN)  # an anonymous part's, inside the new session
    state = _state([t, t + 3 * DAY, t + 3 * DAY + 30 * MIN], t + 3 * DAY + 80 * MIN, newer)
    score_timer.past_changed(cfg, state, [old, newer])
    assert state["profile"]["predictions"] == old and state["rules"]["scored_at"] == t + DAY
    assert state["rules"]["timers"]["score"] == [t + 3 * DAY + 90 * MIN, "activity", {}]


def test_a_session_is_scored_once_after_it_ends_then_while_the_person_stays_away() -> None:
    t = ms(T0)
    person = ScoredPerson().arrive(ev("v-1", "product_view", t, product_id="a"),
                                   ev("v-2", "product_view", t + 20 * MIN, product_id="b"),
                                   ev("i-1", "identify", t + 30 * MIN, traits={"email": "a@example.com"}))
    person.to(t + 5 * DAY)
    last = t + 30 * MIN
    assert [s[0] for s in scores_of(person)] == [
        "2026-03-01T11:30:00.000Z",  # an hour after the last event of the session
        "2026-03-02T10:30:00.000Z", "2026-03-04T10:30:00.000Z",  # 1 and 3 days away
    ]
    assert person.state is not None
    assert person.state["profile"]["predictions"] == predictions(0.9 - 0.3, "test-1", last + 3 * DAY)
    assert person.state["rules"]["timers"]["score"][0] == last + 7 * DAY


BOUGHT = {"order_id": "o-1", "total": 20.0, "items": [{"product_id": "a", "quantity": 1, "price": 20.0}]}


def test_churn_risk_fires_once_when_the_probability_crosses_and_the_segment_follows() -> None:
    t = ms(T0)
    person = ScoredPerson().arrive(ev("i-1", "identify", t, traits={"email": "a@example.com"}),
                                   ev("o-1", "purchase", t, **BOUGHT))
    person.to(t + 30 * DAY)
    # churn probability 0.1 + 0.1/day: 0.7 is first reached at the 7-day re-score
    churn = [trigger for trigger in person.triggers if trigger["type"] == "churn_risk"]
    seven_days = "2026-03-08T10:00:00.000Z"
    assert [c["at"] for c in churn] == [seven_days]
    assert churn[0]["payload"]["churn_probability"] == pytest.approx(0.8)
    assert churn[0]["payload"]["first_name"] == "there" and churn[0]["payload"]["cart"] is None  # the fallback
    profile_id = person.state["profile"]["profile_id"] if person.state else ""
    assert churn[0]["trigger_id"] == trigger_id(profile_id, "churn_risk", f"churn:test-1:{t + 7 * DAY}")
    assert churn[0]["predictions"]["churn_probability"] == pytest.approx(0.8)
    assert ("churn_risk", "entered", seven_days) in person.changes
    # a new session brings the probability down: scored an hour after it, the segment is left
    person.arrive(ev("v-9", "product_view", t + 31 * DAY, product_id="a")).to(t + 32 * DAY)
    assert ("churn_risk", "exited", "2026-04-01T11:00:00.000Z") in person.changes


def test_churn_risk_is_for_customers_unless_min_orders_is_0() -> None:
    """Someone who never bought reaches the same churn probability (the segment says so), but gets
    no churn_risk trigger at the default ``min_orders`` 1; at 0 they do, as a customer does."""
    t = ms(T0)

    def churn_triggers(rules: RuleSet, *events: dict[str, Any]) -> tuple[list[str], bool]:
        person = ScoredPerson(rules).arrive(*events)
        person.to(t + 30 * DAY)
        entered = ("churn_risk", "entered", "2026-03-08T10:00:00.000Z") in person.changes
        return [trigger["at"] for trigger in person.triggers if trigger["type"] == "churn_risk"], entered

    identify = ev("i-1", "identify", t, traits={"email": "a@example.com"})
    assert churn_triggers(SCORED, identify) == ([], True)
    assert churn_triggers(SCORED, identify, ev("o-1", "purchase", t, **BOUGHT)) == (["2026-03-08T10:00:00.000Z"], True)
    anyone = RuleSet.build(PipelineConfig.model_validate({"triggers": {"churn_risk": {"min_orders": 0}}}), 7 * DAY,
                           away_scorer)
    assert churn_triggers(anyone, identify) == (["2026-03-08T10:00:00.000Z"], True)


def test_high_intent_needs_a_high_purchase_probability_and_no_recent_purchase() -> None:
    t = ms(T0)
    person = ScoredPerson().arrive(ev("v-1", "product_view", t, product_id="a"))
    person.to(t + 2 * 60 * MIN)
    assert ("high_intent", "entered", "2026-03-01T11:00:00.000Z") in person.changes
    person.arrive(ev("o-1", "purchase", t + 3 * 60 * MIN, order_id="o-1", total=5.0)).to(t + 4 * 60 * MIN)
    assert ("high_intent", "exited", "2026-03-01T13:00:00.000Z") in person.changes


def test_scoring_switched_off_in_the_config_makes_no_predictions() -> None:
    off = RuleSet.build(PipelineConfig.model_validate({"scoring": {"enabled": False}}), 7 * DAY, away_scorer)
    assert off.scorer is None
    person = ScoredPerson(off).arrive(ev("v-1", "product_view", ms(T0), product_id="a")).to(ms(T0) + 10 * DAY)
    assert person.scores == [] and person.state is not None and person.state["profile"]["predictions"] is None


def test_the_shipped_model_scores_in_the_timeline() -> None:
    rules = RuleSet.build(PipelineConfig(), 7 * DAY, Predictor(ModelBundle.load(SHIPPED_DIR)))
    t = ms(T0)
    person = ScoredPerson(rules).arrive(ev("v-1", "product_view", t, product_id="a"),
                                        ev("k-1", "cart_add", t + MIN, product_id="a", price=10.0))
    person.to(t + 2 * DAY)
    assert len(person.scores) == 2
    for score in person.scores:
        assert set(score) == {"profile_id", "user_id", "churn_probability", "purchase_probability",
                              "model_version", "at"}
        assert score["churn_probability"] + score["purchase_probability"] == pytest.approx(1.0)
        assert 0.0 < score["purchase_probability"] < 1.0
        assert score["model_version"] == rules.scorer.version  # type: ignore[union-attr]


def test_an_event_older_than_the_last_score_has_the_person_scored_again_as_if_it_had_come_in_time() -> None:
    t = ms(T0)
    view = ev("v-1", "product_view", t, product_id="a")
    late = ev("k-1", "cart_add", t + 10 * MIN, product_id="a", price=10.0)
    in_time = ScoredPerson(RuleSet.build(PipelineConfig(), 7 * DAY, Predictor(ModelBundle.load(SHIPPED_DIR))))
    in_time.arrive(view, late).to(t + 3 * 60 * MIN)
    was_late = ScoredPerson(in_time.rules).arrive(view).to(t + 2 * 60 * MIN)  # scored at 11:00 without the cart
    was_late.arrive(late).to(t + 3 * 60 * MIN)
    assert was_late.late == 1
    assert [s["at"] for s in was_late.scores] == ["2026-03-01T11:00:00.000Z", "2026-03-01T11:10:00.000Z"]
    assert [s["at"] for s in in_time.scores] == ["2026-03-01T11:10:00.000Z"]
    assert was_late.state is not None and in_time.state is not None
    assert was_late.state["profile"]["predictions"] == in_time.state["profile"]["predictions"]
    assert was_late.scores[0]["purchase_probability"] != was_late.scores[1]["purchase_probability"]


def test_with_a_delay_longer_than_an_idle_day_the_scoring_times_are_the_timers() -> None:
    """``delay_minutes`` of two days and idle days (1, 7): the timer scores a person active at 0 at 2 d
    and 7 d, never at 1 d; the scoring times a merge or a late event is judged by listed 1 d too."""
    cfg = Scoring(delay_minutes=2 * 24 * 60, idle_days=(1, 7))
    rules: dict[str, Any] = {"timers": {}}
    profile: Any = {"aggregates": {"last_seen": {"clicks": 0}}, "predictions": None}
    timer_times = []
    score_timer.rearm(cfg, profile, rules)  # type: ignore[arg-type]
    while "score" in rules["timers"]:
        timer_times.append(rules["timers"]["score"][0])
        rules["scored_at"] = timer_times[-1]
        score_timer.rearm(cfg, profile, rules)  # type: ignore[arg-type]
    assert timer_times == [2 * DAY, 7 * DAY] == score_timer.scoring_times(cfg, [0], 8 * DAY)


def test_with_a_long_delay_a_late_event_scores_at_no_time_a_run_that_knew_it_scores_at() -> None:
    cfg = PipelineConfig.model_validate({"scoring": {"delay_minutes": 2 * 24 * 60, "idle_days": [1, 7]}})
    rules = RuleSet.build(cfg, 7 * DAY, lambda profile, cart, at: predictions(0.5, "v", at))
    t = ms(T0)
    person = Person(rules).arrive(ev("v-1", "page_view", t)).to(t + 2 * DAY + MIN)
    person.arrive(ev("v-0", "page_view", t - DAY)).to(t + 2 * DAY + 2 * MIN)  # late: a day before
    # scored again at 2 d (its past changed), never at 1 d, which the late event's idle day named
    assert {score["at"] for score in person.scores} == {"2026-03-03T10:00:00.000Z"}
