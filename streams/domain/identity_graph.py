"""The identity graph across partitions: one live profile per connected set of identifiers.

Every identifier key (``u:<user_id>``, ``e:<email>``, ``a:<anonymous_id>``, ``ph:<E.164 phone>``)
has at most one entry in the profile-state table, in the partition the key routes to:

- a **live profile** (the root of its component),
- a **redirect** ``{"merged_into": root}``, or
- an **erasure marker** ``{"erased_at": ts}``.

The root of a component is its smallest key by :func:`rank` (user ids before e-mails before
anonymous ids before phones; then by text), so the surviving ``profile_id`` = ``profile_id_for(root)``
depends on the input only, never on the order workers see it in.

The protocol is label propagation through the internal topic, ``(state, message) -> (state,
messages)`` per key (:func:`place`, :func:`on_link`, :func:`forward_absorb`; the caller merges an
arriving profile with :func:`streams.domain.merge.merge_states`):

- An event whose identifiers include a key smaller than the one it was routed to makes that key's
  profile ask the smaller key to take it in (identity limits, below; without limits it gives up at
  once).  A profile that gives up sends its state to the smaller key (``_absorb``) and becomes a
  redirect.
- Other identifiers of the event, not yet linked, get ``_link {root}``: an empty key becomes a
  redirect; a live profile with a larger key is absorbed; a smaller one answers with a link back.
- Redirects forward events and absorbs to their root.

Identity limits (``identity.max_per_profile``, contract 3 v1.1): two live profiles join only with
the consent of the one that stays.  A ``_link`` that tells a live profile to join a smaller root
is an *ask* unless it carries ``ok``: the profile sends its identifiers to that root
(``_link {root: itself, keys}``; redirects pass it on to their root), and the root answers
``_link {root, ok}`` if the union of both stays within the limits (it then holds the asker's
identifiers under ``claimed`` until the profile arrives), or else keeps the two apart as a
possible match (score 0) and counts it.  Deciding on the union makes an ask read again harmless.
Identifiers an event adds at its root are checked there.  So people who share one identifier
(a kiosk's anonymous id, a family e-mail) end up at most a limit's worth together, never all.

Every message moves state towards smaller keys, so it ends when each component has one live
profile at its smallest key.  Profile contents are order-tolerant folds and merges, so they come out
the same whatever order the messages were delivered in (tested by simulation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import TypeIs

from schemas.timeparse import MAX_EPOCH_MS, MIN_EPOCH_MS
from streams.domain.identity import is_identity_key, profile_id_for, rank
from streams.domain.profile import new_state
from streams.domain.state import ErasureMarker, LiveState, Redirect, State, is_marker
from streams.domain.state import is_live as is_live
from streams.domain.state import is_redirect as is_redirect
from streams.domain.timeline import ensure_rule_state

LINK, ABSORB, POSSIBLE, BLOCK, FORGET = "_link", "_absorb", "_possible", "_block", "_forget"
#: The ``identity.max_per_profile`` name of each key kind.
LIMIT_OF_KIND = {"u": "user_ids", "e": "emails", "ph": "phones", "a": "anonymous_ids"}
_KINDS = frozenset(LIMIT_OF_KIND.values())
Limits = Mapping[str, int]  # user_ids | emails | phones | anonymous_ids -> most per profile


def person_counts(value: Any) -> dict[str, int] | None:
    """An erased person's identifier counts as a message or a marker carries them (``erased_keys``):
    the known kinds only, with counts that are counts, sorted (so a stored marker's bytes do not
    depend on the order they came in, and nothing else is kept); None: not counts at all."""
    if not isinstance(value, dict):
        return None
    return {kind: count for kind, count in sorted(value.items()) if kind in _KINDS
            and isinstance(count, int) and not isinstance(count, bool) and count >= 0}


def key_counts(keys: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for k in keys:
        kind = LIMIT_OF_KIND.get(k.partition(":")[0])
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def identity_keys(key: str, state: LiveState) -> set[str]:
    """The identifiers of the live profile at ``key``: its key, its links, and those of the profiles
    it agreed to take in (``claimed``) that have not arrived yet."""
    keys = {key, *state.get("links", ())}
    for asker_keys in state.get("claimed", {}).values():
        keys.update(asker_keys)
    return keys


def over_limits(keys: Iterable[str], limits: Limits) -> list[str]:
    """The kinds of which ``keys`` hold more than ``limits`` allow."""
    counts = key_counts(keys)
    return [kind for kind, most in limits.items() if counts.get(kind, 0) > most]


def admit(key: str, state: LiveState, candidates: Iterable[str], limits: Limits | None) -> tuple[list[str], list[str],
                                                                                         list[str]]:
    """(admitted, kept out, kinds of those kept out): the ``candidates`` the live profile at ``key``
    may add to its identifiers, in order, without passing ``limits``."""
    candidates = list(candidates)
    if limits is None:
        return candidates, [], []
    counts = key_counts(identity_keys(key, state))
    admitted: list[str] = []
    over: list[str] = []
    kinds: list[str] = []
    for k in candidates:
        kind = LIMIT_OF_KIND.get(k.partition(":")[0], "")
        if kind in limits and counts.get(kind, 0) + 1 > limits[kind]:
            over.append(k)
            kinds.append(kind)
            continue
        counts[kind] = counts.get(kind, 0) + 1
        admitted.append(k)
    return admitted, over, kinds


def _with_records(message: dict[str, Any], records: Any) -> dict[str, Any]:
    """``message`` with a fuzzy match's record times (:func:`made_on_erased_data`), when it has them."""
    if isinstance(records, dict):
        message["records"] = records
    return message


