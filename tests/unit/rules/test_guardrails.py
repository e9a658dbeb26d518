"""streams.domain.rules.guardrails: consent and frequency caps, quiet hours, best hour, DST."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.domain.config import Guardrails, QuietHours
from streams.domain.rules.guardrails import (
    DAY_MS,
    SUPPRESS_REASONS,
    _hour_of,
    _next_wall_hour,
    best_hour,
    local_hour,
    prune_sent,
    record_engagement,
    send_time,
    suppression_reason,
)

HOUR = 3_600_000
MINUTE = 60_000
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> int:
    """Epoch ms of a UTC wall time (expected times are written in UTC, not derived with zoneinfo)."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * 1000


T = utc(2024, 1, 15, 12, 0)


def cfg(**overrides: Any) -> Guardrails:
    return Guardrails.model_validate(overrides)


def quiet(start: int, end: int, **overrides: Any) -> Guardrails:
    """Quiet hours only (no best hour), so a test sees one rule at a time."""
    return cfg(quiet_hours={"start_hour": start, "end_hour": end}, send_time_optimization=False, **overrides)


NO_QUIET = {"quiet_hours": {"enabled": False}}


def peak(hour: int, count: int = 5) -> list[int]:
    """24 engagement counters with ``count`` at ``hour``."""
    return [count if h == hour else 0 for h in range(24)]


# --- suppression_reason -------------------------------------------------------------------------


def test_consent_false_is_suppressed_first_whatever_require_consent() -> None:
    capped = [(T - MINUTE, "welcome")] * 5
    for require in (False, True):
        assert suppression_reason(cfg(require_consent=require), {"email": False}, capped, "welcome", T) == (
            "consent_false"
        )


@pytest.mark.parametrize(
    ("consent", "require", "expected"),
    [
        ({}, False, None),
        ({}, True, "no_consent"),
        ({"sms": True}, True, "no_consent"),
        ({"email": None}, True, "no_consent"),
        ({"email": True}, True, None),
        ({"email": True}, False, None),
        ({"email": False}, True, "consent_false"),
        ({"email": False}, False, "consent_false"),
    ],
)
def test_require_consent(consent: dict[str, Any], require: bool, expected: str | None) -> None:
    assert suppression_reason(cfg(require_consent=require), consent, [], "welcome", T) == expected


def test_no_consent_comes_before_the_caps() -> None:
    capped = [(T - MINUTE, "welcome")] * 5
    assert suppression_reason(cfg(require_consent=True), {}, capped, "welcome", T) == "no_consent"


def test_per_type_cap_counts_only_that_type() -> None:
    sent = [(T - HOUR, "cart_abandoned")]
    assert suppression_reason(cfg(), {}, sent, "cart_abandoned", T) == "per_type_cap"
    assert suppression_reason(cfg(), {}, sent, "browse_abandoned", T) is None
    assert suppression_reason(cfg(per_type_per_day=2), {}, sent, "cart_abandoned", T) is None


def test_the_24_hour_window_boundary() -> None:
    sent = [(T, "winback")]
    assert suppression_reason(cfg(), {}, sent, "winback", T + DAY_MS) is None
    assert suppression_reason(cfg(), {}, sent, "winback", T + DAY_MS - 1) == "per_type_cap"
    assert suppression_reason(cfg(), {}, sent, "winback", T) == "per_type_cap"  # same instant counts


def test_sends_after_the_trigger_time_count_too() -> None:
    """A late event's trigger comes after later ones went out: the caps hold in every 24 h of event
    time, so a window holding it and sends after it is full too."""
    assert suppression_reason(cfg(), {}, [(T + 1, "winback")], "winback", T) == "per_type_cap"
    assert suppression_reason(cfg(), {}, [(T + DAY_MS - 1, "winback")], "winback", T) == "per_type_cap"
    assert suppression_reason(cfg(), {}, [(T + DAY_MS, "winback")], "winback", T) is None
    after = [(T + HOUR, "welcome"), (T + 2 * HOUR, "birthday"), (T + 3 * HOUR, "cart_abandoned")]
    assert suppression_reason(cfg(), {}, after, "post_purchase", T) == "per_profile_cap"
    # two before and two after it, but no 24 h holds three of them besides it
    spread = [(T - 20 * HOUR, "a"), (T - 19 * HOUR, "b"), (T + 5 * HOUR, "c"), (T + 6 * HOUR, "d")]
    assert suppression_reason(cfg(), {}, spread, "post_purchase", T) is None
    assert suppression_reason(cfg(), {}, [*spread, (T + 4 * HOUR, "e")], "post_purchase", T) == "per_profile_cap"


