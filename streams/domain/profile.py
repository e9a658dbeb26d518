"""The unified profile: ``(state, event) -> (state, outputs)``.

Pure and order-tolerant: counts add up, first/last times take min/max, traits and consent keep the
newest value per field by event time, and cart lines older than the last purchase stay closed.  So
the same events give the same profile whatever order partitions and workers read them in.

``state`` is a plain dict (stored as JSON bytes in the RocksDB table)::

    {"profile": {...snapshot fields, times as epoch ms...},
     "seen": {event_id: ts_ms}}          # exact dedupe, pruned to the retention window
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import operator
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from schemas.identifiers import comparable
from schemas.timeparse import format_ms
from streams.domain import possible_matches
from streams.domain.identity import profile_id_for
from streams.domain.state import CartLine, LiveState, ProfileBody, State

Event = dict[str, Any]

ID_FIELDS = (("user_id", "user_ids"), ("anonymous_id", "anonymous_ids"), ("email", "emails"),
             ("phone", "phones"))


@dataclass(frozen=True, slots=True)
class Applied:
    """Result of applying one event."""

    state: State | None  # None: the profile is gone (erased)
    changed: bool
    duplicate: bool = False
    erased: bool = False


def new_state(key: str, ts: int) -> LiveState:
    """An empty profile for ``key``."""
    return {
        "profile": {
            "profile_id": profile_id_for(key),
            "key": key,
            "user_id": None,
            "email": None,
            "identifiers": {"user_ids": {}, "anonymous_ids": {}, "emails": {}, "phones": {}},  # value -> first ts
            "traits": {},
            "trait_times": {},
            "consent": {},
            "consent_times": {},
            "context": {},
            "context_times": {},
            "aggregates": {
                "event_counts": {},
                "kind_counts": {},
                "first_seen": {},
                "last_seen": {},
                "orders": 0,
                "total_spend": 0.0,
                "spend_by_currency": {},
                "first_purchase_at": None,
                "last_purchase_at": None,
                # [[ts, total], ...] of the newest purchases, oldest first (bound: MOST_PURCHASES);
                # a state written before this list existed has none: see listed_purchases
                "purchases": [],
            },
            # product_id -> {"moves": [[ts, event_id, +/-quantity], ...], "fields": {name: [ts, event_id, value]}}
            # since the last purchase; quantities, times and the newest field values are derived from
            # them (see cart_view), so the cart does not depend on the order events arrive in.  A line
            # of more than VIEW_FROM_MOVES moves also keeps "view", their replayed summary (line_view).
            "cart": {},
            "cart_meta": {"touched": None},  # newest other cart activity (e.g. checkout_started)
            "segments": [],
            "predictions": None,
            "possible_matches": [],
            "created_at": ts,
            "updated_at": ts,
            "version": 0,
        },
        "seen": {},
    }


def _add_identifier(profile: ProfileBody, field: str, value: str | None, ts: int) -> bool:
    """Records ``value`` with its first time; True when the bucket changed."""
    if not value:
        return False
    bucket: dict[str, int] = profile["identifiers"][field]
    first = bucket.get(value)
    if first is not None and first <= ts:
        return False
    bucket[value] = ts
    return True


def _first_seen(item: tuple[str, int]) -> tuple[int, str]:
    """Identifiers oldest first (ties by value): the same whatever order events arrived in."""
    return item[1], item[0]


def _ordered(bucket: Mapping[str, int]) -> list[str]:
    if len(bucket) < 2:  # most buckets (hot: four per snapshot)
        return list(bucket)
    return [value for value, _ in sorted(bucket.items(), key=_first_seen)]


def _oldest(bucket: dict[str, int]) -> str | None:
    """The first of :func:`_ordered` (None: empty)."""
    return min(bucket.items(), key=_first_seen)[0] if bucket else None


#: The identity-graph key prefix of each identifier field (``u:<user_id>``, ...).
KEY_PREFIX = {"user_ids": "u:", "anonymous_ids": "a:", "emails": "e:", "phones": "ph:"}


def _apply_identifiers(profile: ProfileBody, event: Event, ts: int, linked: Container[str] | None) -> None:
    ids = profile["identifiers"]
    traits = event.get("traits") or {}
    for single, plural in ID_FIELDS:
        value = event.get(single)
        if not value:  # (most events name one or two of the four)
            continue
        if linked is not None and KEY_PREFIX[plural] + value not in linked:
            continue  # kept out of this profile by an identity limit
        if _add_identifier(profile, plural, value, ts) and plural in ("user_ids", "emails"):
            profile["user_id" if plural == "user_ids" else "email"] = _oldest(ids[plural])
    if traits:
        email, phone = traits.get("email"), traits.get("phone")
        if email and (linked is None or "e:" + email in linked) and _add_identifier(profile, "emails", email, ts):
            profile["email"] = _oldest(ids["emails"])
        if phone and (linked is None or "ph:" + phone in linked):
            _add_identifier(profile, "phones", phone, ts)


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of a profile's collections: config ``limits`` (README, ``MAILPULSE_CONFIG``), the same in every
    worker.  A drop is counted in ``mailpulse_profile_entries_dropped_total{collection}``, or for parked
    events in ``mailpulse_events_released_early_total``.  A merge keeps both sides' entries up to the
    same bounds; no event adds a new one past a bound."""

    traits: int = 100  # trait keys
    trait_bytes: int = 64 * 1024  # about, as JSON: past it the largest values go first
    consent: int = 32  # consent keys
    context: int = 32  # context keys
    cart_lines: int = 100  # products in the open cart
    cart_moves: int = 50  # adds/removes kept per cart line (the two oldest then become one)
    seen_ids: int = 2_000  # event ids kept for exact dedupe within the retention (at least 64)
    seen_id_bytes: int = 128 * 1024  # characters of those ids
    parked_events: int = 1_000  # events waiting for the watermark (the oldest are then applied)
    history_per_type: int = 500  # timestamps per event type for the segments' windowed counts
    possible_matches: int = possible_matches.MOST  # the best-scored pairs kept
    blocks: int = 64  # [fuzzy-matching block, member] pairs a person is registered in (the oldest then leave)
    currencies: int = 16  # currencies of spend_by_currency (those whose codes sort last then go)
    match_aliases: int = 400  # new names of possible matches' keys (unused ones go first)

    @property
    def small_traits_can_overflow(self) -> bool:
        """Whether values under :data:`LARGE_TRAIT_BYTES` (with keys of up to 128 characters) can
        exceed ``trait_bytes`` before the key bound stops them: then every identify checks the size."""
        return self.traits * (LARGE_TRAIT_BYTES + 128 + 4) > self.trait_bytes