def _ask(key: str, state: LiveState, root: str, kind: str, at: int | None = None, told: Any = None,
         records: Any = None) -> Routing:
    """The live profile at ``key`` asks ``root`` to take it in, with all its identifiers (``at``: the
    time of the event that made it ask, by which an erasure marker at ``root`` tells the person's
    profile from a newcomer's).  ``told``: the identifiers ``root``'s link said it holds; those this
    profile holds too go as ``listed``, so a marker at ``root``, which keeps only the erased person's
    counts, counts them once (as the person's profile, deciding on the union, would have).  ``records``:
    a fuzzy match's record times, passed along."""
    keys = sorted(identity_keys(key, state), key=rank)
    ask: dict[str, Any] = {"type": LINK, "root": key, "kind": kind, "keys": keys}
    listed = [k for k in keys if isinstance(told, list) and k in told]
    if listed:
        ask["listed"] = listed
    return Routing(state, send=[(root, _with_records(_stamped(ask, at), records))])


def event_time(message: Mapping[str, Any], field: str = "at") -> int | None:
    """The time of the event that made a link, as the link message carries it (older workers' do not),
    or another event time a message carries (``field``); None: none, or not a time (``bool`` is none)."""
    at = message.get(field)
    return at if isinstance(at, int) and not isinstance(at, bool) and MIN_EPOCH_MS <= at <= MAX_EPOCH_MS else None


def made_on_erased_data(key: str, state: State, message: Mapping[str, Any]) -> bool:
    """Whether a fuzzy match (a block's link or possible match, or the ask it made) used ``key``'s person
    record stamped at or before the erasure of its person (``records``: member key -> the time of the
    record scored): the block held it until the erase's drop reached it, and a later record matched it.
    Taken, it linked the erased person's data to their later activity or to someone else again.  (Only
    at the member key itself: a profile that took others in since holds their records too.)"""
    records, erased_at = message.get("records"), state.get("erased_at")
    used = event_time(records, key) if isinstance(records, dict) else None
    return isinstance(erased_at, int) and not isinstance(erased_at, bool) and used is not None and used <= erased_at


def _stamped(message: dict[str, Any], at: int | None) -> dict[str, Any]:
    """``message`` with the time of the event that made the link it is about, when that is known."""
    if at is not None:
        message["at"] = at
    return message


