"""Merging two profile states of one person: ``(survivor, absorbed) -> state``.

Identity resolution finds that two profiles are the same person; the absorbed profile's state then
travels to the survivor's key and :func:`merge_states` combines them.  The result is the state one
profile keyed ``survivor_key`` would have had after receiving the events of both (folded to the same
watermarks).  It is built from the same order-tolerant rules as :func:`streams.domain.profile.fold_event`:
counts add, first/last times take min/max, the purchase lists join (newest kept), traits, consent,
context and cart fields keep the value with the newest ``[ts, event_id]`` stamp, and a purchase closes
every cart move at or before it.  So
``merge(a, b)`` and ``merge(b, a)`` give the same profile content, and merging is associative: the
order the identity graph delivers merges in does not matter.

Assumption: the two profiles never folded the same event (an event is routed to one key and ``seen``
deduplicates it there), so nothing folded twice has to be subtracted.  Parked (``pending``) events
are deduplicated by event id, and an event parked on one side that the other side already folded is
dropped, so nothing is folded twice later either.

Left to the caller: ``due`` is dropped (recompute it from :func:`streams.domain.timeline.next_due`), the
``segments`` timer is dropped and ``profile["segments"]`` is the survivor's (the next
:func:`streams.domain.timeline.advance` step re-evaluates them and emits entered/exited changes relative to
what was published for the survivor's profile id).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast, overload

from schemas.timeparse import parse_timestamp
from streams.domain import possible_matches
from streams.domain.identity import profile_id_for
from streams.domain.profile import (
    DEFAULT_LIMITS,
    SEEN_FROM,
    Dropped,
    Limits,
    _ordered,
    bound_seen,
    cart_view,
    keep_newest_purchases,
    listed_purchases,
    money,
    newest_marks,
    refresh_view,
    spent,
    stamp_views,
)
from streams.domain.rules import recommend
from streams.domain.rules.triggers import new_rule_state
from streams.domain.state import (
    Aggregates,
    CartLine,
    ErasureMarker,
    Identifiers,
    LiveState,
    Predictions,
    ProfileBody,
    RuleState,
)
from streams.domain.state import is_live as graph_is_live

_MERGED_KEYS = frozenset(("profile", "seen", "pending", "rules", "erased_at", "due", SEEN_FROM, "absorbed"))


@overload
def merge_states(survivor: LiveState, absorbed: LiveState | ErasureMarker, survivor_key: str,
                 limits: Limits = ..., dropped: Dropped | None = ...) -> LiveState: ...
@overload
def merge_states(survivor: LiveState | ErasureMarker, absorbed: LiveState, survivor_key: str,
                 limits: Limits = ..., dropped: Dropped | None = ...) -> LiveState: ...
@overload
def merge_states(survivor: LiveState | ErasureMarker, absorbed: LiveState | ErasureMarker, survivor_key: str,
                 limits: Limits = ..., dropped: Dropped | None = ...) -> LiveState | ErasureMarker: ...
def merge_states(survivor: LiveState | ErasureMarker, absorbed: LiveState | ErasureMarker, survivor_key: str,
                 limits: Limits = DEFAULT_LIMITS, dropped: Dropped | None = None) -> LiveState | ErasureMarker:
    """One person's state from two: the union of both profiles' events, keyed ``survivor_key``.

    Either side may be an erasure marker ``{"erased_at": ts}``: the newest erasure is kept.  Neither
    input is changed; the result shares no mutable data with them.

    Limitation: events a live profile already folded before the other side's (newer) erasure cannot
    be taken out of its aggregates; parked ones are dropped, as :func:`streams.domain.timeline.receive`
    would have forgotten them.
    """
    for state in (survivor, absorbed):
        if "profile" not in state and "erased_at" not in state:
            raise ValueError("merge_states takes live profiles or erasure markers, not " + ",".join(sorted(state)))
    erased_at = _max_opt(survivor.get("erased_at"), absorbed.get("erased_at"))
    live: list[LiveState] = []
    for state in (survivor, absorbed):
        if graph_is_live(state):
            live.append(state)
    if not live:
        return {"erased_at": erased_at}
    result: LiveState
    if len(live) == 1:
        only = live[0]
        result = _extras(only)
        result["profile"] = copy.deepcopy(only["profile"])
        result["profile"]["key"] = survivor_key
        result["profile"]["profile_id"] = profile_id_for(survivor_key)
        result["seen"] = dict(only["seen"])
        result["pending"] = copy.deepcopy(only.get("pending", []))
        result["rules"] = copy.deepcopy(only.get("rules") or new_rule_state())
        result["rules"]["timers"].pop("segments", None)
    else:
        a, b = live
        result = _extras(a)
        result["profile"] = merge_profiles(a["profile"], b["profile"], survivor_key, dropped)
        result["seen"] = _union_min(a["seen"], b["seen"])
        result["pending"] = merge_pending(a, b)
        result["rules"] = merge_rules(a.get("rules") or new_rule_state(), b.get("rules") or new_rule_state(),
                                      cart_empty=cart_view(result["profile"]) is None,
                                      most_history=limits.history_per_type)
    seen_from = _max_opt(survivor.get("seen_from"), absorbed.get("seen_from"))
    if seen_from is not None:  # either side's forgotten ids: the later horizon covers both
        result["seen_from"] = seen_from
    # both sides' ids, cut to the bound at once (an absorb delivered again is known by its mark, below)
    bound_seen(result, limits, dropped)
    marks = [mark for state in live for mark in state.get("absorbed", ())]
    if marks:  # (the absorbed side's own: one delivered again to its key is forwarded here)
        result["absorbed"] = newest_marks(marks)
    if erased_at is not None:
        result["erased_at"] = erased_at
        _forget_until(result, erased_at)
    return result


def _extras(state: LiveState) -> LiveState:
    """Copies of the state's keys this module does not merge (e.g. the identity graph's ``links``);
    the caller adds the merged ones."""
    return cast(LiveState, {name: copy.deepcopy(value) for name, value in state.items() if name not in _MERGED_KEYS})


def _forget_until(state: LiveState, erased_at: int) -> None:
    """Parked events at or before an erasure are forgotten, as :func:`streams.domain.timeline.receive` does."""
    forgotten = {entry[2] for entry in state["pending"] if entry[0] <= erased_at}
    if forgotten:
        state["pending"] = [entry for entry in state["pending"] if entry[2] not in forgotten]
        state["seen"] = {event_id: ts for event_id, ts in state["seen"].items() if event_id not in forgotten}


# --- small order-tolerant combinators ---------------------------------------------------------------


def _min_opt(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _max_opt(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def _union_min(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {key: _min_opt(a.get(key), b.get(key)) for key in sorted({*a, *b})}


def _union_max(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {key: _max_opt(a.get(key), b.get(key)) for key in sorted({*a, *b})}


def _add(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in sorted({*a, *b})}


def _add_money(a: Mapping[str, float | None], b: Mapping[str, float | None]) -> dict[str, float | None]:
    return {key: round(money(a.get(key)) + money(b.get(key)), 2) for key in sorted({*a, *b})}


def _newest(a_values: Mapping[str, Any], a_times: Mapping[str, list[Any]], b_values: Mapping[str, Any],
            b_times: Mapping[str, list[Any]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Per field the value with the newest ``[ts, event_id]`` stamp (equal stamps: the same event)."""
    values: dict[str, Any] = {}
    times: dict[str, list[Any]] = {}
    for name in sorted({*a_values, *b_values}):
        a_stamp, b_stamp = a_times.get(name, [-1, ""]), b_times.get(name, [-1, ""])
        if name in b_values and (name not in a_values or b_stamp > a_stamp):
            values[name], stamp = copy.deepcopy(b_values[name]), b_stamp
        else:
            values[name], stamp = copy.deepcopy(a_values[name]), a_stamp
        if name in a_times or name in b_times:
            times[name] = list(stamp)
    return values, times