DEFAULT_LIMITS = Limits()
#: The newest purchases a profile lists (``aggregates.purchases``): not a setting, since the model's
#: features are computed from that list (:mod:`models.features`) and a model is trained with it.
MOST_PURCHASES = 100
Dropped = dict[str, int]  # collection -> entries dropped


def _drop(dropped: Dropped | None, collection: str, count: int = 1) -> None:
    if dropped is not None and count:
        dropped[collection] = dropped.get(collection, 0) + count


#: The consent the guardrails read (``rules.guardrails``): the bound on consent keys never drops it, so
#: a withdrawal always counts, whatever other consent keys a profile gathered first (a bound of one more).
CONSENT_CHANNEL = "email"


def fold_consent_names(profile: ProfileBody) -> None:
    """Consent channels named as events name them (``schemas.events``: :func:`comparable`, trimmed and
    case-folded), in a profile an earlier version stored with names as given: ``{"Email": false}`` was
    kept so, and every reader of ``email`` (the guardrails, the withdrawals, the segments, the scores)
    missed the withdrawal.  Spellings of one channel merge as events do: the newest by its time, a
    withdrawal winning a tie; a name of nothing goes."""
    consent = profile["consent"]
    if len(consent) <= 1 and (not consent or CONSENT_CHANNEL in consent):
        return  # (the common case: no consent, or the e-mail channel alone)
    if all(name == comparable(name) for name in consent):
        return
    times = profile["consent_times"]
    for name in [name for name in consent if name != comparable(name)]:
        given, stamp, channel = consent.pop(name), times.pop(name, [-1, ""]), comparable(name)
        if not channel:
            continue
        held = times.get(channel, [-1, ""])
        if channel not in consent or stamp > held or (stamp == held and given is False):
            consent[channel], times[channel] = given, stamp


def _apply_newest(
    values: dict[str, Any], times: dict[str, list[Any]], updates: dict[str, Any], ts: int, event_id: str,
    collection: str, dropped: Dropped | None, most: int, always: str | None = None,
) -> None:
    """Newest non-empty value per field by event time; equal times: the larger event_id wins.  A new
    field past ``most`` (the collection's bound) is dropped (counted), unless it is ``always``."""
    stamp = [ts, event_id]
    for field, value in updates.items():
        if value is None or value == "":
            continue
        if field not in values and len(values) >= most and field != always:
            _drop(dropped, collection)
            continue
        if stamp >= times.get(field, [-1, ""]):
            values[field] = value
            times[field] = [ts, event_id]  # a list of its own, as a state read back has


#: Why traits have a byte bound (``Limits.trait_bytes``): each message is under the input limit, but
#: enough of them with large values for one person would grow the state past the broker's message
#: limit; then every later event of that person would fail.  Past it the largest values go first.
#: A trait value this large (about, as JSON) has the traits' size checked (small ones cannot get there
#: before the key bound does).
LARGE_TRAIT_BYTES = 512


#: Bytes of a character as JSON writes it, where that is not one: the short escapes, and ``\\u00XX``.
_ESCAPED = {**{chr(code): 6 for code in range(0x20)}, "\b": 2, "\t": 2, "\n": 2, "\f": 2, "\r": 2,
            '"': 2, "\\": 2}