def taken_in(root: str, keys: list[str], at: int) -> dict[str, Any]:
    """The exact link ``root`` sends a key it took in: ``keys``, its own identity keys (read as an ask if
    a redirect passes it on), and ``at``, the time of the event that named the key."""
    return {"type": LINK, "root": root, "kind": "exact", "keys": keys, "at": at}


def _approval(key: str, kind: str, keys: list[str], ask: Mapping[str, Any]) -> dict[str, Any]:
    """``key``'s yes to an ask, with the identifiers it agreed to and the time the ask carried."""
    return _stamped({"type": LINK, "root": key, "kind": kind, "ok": True, "keys": keys}, event_time(ask))


def holding(key: str) -> LiveState:
    """A live profile with nothing in it yet, at an empty key that approved an ask: it holds the claim,
    so the next ask is decided on the union (nothing written, every asker of one shared empty key was
    approved alone, and together they passed the limits).  Its times are the neutral ones of a merge
    (created latest, updated earliest), so the first arrival's are the profile's."""
    state = ensure_rule_state(new_state(key, MAX_EPOCH_MS))
    state["profile"]["updated_at"] = MIN_EPOCH_MS
    return state


def is_holding(state: State | None) -> bool:
    """A live state with nobody in it yet (no event received, none parked): a :func:`holding` profile,
    or one made of such states only (their neutral creation time, which any event's time replaces).
    No profile to publish, match, score or count as a merge."""
    return (is_live(state) and not state["seen"] and not state.get("pending")
            and state["profile"]["created_at"] == MAX_EPOCH_MS and state["profile"]["version"] == 0)


def holds_someone(state: State | None) -> TypeIs[LiveState]:
    """A live profile with someone in it: not a redirect, a marker, nor a :func:`holding` profile."""
    return is_live(state) and not is_holding(state)


def oldest_event_ms(state: LiveState) -> int:
    """The time of the oldest event a live state holds, folded or parked (:data:`MAX_EPOCH_MS`: none)."""
    pending = state.get("pending")
    oldest: int = state["profile"]["created_at"]
    return min(oldest, pending[0][0]) if pending else oldest


def smallest(keys: Iterable[str]) -> str:
    return min(keys, key=rank)


def identifier_keys(event: dict[str, Any]) -> list[str]:
    """Every identifier key an (accepted, normalized) event names, its traits included."""
    traits = event.get("traits") or {}
    keys = set()
    if event.get("user_id"):
        keys.add(f"u:{event['user_id']}")
    for email in (event.get("email"), traits.get("email")):
        if email:
            keys.add(f"e:{email}")
    if event.get("anonymous_id"):
        keys.add(f"a:{event['anonymous_id']}")
    for phone in (event.get("phone"), traits.get("phone")):
        if phone:
            keys.add(f"ph:{phone}")
    return sorted(keys, key=rank)


@dataclass
class Routing:
    """What handling one message at one key decided."""

    state: State | None  # the key's state afterwards
    send: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (target key, message)
    retired: str | None = None  # profile_id of a live profile that became a redirect (tombstone it)
    limited: list[str] = field(default_factory=list)  # kinds whose identity limit kept a link from merging
    erased: str | None = None  # profile_id of a live profile that turned out to be an erased person's
    #: (profile id, "erased", made up to) of the profiles that were that person's (:func:`withdrawals`)
    withdrawn: list[tuple[str, str, int]] = field(default_factory=list)
    changed: bool = False  # ``state`` is the key's own, changed in place: it must be written back
    #: the profile turned out to be a person's who was erased at this time (the caller erases it)
    erase_as_of: int | None = None


def withdrawal_ids(key: str, state: LiveState) -> list[str]:
    """The profile ids a person's triggers may carry: the profile's own, and those of the profiles it
    absorbed (keyed by its links, which the identity limits bound)."""
    return [profile_id_for(key), *(profile_id_for(other) for other in state.get("links", ()))]


