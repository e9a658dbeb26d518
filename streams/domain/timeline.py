"""One person's events in event-time order, up to the watermark: ``(state, input) -> (state, outputs)``.

Contract section 4.  An arriving event is deduplicated and parked in the profile's ``pending`` list
(:func:`receive`).  :func:`advance` then walks time forward to the watermark: it releases parked
events in (timestamp, identities < clicks < carts < purchases, event id) order, folds each into the
profile, and fires every timer that falls due on the way (a timer at T fires before events stamped
T).  After each step the segments are evaluated at that step's time, so an entered/exited change
carries the event time at which it became true, also when only time changed it (a ``segments``
timer at the next window expiry).  An event older than the profile's rule clock (late) is folded
at once; decisions already emitted stay.

A ``score`` timer (:mod:`streams.domain.rules.score_timer`) scores the profile with ``RuleSet.scorer`` at
event times that follow from its activity: a ``scores`` output, new ``predictions`` for the
segments that read them, and maybe a ``churn_risk`` trigger.

The same events and watermarks give the same outputs whatever order partitions, workers and
restarts deliver them in: that is what makes trigger ids and segment changes stable.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.timeparse import format_ms
from streams.domain.config import PipelineConfig
from streams.domain.profile import (
    DERIVE,
    Dropped,
    Limits,
    cart_and_activity,
    cart_view,
    fold_consent_names,
    fold_event,
    new_state,
    remember,
    repeated,
    snapshot,
)
from streams.domain.rules import guardrails, payload, recommend, score_timer, segments, triggers
from streams.domain.rules.segments import Evaluator
from streams.domain.state import ErasureMarker, LiveState, Predictions, ProfileBody, RuleState, State

#: Equal timestamps are applied in this order (contract section 4).
KIND_ORDER = {"identities": 0, "clicks": 1, "carts": 2, "purchases": 3}
ENGAGEMENT_TYPES = ("email_open", "email_click")
# Bounds (config ``limits``, :class:`streams.domain.profile.Limits`): ``history_per_type`` timestamps per
# event type for windowed counts (a very busy person's state); ``parked_events``: events a profile
# parks while the watermark is held back, the oldest past it applied at once
# (``mailpulse_events_released_early_total``), so a stalled input partition bounds memory.


#: ``scorer(profile, cart, at_ms)`` -> the profile's predictions at that event time
#: (``{"churn_probability", "purchase_probability", "model_version", "at"}``): :class:`models.scoring.Predictor`.
Scorer = Callable[[Mapping[str, Any], "dict[str, Any] | None", int], Predictions]


@dataclass(frozen=True)
class RuleSet:
    """The compiled configuration the timeline runs with (``scorer``: None, no predictions)."""

    config: PipelineConfig
    segments: tuple[segments.Segment, ...]
    windows: dict[str, int]
    retention_ms: int
    scorer: Scorer | None = None
    #: The segment rules compiled to one function (:func:`streams.domain.rules.segments.compile_evaluator`),
    #: when the rules are built, at start: a large rule set takes seconds, which stalled the first event.
    evaluate_segments: Evaluator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "evaluate_segments", segments.compile_evaluator(self.segments))  # (frozen)

    @classmethod
    def build(cls, config: PipelineConfig, retention_ms: int, scorer: Scorer | None = None) -> RuleSet:
        compiled = segments.builtin_segments(config.segments) + config.custom_segments()  # (compiled as checked)
        return cls(config, compiled, segments.history_windows(compiled), retention_ms,
                   scorer if config.scoring.enabled else None)

    @functools.cached_property
    def limits(self) -> Limits:
        """The bounds of a profile's collections (config ``limits``)."""
        return Limits(**self.config.limits.model_dump())

    @functools.cached_property
    def identity_limits(self) -> dict[str, int]:
        """``identity.max_per_profile`` as kind -> most identifiers of that kind per profile."""
        return self.config.identity.max_per_profile.model_dump()