def test_per_profile_cap_over_all_types_and_in_any_order() -> None:
    sent = [(T - 2 * HOUR, "welcome"), (T - 30 * HOUR, "birthday"), (T - HOUR, "winback"), (T - 3 * HOUR, "birthday")]
    assert suppression_reason(cfg(), {}, sent, "post_purchase", T) == "per_profile_cap"
    assert suppression_reason(cfg(), {}, sent[:3], "post_purchase", T) is None  # one is older than 24 h
    # Both caps reached: the per-type reason comes first.
    assert suppression_reason(cfg(), {}, sent, "welcome", T) == "per_type_cap"
    assert suppression_reason(cfg(per_profile_per_day=4), {}, sent, "post_purchase", T) is None


def test_cap_zero_disables_it() -> None:
    sent = [(T - MINUTE * i, "welcome") for i in range(1, 20)]
    assert suppression_reason(cfg(per_type_per_day=0), {}, sent, "welcome", T) == "per_profile_cap"
    assert suppression_reason(cfg(per_type_per_day=0, per_profile_per_day=0), {}, sent, "welcome", T) is None
    assert suppression_reason(cfg(per_profile_per_day=0), {}, sent, "welcome", T) == "per_type_cap"


def test_every_reason_is_listed() -> None:
    got = {
        suppression_reason(cfg(), {"email": False}, [], "a", T),
        suppression_reason(cfg(require_consent=True), {}, [], "a", T),
        suppression_reason(cfg(), {}, [(T, "a")], "a", T),
        suppression_reason(cfg(), {}, [(T, "b"), (T, "c"), (T, "d")], "a", T),
    }
    assert got == set(SUPPRESS_REASONS)


def test_prune_sent_keeps_what_can_still_count() -> None:
    sent = [(T + 5, "c"), (T - DAY_MS, "a"), (T - DAY_MS + 1, "b")]
    assert prune_sent(sent, T) == [(T + 5, "c"), (T - DAY_MS + 1, "b")]
    # As read back from a JSON table: lists, not tuples.
    assert prune_sent([[T, "a"]], T) == [(T, "a")]  # type: ignore[list-item]
    assert prune_sent([], T) == []


def test_pruned_state_gives_the_same_answers() -> None:
    sent = [(T - i * 5 * HOUR, "winback" if i % 2 else "welcome") for i in range(12)]
    at = T + HOUR
    for trigger in ("welcome", "winback", "birthday"):
        assert suppression_reason(cfg(), {}, prune_sent(sent, at), trigger, at) == suppression_reason(
            cfg(), {}, sent, trigger, at
        )


# --- local_hour, record_engagement, best_hour -------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "zone", "hour"),
    [
        (utc(2024, 1, 15, 12, 30), None, 12),
        (utc(2024, 1, 15, 12, 30), "", 12),
        (utc(2024, 1, 15, 12, 30), "UTC", 12),
        (utc(2024, 1, 15, 12, 30), BERLIN, 13),  # CET, +1
        (utc(2024, 7, 15, 12, 30), BERLIN, 14),  # CEST, +2
        (utc(2024, 1, 15, 3, 0), NEW_YORK, 22),  # EST, -5: the day before
        (utc(2024, 7, 15, 3, 0), NEW_YORK, 23),  # EDT, -4
        (utc(2024, 1, 15, 23, 0), "Asia/Kolkata", 4),  # +5:30
        (utc(2024, 1, 15, 12, 30), "Mars/Olympus_Mons", 12),
        (utc(2024, 1, 15, 12, 30), "europe/berlin", 12),  # names are case-sensitive
        (utc(2024, 1, 15, 12, 30), "America", 12),  # a directory of zones
        (utc(2024, 1, 15, 12, 30), "../../etc/passwd", 12),
        (utc(2024, 1, 15, 12, 30), "/etc/localtime", 12),
        (utc(2024, 1, 15, 12, 30), "bad\0name", 12),
        (utc(1969, 12, 31, 23, 59), None, 23),
    ],
)
def test_local_hour(ts: int, zone: str | None, hour: int) -> None:
    assert local_hour(ts, zone) == hour