# --- profile ----------------------------------------------------------------------------------------


def merge_profiles(a: ProfileBody, b: ProfileBody, key: str, dropped: Dropped | None = None) -> ProfileBody:
    """The ``profile`` part: as if one profile keyed ``key`` had folded the events of both (the newest
    purchases kept, those left out counted in ``dropped``; the caller keeps the other bounds:
    :func:`streams.domain.profile.bound_merged`)."""
    ids: Identifiers = {field: _union_min(a["identifiers"].get(field, {}), b["identifiers"].get(field, {}))
                        for field in sorted({*a["identifiers"], *b["identifiers"]})}
    traits, trait_times = _newest(a["traits"], a["trait_times"], b["traits"], b["trait_times"])
    consent, consent_times = _newest(a["consent"], a["consent_times"], b["consent"], b["consent_times"])
    context, context_times = _newest(a["context"], a["context_times"], b["context"], b["context_times"])
    aggregates = _merge_aggregates(a["aggregates"], b["aggregates"], dropped)
    last_purchase = aggregates["last_purchase_at"]
    touched = _max_opt(a["cart_meta"]["touched"], b["cart_meta"]["touched"])
    if touched is not None and last_purchase is not None and touched <= last_purchase:
        touched = None
    merged: ProfileBody = {
        "profile_id": profile_id_for(key),
        "key": key,
        "user_id": next(iter(_ordered(ids.get("user_ids", {}))), None),
        "email": next(iter(_ordered(ids.get("emails", {}))), None),
        "identifiers": ids,
        "traits": traits,
        "trait_times": trait_times,
        "consent": consent,
        "consent_times": consent_times,
        "context": context,
        "context_times": context_times,
        "aggregates": aggregates,
        "cart": merge_carts(a["cart"], b["cart"], last_purchase),
        "cart_meta": {"touched": touched},
        "segments": list(a["segments"]),
        "predictions": _newest_prediction(a["predictions"], b["predictions"]),
        "possible_matches": possible_matches.union(a["possible_matches"], b["possible_matches"]),
        "created_at": min(a["created_at"], b["created_at"]),
        "updated_at": max(a["updated_at"], b["updated_at"]),
        "version": a["version"] + b["version"],
    }
    stamp_views(merged)  # the merged lines' summaries were made just now
    return merged


