"""A reference model of the contract's rules, written from CONTRACT.md (sections 3-6) and the README's
"Event time, segments and triggers", not from ``streams/``: deliberately simple, slow and batch.

Given one person's whole history (raw input events, one ``user_id`` per person, no identity
merges), it computes what the pipeline must emit for that person by a watermark ``until``:
triggers (type, ``at``, and ``send_at`` where no e-mail engagement moves it) and built-in segment
changes (segment, change, ``at``).  Rules as the documents state them:

- dedupe: an ``event_id`` seen before has no effect;
- order: (timestamp, identities < clicks < carts < purchases, event id); a timer due at T fires
  before the events stamped T;
- erase: acts when received (the contract: "no later output mentions it"); in a batch, where all
  events arrive before the watermark moves, everything at or before the last erase is forgotten and
  later events start afresh;
- traits keep their newest value (a new birthday moves the birthday timer);
- triggers (README table): cart_abandoned, browse_abandoned, post_purchase, winback, birthday,
  welcome; guardrails: consent ``email: false`` holds back, at most 1 of a type and 3 in all per
  24 h of event time (triggers at ``at`` in (t - 24 h, t]); send_at out of quiet hours 21:00-08:00
  local time;
- segments: recent_browsers (product view in 48 h), cart_holders, recent_buyers (purchase in 30 d),
  lapsed_customers (purchases, none in 90 d), high_value (spend >= 500), engaged_email (open or click
  in 30 d); a window holds an event at ts while t - window < ts <= t.

Shares no code with ``streams/``: only the standard library.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
KIND_ORDER = {"identify": 0, "erase": 0, "page_view": 1, "product_view": 1, "category_view": 1, "search": 1,
              "email_open": 1, "email_click": 1, "cart_add": 2, "cart_remove": 2, "checkout_started": 2,
              "purchase": 3}
CART_DELAY, BROWSE_DELAY, POST_PURCHASE_DELAY, WINBACK_DELAY = 30 * MIN, 60 * MIN, 72 * HOUR, 90 * DAY
BIRTHDAY_HOUR = 9
QUIET_START, QUIET_END = 21, 8
PER_TYPE, PER_PROFILE = 1, 3
WINDOWS = {"recent_browsers": 48 * HOUR, "recent_buyers": 30 * DAY, "lapsed_customers": 90 * DAY,
           "engaged_email": 30 * DAY}
SEGMENTS = ("recent_browsers", "cart_holders", "recent_buyers", "lapsed_customers", "high_value", "engaged_email")


def ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


def iso(t: int) -> str:
    return dt.datetime.fromtimestamp(t / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t % 1000:03d}Z"


@dataclass
class Person:
    """One person's state between erasures."""

    cart: dict[str, int] = field(default_factory=dict)
    cart_timer: int | None = None
    cart_fired: bool = False  # once per cart
    browse_timer: int | None = None
    post_purchase_timer: int | None = None
    winback_timer: int | None = None
    birthday: str | None = None
    birthday_next: int | None = None
    timezone: str | None = None
    email: str | None = None
    consent: dict[str, tuple[int, Any]] = field(default_factory=dict)  # newest value by event time
    views: list[int] = field(default_factory=list)
    purchases: list[int] = field(default_factory=list)
    engagements: list[int] = field(default_factory=list)
    spend: float = 0.0
    sent: list[tuple[int, str]] = field(default_factory=list)
    segments: set[str] = field(default_factory=set)


@dataclass
class Outcome:
    triggers: list[tuple[str, int, int]] = field(default_factory=list)  # (type, at, send_at)
    suppressed: list[tuple[str, int, str]] = field(default_factory=list)
    changes: list[tuple[str, str, int]] = field(default_factory=list)  # (segment, entered|exited, at)


def _order(event: dict[str, Any]) -> tuple[int, int, str]:
    return ms(event["timestamp"]), KIND_ORDER[event["type"]], event["event_id"]


def _next_birthday(birthday: str, after: int, timezone: str | None) -> int:
    """The first birthday moment (BIRTHDAY_HOUR local time) strictly after ``after``."""
    _, month, day = (int(part) for part in birthday.split("-"))
    zone = ZoneInfo(timezone) if timezone else dt.UTC
    year = dt.datetime.fromtimestamp(after / 1000, zone).year - 1
    while True:
        year += 1
        d = day
        if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
            d = 28
        moment = dt.datetime(year, month, d, BIRTHDAY_HOUR, tzinfo=zone)
        t = int(moment.timestamp() * 1000)
        if t > after:
            return t


def _send_at(at: int, timezone: str | None) -> int:
    """Out of the quiet hours 21:00-08:00 local time, to their next end."""
    zone = ZoneInfo(timezone) if timezone else dt.UTC
    local = dt.datetime.fromtimestamp(at / 1000, zone)
    if QUIET_END <= local.hour < QUIET_START:
        return at
    day = local.date() if local.hour < QUIET_END else local.date() + dt.timedelta(days=1)
    end = dt.datetime(day.year, day.month, day.day, QUIET_END, tzinfo=zone)
    return int(end.timestamp() * 1000)


def _in_window(times: list[int], t: int, window: int) -> bool:
    return any(t - window < ts <= t for ts in times)


def _members(p: Person, t: int) -> set[str]:
    out = set()
    if _in_window(p.views, t, WINDOWS["recent_browsers"]):
        out.add("recent_browsers")
    if any(q > 0 for q in p.cart.values()):
        out.add("cart_holders")
    if _in_window(p.purchases, t, WINDOWS["recent_buyers"]):
        out.add("recent_buyers")
    if p.purchases and not _in_window(p.purchases, t, WINDOWS["lapsed_customers"]):
        out.add("lapsed_customers")
    if p.spend >= 500:
        out.add("high_value")
    if _in_window(p.engagements, t, WINDOWS["engaged_email"]):
        out.add("engaged_email")
    return out