@dataclass
class Outputs:
    """What one :func:`advance` produced."""

    changed: bool = False  # the profile changed: publish a snapshot
    steps: int = 0  # events released + timers fired (state to write back when > 0)
    segment_changes: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)  # messages for the ``scores`` topic
    suppressed: list[tuple[str, str]] = field(default_factory=list)  # (type, reason)
    deferred: list[tuple[str, str]] = field(default_factory=list)  # (type, reason) send_at moved
    released: list[dict[str, Any]] = field(default_factory=list)  # events folded, in order
    pairs: list[tuple[str, str, int]] = field(default_factory=list)  # product co-occurrences to count
    cart: Any = DERIVE  # cart_view of the profile as advance left it, when it derived one
    dropped: dict[str, int] = field(default_factory=dict)  # entries a bound of ``rules.limits`` kept out
    released_early: int = 0  # parked events applied before the watermark (past limits.parked_events)
    #: E-mail consent turned false (from true or unknown, by an event or a merge) and stayed so: the
    #: profile's triggers stamped up to this time (the event's, or the profile's clock when that is later: a
    #: late event) and still on their way are to be dropped.
    withdrawn: int | None = None

    def extend(self, later: Outputs) -> None:
        """Adds what a second :func:`advance` of the same profile produced."""
        self.changed |= later.changed
        self.steps += later.steps
        self.segment_changes += later.segment_changes
        self.triggers += later.triggers
        self.scores += later.scores
        self.suppressed += later.suppressed
        self.deferred += later.deferred
        self.released += later.released
        self.pairs += later.pairs
        if later.cart is not DERIVE:
            self.cart = later.cart
        for collection, count in later.dropped.items():
            self.dropped[collection] = self.dropped.get(collection, 0) + count
        self.released_early += later.released_early
        if later.withdrawn is not None:
            self.withdrawn = later.withdrawn


@dataclass(frozen=True, slots=True)
class Received:
    state: LiveState | ErasureMarker | None
    outcome: str  # "processed" | "duplicate" | "erased" | "forgotten" (older than the profile's erasure)
    late: bool = False
    seen_dropped: int = 0  # event ids forgotten past limits.seen_ids
    #: a duplicate only because it is stamped before the window whose ids were forgotten (its own id is
    #: not held): a repeat of history then, or older history arriving for the first time
    before_dedupe: bool = False


def ensure_rule_state(state: LiveState) -> LiveState:
    """A profile state as this version reads it: the timeline's parts (pending events, rule state) added
    where they lack, and consent channels named as events now name them (:func:`fold_consent_names`)."""
    if "rules" not in state:
        state["pending"] = []
        state["rules"] = triggers.new_rule_state()
    fold_consent_names(state["profile"])
    return state


def later_activity(state: LiveState, key: str, erased_at: int, rules: RuleSet,
                   dropped: Dropped | None = None) -> LiveState | None:
    """What of an erased person's profile is kept: the events stamped after the erasure that arrived
    before it (still parked) are their later activity, and start a new profile, as they would have
    had they come after it (None: there are none).  Their ids past ``limits.seen_ids`` go into
    ``dropped``, as a fold's do."""
    later = [entry for entry in state.get("pending", ()) if entry[0] > erased_at]
    if not later:
        return None
    fresh = ensure_rule_state(new_state(key, later[0][0]))
    fresh["erased_at"] = erased_at
    for entry in later:
        remember(fresh, entry[3], rules.retention_ms, dropped, limits=rules.limits)
    fresh["pending"] = later
    if state.get("absorbed"):
        # (the profiles it took in came: one delivered again is still known, not taken for a newcomer's
        # that brings the erased person's older events back)
        fresh["absorbed"] = state["absorbed"]
    return fresh