def text_size(value: str) -> int:
    """The bytes of ``value`` as a JSON string, quotes included: UTF-8, with the escapes (a control
    character is six bytes, an emoji four: counted as one each, traits of them were kept at up to
    six times ``limits.trait_bytes``)."""
    if value.isascii() and value.isprintable():  # (the common case: one byte a character)
        return len(value) + 2 + value.count('"') + value.count("\\")
    size = 2
    for char in value:
        code = ord(char)
        size += _ESCAPED.get(char, 1) if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return size


def approx_size(value: Any) -> int:
    """About the bytes of ``value`` as JSON, without encoding it (the domain encodes nothing)."""
    if isinstance(value, str):
        return text_size(value)
    if isinstance(value, dict):
        return 2 + sum(text_size(key) + 2 + approx_size(item) for key, item in value.items())
    if isinstance(value, list):
        return 2 + sum(approx_size(item) + 1 for item in value)
    return 8


def trim_traits(values: dict[str, Any], times: dict[str, list[Any]], dropped: Dropped | None = None,
                limits: Limits = DEFAULT_LIMITS) -> None:
    """Past ``limits.trait_bytes``, the largest values are dropped (each counted; equal sizes: the oldest
    first) until the traits fit.  Depends on the values only, so a merge trims as a fold does."""
    sizes = {key: approx_size(value) + text_size(key) + 2 for key, value in values.items()}
    total = sum(sizes.values())
    if total <= limits.trait_bytes:
        return
    for key in sorted(values, key=lambda k: (-sizes[k], times.get(k, [0, ""])[:2], k)):
        del values[key]
        times.pop(key, None)
        _drop(dropped, "traits")
        total -= sizes[key]
        if total <= limits.trait_bytes:
            return


ITEM_FIELDS = ("category", "price", "currency")  # published on each cart item
LINE_FIELDS = (*ITEM_FIELDS, "cart_id")


#: A cart line with more moves than this keeps its replayed summary (``"view"``: see :func:`line_view`)
#: beside them, so :func:`cart_view` reads it instead of replaying every move at each cart event
#: (at the default bounds, 100 lines of 50 moves cost ~1.2 ms per view replayed).  Smaller lines,
#: a person's usual cart, store nothing more: replaying them is as cheap as reading a summary.
VIEW_FROM_MOVES = 8
#: ``cart_meta`` key: the profile ``version`` up to which the lines' summaries were kept by this code.
#: A version before the summaries folds events (each adds 1 to ``version``) without keeping them,
#: so after it they are made again rather than trusted (a rolling upgrade can move a partition back
#: to such a worker); its one change that adds nothing to ``version``, halving busy lines when a state
#: is too big, changes a line's number of moves, which the summary records (:func:`_view_of`).
VIEWS_OF: Final = "views_of"


_MOVE_ORDER = operator.itemgetter(0, 1)  # a move's (ts, event_id)


def line_view(moves: list[list[Any]]) -> list[Any]:
    """A cart line's moves replayed in event-time order (ties by event_id), the quantity never below
    0: ``[quantity, first add, newest add, newest move ts, its event id]``, then what it was replayed
    from: ``[number of moves, first listed move's ts, its event id, last listed move's ts, its event
    id]`` (see :func:`_view_of`)."""
    ordered = sorted(moves, key=_MOVE_ORDER)
    quantity, first_add, newest_add = 0, None, None
    for ts, _, delta in ordered:
        quantity += delta
        if quantity < 0:
            quantity = 0
        if delta > 0:  # in time order: the first add seen is the first, the last the newest
            if first_add is None:
                first_add = ts
            newest_add = ts
    last = ordered[-1]
    return [quantity, first_add, newest_add, last[0], last[1],
            len(moves), moves[0][0], moves[0][1], moves[-1][0], moves[-1][1]]


def _view_of(line: CartLine, count: int) -> list[Any] | None:
    """The line's stored summary if it was made from its first ``count`` moves as they are listed:
    the same number of moves, the same first and last.  Only read where :data:`VIEWS_OF` says this
    code kept the summaries up to the profile's version: a version from before them changes moves
    without them when it folds an event (caught by that stamp alone: an older remove combined
    into the oldest move can leave the number, the first and the last as they were) and when it
    halves busy lines, which adds nothing to the version and is caught here (the number changes)."""
    view = line.get("view")
    if view is None or len(view) != 10 or view[5] != count:
        return None
    moves = line["moves"]
    first, last = moves[0], moves[count - 1]
    if first[0] != view[6] or first[1] != view[7] or last[0] != view[8] or last[1] != view[9]:
        return None
    return view