def run(history: list[dict[str, Any]], until: int) -> Outcome:
    """What the pipeline must emit for one person's ``history`` by the watermark ``until``."""
    out = Outcome()
    seen: set[str] = set()
    events = []
    for event in sorted(history, key=_order):  # dedupe by the first in time order: the ids are unique per event
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        events.append(event)
    events = [e for e in events if ms(e["timestamp"]) <= until]
    # An erase acts when it is received: in a batch (everything received before the watermark moves)
    # every event at or before the last erase is forgotten, and nothing is emitted for it.
    erasures = [ms(e["timestamp"]) for e in events if e["type"] == "erase"]
    if erasures:
        events = [e for e in events if ms(e["timestamp"]) > max(erasures)]
    p = Person()

    def evaluate(t: int) -> None:
        now = _members(p, t)
        for segment in SEGMENTS:
            if segment in now and segment not in p.segments:
                out.changes.append((segment, "entered", t))
            elif segment in p.segments and segment not in now:
                out.changes.append((segment, "exited", t))
        p.segments = now

    def fire(kind: str, t: int) -> None:
        consent = p.consent.get("email")
        if consent is not None and consent[1] is False:
            out.suppressed.append((kind, t, "consent_false"))
            return
        recent = [(at, k) for at, k in p.sent if t - DAY < at <= t]
        if sum(1 for _, k in recent if k == kind) >= PER_TYPE:
            out.suppressed.append((kind, t, "per_type_cap"))
            return
        if len(recent) >= PER_PROFILE:
            out.suppressed.append((kind, t, "per_profile_cap"))
            return
        p.sent.append((t, kind))
        out.triggers.append((kind, t, _send_at(t, p.timezone)))

    def due_timers() -> list[tuple[int, str]]:
        timers = [(p.cart_timer, "cart_abandoned"), (p.browse_timer, "browse_abandoned"),
                  (p.post_purchase_timer, "post_purchase"), (p.winback_timer, "winback")]
        timers.append((p.birthday_next, "birthday"))
        expiries = [(ts + WINDOWS[s], "window") for s, times in (("recent_browsers", p.views),
                    ("recent_buyers", p.purchases), ("lapsed_customers", p.purchases),
                    ("engaged_email", p.engagements)) for ts in times]
        expiries = [(t, name) for t, name in expiries if t > last[0]]  # windows that have not expired yet
        return sorted([(t, name) for t, name in [*timers, *expiries] if t is not None])

    def run_timers(upto: int, inclusive: bool) -> None:
        """Timers due before ``upto`` (or at it, with ``inclusive``), earliest first."""
        while True:
            pending = [(t, name) for t, name in due_timers() if t < upto or (inclusive and t == upto)]
            if not pending:
                return
            t, name = pending[0]
            last[0] = max(last[0], t)
            if name == "cart_abandoned":
                p.cart_timer = None
                if any(q > 0 for q in p.cart.values()) and not p.cart_fired:
                    p.cart_fired = True
                    fire(name, t)
            elif name == "browse_abandoned":
                p.browse_timer = None
                if not any(q > 0 for q in p.cart.values()):
                    fire(name, t)
            elif name == "post_purchase":
                p.post_purchase_timer = None
                fire(name, t)
            elif name == "winback":
                p.winback_timer = None
                fire(name, t)
            elif name == "birthday":
                assert p.birthday is not None
                p.birthday_next = _next_birthday(p.birthday, t, p.timezone)
                fire(name, t)
            evaluate(t)

    last = [-(10**15)]  # the time the model has reached
    for event in events:
        t = ms(event["timestamp"])
        run_timers(t, inclusive=True)
        last[0] = t
        kind = event["type"]
        if kind == "erase":
            p = Person()
            continue
        timezone = (event.get("context") or {}).get("timezone")
        if timezone and p.timezone is None:
            p.timezone = timezone
        if kind == "identify":
            traits = event.get("traits") or {}
            for name, value in (event.get("consent") or {}).items():
                if name not in p.consent or p.consent[name][0] <= t:
                    p.consent[name] = (t, value)
            address = event.get("email") or traits.get("email")
            if address and p.email is None:
                p.email = address
                fire("welcome", t)
            if traits.get("birthday") and traits["birthday"] != p.birthday:  # traits: the newest value
                p.birthday = traits["birthday"]
                p.birthday_next = _next_birthday(traits["birthday"], t, p.timezone)
        elif kind == "product_view":
            p.views.append(t)
            p.browse_timer = t + BROWSE_DELAY
        elif kind in ("email_open", "email_click"):
            p.engagements.append(t)
        elif kind in ("cart_add", "cart_remove", "checkout_started"):
            product = str(event.get("product_id"))
            if kind == "cart_add":
                p.cart[product] = p.cart.get(product, 0) + int(event.get("quantity", 1))
            elif kind == "cart_remove" and product in p.cart:
                p.cart[product] = max(0, p.cart[product] - int(event.get("quantity", 1)))
                if p.cart[product] == 0:
                    del p.cart[product]
            if kind in ("cart_add", "checkout_started"):
                p.browse_timer = None
            if p.cart:
                p.cart_timer = t + CART_DELAY
            else:
                p.cart_timer = None
                p.cart_fired = False
        elif kind == "purchase":
            p.purchases.append(t)
            p.spend += float(event["total"])
            p.cart = {}
            p.cart_timer = None
            p.cart_fired = False
            p.browse_timer = None
            p.post_purchase_timer = t + POST_PURCHASE_DELAY
            p.winback_timer = t + WINBACK_DELAY
        evaluate(t)
    run_timers(until, inclusive=True)
    return out