def _merge_aggregates(a: Aggregates, b: Aggregates, dropped: Dropped | None = None) -> Aggregates:
    return {
        "event_counts": _add(a["event_counts"], b["event_counts"]),
        "kind_counts": _add(a["kind_counts"], b["kind_counts"]),
        "first_seen": _union_min(a["first_seen"], b["first_seen"]),
        "last_seen": _union_max(a["last_seen"], b["last_seen"]),
        "orders": a["orders"] + b["orders"],
        "total_spend": round(spent(a) + spent(b), 2),
        "spend_by_currency": _add_money(a["spend_by_currency"], b["spend_by_currency"]),
        "first_purchase_at": _min_opt(a["first_purchase_at"], b["first_purchase_at"]),
        "last_purchase_at": _max_opt(a["last_purchase_at"], b["last_purchase_at"]),
        # both sides' purchases (two events, never one folded twice) by time, the newest kept as a
        # profile folding all of them keeps them (a state from before the list: see listed_purchases)
        "purchases": keep_newest_purchases([list(entry) for entry in (*listed_purchases(a), *listed_purchases(b))],
                                           dropped),
    }


def merge_carts(a: dict[str, Any], b: dict[str, Any], last_purchase: int | None) -> dict[str, Any]:
    """Cart lines of both, then closed by the merged last purchase like ``_apply_purchase`` does.

    Field values stamped at or before the last purchase go too: in one profile folded in event
    time they came from a line that purchase deleted, so they never reach the open cart."""

    def is_open(ts: int) -> bool:
        return last_purchase is None or ts > last_purchase

    cart: dict[str, Any] = {}
    for product in sorted({*a, *b}):
        lines = [line for line in (a.get(product), b.get(product)) if line is not None]
        moves = {(move[0], move[1], move[2]) for line in lines for move in line["moves"] if is_open(move[0])}
        if not moves:
            continue
        fields: dict[str, list[Any]] = {}
        for line in lines:
            for name, entry in line["fields"].items():
                if is_open(entry[0]) and (name not in fields or entry[:2] > fields[name][:2]):
                    fields[name] = copy.deepcopy(entry)
        merged: CartLine = {"moves": [list(move) for move in sorted(moves)],
                            "fields": {name: fields[name] for name in sorted(fields)}}
        refresh_view(merged)
        cart[product] = merged
    return cart


def _prediction_time(prediction: Mapping[str, Any]) -> int:
    at = prediction.get("at")
    if isinstance(at, int) and not isinstance(at, bool):
        return at
    try:
        return parse_timestamp(at)
    except ValueError:
        return -1


def _newest_prediction(a: Predictions | None, b: Predictions | None) -> Predictions | None:
    """The later prediction by ``at`` (equal times: a fixed choice by content, so order does not matter)."""
    if a is None or b is None:
        return copy.deepcopy(a if b is None else b)
    newest = max((a, b), key=lambda p: (_prediction_time(p), repr(sorted(p.items()))))
    return copy.deepcopy(newest)