def withdrawals(key: str, state: LiveState, reason: str, at: int) -> list[tuple[str, str, int]]:
    """(profile id, ``reason``, made up to) for each of :func:`withdrawal_ids`: what the profile made is
    stamped up to ``at`` or, when later (a late erase or consent event), up to its clock."""
    clock = state.get("rules", {}).get("clock")
    made_up_to = at if clock is None else max(at, clock)
    return [(profile_id, reason, made_up_to) for profile_id in withdrawal_ids(key, state)]


def passed_on(key: str, state: Redirect, message: dict[str, Any]) -> dict[str, Any]:
    """``message`` as the redirect at ``key`` passes it on to its root: stamped ``hop`` (this key) when
    the redirect keeps no erasure time, so a root erased since it was made can tell it was sent before
    the erase's word reached this key (:func:`returned_to`).  One sent back (``returned``) is passed on
    unstamped: it is returned once at most."""
    if "erased_at" not in state and not message.get("returned"):
        return {**message, "hop": key}
    return _without(message, "hop")


def returned_to(key: str, state: State | None, message: Mapping[str, Any], at: int | None) -> str | None:
    """The key to send ``message`` back to, or None to handle it here.

    A redirect made before the erase of its root's person passes on what comes to it until the root's
    ``_forget`` reaches it, and the two cross (Kafka keeps order within a partition, not between
    them): an event or link stamped after the erasure, meant for the key, would join the person's
    later activity at the root (which the erase cut off from that key) or be answered by the marker
    as if the root's key were named.  So a key whose person was erased (a marker, their later
    activity, or the redirect it left) sends a message stamped after the erasure that a redirect
    keeping no erasure time passed on (``hop``) back to that redirect's key, once: the ``_forget``
    this key sent it went first on the same way, so the key handles it as it would have.  Not when
    the later activity here links that key (it joined it since); a key it never told otherwise (one
    the word reaches along another way) is still a redirect here and passes it on again,
    ``returned``, to be taken as before."""
    hop, erased_at = message.get("hop"), state.get("erased_at") if state is not None else None
    if (is_identity_key(hop) and hop != key and not message.get("returned") and isinstance(erased_at, int)
            and at is not None and at > erased_at and not (is_live(state) and hop in identity_keys(key, state))):
        return hop
    return None


def sent_back(message: Mapping[str, Any]) -> dict[str, Any]:
    """``message`` as :func:`returned_to` sends it back."""
    return {**_without(message, "hop"), "returned": True}