def test_local_hour_with_a_non_string_zone_falls_back_to_utc() -> None:
    assert local_hour(utc(2024, 1, 15, 12, 30), 5) == 12  # type: ignore[arg-type]


def test_record_engagement_returns_a_new_list() -> None:
    hours = [0] * 24
    updated = record_engagement(hours, utc(2024, 7, 15, 7, 10), BERLIN)
    assert hours == [0] * 24
    assert updated == peak(9, 1)
    again = record_engagement(updated, utc(2024, 7, 15, 7, 50), BERLIN)
    assert again[9] == 2 and updated[9] == 1


def test_record_engagement_from_nothing_or_a_short_list() -> None:
    assert record_engagement(None, utc(2024, 1, 15, 5, 0), None) == peak(5, 1)
    assert record_engagement([], utc(2024, 1, 15, 5, 0), "Not/AZone") == peak(5, 1)
    assert record_engagement([1, 2], utc(2024, 1, 15, 5, 0), None) == [1, 2, 0, 0, 0, 1] + [0] * 18


def test_best_hour_threshold() -> None:
    two = [0] * 24
    two[10] = 2
    assert best_hour(two, 3) is None
    assert best_hour(two, 2) == 10
    assert best_hour(None, 1) is None
    assert best_hour([], 1) is None
    assert best_hour([0] * 24, 0) is None  # no engagement, no best hour


def test_best_hour_ties_go_to_the_earliest_hour() -> None:
    hours = [0] * 24
    hours[20] = hours[7] = hours[15] = 3
    hours[3] = 2
    assert best_hour(hours, 3) == 7
    hours[21] = 4
    assert best_hour(hours, 3) == 21


# --- send_time: quiet hours ---------------------------------------------------------------------


def test_nothing_to_move() -> None:
    assert send_time(cfg(**NO_QUIET), T, None, None) == (T, None)
    assert send_time(cfg(**NO_QUIET, send_time_optimization=False), T, BERLIN, peak(3)) == (T, None)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2024, 1, 15, 20, 59, 59), None),
        (utc(2024, 1, 15, 21, 0), utc(2024, 1, 16, 8, 0)),
        (utc(2024, 1, 15, 23, 30), utc(2024, 1, 16, 8, 0)),
        (utc(2024, 1, 16, 0, 0), utc(2024, 1, 16, 8, 0)),
        (utc(2024, 1, 16, 7, 59, 59), utc(2024, 1, 16, 8, 0)),
        (utc(2024, 1, 16, 8, 0), None),
        (utc(2024, 1, 16, 12, 0), None),
    ],
)
def test_quiet_hours_over_midnight(at: int, expected: int | None) -> None:
    want = (at, None) if expected is None else (expected, "quiet_hours")
    assert send_time(quiet(21, 8), at, None, None) == want
    assert send_time(cfg(), at, None, None) == want  # 21 -> 8 is the default


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2024, 1, 15, 0, 59, 59), None),
        (utc(2024, 1, 15, 1, 0), utc(2024, 1, 15, 5, 0)),
        (utc(2024, 1, 15, 4, 59, 59), utc(2024, 1, 15, 5, 0)),
        (utc(2024, 1, 15, 5, 0), None),
        (utc(2024, 1, 15, 23, 0), None),
    ],
)
def test_quiet_hours_within_a_day(at: int, expected: int | None) -> None:
    want = (at, None) if expected is None else (expected, "quiet_hours")
    assert send_time(quiet(1, 5), at, None, None) == want


def test_equal_start_and_end_means_no_quiet_hours() -> None:
    for hour in range(24):
        at = utc(2024, 1, 15, hour, 30)
        assert send_time(quiet(8, 8), at, None, None) == (at, None)


