"""The dedupe window (MAILPULSE_DEDUPE_RETENTION_DAYS): repeats after the ids were pruned, outside the
window, and with another retention, through the profile hop (run_locally)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from streams.domain.config import PipelineConfig
from streams.domain.dispatch import LocalPipeline
from streams.domain.timeline import RuleSet
from tests.integration.expected import accepted_events
from tests.reference.model import DAY, HOUR, iso, ms

T0 = ms("2026-03-01T00:00:00Z")


def rules(retention_days: float) -> RuleSet:
    return RuleSet.build(PipelineConfig.model_validate({"scoring": {"enabled": False}}),
                         int(retention_days * DAY))


def views(n: int, every_ms: int, prefix: str = "v") -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}-{i}", "type": "product_view", "timestamp": iso(T0 + i * every_ms),
             "user_id": "u-1", "product_id": f"sku-{i % 7}"} for i in range(n)]


def counts(local: LocalPipeline) -> dict[str, int]:
    run = local.advance(T0 + 400 * DAY)
    [profile] = run.profiles.values()
    counted: dict[str, int] = profile["aggregates"]["event_counts"]
    return counted


@pytest.mark.parametrize("retention_days", [1, 7])
def test_a_replay_of_a_long_history_counts_nothing_twice(retention_days: float) -> None:
    """300 views over 75 days: the ids of all but the last days are pruned; the same history again
    (a replay, in order or shuffled) has no further effect."""
    history = views(300, 6 * HOUR)
    local = LocalPipeline(rules(retention_days))
    local.feed(accepted_events(history))
    assert len(local.states["u:u-1"]["seen"]) < 300  # pruned: the test is about ids no longer held
    again = list(history)
    random.Random(retention_days).shuffle(again)
    local.feed(accepted_events(again))
    assert counts(local) == {"product_view": 300}


def test_a_repeat_within_the_window_after_pruning_is_dropped_and_a_new_late_event_inside_it_counts() -> None:
    history = views(300, 6 * HOUR)
    local = LocalPipeline(rules(7))
    local.feed(accepted_events(history))
    newest = T0 + 299 * 6 * HOUR
    late = {"event_id": "late-1", "type": "product_view", "timestamp": iso(newest - 3 * DAY), "user_id": "u-1",
            "product_id": "sku-1"}
    local.feed(accepted_events([history[-5], late]))  # a repeat 1 day old, a new event 3 days old
    assert counts(local) == {"product_view": 301}


def test_an_event_older_than_the_window_is_dropped_as_it_cannot_be_told_from_a_repeat() -> None:
    """Documented choice: beyond the window, an unknown id may be a repeat whose id was pruned; it is
    dropped (counted as a duplicate) so that replays never count twice."""
    history = views(300, 6 * HOUR)
    local = LocalPipeline(rules(7))
    local.feed(accepted_events(history))
    ancient = {"event_id": "never-seen", "type": "product_view", "timestamp": iso(T0 + 2 * DAY),
               "user_id": "u-1", "product_id": "sku-1"}
    local.feed(accepted_events([ancient]))
    assert counts(local) == {"product_view": 300}


def test_a_new_event_stamped_at_the_horizon_of_forgotten_ids_counts() -> None:
    """Only ids stamped before the horizon were forgotten (an unknown one there may be a repeat): a
    new event stamped at the horizon itself is new and counts; one a millisecond before it does not."""
    local = LocalPipeline(rules(7))
    local.feed(accepted_events(views(300, 6 * HOUR)))
    horizon = local.states["u:u-1"]["seen_from"]
    assert T0 < horizon < T0 + 299 * 6 * HOUR
    at, before = ({"event_id": event_id, "type": "product_view", "timestamp": iso(ts), "user_id": "u-1",
                   "product_id": "sku-1"} for event_id, ts in (("edge-1", horizon), ("edge-0", horizon - 1)))
    local.feed(accepted_events([at, before]))
    assert counts(local) == {"product_view": 301}


def test_an_event_read_after_a_week_of_the_profiles_newer_events_on_another_topic_counts() -> None:
    """A person's views of ten days are read before their identify of the first day, which waits on
    the identities topic: the watermark (the slowest topic's clock) is still before it.  The window
    followed the newest view alone, so the identify was dropped as a repeat of a forgotten id; the
    ids are kept while the watermark is within the retention of them."""
    from streams.domain.dispatch import dispatch
    from streams.domain.identity import profile_key

    retention = rules(7)
    identify = {"event_id": "i-1", "type": "identify", "timestamp": iso(T0 + HOUR), "user_id": "u-1",
                "traits": {"first_name": "Ada"}}
    states: dict[str, Any] = {}
    outcomes = [dispatch(states, {}, profile_key(event), event, T0, retention).outcome
                for event in accepted_events([*views(100, 2 * HOUR + 24 * 60_000), identify])]
    assert outcomes == ["processed"] * 101
    assert states["u:u-1"]["seen"].keys() >= {"i-1", "v-0"}