def refresh_view(line: CartLine, added: list[Any] | None = None) -> None:
    """Keeps ``line["view"]`` equal to :func:`line_view` of its moves, for a line past
    :data:`VIEW_FROM_MOVES` (and drops it below): ``added``, a move just appended at or after the
    newest one, updates it in place; any other change replays the line.  Called by this code's own
    changes only, after :func:`fold_event` renewed summaries an older version may have left stale."""
    moves = line["moves"]
    if len(moves) <= VIEW_FROM_MOVES:
        line.pop("view", None)
        return
    view = _view_of(line, len(moves) - 1) if added is not None else None
    if added is not None and view is not None and (added[0], added[1]) >= (view[3], view[4]):
        ts, event_id, delta = added
        view[0] = max(0, view[0] + delta)
        if delta > 0:  # the newest move: the newest add, and the first if there was none
            if view[1] is None:
                view[1] = ts
            view[2] = ts
        view[3], view[4], view[5], view[8], view[9] = ts, event_id, len(moves), ts, event_id
    else:
        line["view"] = line_view(moves)


def _drop_cart_lines(cart: dict[str, CartLine], count: int, dropped: Dropped | None) -> None:
    """``count`` lines leave the cart (each counted as ``cart_lines``): lines at quantity 0 (products
    taken out again) first, then those moved least recently."""
    def order(product: str) -> tuple[bool, int, str]:
        quantity, _, _, newest_move = line_view(cart[product]["moves"])[:4]
        return quantity > 0, newest_move, product

    by_age = sorted(cart, key=order)
    for product in by_age[:count]:
        del cart[product]
    _drop(dropped, "cart_lines", count)


def _keep_newest_fields(values: dict[str, Any], times: dict[str, list[Any]], most: int, collection: str,
                       dropped: Dropped | None, always: str | None = None) -> None:
    """Past ``most`` fields, those with the oldest ``[ts, event_id]`` stamps go (each counted; equal
    stamps by name), ``always`` never: a rule on the content alone, so a merge keeps the same whichever
    side absorbs the other."""
    excess = len(values) - most - (always in values)
    if excess <= 0:
        return
    oldest = sorted((name for name in values if name != always), key=lambda name: (times.get(name, [-1, ""])[:2], name))
    for name in oldest[:excess]:
        del values[name]
        times.pop(name, None)
    _drop(dropped, collection, excess)


def bound_merged(profile: ProfileBody, limits: Limits, dropped: Dropped | None) -> None:
    """A merged profile held to the bounds a fold keeps (each drop counted): two profiles within them
    can hold up to twice as many trait, consent and context keys and cart lines, and twice the moves
    of a product's line, together."""
    _keep_newest_fields(profile["traits"], profile["trait_times"], limits.traits, "traits", dropped)
    _keep_newest_fields(profile["consent"], profile["consent_times"], limits.consent, "consent", dropped,
                        always=CONSENT_CHANNEL)
    _keep_newest_fields(profile["context"], profile["context_times"], limits.context, "context", dropped)
    cart = profile["cart"]
    for line in cart.values():
        _combine_moves(line, limits.cart_moves, dropped)
    if len(cart) > limits.cart_lines:
        _drop_cart_lines(cart, len(cart) - limits.cart_lines, dropped)


def _combine_moves(line: CartLine, most: int, dropped: Dropped | None) -> None:
    """Past ``most`` moves, the two oldest become one at the later one's time (each counted): the
    line's quantity stays, and a purchase between their times now closes both (an approximation of
    a very busy line)."""
    moves = line["moves"]
    if len(moves) <= most:
        return
    moves.sort(key=_MOVE_ORDER)
    while len(moves) > max(most, 1):
        first, second = moves[0], moves[1]
        moves[:2] = [[second[0], second[1], first[2] + second[2]]]
        _drop(dropped, "cart_moves")
    refresh_view(line)


def _apply_cart(profile: ProfileBody, event: Event, ts: int, dropped: Dropped | None,
                limits: Limits) -> None:
    """Records the cart move with its own time; what the cart holds is derived in :func:`cart_view`."""
    last_purchase = profile["aggregates"]["last_purchase_at"]
    if last_purchase is not None and ts <= last_purchase:
        return  # cart activity before the last purchase: that cart was bought already
    etype = event["type"]
    product = event.get("product_id")
    if not product or etype not in ("cart_add", "cart_remove"):
        meta = profile["cart_meta"]
        meta["touched"] = ts if meta["touched"] is None else max(meta["touched"], ts)
        return
    event_id = event.get("event_id", "")
    if product not in profile["cart"] and len(profile["cart"]) >= limits.cart_lines:
        _drop(dropped, "cart_lines")
        return
    line = profile["cart"].setdefault(product, {"moves": [], "fields": {}})
    quantity = int(event.get("quantity", 1))
    move = [ts, event_id, quantity if etype == "cart_add" else -quantity]
    line["moves"].append(move)
    if len(line["moves"]) > limits.cart_moves:
        _combine_moves(line, limits.cart_moves, dropped)  # replays the line
    else:
        refresh_view(line, move)
    if etype == "cart_add":
        fields = line["fields"]
        for name in LINE_FIELDS:
            value = event.get(name)
            if value is not None and (name not in fields or [ts, event_id] >= fields[name][:2]):
                fields[name] = [ts, event_id, value]