def test_quiet_hours_disabled() -> None:
    at = utc(2024, 1, 15, 23, 0)
    assert send_time(cfg(quiet_hours=QuietHours(enabled=False), send_time_optimization=False), at, None, None) == (
        at,
        None,
    )


def test_quiet_hours_in_local_time() -> None:
    at = utc(2024, 1, 15, 6, 30)  # 07:30 in Berlin (CET): quiet; in UTC 06:30 is quiet too
    assert send_time(quiet(21, 8), at, BERLIN, None) == (utc(2024, 1, 15, 7, 0), "quiet_hours")
    at = utc(2024, 1, 15, 20, 30)  # 21:30 in Berlin: quiet; 20:30 UTC is not
    assert send_time(quiet(21, 8), at, BERLIN, None) == (utc(2024, 1, 16, 7, 0), "quiet_hours")
    assert send_time(quiet(21, 8), at, None, None) == (at, None)
    at = utc(2024, 1, 16, 2, 0)  # 21:00 in New York (EST) on the 15th
    assert send_time(quiet(21, 8), at, NEW_YORK, None) == (utc(2024, 1, 16, 13, 0), "quiet_hours")


def test_unknown_time_zone_means_utc() -> None:
    for at in (utc(2024, 1, 15, 22, 0), utc(2024, 1, 15, 10, 0), utc(2024, 3, 31, 0, 30)):
        for zone in ("Not/AZone", "", "europe/berlin"):
            assert send_time(cfg(), at, zone, peak(14)) == send_time(cfg(), at, None, peak(14))
            assert send_time(cfg(), at, zone, peak(14)) == send_time(cfg(), at, "UTC", peak(14))


# --- send_time: best hour -----------------------------------------------------------------------


def test_best_hour_later_the_same_day() -> None:
    at = utc(2024, 1, 15, 10, 15)
    assert send_time(cfg(**NO_QUIET), at, None, peak(14)) == (utc(2024, 1, 15, 14, 0), "best_hour")


def test_best_hour_already_passed_today_is_tomorrow() -> None:
    at = utc(2024, 1, 15, 15, 0)
    assert send_time(cfg(**NO_QUIET), at, None, peak(14)) == (utc(2024, 1, 16, 14, 0), "best_hour")


def test_inside_the_best_hour_sends_now() -> None:
    for at in (utc(2024, 1, 15, 14, 0), utc(2024, 1, 15, 14, 59, 59)):
        assert send_time(cfg(**NO_QUIET), at, None, peak(14)) == (at, None)


def test_best_hour_needs_enough_engagements() -> None:
    at = utc(2024, 1, 15, 10, 15)
    assert send_time(cfg(**NO_QUIET), at, None, peak(14, 2)) == (at, None)  # default min_engagements 3
    assert send_time(cfg(**NO_QUIET, min_engagements=2), at, None, peak(14, 2)) == (
        utc(2024, 1, 15, 14, 0),
        "best_hour",
    )
    assert send_time(cfg(**NO_QUIET, send_time_optimization=False), at, None, peak(14)) == (at, None)


def test_best_hour_in_local_time() -> None:
    at = utc(2024, 7, 15, 10, 15)  # 12:15 in Berlin (CEST)
    assert send_time(cfg(**NO_QUIET), at, BERLIN, peak(14)) == (utc(2024, 7, 15, 12, 0), "best_hour")


def test_best_hour_inside_quiet_hours_moves_to_their_end() -> None:
    at = utc(2024, 1, 15, 10, 0)
    assert send_time(cfg(), at, None, peak(22)) == (utc(2024, 1, 16, 8, 0), "quiet_hours")
    assert send_time(cfg(), at, None, peak(7)) == (utc(2024, 1, 16, 8, 0), "quiet_hours")
    # Due in quiet hours, best hour in the day: the best hour wins.
    at = utc(2024, 1, 15, 23, 0)
    assert send_time(cfg(), at, None, peak(10)) == (utc(2024, 1, 16, 10, 0), "best_hour")