def arrived_as_sent(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` without what redirects added on its way (``hop``, ``returned``)."""
    return _without(message, "hop", "returned")


def _without(message: Mapping[str, Any], *stamps: str) -> dict[str, Any]:
    """``message`` without the redirects' ``stamps`` (itself when it carries none)."""
    if any(stamp in message for stamp in stamps):
        return {k: v for k, v in message.items() if k not in stamps}
    return message if isinstance(message, dict) else dict(message)


def _redirect(root: str, previous: State | None) -> Redirect:
    state: Redirect = {"merged_into": root}
    if previous is not None and previous.get("due") is not None:
        state["due"] = previous["due"]  # so the caller deletes the due entry
    erased_at = previous.get("erased_at") if previous is not None else None
    if isinstance(erased_at, int):  # an erased person's key whose later activity joins another profile
        state["erased_at"] = erased_at
        person = previous.get("erased_keys") if previous is not None else None
        if isinstance(person, dict):  # (older links are weighed by them here)
            state["erased_keys"] = person
    return state


def _give_up(key: str, state: LiveState, root: str, kind: str, also: Iterable[str] = (),
             at: int | None = None) -> Routing:
    """``key``'s live profile joins ``root``: its whole state travels, its links are pointed there.
    ``at``: the time of the event that linked the two, by which an erased key tells the person's
    profile (linked before the erasure) from a later one's."""
    links = sorted({*state.get("links", []), *also} - {root, key}, key=rank)
    send: list[tuple[str, dict[str, Any]]] = [(root, _stamped({"type": ABSORB, "from": key, "kind": kind,
                                                               "state": state}, at))]
    # (the time the two were linked: the best known of when this person had these keys)
    send += [(k, _stamped({"type": LINK, "root": root, "kind": kind, "from": key}, at)) for k in links]
    return Routing(_redirect(root, state), send=send, retired=profile_id_for(key) if state.get("published") else None)


def place(key: str, state: LiveState, event: dict[str, Any], limits: Limits | None = None) -> Routing:
    """After an event was received into ``key``'s live state: the event's other identifiers not linked
    yet are told their root, as far as the identity limits allow (the rest stay unlinked, counted in
    ``limited``), and if the event names a smaller key, the profile asks that key to take it in
    (without limits it joins it at once)."""
    keys = identifier_keys(event)
    root = smallest([*keys, key])
    if root != key and limits is None:
        return _give_up(key, state, root, "exact", also=keys, at=event_time(event, "ts"))
    links: list[str] = state.setdefault("links", [])
    new = [k for k in keys if k not in (key, root) and k not in links]
    if not new and root == key:
        return Routing(state)  # the common case: nothing new
    new, over, limited = admit(key, state, new, limits)
    send: list[tuple[str, dict[str, Any]]] = []
    if new:
        links.extend(new)
        links.sort(key=rank)
        mine = sorted(identity_keys(key, state), key=rank)
        send += [(k, taken_in(key, mine, event["ts"])) for k in new]
    # an identifier beyond the limit stays apart: if it has a profile, that profile notes this one
    send += [(k, {"type": POSSIBLE, "to": k, "other": key, "score": 0.0}) for k in over]
    if root != key:
        # The event names a smaller key (only an event with two e-mail addresses, its ``email`` and a
        # smaller ``traits.email``: events are routed to their user id, else that ``email``).  This
        # profile asks that key's profile to take it in, which decides on the union, as between any
        # two live profiles; giving itself up at once let a shared address gather any number of people.
        send += _ask(key, state, root, "exact", at=event["ts"]).send
    return Routing(state, send=send, limited=limited)


def on_link(key: str, state: State | None, message: dict[str, Any], limits: Limits | None = None) -> Routing:
    """``key`` belongs to the component of ``message["root"]``.  Between two live profiles this is
    an ask, answered by the smaller one (module doc, identity limits)."""
    root, kind = message.get("root"), message.get("kind", "exact")
    if root == key or not is_identity_key(root):  # (not one of ours: no root to link to)
        return Routing(state)
    back = returned_to(key, state, message, event_time(message))
    if back is not None:  # (crossed the erase's ``_forget`` to the key it was meant for)
        return Routing(state, send=[(back, sent_back(message))])
    if not is_redirect(state):
        message = arrived_as_sent(message)
    theirs_given = message.get("keys")
    if isinstance(theirs_given, list) and not all(is_identity_key(k) for k in theirs_given):
        # (not one of ours either: identity limits count the four kinds, so other keys would be claims
        # without a bound)
        message = {**message, "keys": [k for k in theirs_given if is_identity_key(k)]}
    if state is None:
        if rank(root) > rank(key):  # an ask reached an empty key: the asker settles here
            theirs = message.get("keys")
            if limits is None or not isinstance(theirs, list) or not all(isinstance(k, str) for k in theirs):
                return Routing(None, send=[(root, {"type": LINK, "root": key, "kind": kind, "ok": True})])
            # within the limits, with this key too (an asker at its limit of e-mails stays apart from
            # one more address); the ``keys`` approved, so an asker that took others in meanwhile asks again
            over = over_limits({key, root, *theirs}, limits)
            if over:
                return Routing(None, limited=over)
            agreed = sorted({key, root, *theirs}, key=rank)
            held = holding(key)
            add_claims(held, {root: agreed})
            return Routing(held, send=[(root, _approval(key, kind, agreed, message))], changed=True)
        return Routing(_redirect(root, None))
    if kind == "fuzzy" and made_on_erased_data(key, state, message):
        return Routing(state)
    erased_at = state.get("erased_at")  # (of a redirect: an erased key's later activity joined another)
    at = event_time(message)
    older = isinstance(erased_at, int) and at is not None and at <= erased_at and "counts" not in message
    if is_redirect(state) and not older:
        current = state["merged_into"]
        if current == root:
            erased = event_time(message, "erased_at")
            if message.get("ok") is True and erased is not None and state.get("erased_at") != erased:
                # the erased root's yes again, to an asker that had given up to it before the erase (its
                # first yes came first): the key is the person's, and forgets them as at a ``_forget``.
                # Left a redirect to the erased root, its later activity went there, and was published
                # under the erased person's profile id with this key linked again.  (One that keeps this
                # erasure forgot them already and was taken in by their later activity since: the yes is
                # a copy read again, which made it a marker again while the profile that took it in
                # lists it, and its next event started a second profile.)
                return Routing(forgotten(state, erased, message.get("erased_keys")))
            return Routing(state)
        if message.get("from") == current:  # this key's profile moved to ``root``
            # (always to a smaller key, as profiles join: so redirects never form a loop)
            return Routing({**state, "merged_into": root} if rank(root) < rank(current) else state)
        # anyone else's word goes to this key's profile, which asks or decides (never an ``ok``:
        # that was meant for a profile that has since joined another); ``via``: the key it was sent to
        passed = {k: v for k, v in message.items() if k != "ok"}
        passed.setdefault("via", key)
        return Routing(state, send=[(current, passed_on(key, state, passed))])
    # (a marker, a profile of an erased person's later activity, or the redirect such later activity
    # left, for a link made at or before the erasure: that named the erased person's key, and is
    # answered as the marker would have answered it, not passed on to whoever took the later activity in)
    if (isinstance(erased_at, int) and at is not None and at <= erased_at and rank(root) < rank(key)
            and "erased_at" not in message):
        # A smaller profile names this key by an event stamped at or before the erasure.  Where the
        # person's counts are kept (the erase's key, and each key its ``_forget`` made a marker), that
        # profile is asked whether it would have taken the person in (the identity limits on its
        # identifiers and the person's counts: someone sharing one of the person's identifiers whom
        # the limits kept apart says no); its yes, or its yes to an ask the person's profile made here
        # before the erase reached it, makes it the person's: what it holds is erased too.  It holds
        # this key among its links, by which it knows the word is meant for it.  A marker without
        # counts (stored before, or an older worker's ``_forget``'s) and a link that carries no time
        # (a fuzzy match's, an older worker's) cannot weigh it: neither erases anything.
        # At a marker, a link a redirect passed on (``via``: a key that redirects to a marker was the
        # person's: nothing joins a marker) is weighed as one naming this key, and the profile is
        # told by ``via``, which it links (unasked, it kept the person's key and events).  Not at
        # their later activity: a key it took in after the erasure was not theirs.
        person, via = state.get("erased_keys"), message.get("via")
        named = via if is_identity_key(via) and is_marker(state) else key
        if isinstance(person, dict):
            if message.get("ok") is True:
                return Routing(state, send=[(root, {"type": FORGET, "root": named, "erased_at": erased_at,
                                                    "claimed": True})])
            if message.get("ok") is None and (via is None or named != key) and "counts" not in message:
                ask = {"type": LINK, "root": key, "kind": kind, "counts": person, "at": at}
                if named != key:
                    ask["via"] = named
                return Routing(state, send=[(root, ask)])
        if is_live(state) and message.get("ok") is None:
            return Routing(state)  # the person's later activity does not join what named them before
    if not is_live(state):  # an erasure marker: the erased person is not linked to anything again
        # (an ask from a fuzzy match, which carries no time, is not taken for the person's either)
        after = (at is not None and isinstance(erased_at, int) and at > erased_at) or (at is None and kind == "fuzzy")
        if after and at is not None and rank(root) < rank(key) and message.get("ok") is None and is_marker(state):
            # A smaller profile's event stamped after the erasure names this key, one of the erased
            # person's identifiers: that profile holds it among its links from now on, so the key's
            # later activity is theirs, as an empty key's would be.  Left a marker, the key started a
            # second profile of its own with an address the first one lists.  The redirect keeps
            # ``erased_at`` (what is stamped up to it stays dropped, and older links are answered as
            # here) and ``erased_keys`` (with which they are weighed).
            return Routing(_redirect(root, state))
        if rank(root) > rank(key) and "keys" in message and not after:
            # a profile linked to the person before the erase reached it asks to join: it is theirs,
            # so it is let in, and dropped on arrival (as an absorb at a marker is).  An ask that an
            # event stamped after the erase made (it names the erased key as a second address) is a
            # newcomer's: left unanswered, the two stay apart, as the person's later activity starts anew.
            return _answer_as_the_persons(key, state, root, kind, message, limits)
        return Routing(state)
    if (isinstance(erased_at, int) and (at <= erased_at if at is not None else kind != "fuzzy")
            and rank(root) > rank(key) and "keys" in message and message.get("ok") is None
            and "counts" not in message):
        # The person's later activity, asked by a larger key on a link made at or before the erasure:
        # the asker's key was linked to the person then (the link reached it after its own later
        # activity had started a profile there), and is answered as the marker would have answered
        # it.  Approved as a newcomer's ask, that profile came as the person's, and its later activity
        # joined theirs: the erased link between the two keys lived on.  So is an exact ask with no
        # time, as at the marker: the erasure's yes, passed on without its ``ok`` by the asker's redirect
        # (the asker joined a newcomer since), made the newcomer ask with none.
        return _answer_as_the_persons(key, state, root, kind, message, limits)
    if rank(root) < rank(key):
        approved = message.get("keys")
        if message.get("ok") and isinstance(approved, list) and not identity_keys(key, state) <= set(approved):
            # it took others in after it asked: the root decides on all
            return _ask(key, state, root, kind, event_time(message))
        if message.get("ok"):
            erased = event_time(message, "erased_at")
            if erased is not None:
                return Routing(state, erase_as_of=erased)  # the root is an erased person: so is this
            return _give_up(key, state, root, kind, at=event_time(message))
        # ask the root whether this profile may join it
        return _ask(key, state, root, kind, event_time(message), message.get("keys"), message.get("records"))
    # the profile at ``root`` asks to join this one
    counts = message.get("counts")
    if isinstance(counts, dict):
        return _would_take_in(key, state, root, kind, counts, message, limits)
    theirs = message.get("keys")
    if limits is None:
        return Routing(state, send=[(root, {"type": LINK, "root": key, "kind": kind, "ok": True})])
    if not isinstance(theirs, list) or not all(isinstance(k, str) for k in theirs):
        # told without its identifiers (a link passed on by a redirect, a fuzzy match): it asks
        return Routing(state, send=[(root, _with_records(_stamped({"type": LINK, "root": key, "kind": kind},
                                                                  event_time(message)), message.get("records")))])
    # the union, so an ask read again, or from a profile already here, is decided the same way; an
    # earlier claim of the same asker is replaced by this ask (it asks again because it took others
    # in: refused, its old claim would hold room it can no longer use)
    claimed = state.get("claimed")
    replaced = claimed is not None and claimed.pop(root, None) is not None
    if claimed is not None and not claimed:
        state.pop("claimed")
    over = over_limits(identity_keys(key, state) | {root, *theirs}, limits)
    if over:  # (a claim dropped here is a change to write)
        return Routing(state, send=[(key, {"type": POSSIBLE, "to": key, "other": root, "score": 0.0}),
                                    (root, {"type": POSSIBLE, "to": root, "other": key, "score": 0.0})],
                       limited=over, changed=replaced)
    approved = sorted({root, *theirs}, key=rank)
    # (claimed also when this profile links the asker's key already, an event here named it: the
    # asker brings its own links, which the union above counted and a later ask must count too)
    state.setdefault("claimed", {})[root] = approved
    return Routing(state, send=[(root, _approval(key, kind, approved, message))], changed=True)


def _answer_as_the_persons(key: str, state: State, root: str, kind: str, message: Mapping[str, Any],
                           limits: Limits | None) -> Routing:
    """An erased person's key (a marker, their later activity, or the redirect it left) answers an ask
    from a larger key linked to the person before the erasure: yes with the erasure time, so the asker
    is erased as of it (what it holds stamped after it stays).  Where the person's counts are kept the
    identity limits apply as the person's profile would have applied them (its counts and the asker's
    keys, this key and those the person's link listed counted once): one the limits would have kept
    apart is someone else sharing an identifier, and is left unanswered."""
    person, theirs, listed = state.get("erased_keys"), message.get("keys"), message.get("listed")
    # (the asker's identifiers the person's profile said it holds are among the counts already)
    counted = {key, *(k for k in listed if isinstance(k, str))} if isinstance(listed, list) else {key}
    if (isinstance(person, dict) and limits is not None and isinstance(theirs, list)
            and not _within(person, key_counts({k for k in theirs if isinstance(k, str)} - counted), limits)):
        return Routing(state)
    answer: dict[str, Any] = {"type": LINK, "root": key, "kind": kind, "ok": True, "erased_at": state.get("erased_at")}
    if isinstance(person, dict):  # (the asker's marker counts the person's identifiers too)
        answer["erased_keys"] = person
    return Routing(state, send=[(root, answer)])


def _would_take_in(key: str, state: LiveState, root: str, kind: str, counts: Mapping[str, Any],
                   message: Mapping[str, Any], limits: Limits | None) -> Routing:
    """An erased person's key asks whether this profile, which an event stamped before the erasure
    linked to it, would have taken the person (``counts`` identifiers of each kind) in: yes within the
    limits, with the key counted once (this profile links it already).  A no is silence: the two stay
    apart, as they would have, and nothing is recorded of the erased person."""
    mine = identity_keys(key, state)
    via = message.get("via")  # (the person's key this profile named, when it is not ``root``)
    named = via if is_identity_key(via) and via in mine else root
    shared = LIMIT_OF_KIND.get(named.partition(":")[0], "")
    theirs = {name: count - (name == shared) for name, count in counts.items() if isinstance(count, int)}
    if limits is not None and not _within(theirs, key_counts(mine | {named}), limits):
        return Routing(state)
    answer = _stamped({"type": LINK, "root": key, "kind": kind, "ok": True}, event_time(message))
    if named != root:
        answer["via"] = named
    return Routing(state, send=[(root, answer)])


def _within(person: Mapping[str, Any], others: Mapping[str, int], limits: Limits) -> bool:
    """Whether an erased person's identifiers (``person``: counts by kind) and ``others`` (counts of
    identifiers not among them) stay within ``limits`` together.  Counts that are not counts (not one
    of our markers) are over."""
    for name, most in limits.items():
        count = person.get(name, 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0 or count + others.get(name, 0) > most:
            return False
    return True


def add_claims(state: LiveState, claims: Mapping[str, Any]) -> None:
    """Notes the asking profiles (key -> its identifiers) a live profile agreed to take in."""
    links = state.get("links", ())
    for asker, keys in claims.items():
        if asker not in links and isinstance(keys, list):
            state.setdefault("claimed", {})[asker] = sorted({k for k in keys if isinstance(k, str)}, key=rank)


def arrived(state: LiveState, from_key: str) -> None:
    """A profile this one agreed to take in has arrived: its identifiers are links now."""
    claimed = state.get("claimed")
    if claimed and claimed.pop(from_key, None) is not None and not claimed:
        state.pop("claimed")


def forgotten(state: Redirect, erased_at: int, counts: Any = None) -> ErasureMarker:
    """The marker a redirect to an erased root becomes (the later of two erasure times, should the key
    keep one of its own), with the person's ``counts`` where the word carries them."""
    marker: ErasureMarker = {"erased_at": max(erased_at, state.get("erased_at", erased_at))}
    person = person_counts(counts)
    if person is not None:
        marker["erased_keys"] = person
    if state.get("due") is not None:
        marker["due"] = state["due"]
    return marker


def forward_absorb(state: Redirect, message: dict[str, Any]) -> Routing:
    """A redirect passes an arriving profile on to its root."""
    return Routing(state, send=[(state["merged_into"], message)])