def receive(state: LiveState | ErasureMarker | None, key: str, event: dict[str, Any], watermark: int | None,
            rules: RuleSet) -> Received:
    """Dedupes an accepted (non-tick) event and parks it until the watermark reaches it.

    ``erase`` acts at once: the state becomes an erasure marker ``{"erased_at": ts}`` (the key and
    the time, nothing else), so that a replay of the person's older events brings nothing back;
    events after the erasure start a new profile."""
    erased_at = state.get("erased_at") if state is not None else None
    if erased_at is not None and event["ts"] <= erased_at:
        return Received(state, "forgotten")
    erased_keys = None  # where the erase was carried out, what follows keeps the person's counts
    if state is not None and "profile" not in state:  # an erasure marker; the event is newer
        erased_keys = state.get("erased_keys")
        state = None
    elif state is not None and event["type"] != "erase" and repeated(state, event):
        # (an erase is never a repeat: one stamped before the window of ids the profile still holds
        # is still the person's word, and an erase read again finds a marker, above)
        return Received(state, "duplicate", before_dedupe=event["event_id"] not in state["seen"])
    if event["type"] == "erase":
        previous = state.get("erased_at") if state is not None else None
        at = event["ts"] if previous is None else max(previous, event["ts"])
        dropped: Dropped = {}
        fresh = later_activity(state, key, at, rules, dropped) if state is not None else None
        return Received(fresh if fresh is not None else {"erased_at": at}, "erased",
                        seen_dropped=dropped.get("seen", 0))
    if state is None:
        state = ensure_rule_state(new_state(key, event["ts"]))
        if erased_at is not None:
            state["erased_at"] = erased_at
            if erased_keys is not None:
                state["erased_keys"] = erased_keys
    else:
        state = ensure_rule_state(state)
    dropped = {}
    remember(state, event, rules.retention_ms, dropped, rules.limits, watermark)
    entry = [event["ts"], KIND_ORDER.get(event["kind"], 9), event["event_id"], event]
    bisect.insort(state["pending"], entry, key=lambda e: (e[0], e[1], e[2]))
    late = watermark is not None and event["ts"] < watermark
    return Received(state, "processed", late, dropped.get("seen", 0))


def next_due(state: State) -> int | None:
    """The earliest event time at which :func:`advance` has work for this profile."""
    if "profile" not in state:
        return None
    pending = state["pending"]
    first: int | None = pending[0][0] if pending else None
    for timer in state["rules"]["timers"].values():  # (one to three: a loop costs less than min())
        if first is None or timer[0] < first:
            first = timer[0]
    return first


def idle(state: LiveState, watermark: int | None, most_parked: int, first_due: int | None) -> bool:
    """True when :func:`advance` of ``state`` to ``watermark`` (``first_due``: its :func:`next_due`)
    would do nothing at all: no parked event past ``most_parked``, no watermark yet or nothing due by
    it, no merge to evaluate, and the rule state already there.  At live rates this is an event's
    first pass (parked by one record, folded by a later one), which then costs only its write."""
    rs = state.get("rules")
    if rs is None or len(state["pending"]) > most_parked:
        return False
    return watermark is None or (not rs.get("dirty") and (first_due is None or first_due > watermark))


def trigger_id(profile_id: str, trigger_type: str, cause: str) -> str:
    """Same profile, type and cause: same id (connectors drop repeats by it)."""
    digest = hashlib.blake2b(f"{profile_id}\x1f{trigger_type}\x1f{cause}".encode(), digest_size=16)
    return digest.hexdigest()


def _facts(profile: ProfileBody, cart: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "aggregates": profile["aggregates"],
        "traits": profile["traits"],
        "consent": profile["consent"],
        "context": profile["context"],
        "cart": {"item_count": cart["item_count"], "value": cart["value"], "lines": len(cart["items"])}
        if cart else {"item_count": 0, "value": 0.0, "lines": 0},
        "predictions": profile["predictions"] or {},
    }


#: Published top neighbours of a product (None: unknown).  Passed in, so the timeline stays pure.
NeighboursOf = Callable[[str], Sequence[str] | None]