def test_send_time_is_never_before_due_and_at_most_a_day_and_quiet_hours_later() -> None:
    for zone in (None, BERLIN, NEW_YORK, "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Apia"):
        for best in (None, 0, 2, 8, 13, 21, 23):
            for step in range(0, 24 * 4):
                at = utc(2024, 3, 9, 0, 0) + step * 15 * MINUTE
                send_at, reason = send_time(cfg(), at, zone, None if best is None else peak(best))
                assert at <= send_at <= at + DAY_MS + 12 * HOUR
                assert (reason is None) == (send_at == at)
                assert 8 <= local_hour(send_at, zone) < 21  # never in the default quiet hours


# --- send_time: daylight saving time ------------------------------------------------------------
# Berlin 2024: 31 Mar 01:00 UTC 02:00 CET -> 03:00 CEST; 27 Oct 01:00 UTC 03:00 CEST -> 02:00 CET.
# New York 2024: 10 Mar 07:00 UTC 02:00 EST -> 03:00 EDT; 3 Nov 06:00 UTC 02:00 EDT -> 01:00 EST.


def test_quiet_hours_over_the_berlin_spring_change() -> None:
    at = utc(2024, 3, 30, 22, 0)  # 23:00 CET; 08:00 the next morning is CEST (+2)
    assert send_time(cfg(), at, BERLIN, None) == (utc(2024, 3, 31, 6, 0), "quiet_hours")


def test_quiet_hours_over_the_berlin_autumn_change() -> None:
    at = utc(2024, 10, 26, 20, 0)  # 22:00 CEST; 08:00 the next morning is CET (+1)
    assert send_time(cfg(), at, BERLIN, None) == (utc(2024, 10, 27, 7, 0), "quiet_hours")


def test_quiet_hours_over_the_new_york_changes() -> None:
    at = utc(2024, 3, 10, 4, 0)  # 23:00 EST on the 9th; 08:00 on the 10th is EDT (-4)
    assert send_time(cfg(), at, NEW_YORK, None) == (utc(2024, 3, 10, 12, 0), "quiet_hours")
    at = utc(2024, 11, 3, 3, 0)  # 23:00 EDT on the 2nd; 08:00 on the 3rd is EST (-5)
    assert send_time(cfg(), at, NEW_YORK, None) == (utc(2024, 11, 3, 13, 0), "quiet_hours")


def test_a_skipped_local_time_moves_to_the_first_instant_after() -> None:
    at = utc(2024, 3, 30, 23, 30)  # 00:30 CET; 02:00 does not exist that night
    assert send_time(quiet(0, 2), at, BERLIN, None) == (utc(2024, 3, 31, 1, 0), "quiet_hours")  # 03:00 CEST
    at = utc(2024, 3, 30, 23, 0)
    assert send_time(cfg(**NO_QUIET), at, BERLIN, peak(2)) == (utc(2024, 3, 31, 1, 0), "best_hour")
    at = utc(2024, 3, 10, 5, 0)  # 00:00 EST
    assert send_time(cfg(**NO_QUIET), at, NEW_YORK, peak(2)) == (utc(2024, 3, 10, 7, 0), "best_hour")  # 03:00 EDT


def test_a_repeated_local_hour_takes_its_first_occurrence() -> None:
    at = utc(2024, 10, 26, 23, 30)  # 01:30 CEST; 02:00 comes twice, first at 00:00 UTC
    assert send_time(cfg(**NO_QUIET), at, BERLIN, peak(2)) == (utc(2024, 10, 27, 0, 0), "best_hour")
    for inside in (utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 30)):  # 02:30 CEST, 02:30 CET
        assert send_time(cfg(**NO_QUIET), inside, BERLIN, peak(2)) == (inside, None)
    at = utc(2024, 11, 3, 4, 30)  # 00:30 EDT; 01:00 comes twice, first at 05:00 UTC
    assert send_time(cfg(**NO_QUIET), at, NEW_YORK, peak(1)) == (utc(2024, 11, 3, 5, 0), "best_hour")


def test_best_hour_across_the_new_york_changes() -> None:
    at = utc(2024, 3, 9, 15, 0)  # 10:00 EST Saturday; 09:00 Sunday is EDT: 22 h later
    assert send_time(cfg(), at, NEW_YORK, peak(9)) == (utc(2024, 3, 10, 13, 0), "best_hour")
    at = utc(2024, 11, 2, 14, 0)  # 10:00 EDT Saturday; 09:00 Sunday is EST: exactly 24 h later
    assert send_time(cfg(), at, NEW_YORK, peak(9)) == (utc(2024, 11, 3, 14, 0), "best_hour")


