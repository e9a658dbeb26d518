"""When a profile is scored: the ``score`` timer, as a pure function of the profile.

The profile agent scores a profile in event time, inside :func:`streams.domain.timeline.advance`, so a
prediction is made at the same point of the person's history whatever order workers read it in
(contract section 4), and ``churn_risk``, ``high_intent`` and the ``churn_risk`` trigger come out the
same on a replay.

The times a profile is scored follow from its newest activity ``L`` (the newest event time folded
into it, any kind) alone: ``L + delay_minutes`` (a session is scored once, when it is over), then
``L + d`` for each ``d`` of ``idle_days`` (a person who stays away is scored again as their churn
probability rises), and nothing after the last of them until the next event.  The timer
(``timers["score"] = [due_ms, cause, {}]``) is the first of these times after the last score
(``rules["scored_at"]``), set again after every event and every score.  After a merge, or an event
older than the last score (late), :func:`past_changed` puts the prediction where a run that had
known everything first would have it, so profiles merged late in the stream end with the
predictions of a run that merged them first.
"""

from __future__ import annotations

from functools import lru_cache

from schemas.timeparse import format_ms
from streams.domain.config import Scoring
from streams.domain.state import LiveState, Predictions, ProfileBody, RuleState

SCORE_TIMER = "score"
DAY_MS = 86_400_000
MINUTE_MS = 60_000


def last_activity(profile: ProfileBody) -> int | None:
    """The newest event time folded into the profile (any kind)."""
    last_seen: dict[str, int] = profile["aggregates"]["last_seen"]
    return max(last_seen.values()) if last_seen else None


@lru_cache(maxsize=16)
def _offsets(delay_minutes: float, idle_days: tuple[float, ...]) -> tuple[tuple[int, str], ...]:
    """After an activity: the score ``delay_minutes`` later, then each idle day past it, in order (an
    idle day within the delay is no time to score at: :func:`rearm` never set one, while
    :func:`scoring_times` listed it out of order, and a late event then scored at it)."""
    delay = int(delay_minutes * MINUTE_MS)
    return ((delay, "activity"), *((offset, "idle") for offset in sorted(int(days * DAY_MS) for days in idle_days)
                                   if offset > delay))


def schedule(cfg: Scoring, last: int) -> list[tuple[int, str]]:
    """Every time a profile whose newest activity is at ``last`` is scored, with its cause."""
    return [(last + offset, cause) for offset, cause in _offsets(cfg.delay_minutes, cfg.idle_days)]


def scoring_times(cfg: Scoring, activity: list[int], until: int) -> list[int]:
    """Every time a person with these activity times (sorted, distinct) is scored, up to ``until``:
    each activity's scheduled times before the next activity (a timer at T fires before events at T)."""
    times: list[int] = []
    for n, at in enumerate(activity):
        following = activity[n + 1] if n + 1 < len(activity) else None
        for due, _ in schedule(cfg, at):
            if due > until or (following is not None and due > following):
                break
            times.append(due)
    return times


def rearm(cfg: Scoring, profile: ProfileBody, rules: RuleState) -> None:
    """Sets the ``score`` timer to the first scheduled time after the last score (none: removed)."""
    last = last_activity(profile)
    scored_at: int | None = rules.get("scored_at")
    if last is not None:
        for offset, cause in _offsets(cfg.delay_minutes, cfg.idle_days):  # hot: after every event
            if scored_at is None or last + offset > scored_at:
                rules["timers"][SCORE_TIMER] = [last + offset, cause, {}]
                return
    rules["timers"].pop(SCORE_TIMER, None)


def past_changed(cfg: Scoring, state: LiveState, candidates: list[Predictions | None]) -> None:
    """The person's past changed after they were scored: two profiles merged (``candidates``: the
    predictions of both), or an event older than the last score was folded (``candidates``: the
    profile's prediction).  The profile is put where a run that had known it all along would be at
    the profile's clock.  Which times that run scored at follows from the person's activity times
    (the event times of ``seen``, the dedupe window; :func:`scoring_times`); the latest of them:

    - after the newest activity: scored again at that time (the timer is set to it and fires at the
      next step).  The profile holds no event after that time, so its features are those of then;
    - earlier: the candidate made at that time is kept (none: no prediction), and the timer set to
      the next scheduled time;
    - none: no prediction yet, unless a candidate is older than every activity the window still
      holds (its time cannot be checked: kept).
    """
    profile, rules = state["profile"], state["rules"]
    clock = rules.get("clock")
    last = last_activity(profile)
    if clock is None or last is None:
        rearm(cfg, profile, rules)
        return
    activity = sorted({ts for ts in state["seen"].values() if ts <= clock} | {last})
    times = scoring_times(cfg, activity, clock)
    latest = times[-1] if times else None
    if latest is not None and latest > last:
        cause = "activity" if latest == schedule(cfg, last)[0][0] else "idle"
        rules["timers"][SCORE_TIMER] = [latest, cause, {}]
        return
    made = [p for p in candidates if p]
    if latest is not None:
        at = format_ms(latest)
        kept = next((p for p in made if p["at"] == at), None)
    else:
        oldest = format_ms(activity[0])
        kept = max((p for p in made if p["at"] < oldest), key=lambda p: p["at"], default=None)
    profile["predictions"] = kept
    rules["scored_at"] = latest if kept is not None else None
    rearm(cfg, profile, rules)