def _no_neighbours(product: str) -> None:
    return None


def _note_products(rs: RuleState, event: dict[str, Any], out: Outputs) -> None:
    if event["type"] in ("product_view", "cart_add") and event.get("product_id"):
        products, purchased = [event["product_id"]], False
    elif event["type"] == "purchase":
        products = [item["product_id"] for item in event.get("items") or () if item.get("product_id")]
        purchased = True
        bought: list[str] = rs.setdefault("bought", [])
        bought.extend(p for p in products if p not in bought)
        del bought[:-recommend.BOUGHT_KEPT]
    else:
        return
    out.pairs += recommend.note_products(rs.setdefault("recent_products", []), products, purchased)


def _remember_history(rules_state: RuleState, event: dict[str, Any], windows: dict[str, int], most: int,
                      dropped: dict[str, int]) -> None:
    window = windows.get(event["type"])
    if window is None:
        return
    times: list[int] = rules_state["history"].setdefault(event["type"], [])
    bisect.insort(times, event["ts"])
    clock = rules_state["clock"] if rules_state["clock"] is not None else event["ts"]
    horizon = max(clock, event["ts"]) - window
    drop = bisect.bisect_right(times, horizon)
    if drop or len(times) > most:
        if len(times) - most > drop:  # past the bound, not only out of the window
            dropped["history"] = dropped.get("history", 0) + len(times) - most - drop
        del times[: max(drop, len(times) - most)]


def _first_timer(timers: dict[str, list[Any]]) -> tuple[str | None, int | None]:
    """(name, due) of the earliest timer, ties by name; (None, None) without timers.  (A loop: a
    profile holds one to three timers, and ``min`` with a key function cost more.)"""
    first: tuple[int, str] | None = None
    for name, timer in timers.items():
        if first is None or (timer[0], name) < first:
            first = (timer[0], name)
    return (None, None) if first is None else (first[1], first[0])