def test_a_skipped_half_hour_and_a_skipped_day() -> None:
    # Lord Howe 2024-10-06: 02:00 -> 02:30 (+10:30 -> +11); Apia skipped 2011-12-30 (-10 -> +14).
    at = utc(2024, 10, 5, 13, 0)  # 23:30 local
    assert send_time(cfg(**NO_QUIET), at, "Australia/Lord_Howe", peak(2)) == (utc(2024, 10, 5, 15, 30), "best_hour")
    at = utc(2011, 12, 29, 20, 0)  # 10:00 on the 29th; 09:00 on the 30th never happened
    assert send_time(cfg(**NO_QUIET), at, "Pacific/Apia", peak(9)) == (utc(2011, 12, 30, 10, 0), "best_hour")


def test_a_dst_change_that_skips_the_end_of_quiet_hours_and_the_hours_after_sends_at_their_next_end() -> None:
    """The first instant after a skipped end hour can itself be quiet: Apia skipped 30 December 2011, so
    a trigger at 22:00 on the 29th went out at 00:00 on the 31st; with quiet hours 03:00-02:00 the one
    open hour of the Berlin spring night does not exist, and 03:00 CEST is quiet again."""
    at = utc(2011, 12, 30, 8, 0)  # 22:00 on the 29th (-10); 08:00 on the 31st (+14) is 18:00 UTC on the 30th
    assert send_time(cfg(), at, "Pacific/Apia", None) == (utc(2011, 12, 30, 18, 0), "quiet_hours")
    at = utc(2024, 3, 30, 20, 0)  # 21:00 CET; 02:00 on the 31st is skipped, 02:00 CEST on 1 April is 00:00 UTC
    assert send_time(quiet(3, 2), at, BERLIN, None) == (utc(2024, 4, 1, 0, 0), "quiet_hours")


@given(at=st.integers(min_value=0, max_value=utc(2100, 1, 1, 0, 0)), hour=st.integers(min_value=0, max_value=23))
def test_the_utc_arithmetic_agrees_with_the_general_wall_time_path(at: int, hour: int) -> None:
    """A profile without a time zone (``UTC``) takes the arithmetic path; ``ZoneInfo("UTC")`` takes the
    general one through datetimes: the same instants and hours."""
    general = ZoneInfo("UTC")
    assert _next_wall_hour(at, hour, UTC) == _next_wall_hour(at, hour, general)
    assert _hour_of(at, UTC) == _hour_of(at, general) == local_hour(at, None)


@given(at=st.integers(min_value=0, max_value=utc(2100, 1, 1, 0, 0)),
       start=st.integers(min_value=0, max_value=23), end=st.integers(min_value=0, max_value=23),
       engagements=st.lists(st.integers(min_value=0, max_value=5), min_size=24, max_size=24))
def test_send_time_without_a_time_zone_is_send_time_in_utc(at: int, start: int, end: int,
                                                           engagements: list[int]) -> None:
    cfg = Guardrails(quiet_hours=QuietHours(enabled=True, start_hour=start, end_hour=end))
    assert send_time(cfg, at, None, engagements) == send_time(cfg, at, "UTC", engagements)


def test_two_sends_exactly_24_hours_apart_are_never_in_one_window() -> None:
    """A window is (e - 24 h, e]: sends at T - 6 h and T + 18 h share none, so with a cap of 2 a trigger
    at T between them fills no window (a window closed at both ends would hold all three)."""
    two = cfg(per_type_per_day=2, per_profile_per_day=2)
    apart = [(T - 6 * HOUR, "winback"), (T + 18 * HOUR, "winback")]
    assert suppression_reason(two, {}, apart, "winback", T) is None
    closer = [(T - 6 * HOUR, "winback"), (T + 18 * HOUR - 1, "winback")]
    assert suppression_reason(two, {}, closer, "winback", T) == "per_type_cap"