def money(value: Any) -> float:
    """A stored amount as a finite float: ``None`` or a non-finite number (an older version let two
    huge totals overflow to infinity, stored and published as ``null``) reads as 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


def spent(agg: Mapping[str, Any]) -> float:
    """``agg["total_spend"]``; where a state holds no finite one (see :func:`money`), the sum of its
    finite per-currency amounts, so a repaired profile goes on adding from what it still knows."""
    value = agg.get("total_spend")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return round(sum(money(amount) for amount in agg.get("spend_by_currency", {}).values()), 2)


def listed_purchases(agg: Mapping[str, Any]) -> list[list[Any]]:
    """``aggregates["purchases"]``; for a state stored before that list existed, one made from its
    lifetime aggregates: its orders spread evenly from the first purchase to the last, each with an
    equal share of the spend, the newest :data:`MOST_PURCHASES` of them (a new list: ``agg`` is not changed)."""
    purchases: list[list[Any]] | None = agg.get("purchases")
    if purchases is not None:
        return purchases
    orders, first, last = agg["orders"], agg["first_purchase_at"], agg["last_purchase_at"]
    if not orders or first is None or last is None:
        return []
    share = round(spent(agg) / orders, 2)
    steps = max(orders - 1, 1)
    return [[first + round((last - first) * i / steps), share] for i in range(orders)][-MOST_PURCHASES:]


def keep_newest_purchases(purchases: list[list[Any]], dropped: Dropped | None = None) -> list[list[Any]]:
    """``purchases`` (``[ts, total]`` pairs) sorted by time, the newest :data:`MOST_PURCHASES` kept; each
    older one left out is counted.  The same list whatever order the purchases came in."""
    purchases.sort()
    excess = len(purchases) - MOST_PURCHASES
    if excess > 0:
        del purchases[:excess]
        _drop(dropped, "purchases", excess)
    return purchases


def trim_currencies(spend: dict[str, float | None], dropped: Dropped | None = None,
                    limits: Limits = DEFAULT_LIMITS) -> None:
    """Past ``limits.currencies``, the currencies whose codes sort last go (each counted), while
    ``total_spend`` keeps their amounts.  A code dropped once always has that many lower codes kept, so it
    never comes back with a part of its sum: a merge and a fold keep the same, in any order (a rule by
    amount could not, as a dropped currency's later purchases would start it afresh)."""
    excess = len(spend) - limits.currencies
    if excess <= 0:
        return
    for currency in sorted(spend)[-excess:]:
        del spend[currency]
        _drop(dropped, "currencies")


def _apply_purchase(profile: ProfileBody, event: Event, ts: int, dropped: Dropped | None = None,
                    limits: Limits = DEFAULT_LIMITS) -> None:
    agg = profile["aggregates"]
    if "purchases" not in agg:  # a state stored before the list: made from what it knows, before this purchase
        agg["purchases"] = listed_purchases(agg)
    agg["orders"] += 1
    total = float(event.get("total", 0.0))
    agg["total_spend"] = round(spent(agg) + total, 2)
    # every purchase event counts, as in ``orders``: a repeated event is deduplicated by its event id
    # before it is folded, two events with one order id are two orders
    purchases = agg["purchases"]
    purchases.append([ts, round(total, 2)])
    if len(purchases) > 1 and purchases[-2] > purchases[-1]:  # arrived out of time order (rare)
        keep_newest_purchases(purchases, dropped)
    elif len(purchases) > MOST_PURCHASES:
        del purchases[0]
        _drop(dropped, "purchases")
    currency = event.get("currency", "USD")
    agg["spend_by_currency"][currency] = round(money(agg["spend_by_currency"].get(currency)) + total, 2)
    if len(agg["spend_by_currency"]) > limits.currencies:
        trim_currencies(agg["spend_by_currency"], dropped, limits)
    first, last = agg["first_purchase_at"], agg["last_purchase_at"]
    agg["first_purchase_at"] = ts if first is None else min(first, ts)
    if last is None or ts > last:
        agg["last_purchase_at"] = ts
        # The purchase closes every cart move at or before it.
        cart = profile["cart"]
        for product, line in list(cart.items()):
            line["moves"] = [move for move in line["moves"] if move[0] > ts]
            if not line["moves"]:
                del cart[product]
            else:
                refresh_view(line)
        meta = profile["cart_meta"]
        if meta["touched"] is not None and meta["touched"] <= ts:
            meta["touched"] = None


def _prune_seen(seen: dict[str, int], newest: int, retention_ms: int) -> int | None:
    """Forgets the ids stamped before ``newest - retention_ms``; that horizon if it forgot any."""
    horizon = newest - retention_ms
    old = [e for e, t in seen.items() if t < horizon]
    for event_id in old:
        del seen[event_id]
    return horizon if old else None


#: State key: event times before this may belong to ids :func:`remember` has forgotten, so an unknown
#: id stamped before it cannot be told from a repeat (:func:`repeated`).
SEEN_FROM: Final = "seen_from"


def repeated(state: LiveState, event: Event) -> bool:
    """The event was applied before: its id is held, or it is stamped before the window whose ids
    were forgotten (it cannot be told from a repeat, so it counts as one: a replay never counts twice)."""
    if event["event_id"] in state["seen"]:
        return True
    seen_from = state.get(SEEN_FROM)
    return seen_from is not None and event["ts"] < seen_from


def remember(state: LiveState, event: Event, retention_ms: int, dropped: Dropped | None = None,
             limits: Limits = DEFAULT_LIMITS, watermark: int | None = None) -> bool:
    """Exact dedupe: records the event id; False when it was seen before (then nothing else happens).

    Ids are forgotten past the retention behind the profile's newest event, and never past the
    retention behind ``watermark`` (the input clocks' smallest): each input topic is read at its own
    pace, so a profile's clicks can be days ahead of its identify or purchase still unread on another
    topic, which is stamped at or after the watermark and must not be taken for a forgotten repeat.

    Past ``limits.seen_ids`` ids (or ``limits.seen_id_bytes`` characters: 2,000 UUIDs are 72,000, but
    2,000 ids of the 128 characters an id may have are 256 KB of a state) the oldest are forgotten,
    counted as ``seen`` in ``mailpulse_profile_entries_dropped_total``, and the forgotten window's
    horizon moves up to them, so a replay of one of them still counts as a repeat.  A person's real
    traffic keeps tens to hundreds within the retention; a bot or a replay loop under one id would
    otherwise grow the state towards the broker's message limit."""
    seen = state["seen"]
    event_id = event["event_id"]
    if event_id in seen:
        return False
    seen[event_id] = event["ts"]
    if len(seen) > 64 and len(seen) % 32 == 0:
        # Amortized: a scan per 32 new ids, not per event (a busy person keeps hundreds within the
        # retention, and each of their events scanned them all); the map overshoots by < 32.
        newest = max(seen.values())
        horizon = _prune_seen(seen, newest if watermark is None else min(newest, watermark), retention_ms)
        keep = _seen_kept(seen, limits, 32)
        if keep < len(seen):
            horizon = max(horizon or 0, _trim_seen(seen, keep, dropped))
        if horizon is not None:
            _move_seen_from(state, horizon)
    return True


def _move_seen_from(state: LiveState, horizon: int) -> None:
    """Everything stamped before ``horizon`` now counts as seen (its ids were forgotten)."""
    if horizon > state.get(SEEN_FROM, horizon - 1):
        state[SEEN_FROM] = horizon


def _seen_kept(seen: Mapping[str, int], limits: Limits, slack: int) -> int:
    """How many of the seen ids stay: all of them within ``limits.seen_ids`` and ``limits.seen_id_bytes``
    (long ids: up to 128 characters each are valid), else ``slack`` fewer than the bound they pass."""
    keep = limits.seen_ids - slack if len(seen) > limits.seen_ids else len(seen)
    id_bytes = sum(map(len, seen))
    if id_bytes > limits.seen_id_bytes:
        keep = min(keep, max(len(seen) * limits.seen_id_bytes // id_bytes - slack, 32))
    return keep


def bound_seen(state: LiveState, limits: Limits, dropped: Dropped | None) -> None:
    """The seen ids cut to their bounds at once (a merge's union of both sides' ids), the oldest
    forgotten and counted, as :func:`remember` cuts them (without its slack: a merge cuts once)."""
    seen = state["seen"]
    keep = _seen_kept(seen, limits, 0)
    if keep < len(seen):
        _move_seen_from(state, _trim_seen(seen, keep, dropped))


#: The newest absorbs a profile remembers having taken (:func:`absorb_mark`); a redelivery comes within
#: a commit interval or a rebalance, long before a person's profile takes in this many others.
ABSORBS_KEPT: Final = 16


def newest_marks(marks: Iterable[str]) -> list[str]:
    """Absorb marks, oldest first, without repeats: the newest :data:`ABSORBS_KEPT` of them."""
    return list(dict.fromkeys(marks))[-ABSORBS_KEPT:]


def absorb_mark(seen: Mapping[str, int]) -> str:
    """What identifies an absorbed profile's events: a digest of its seen ids.  The survivor keeps the
    marks of the absorbs it took (``LiveState.absorbed``), so one delivered again is known even after
    the merge's seen ids were cut to their bound."""
    return hashlib.blake2b("\x1f".join(sorted(seen)).encode(), digest_size=8).hexdigest()


def _trim_seen(seen: dict[str, int], keep: int, dropped: Dropped | None) -> int:
    """Forgets all but the ``keep`` newest ids (with every id stamped at the same time as the newest
    one forgotten); the horizon after them."""
    times = sorted(seen.values())
    horizon = times[len(times) - keep - 1] + 1
    old = [e for e, t in seen.items() if t < horizon]
    for event_id in old:
        del seen[event_id]
    _drop(dropped, "seen", len(old))
    return horizon


def shrink(state: LiveState, limits: Limits, dropped: Dropped) -> bool:
    """One round of making a live state smaller than its bounds allow, for a state whose encoding
    would be too large to store (each entry a bound holds may be long: 128-character event ids in
    every cart move and seen id, 512-character product ids and fields).  Of the seen ids, the cart
    lines' moves, the event types' history, the possible matches, their aliases and the traits, each
    that takes at least an eighth of their total size is halved: the oldest go (the lowest scores, the
    aliases no kept match uses, the largest trait values; when the cart is the largest
    part and its moves cannot be combined any more, half of its lines, emptied ones first, then the
    least recently moved), each drop counted as its bound's drops are.
    False when nothing was left to make smaller."""
    before = sum(dropped.values())
    profile, rules = state["profile"], state.get("rules")
    sizes = {"seen": approx_size(state["seen"]), "cart_moves": approx_size(profile["cart"]),
             "history": approx_size(rules["history"] if rules else {}),
             "possible_matches": approx_size(profile.get("possible_matches") or []),
             "match_aliases": approx_size(state.get("match_aliases") or {}),
             "traits": approx_size(profile["traits"])}
    big = {name for name, size in sizes.items() if size * 8 >= sum(sizes.values())}
    seen = state["seen"]
    if "seen" in big and len(seen) > 32:
        _move_seen_from(state, _trim_seen(seen, len(seen) // 2, dropped))
    if "cart_moves" in big:
        combined = dropped.get("cart_moves", 0)
        for line in profile["cart"].values():
            _combine_moves(line, len(line["moves"]) // 2, dropped)
        if dropped.get("cart_moves", 0) == combined and len(profile["cart"]) > 1 and \
                sizes["cart_moves"] == max(sizes.values()):
            # the largest part, and its lines have one move each (512-character product ids and fields of
            # 4-byte characters): half of the lines go, emptied ones first, then the least recently moved
            _drop_cart_lines(profile["cart"], len(profile["cart"]) // 2, dropped)
    if "history" in big and rules:
        for times in rules["history"].values():
            cut = len(times) // 2
            if cut:
                del times[:cut]
                _drop(dropped, "history", cut)
    matches = profile.get("possible_matches") or []
    if "possible_matches" in big and len(matches) > 1:
        _drop(dropped, "possible_matches", possible_matches.trim(matches, len(matches) // 2))
    aliases = state.get("match_aliases")
    if "match_aliases" in big and aliases:  # (after the matches: the aliases of those dropped go first)
        _drop(dropped, "match_aliases", possible_matches.trim_aliases(aliases, matches, len(aliases) // 2))
    traits = profile["traits"]
    if "traits" in big and len(traits) > 1:
        budget = sum(approx_size(value) + text_size(key) + 2 for key, value in traits.items()) // 2
        trim_traits(traits, profile["trait_times"], dropped, dataclasses.replace(limits, trait_bytes=budget))
    return sum(dropped.values()) > before


def fold_event(profile: ProfileBody, event: Event, linked: Container[str] | None = None,
               dropped: Dropped | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
    """Folds one accepted, non-tick, non-erase event into the profile (order-tolerant).  ``linked``:
    the identity keys of the profile; an identifier of the event not among them is not recorded.
    ``dropped`` counts the entries a bound of ``limits`` kept out."""
    ts: int = event["ts"]
    if profile["cart"]:
        _renew_views(profile)
    _apply_identifiers(profile, event, ts, linked)
    agg = profile["aggregates"]
    etype, kind = event["type"], event["kind"]
    agg["event_counts"][etype] = agg["event_counts"].get(etype, 0) + 1
    agg["kind_counts"][kind] = agg["kind_counts"].get(kind, 0) + 1
    first, last = agg["first_seen"].get(kind), agg["last_seen"].get(kind)
    agg["first_seen"][kind] = ts if first is None else min(first, ts)
    agg["last_seen"][kind] = ts if last is None else max(last, ts)
    if context := event.get("context"):
        _apply_newest(profile["context"], profile["context_times"], context, ts, event["event_id"], "context",
                      dropped, limits.context)

    if kind == "carts":
        _apply_cart(profile, event, ts, dropped, limits)
    elif kind == "purchases":
        _apply_purchase(profile, event, ts, dropped, limits)
    elif etype == "identify":
        traits = event.get("traits") or {}
        event_id = event["event_id"]
        _apply_newest(profile["traits"], profile["trait_times"], traits, ts, event_id, "traits", dropped,
                      limits.traits)
        if limits.small_traits_can_overflow or any(approx_size(value) > LARGE_TRAIT_BYTES
                                                   for value in traits.values()):
            trim_traits(profile["traits"], profile["trait_times"], dropped, limits)
        _apply_newest(profile["consent"], profile["consent_times"], event.get("consent") or {}, ts, event_id,
                      "consent", dropped, limits.consent, always=CONSENT_CHANNEL)

    profile["created_at"] = min(profile["created_at"], ts)
    profile["updated_at"] = max(profile["updated_at"], ts)
    profile["version"] += 1
    stamp_views(profile)


def stamp_views(profile: ProfileBody) -> None:
    """Records that the cart lines' summaries are kept up to this ``version`` (see :data:`VIEWS_OF`)."""
    meta = profile["cart_meta"]
    if any("view" in line for line in profile["cart"].values()):
        meta[VIEWS_OF] = profile["version"]
    else:
        meta.pop(VIEWS_OF, None)


def _renew_views(profile: ProfileBody) -> None:
    """Makes every line's summary again unless this code kept them up to now (see :data:`VIEWS_OF`)."""
    if profile["cart_meta"].get(VIEWS_OF) != profile["version"]:
        for line in profile["cart"].values():
            if "view" in line:
                refresh_view(line)


def apply_event(state: LiveState | None, key: str, event: Event, retention_ms: int) -> Applied:
    """Apply one accepted, non-tick event to the profile state of ``key`` at once (no event-time
    ordering: :mod:`streams.domain.timeline` adds that on top of :func:`remember` and :func:`fold_event`)."""
    if state is not None and repeated(state, event):
        return Applied(state, changed=False, duplicate=True)
    if event["type"] == "erase":
        return Applied(None, changed=state is not None, erased=True)
    if state is None:
        state = new_state(key, event["ts"])
    remember(state, event, retention_ms)
    fold_event(state["profile"], event)
    return Applied(state, changed=True)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)


def cart_view(p: ProfileBody) -> dict[str, Any] | None:
    """The open cart from the moves since the last purchase, replayed in event-time order (ties by
    event_id): a line's quantity never goes below 0; lines at 0 are not in the cart."""
    return cart_and_activity(p)[0]


def cart_and_activity(p: ProfileBody) -> tuple[dict[str, Any] | None, int | None]:
    """:func:`cart_view`, and the open cart's last activity in ms (its ``updated_at``; None without a
    cart), for a caller that compares times with it."""
    if not p["cart"]:  # no lines: no cart (hot: once per profile advanced)
        return None, None
    items: list[dict[str, Any]] = []
    opened: list[int] = []
    newest: tuple[int, str, str | None] | None = None  # (newest add ts, product, cart_id)
    last_move: int | None = p["cart_meta"]["touched"]
    trusted = p["cart_meta"].get(VIEWS_OF) == p["version"]
    for product in sorted(p["cart"]):
        line = p["cart"][product]
        moves = line["moves"]
        view = _view_of(line, len(moves)) if trusted else None
        quantity, first_add, newest_add, newest_move = (view or line_view(moves))[:4]
        last_move = newest_move if last_move is None else max(last_move, newest_move)
        if quantity <= 0:
            continue
        fields = line["fields"]
        item: dict[str, Any] = {"product_id": product, "quantity": quantity}
        item.update({name: fields[name][2] for name in ITEM_FIELDS if name in fields})
        items.append(item)
        opened.append(first_add)
        if newest is None or (newest_add, product) > newest[:2]:
            newest = (newest_add, product, fields["cart_id"][2] if "cart_id" in fields else None)
    if not items or newest is None:
        return None, None
    return {
        "cart_id": newest[2],
        "items": items,
        "item_count": sum(item["quantity"] for item in items),
        "value": round(sum(item.get("price", 0.0) * item["quantity"] for item in items), 2),
        "opened_at": _iso(min(opened)),
        "updated_at": _iso(last_move),
    }, last_move


#: ``snapshot``'s default: derive the cart (a caller that has :func:`cart_view` of the profile passes it).
DERIVE: Any = object()


def snapshot(state: LiveState, cart: Any = DERIVE) -> dict[str, Any]:
    """The profile as published on ``profiles`` (contract section 5): times as ISO-8601 UTC."""
    p = state["profile"]
    agg = p["aggregates"]
    if cart is DERIVE:
        cart = cart_view(p)
    return {
        "profile_id": p["profile_id"],
        "user_id": p["user_id"],
        "email": p["email"],
        "identifiers": {field: list(bucket) if len(bucket) < 2 else _ordered(bucket)
                        for field, bucket in p["identifiers"].items()},
        "traits": p["traits"],
        "consent": p["consent"],
        "context": p["context"],
        "aggregates": {
            "event_counts": agg["event_counts"],
            "kind_counts": agg["kind_counts"],
            "first_seen": {k: format_ms(v) for k, v in agg["first_seen"].items()},  # (times, never None)
            "last_seen": {k: format_ms(v) for k, v in agg["last_seen"].items()},
            "orders": agg["orders"],
            "total_spend": spent(agg),
            "spend_by_currency": {currency: money(amount) for currency, amount in agg["spend_by_currency"].items()},
            "first_purchase_at": _iso(agg["first_purchase_at"]),
            "last_purchase_at": _iso(agg["last_purchase_at"]),
        },
        "cart": cart,
        "segments": p["segments"],
        "predictions": p["predictions"],
        "possible_matches": possible_matches.view(p["possible_matches"], state.get("match_aliases", {}),
                                                  {p["key"], *state.get("links", ())})
        if p["possible_matches"] else [],
        "created_at": format_ms(p["created_at"]),
        "updated_at": format_ms(p["updated_at"]),
        "version": p["version"],
    }
