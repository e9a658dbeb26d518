"""Guardrails and send time of triggers (contract section 5): consent, frequency caps, quiet hours and
the profile's best e-mail hour.

Pure functions over explicit data; every time is epoch ms UTC.  Local times come from the profile's
IANA time zone via :mod:`zoneinfo`; an unknown or invalid name means UTC, so bad context data can
never stop a trigger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from streams.domain.config import Guardrails

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: How late a trigger may be (in event time, behind the profile's clock) and still be capped against
#: every send around it; the dedupe retention if shorter.  Bounds what a profile keeps of its sends.
MOST_LATE_MS = 7 * DAY_MS
SUPPRESS_REASONS = ("consent_false", "no_consent", "per_type_cap", "per_profile_cap")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def suppression_reason(
    cfg: Guardrails, consent: Mapping[str, Any], sent: Sequence[tuple[int, str]], trigger_type: str, at: int
) -> str | None:
    """Why a trigger of ``trigger_type`` due at ``at`` is held back (None: it may go out).

    ``sent`` is what was already emitted for this profile, ``(at, type)`` in any order.  A cap holds
    in every 24 h of event time: a trigger at ``at`` may not fill any window ``(e - 24 h, e]`` that
    holds it, so sends after ``at`` count too (a late event's trigger comes after later ones went out).
    """
    email = consent.get("email")
    if email is False:
        return "consent_false"
    if cfg.require_consent and email is not True:
        return "no_consent"
    near = [(s_at, s_type) for s_at, s_type in sent if at - DAY_MS < s_at < at + DAY_MS]
    if not near:
        return None
    if cfg.per_type_per_day and \
            _most_in_a_day([s_at for s_at, s_type in near if s_type == trigger_type], at) >= cfg.per_type_per_day:
        return "per_type_cap"
    if cfg.per_profile_per_day and _most_in_a_day([s_at for s_at, _ in near], at) >= cfg.per_profile_per_day:
        return "per_profile_cap"
    return None


def _most_in_a_day(times: Sequence[int], at: int) -> int:
    """The most of ``times`` in one window ``(e - 24 h, e]`` with ``at <= e < at + 24 h`` (the windows
    that hold ``at``): a window's count rises only where it takes in a time, so ``e`` is ``at`` or
    one of the times after it."""
    return max(sum(1 for t in times if e - DAY_MS < t <= e) for e in [at, *(t for t in times if t > at)])


def prune_sent(sent: Sequence[tuple[int, str]], t: int) -> list[tuple[int, str]]:
    """The sends that can still count against a cap at ``t`` or later: keeps the state bounded."""
    return [(s_at, s_type) for s_at, s_type in sent if s_at > t - DAY_MS]


def zone_of(name: str | None) -> tzinfo:
    """The IANA zone ``name``; UTC when missing or not a usable zone (never raises)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError, TypeError):  # not found, malformed key, a directory, not a str
        return UTC


def _local(ts: int, zone: tzinfo) -> datetime:
    return (_EPOCH + ts * _MS).astimezone(zone)


def _wall(ts: int, zone: tzinfo) -> datetime:
    """The naive local wall time of ``ts``."""
    return _local(ts, zone).replace(tzinfo=None)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