def advance(state: LiveState, watermark: int | None, rules: RuleSet, now_ms: int,
            neighbours_of: NeighboursOf = _no_neighbours, most_parked: int | None = None) -> Outputs:
    """Walks the profile forward to ``watermark``: releases parked events and fires due timers, in
    event-time order, evaluating segments after each step.  Mutates ``state``.  ``neighbours_of``
    looks up a product's published top neighbours (for the payload's recommendations).  Past
    ``most_parked`` parked events (None: ``limits.parked_events``) the oldest are released early (0:
    all of them)."""
    out = Outputs()
    if "profile" not in state:
        return out
    limits = rules.limits
    if most_parked is None:
        most_parked = limits.parked_events
    pending_now = state.get("pending") or ()
    if len(pending_now) > most_parked:
        # the watermark is held back (an input partition carries nothing): this profile may not park
        # without bound, so its oldest events are applied as if the watermark had reached them
        forced = pending_now[len(pending_now) - most_parked - 1][0]
        if watermark is None or forced > watermark:
            out.released_early = len(pending_now) - most_parked
            watermark = forced
    if watermark is None:
        return out
    state = ensure_rule_state(state)
    profile, rs, pending = state["profile"], state["rules"], state["pending"]
    timers: dict[str, list[Any]] = rs["timers"]
    cfg = rules.config
    if idle(state, watermark, most_parked, next_due(state)):
        return out  # nothing due yet
    # an identifier an identity limit kept out of the links is not folded (states the identity
    # graph never placed, as in some tests, have no links and are not limited)
    linked = {profile["key"], *state["links"]} if "links" in state else None
    cart = cart_view(profile)  # changes only when a cart or purchase event is folded (below)
    # the last withdrawal of this pass stamped with its own time (not a late event's, stamped with the
    # clock): consent given again later in the pass does not take it back, as it would not in a later pass
    withdrawn_on_time: int | None = None
    if rs.pop("dirty", False) and rs["clock"] is not None:
        # merged with another profile: its segments are evaluated again at the current time
        out.steps += 1
        out.changed = True
        if profile["consent"].get("email") is False:  # the merged consent: what is on its way stops here
            out.withdrawn = withdrawn_on_time = rs["clock"]
        triggers.follow_merge(cfg.triggers, profile, rs)
        _evaluate_segments(state, cart, rs["clock"], rules, now_ms, out)
    while True:
        timer_name, timer_due = _first_timer(timers)
        event_ts = pending[0][0] if pending else None
        dues: list[triggers.Due]
        if timer_due is not None and timer_due <= watermark and (event_ts is None or timer_due <= event_ts):
            assert timer_name is not None
            timer = timers.pop(timer_name)
            step = timer_due
            if timer_name == "segments":
                dues = []
            elif timer_name == score_timer.SCORE_TIMER:
                dues = _score(state, cart, timer_due, rules, out)
            else:
                dues = triggers.on_timer(cfg.triggers, profile, rs, timer_name, timer,
                                         cart["item_count"] if cart else 0)
        elif event_ts is not None and event_ts <= watermark:
            event = pending.pop(0)[3]
            step = event_ts
            had_email = profile["email"] is not None
            birthday_before = profile["traits"].get("birthday") if event["type"] == "identify" else None
            consented = profile["consent"].get("email")
            fold_event(profile, event, linked, out.dropped, limits)
            if consented is not False and profile["consent"].get("email") is False:
                out.withdrawn = event_ts if rs["clock"] is None else max(rs["clock"], event_ts)
                if out.withdrawn == event_ts:
                    withdrawn_on_time = event_ts
            elif consented is False and profile["consent"].get("email") is not False:
                # given again: a late withdrawal (late events of one pass) is taken back, what is on its
                # way may go; one on time still drops what was made up to it (the event times decide)
                out.withdrawn = withdrawn_on_time
            out.changed = True
            out.released.append(event)
            _remember_history(rs, event, rules.windows, limits.history_per_type, out.dropped)
            _note_products(rs, event, out)
            if event["type"] in ENGAGEMENT_TYPES:
                rs["engagement"] = guardrails.record_engagement(
                    rs["engagement"], event["ts"], profile["context"].get("timezone"))
            touched = None  # the open cart's last activity, which only a cart or purchase event reads
            if event["kind"] in ("carts", "purchases"):
                cart, touched = cart_and_activity(profile)
            dues = triggers.on_event(cfg.triggers, profile, rs, event, cart["item_count"] if cart else 0, had_email,
                                     birthday_before, touched)
            if rules.scorer is not None:
                scored_at = rs.get("scored_at")
                if scored_at is not None and event_ts <= scored_at:  # late for the last score
                    score_timer.past_changed(cfg.scoring, state, [profile["predictions"]])
                else:
                    score_timer.rearm(cfg.scoring, profile, rs)
        else:
            break
        out.steps += 1
        clock = step if rs["clock"] is None else max(rs["clock"], step)
        rs["clock"] = clock
        # the segments of this step first: a trigger's payload names those the profile is in at its time
        _evaluate_segments(state, cart, clock, rules, now_ms, out)
        for due in dues:
            _emit(state, due, rules, now_ms, out, neighbours_of, cart)
    out.cart = cart
    return out


def _score(state: LiveState, cart: dict[str, Any] | None, at: int, rules: RuleSet, out: Outputs) -> list[triggers.Due]:
    """The ``score`` timer fired: new predictions (a ``scores`` message), the next idle re-score,
    and a ``churn_risk`` trigger when the churn probability crossed its threshold.  The segments
    that read predictions are evaluated after this step, as after any other."""
    if rules.scorer is None:  # scoring was switched off since the timer was set
        return []
    profile, rs = state["profile"], state["rules"]
    previous = profile["predictions"]
    current = rules.scorer(profile, cart, at)
    profile["predictions"] = current
    out.scores.append({"profile_id": profile["profile_id"], "user_id": profile["user_id"], **current})
    out.changed = True
    rs["scored_at"] = at
    score_timer.rearm(rules.config.scoring, profile, rs)
    return triggers.on_predictions(rules.config.triggers, previous, current, at, profile["aggregates"]["orders"])


