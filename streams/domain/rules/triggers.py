"""Trigger rules: when each built-in trigger becomes due, as pure functions over one profile.

They run inside :func:`streams.domain.timeline.advance`, which hands them the person's events in event-time
order and fires their timers when the watermark passes them.  A rule keeps what it needs in the
profile's ``rules`` state: ``timers`` (name -> ``[due_ms, cause, details]``) and ``flags``.

Every due trigger names its ``cause``: the id of the event that made it due (or, for birthdays, the
year).  The trigger id is derived from (profile, type, cause), so processing the same input again
gives the same id.

The rules (README "Triggers" repeats them for users):

- ``cart_abandoned``: each cart event that leaves the cart non-empty (re)sets a timer to the cart's
  last activity (its own time, or a newer one a late event finds) + ``delay_minutes``; a purchase or
  an emptied cart cancels it.  When it fires and the cart is still non-empty, the trigger is due at
  the timer's time, caused by the last cart event.  Once per cart: no second one until the cart has
  been bought or emptied.
- ``browse_abandoned``: each ``product_view`` (re)sets a timer to its time + ``delay_minutes``; a
  ``cart_add``, ``checkout_started`` or purchase cancels it.  Due when it fires and the cart is empty.
- ``post_purchase``: ``delay_hours`` after the newest purchase, caused by it.
- ``winback``: ``after_days`` after the newest purchase with no purchase since, caused by it.
- ``birthday``: at ``hour`` local time (the profile's time zone, else UTC) on the birthday trait's
  month and day (29 February: 28 February in other years), every year, caused by the year.
- ``welcome``: the first ``identify`` event that gives the profile an e-mail address.
- ``churn_risk``: for a customer (at least ``min_orders`` purchases, 1), when a new prediction's churn
  probability reaches ``threshold`` while the previous one was below it (or absent), caused by the
  prediction's model version and time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Any

from streams.domain.config import Triggers
from streams.domain.rules import guardrails
from streams.domain.state import Predictions, ProfileBody, RuleState

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

#: The widest gap between two zones' clocks (UTC-12 to UTC+14): how far a birthday moment can move.
ZONE_SPREAD_MS = 26 * HOUR_MS
#: Timers owned by trigger rules (the timeline also keeps a ``segments`` timer).
TRIGGER_TIMERS = ("cart_abandoned", "browse_abandoned", "post_purchase", "winback", "birthday")


@dataclass(frozen=True, slots=True)
class Due:
    """A trigger that became due (guardrails decide next whether and when it is sent)."""

    type: str
    at: int
    cause: str
    details: dict[str, Any] = field(default_factory=dict)


def new_rule_state() -> RuleState:
    return {"clock": None, "history": {}, "timers": {}, "flags": {}, "sent": [], "engagement": None}


def _birthday_in(year: int, month: int, day: int) -> date:
    try:
        return date(year, month, day)
    except ValueError:  # 29 February in a common year
        return date(year, month, day - 1)


def next_birthday(birthday: str, after: int, timezone: str | None, hour: int) -> tuple[int, int] | None:
    """(due ms, year) of the first birthday moment strictly after ``after``; None for a bad date."""
    try:
        born = date.fromisoformat(birthday)
    except (TypeError, ValueError):
        return None
    zone = guardrails.zone_of(timezone)
    local_year = datetime.fromtimestamp(after / 1000, tz=UTC).astimezone(zone).year
    for year in (local_year - 1, local_year, local_year + 1):
        due = _birthday_moment(born, year, zone, hour)
        if due > after:
            return due, year
    return None  # pragma: no cover - the following year is always after


def _birthday_moment(born: date, year: int, zone: tzinfo, hour: int) -> int:
    """The birthday of ``year`` at ``hour`` local time, in ms."""
    day = _birthday_in(year, born.month, born.day)
    moment = datetime(day.year, day.month, day.day, hour, tzinfo=zone)
    # a local time skipped by a DST change comes out as late as the gap is long (02:30 in a one-hour gap: 03:30)
    return int(moment.astimezone(UTC).timestamp() * 1000)


def follow_time_zone(cfg: Triggers, profile: ProfileBody, rules: RuleState, now: int | None = None) -> None:
    """The birthday timer moved to ``hour`` in the profile's time zone as it is now, for the same
    year (a time zone can come after the birthday, with a later event's context).  A moment the
    zone puts before the profile's clock fires at the next step, stamped with it, as a late event's
    trigger is.  A timer set for next year because the birthday was learnt after this year's moment
    (``learnt`` in its details) goes back to this year when the zone puts that moment after ``now``
    (the step's time): learnt at 10:00 UTC on the birthday, a zone eight hours west still has 09:00
    to come."""
    timer = rules["timers"].get("birthday")
    birthday = profile["traits"].get("birthday")
    if timer is None or not birthday or not timer[1].startswith("birthday:"):
        return
    try:
        born, year = date.fromisoformat(birthday), int(timer[1].removeprefix("birthday:"))
        zone = guardrails.zone_of(profile["context"].get("timezone"))
        due = _birthday_moment(born, year, zone, cfg.birthday.hour)
        if timer[2].get("learnt"):
            step = [moment for moment in (now, rules["clock"]) if moment is not None]
            earlier = _birthday_moment(born, year - 1, zone, cfg.birthday.hour)
            if step and earlier > max(step):
                year, due = year - 1, earlier
    except (TypeError, ValueError, OverflowError):
        return
    if due != timer[0] or timer[1] != f"birthday:{year}":
        timer[0], timer[1] = due, f"birthday:{year}"


def follow_merge(cfg: Triggers, profile: ProfileBody, rules: RuleState) -> None:
    """After a merge: the birthday timer (the later of both profiles') read with the merged trait and
    time zone, as one profile that had known both would have it.  In the zone now known it moves as
    :func:`follow_time_zone` moves it; one set for the other profile's birthday (a different day)
    is set again from the merged trait, after the clock."""
    timer = rules["timers"].get("birthday")
    clock = rules["clock"]
    if not cfg.birthday.enabled or timer is None or clock is None:
        return
    before = timer[0]
    follow_time_zone(cfg, profile, rules, clock)
    if abs(timer[0] - before) >= ZONE_SPREAD_MS:
        arm_birthday(cfg, profile, rules, clock)


def _set_timer(rules: RuleState, name: str, due: int, cause: str, details: dict[str, Any] | None = None) -> None:
    rules["timers"][name] = [due, cause, dict(details) if details else {}]  # a dict of its own per timer


def _cancel(rules: RuleState, *names: str) -> None:
    for name in names:
        rules["timers"].pop(name, None)


def on_event(cfg: Triggers, profile: ProfileBody, rules: RuleState, event: dict[str, Any],
             cart_items: int, had_email: bool, birthday_before: Any = None,
             cart_touched: int | None = None) -> list[Due]:
    """After ``event`` was folded into ``profile``: (re)sets or cancels timers; returns triggers due
    at once.  ``cart_items`` is the cart's item count after the event; ``had_email`` whether the
    profile had an e-mail address before it; ``birthday_before`` its birthday trait before it (an
    identify's); ``cart_touched`` the open cart's last activity (a late event's cart may have a newer
    one, applied while the cart was still empty: the abandonment counts from that)."""
    ts: int = event["ts"]
    etype, kind, event_id = event["type"], event["kind"], event["event_id"]
    flags = rules["flags"]
    due: list[Due] = []

    if kind in ("carts", "purchases"):
        if cart_items <= 0:
            _cancel(rules, "cart_abandoned")
            flags.pop("cart_fired", None)
        elif cfg.cart_abandoned.enabled and not flags.get("cart_fired"):
            delay = int(cfg.cart_abandoned.delay_minutes * MINUTE_MS)
            current = rules["timers"].get("cart_abandoned")
            touched = ts if cart_touched is None else max(ts, cart_touched)
            if current is None or current[0] <= touched + delay:
                _set_timer(rules, "cart_abandoned", touched + delay, event_id)
        if etype in ("cart_add", "checkout_started") or kind == "purchases":
            _cancel(rules, "browse_abandoned")

    if kind == "purchases":
        last = profile["aggregates"]["last_purchase_at"]
        if last == ts:  # the newest purchase
            details = {"order_id": event.get("order_id"), "total": event.get("total"),
                       "currency": event.get("currency", "USD")}
            if cfg.post_purchase.enabled:
                _set_timer(rules, "post_purchase", ts + int(cfg.post_purchase.delay_hours * HOUR_MS), event_id, details)
            if cfg.winback.enabled:
                _set_timer(rules, "winback", ts + int(cfg.winback.after_days * DAY_MS), event_id, details)

    elif etype == "product_view" and cfg.browse_abandoned.enabled:
        delay = int(cfg.browse_abandoned.delay_minutes * MINUTE_MS)
        current = rules["timers"].get("browse_abandoned")
        if current is None or current[0] <= ts + delay:
            _set_timer(rules, "browse_abandoned", ts + delay, event_id,
                       {"product_id": event.get("product_id"), "category": event.get("category")})

    elif etype == "identify":
        if cfg.welcome.enabled and not had_email and profile["email"] and not flags.get("welcomed"):
            flags["welcomed"] = True
            due.append(Due("welcome", ts, event_id, {"source": event.get("source")}))
        if cfg.birthday.enabled and (event.get("traits") or {}).get("birthday"):
            if "birthday" in rules["timers"] and profile["traits"].get("birthday") == birthday_before:
                follow_time_zone(cfg, profile, rules, ts)  # the same birthday again (a CRM's sync of every trait)
            else:
                after = ts if rules["clock"] is None else max(ts, rules["clock"])
                arm_birthday(cfg, profile, rules, after, learnt=True)
            return due
    if cfg.birthday.enabled and (event.get("context") or {}).get("timezone"):
        follow_time_zone(cfg, profile, rules, ts)
    return due


def arm_birthday(cfg: Triggers, profile: ProfileBody, rules: RuleState, after: int, learnt: bool = False) -> None:
    """Sets the birthday timer to the next birthday after ``after`` (from the current trait);
    ``learnt``: the trait was just given (not a birthday that fired), so the year before was not sent."""
    birthday = profile["traits"].get("birthday")
    nxt = next_birthday(birthday, after, profile["context"].get("timezone"), cfg.birthday.hour) if birthday else None
    if nxt is None:
        _cancel(rules, "birthday")
        return
    details = None
    if learnt and birthday:  # marked only where another zone could still put the skipped year's moment ahead
        skipped = _birthday_moment(date.fromisoformat(birthday), nxt[1] - 1, guardrails.zone_of(
            profile["context"].get("timezone")), cfg.birthday.hour)
        if after - skipped < ZONE_SPREAD_MS:
            details = {"learnt": True}
    _set_timer(rules, "birthday", nxt[0], f"birthday:{nxt[1]}", details)


def on_timer(cfg: Triggers, profile: ProfileBody, rules: RuleState, name: str, timer: list[Any],
             cart_items: int) -> list[Due]:
    """A trigger timer fired (the timeline already removed it): the triggers now due."""
    due_at, cause, details = timer
    flags = rules["flags"]
    if name == "cart_abandoned":
        if cart_items > 0 and not flags.get("cart_fired"):
            flags["cart_fired"] = True
            return [Due(name, due_at, cause)]
    elif name == "browse_abandoned":
        if cart_items <= 0:
            return [Due(name, due_at, cause, dict(details))]
    elif name == "post_purchase":
        return [Due(name, due_at, cause, dict(details))]
    elif name == "winback":
        last = profile["aggregates"]["last_purchase_at"]
        days = None if last is None else round((due_at - last) / DAY_MS)
        return [Due(name, due_at, cause, {**details, "days_since_purchase": days})]
    elif name == "birthday":
        arm_birthday(cfg, profile, rules, due_at)
        return [Due(name, due_at, cause)]
    return []


def on_predictions(cfg: Triggers, previous: Predictions | None, current: Predictions, at: int,
                   orders: int) -> list[Due]:
    """A new prediction: ``churn_risk`` is due when the churn probability of a profile with at least
    ``min_orders`` purchases crosses the threshold."""
    if not cfg.churn_risk.enabled or orders < cfg.churn_risk.min_orders:
        return []
    threshold = cfg.churn_risk.threshold
    before = previous.get("churn_probability") if previous is not None else None
    now = current.get("churn_probability")
    if now is None or now < threshold or (before is not None and before >= threshold):
        return []
    cause = f"churn:{current.get('model_version')}:{at}"
    return [Due("churn_risk", at, cause, {"churn_probability": now})]