def _instants(wall: datetime, zone: tzinfo) -> list[int]:
    """The instants whose local time is ``wall``, earliest first: two in a DST fall-back, and for a
    wall time skipped by a DST gap the first valid instant after it (the end of the gap)."""
    found = sorted({_ms(wall.replace(tzinfo=zone, fold=fold)) for fold in (0, 1)})
    exact = [instant for instant in found if _wall(instant, zone) == wall]
    if exact:
        return exact
    # In a gap fold=1 reads the wall time with the offset after the change (an instant before it) and
    # fold=0 with the offset before (an instant after it): the change lies between; find it.
    lo, hi = found[0], found[-1]
    if not _wall(lo, zone) < wall <= _wall(hi, zone):
        return [hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(mid, zone) >= wall:
            hi = mid
        else:
            lo = mid
    return [hi]


def _hour_of(ts: int, zone: tzinfo) -> int:
    """The local hour of ``ts``; in UTC (a profile without a time zone) by arithmetic."""
    return ts // HOUR_MS % 24 if zone is UTC else _local(ts, zone).hour


def _next_wall_hour(at: int, hour: int, zone: tzinfo) -> int:
    """The first instant >= ``at`` whose local time is ``hour``:00.  In UTC, which has no DST, by
    arithmetic: the general path builds and converts six datetimes (~20 µs, on every trigger of a
    profile without a time zone while quiet hours apply)."""
    if zone is UTC:
        today = at - at % DAY_MS + hour * HOUR_MS
        return today if today >= at else today + DAY_MS
    day = _wall(at, zone).date()
    return min(
        instant
        for offset in range(3)
        for instant in _instants(datetime.combine(day + timedelta(days=offset), time(hour)), zone)
        if instant >= at
    )


def local_hour(ts: int, timezone: str | None) -> int:
    """The hour of the day (0..23) at ``ts`` in ``timezone`` (UTC when missing or unknown)."""
    return _hour_of(ts, zone_of(timezone))


def record_engagement(hours: list[int] | None, ts: int, timezone: str | None) -> list[int]:
    """``hours`` (24 counters of e-mail opens/clicks by local hour) with one more at ``ts``; a new
    list, so a state read from a table is never changed in place."""
    counts = ([*hours, *([0] * 24)] if hours else [0] * 24)[:24]
    counts[local_hour(ts, timezone)] += 1
    return counts


def best_hour(hours: Sequence[int] | None, min_engagements: int) -> int | None:
    """The local hour the profile engages with e-mail most (ties: the earliest), once there are at
    least ``min_engagements`` opens/clicks to trust it; else None."""
    if not hours:
        return None
    counts = list(hours[:24])
    total = sum(counts)
    if total <= 0 or total < min_engagements:
        return None
    return counts.index(max(counts))


def _in_quiet_hours(hour: int, start: int, end: int) -> bool:
    if start < end:
        return start <= hour < end
    if start > end:  # wraps over midnight
        return hour >= start or hour < end
    return False  # start == end: no quiet hours


def send_time(cfg: Guardrails, at: int, timezone: str | None, hours: Sequence[int] | None) -> tuple[int, str | None]:
    """When to send a trigger due at ``at``: ``(send_at, reason)``.

    ``reason`` is None when ``send_at == at``, ``"best_hour"`` when moved to the profile's best
    e-mail hour (at most 24 h ahead), ``"quiet_hours"`` when the time fell in quiet hours and moved to
    their end.  Local wall times follow DST; a wall time skipped by DST becomes the first instant after.
    """
    zone = zone_of(timezone)
    send_at: int = at
    reason: str | None = None
    hour = best_hour(hours, cfg.min_engagements) if cfg.send_time_optimization else None
    if hour is not None and _hour_of(at, zone) != hour:
        candidate = _next_wall_hour(at, hour, zone)
        if candidate - at <= DAY_MS:
            send_at, reason = candidate, "best_hour"
    quiet = cfg.quiet_hours
    if quiet.enabled and _in_quiet_hours(_hour_of(send_at, zone), quiet.start_hour, quiet.end_hour):
        send_at, reason = _next_wall_hour(send_at, quiet.end_hour, zone), "quiet_hours"
        # a DST change that skips the end hour and the open hours after it (Apia skipped 30 December
        # 2011) lands the first instant after it back in quiet hours: their next end, a day on
        while _in_quiet_hours(_hour_of(send_at, zone), quiet.start_hour, quiet.end_hour):
            send_at = _next_wall_hour(send_at + 1, quiet.end_hour, zone)
    return send_at, reason
