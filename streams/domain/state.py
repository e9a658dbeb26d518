"""The stored shapes of a profile key's state, each field named once: a live profile, a redirect to
the profile a key's person joined, or an erasure marker.

Plain dicts at run time (JSON in the tables, ``streams/record_step.py``); these TypedDicts let strict
mypy check every key the domain reads or writes.  A typed record encoding (issue: typed state) is
to replace them field for field.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict, final

from typing_extensions import TypeIs

#: A parked event: [ts, kind order, event id, event] (sorted on the first three).
Parked = list[Any]
#: A rule's timer: [due ms, cause (an event id, or ""), payload].
Timer = list[Any]


class RuleState(TypedDict):
    """What the segment and trigger rules keep between steps (``LiveState.rules``)."""

    clock: int | None  # the event time the profile has been walked to
    history: dict[str, list[int]]  # event type -> times, for the segments' windowed counts
    timers: dict[str, Timer]  # rule name (and ``segments``, ``score``) -> its next timer
    flags: dict[str, Any]  # once-per-profile facts: ``welcomed``, ``cart_fired``
    sent: list[Any]  # [time, type] of triggers sent, for the frequency caps
    engagement: Any  # newest e-mail open or click time
    scored_at: NotRequired[int | None]  # when the profile was last scored (None: its predictions were dropped)
    recent_products: NotRequired[list[str]]  # newest viewed products, for browse abandonment
    bought: NotRequired[list[str]]  # newest bought products, kept out of recommendations
    dirty: NotRequired[bool]  # a merge changed the profile: evaluate the segments at the next step


#: Kind (``user_ids``, ``anonymous_ids``, ``emails``, ``phones``) -> value -> the first time it was seen.
Identifiers = dict[str, dict[str, int]]


class Aggregates(TypedDict):
    event_counts: dict[str, int]  # event type -> count
    kind_counts: dict[str, int]  # clicks / carts / purchases -> count
    first_seen: dict[str, int]  # kind -> first event time
    last_seen: dict[str, int]  # kind -> newest event time
    orders: int
    total_spend: float | None  # None: an older version stored it after an overflow (profile.spent repairs it)
    spend_by_currency: dict[str, float | None]  # (None: as total_spend)
    first_purchase_at: int | None
    last_purchase_at: int | None
    # [[ts, total], ...] of the newest purchases, oldest first; a state written before the list
    # existed has none (``profile.listed_purchases``)
    purchases: NotRequired[list[list[Any]]]


class CartLine(TypedDict):
    """One product's cart line since the last purchase; quantities and times are derived from it."""

    moves: list[list[Any]]  # [ts, event id, +/-quantity], as they arrived
    fields: dict[str, list[Any]]  # name (price, currency, category, cart_id, ...) -> [ts, event id, value]
    # past ``profile.VIEW_FROM_MOVES`` moves: their replayed summary (``profile.line_view``)
    view: NotRequired[list[Any]]


class CartMeta(TypedDict):
    touched: int | None  # newest other cart activity (e.g. checkout_started) since the last purchase
    views_of: NotRequired[int]  # the profile version up to which the lines' summaries were kept


class Predictions(TypedDict):
    """The newest scores (``models.scoring.Predictor``)."""

    churn_probability: float
    purchase_probability: float
    model_version: str
    at: str  # ISO-8601 event time they were made at


class ProfileBody(TypedDict):
    """The profile as the timeline folds it (``LiveState.profile``); ``snapshot`` publishes it."""

    profile_id: str
    key: str
    user_id: str | None
    email: str | None
    identifiers: Identifiers
    traits: dict[str, Any]
    trait_times: dict[str, Any]  # trait -> [ts, event id] of the value kept
    consent: dict[str, Any]
    consent_times: dict[str, Any]
    context: dict[str, Any]
    context_times: dict[str, Any]
    aggregates: Aggregates
    cart: dict[str, CartLine]  # product id -> line, since the last purchase
    cart_meta: CartMeta
    segments: list[str]
    predictions: Predictions | None
    possible_matches: list[Any]
    created_at: int
    updated_at: int
    version: int


@final
class LiveState(TypedDict):
    """A profile stored under its root key."""

    due: NotRequired[int | None]  # next event time :func:`timeline.advance` has work at (written first)
    profile: ProfileBody
    seen: dict[str, int]  # event id -> ts, for exact dedupe (bounded: limits.seen_ids)
    seen_from: NotRequired[int]  # events stamped before this count as seen (their ids were forgotten)
    #: :func:`profile.absorb_mark` of each profile taken in, newest last (at most ``profile.ABSORBS_KEPT``):
    #: an absorb delivered again is known by it after the merged seen ids were cut to their bound
    absorbed: NotRequired[list[str]]
    # the timeline's parts (:func:`streams.domain.timeline.ensure_rule_state`; every stored profile has them)
    pending: NotRequired[list[Parked]]  # events parked until the watermark reaches them
    rules: NotRequired[RuleState]
    links: NotRequired[list[str]]  # other keys of this person, pointed here
    claimed: NotRequired[dict[str, list[str]]]  # asker key -> its keys, agreed to but not arrived yet
    blocks: NotRequired[list[list[str]]]  # [fuzzy-matching block, member key] pairs this person is in
    match_aliases: NotRequired[dict[str, str]]  # possible-match keys now part of another profile
    erased_at: NotRequired[int]  # the person was erased at this time; this is their later activity
    erased_keys: NotRequired[dict[str, int]]  # the erased person's identifiers by kind (:class:`ErasureMarker`)
    published: NotRequired[bool]  # a snapshot went out: a merge or erase tombstones it


@final
class Redirect(TypedDict):
    """A key whose person's profile lives under ``merged_into``."""

    merged_into: str
    due: NotRequired[int | None]  # the due entry the caller deletes
    #: the key's person was erased at this time, and the key's later activity joined ``merged_into``
    #: (someone named the key after the erase): its events stamped up to then are dropped, not passed on
    erased_at: NotRequired[int]
    #: as :class:`ErasureMarker` keeps them: older links are weighed by them
    erased_keys: NotRequired[dict[str, int]]


@final
class ErasureMarker(TypedDict):
    """A key whose person was erased at ``erased_at``: older events under it are dropped."""

    erased_at: int
    #: How many identifiers of each kind (``identity.max_per_profile``'s names) the person's profile had
    #: where the erase event was carried out, the key itself included; no identifier is kept.  Also at
    #: the person's other identifiers, which its ``_forget`` carries them to (markers stored before
    #: states-v6 keep them only where the erase was carried out).  A profile that an event stamped
    #: before the erasure linked to this key is asked whether it would have taken the person in within
    #: the identity limits (``identity_graph.on_link``): if so, it is theirs.
    erased_keys: NotRequired[dict[str, int]]
    due: NotRequired[int | None]
    links: NotRequired[list[str]]


State = LiveState | Redirect | ErasureMarker


def is_live(state: State | None) -> TypeIs[LiveState]:
    return state is not None and "profile" in state


def is_redirect(state: State | None) -> TypeIs[Redirect]:
    return state is not None and "merged_into" in state


def is_marker(state: State | None) -> TypeIs[ErasureMarker]:
    """An erasure marker: neither a live profile nor a redirect."""
    return state is not None and "profile" not in state and "merged_into" not in state