def _evaluate_segments(state: LiveState, cart: dict[str, Any] | None, clock: int, rules: RuleSet, now_ms: int,
                       out: Outputs) -> None:
    profile, rs = state["profile"], state["rules"]
    members, next_change = rules.evaluate_segments(_facts(profile, cart), rs["history"], clock)
    before = set(profile["segments"])
    if members != before:
        at, emitted = format_ms(clock), format_ms(now_ms)
        for name in sorted(members ^ before):
            out.segment_changes.append({
                "profile_id": profile["profile_id"], "user_id": profile["user_id"], "email": profile["email"],
                "segment": name, "change": "entered" if name in members else "exited",
                "at": at, "emitted_at": emitted,
            })
        profile["segments"] = sorted(members)
        out.changed = True
    timers = rs["timers"]
    if next_change is None or next_change <= clock:
        timers.pop("segments", None)
    else:
        timer = timers.get("segments")
        if timer is None or timer[0] != next_change:
            timers["segments"] = [next_change, "", {}]


def _recommendations(state: LiveState, cart: dict[str, Any] | None,
                     neighbours_of: NeighboursOf) -> list[dict[str, Any]]:
    """Seeds: the cart's products, else the last products seen; never what is in the cart or bought."""
    rs = state["rules"]
    in_cart = [item["product_id"] for item in cart["items"]] if cart else []
    seeds = in_cart or list(reversed(rs.get("recent_products", [])[-3:]))
    exclude = set(in_cart) | set(rs.get("bought", []))
    return [{"product_id": product} for product in recommend.recommend(neighbours_of, seeds, exclude)]


def _emit(state: LiveState, due: triggers.Due, rules: RuleSet, now_ms: int, out: Outputs,
          neighbours_of: NeighboursOf, cart: dict[str, Any] | None) -> None:
    """Guardrails, then the trigger message (contract section 5)."""
    profile, rs = state["profile"], state["rules"]
    guard = rules.config.guardrails
    # kept for the caps of triggers up to the dedupe retention late (a late event's, an offline app's),
    # at most a week: with the default caps, 24 sends at most
    clock = rs["clock"] if rs["clock"] is not None else due.at
    late = min(rules.retention_ms, guardrails.MOST_LATE_MS)
    sent = guardrails.prune_sent([(at, kind) for at, kind in rs["sent"]], min(due.at, clock - late))
    rs["sent"] = [[at, kind] for at, kind in sent]  # as a stored state reads back: [time, type]
    reason = guardrails.suppression_reason(guard, profile["consent"], sent, due.type, due.at)
    if reason is not None:
        out.suppressed.append((due.type, reason))
        return
    if guard.per_type_per_day or guard.per_profile_per_day:  # (only the caps read them)
        rs["sent"].append([due.at, due.type])
    send_at, moved = guardrails.send_time(guard, due.at, profile["context"].get("timezone"), rs["engagement"])
    if moved is not None:
        out.deferred.append((due.type, moved))
    snap = snapshot(state, cart)
    out.triggers.append({
        "trigger_id": trigger_id(profile["profile_id"], due.type, due.cause),
        "type": due.type,
        "profile_id": profile["profile_id"],
        "user_id": profile["user_id"],
        "email": profile["email"],
        "at": format_ms(due.at),
        "send_at": format_ms(send_at),
        "payload": payload.build_payload(snap, due.type, segments=profile["segments"], details=due.details,
                                         recommendations=_recommendations(state, snap["cart"], neighbours_of)),
        "predictions": profile["predictions"],
    })