# --- parked events ----------------------------------------------------------------------------------


def merge_pending(a: LiveState, b: LiveState) -> list[list[Any]]:
    """Both sides' parked events in release order ``(ts, kind order, event_id)``, each once; an event
    parked on one side but already folded on the other (in its ``seen``, not parked) is dropped."""
    entries: dict[str, list[Any]] = {}
    for this, other in ((a, b), (b, a)):
        other_parked = {entry[2] for entry in other.get("pending", [])}
        for entry in this.get("pending", []):
            event_id = entry[2]
            if event_id in other["seen"] and event_id not in other_parked:
                continue
            entries.setdefault(event_id, entry)
    return [copy.deepcopy(entry) for entry in sorted(entries.values(), key=lambda e: (e[0], e[1], e[2]))]


# --- rule state -------------------------------------------------------------------------------------


def merge_rules(survivor: RuleState, absorbed: RuleState, cart_empty: bool,
                most_history: int = DEFAULT_LIMITS.history_per_type) -> RuleState:
    """The ``rules`` part.  ``cart_empty``: the merged profile's cart is empty.

    ``history`` keeps equal timestamps from both sides: it stores bare times, so two equal ones
    cannot be told apart, and they are two events (the sides never folded the same event).  Trimming
    to the segment windows happens at the next insert (evaluation counts only in-window times).

    Timers: the later due wins per name (the later activity resets a rule's timer), ``segments`` is
    dropped for the caller to re-evaluate.  Flags are OR-ed, except that an empty merged cart
    cancels ``cart_abandoned`` and clears ``cart_fired``, as :func:`streams.domain.rules.triggers.on_event`
    does when the newest cart or purchase event leaves the cart empty.
    """
    a, b = survivor, absorbed
    rules = cast(RuleState, {name: copy.deepcopy(value) for name, value in a.items()})
    rules["clock"] = _max_opt(a.get("clock"), b.get("clock"))
    if "scored_at" in a or "scored_at" in b:  # the time of the newest prediction, which the merge keeps
        rules["scored_at"] = _max_opt(a.get("scored_at"), b.get("scored_at"))
    a_history, b_history = a.get("history", {}), b.get("history", {})
    rules["history"] = {kind: sorted([*a_history.get(kind, []), *b_history.get(kind, [])])[-most_history:]
                        for kind in sorted({*a_history, *b_history})}
    timers: dict[str, list[Any]] = {}
    a_timers, b_timers = a.get("timers", {}), b.get("timers", {})
    for name in sorted({*a_timers, *b_timers} - {"segments"}):
        candidates = [timer for timer in (a_timers.get(name), b_timers.get(name)) if timer is not None]
        timers[name] = copy.deepcopy(max(candidates, key=lambda timer: (timer[0], timer[1])))
    a_flags, b_flags = a.get("flags", {}), b.get("flags", {})
    flags = {name: True for name in sorted({*a_flags, *b_flags}) if a_flags.get(name) or b_flags.get(name)}
    if cart_empty:
        timers.pop("cart_abandoned", None)
        flags.pop("cart_fired", None)
    rules["timers"] = timers
    rules["flags"] = flags
    rules["sent"] = sorted([at, kind] for at, kind in [*a.get("sent", []), *b.get("sent", [])])
    rules["engagement"] = _add_hours(a.get("engagement"), b.get("engagement"))
    if "recent_products" in a or "recent_products" in b:
        recent = [*a.get("recent_products", []), *b.get("recent_products", [])]
        latest = [product for i, product in enumerate(recent) if product not in recent[i + 1:]]
        rules["recent_products"] = latest[-recommend.RECENT_PRODUCTS:]
    if "bought" in a or "bought" in b:
        bought = list(a.get("bought", []))
        bought += [product for product in b.get("bought", []) if product not in bought]
        rules["bought"] = bought[-recommend.BOUGHT_KEPT:]
    return rules


def _add_hours(a: list[int] | None, b: list[int] | None) -> list[int] | None:
    """Element-wise sum of the 24 engagement counters (None: no engagement yet)."""
    if a is None and b is None:
        return None
    a_counts = [*(a or []), *([0] * 24)][:24]
    b_counts = [*(b or []), *([0] * 24)][:24]
    return [x + y for x, y in zip(a_counts, b_counts, strict=True)]
