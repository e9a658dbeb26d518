"""What the profile agent does with one entry of an internal record, as a pure function over its
states: ``dispatch(states, blocks, key, message, ...) -> Effects``.

An entry is an input event routed by profile key, or a message of the identity graph
(:mod:`streams.domain.identity_graph`): a link, an arriving profile, a possible match, or a person record
for a fuzzy-matching block (keys ``b:...``, state in ``blocks``).  ``states`` and ``blocks`` are
mappings the caller backs with its tables (the agent) or with dicts (tests, ``expected_run``);
the messages in ``Effects.send`` go back onto the internal topic, routed by their key.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, cast

from streams.domain import identity_graph as graph
from streams.domain import possible_matches
from streams.domain.identity import is_identity_key, profile_key, rank
from streams.domain.merge import merge_states
from streams.domain.profile import absorb_mark, bound_merged, newest_marks, snapshot, trim_currencies, trim_traits
from streams.domain.resolution.blocks import block_keys, drop_member, on_block_message, person_record
from streams.domain.rules import score_timer
from streams.domain.state import LiveState, State, is_marker
from streams.domain.timeline import Received, RuleSet, advance, later_activity, receive


@dataclass
class Effects:
    send: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (target key, message)
    tombstones: list[tuple[str, str]] = field(default_factory=list)  # (profile id, "erased" | "merged")
    #: (profile id, "erased" | "consent", made up to): what is still on its way for a person who was erased,
    #: or whose consent turned out false when a profile merged, stamped up to then (``streams.record_step``)
    withdrawn: list[tuple[str, str, int]] = field(default_factory=list)
    outcome: str | None = None  # input events: processed | duplicate | erased | forgotten
    before_dedupe: bool = False  # a duplicate stamped before the window of ids the profile still holds
    late: bool = False
    merges: list[str] = field(default_factory=list)  # kinds of profiles absorbed into a live one here
    republish: bool = False  # the profile changed outside the timeline (merge, possible match)
    changed: bool = False  # the key's state changed: write it back
    blocks_skipped: int = 0
    limited: list[str] = field(default_factory=list)  # kinds whose identity limit kept two apart
    matches_dropped: int = 0  # possible matches dropped past limits.possible_matches
    seen_dropped: int = 0  # event ids forgotten past limits.seen_ids
    history_dropped: int = 0  # windowed-count timestamps a merge dropped past limits.history_per_type
    blocks_dropped: int = 0  # fuzzy-matching block registrations dropped past limits.blocks
    #: collection -> entries a merge dropped to keep the merged profile within the bounds a fold keeps
    #: (traits, consent, context, cart lines and moves, purchases, currencies)
    merge_dropped: dict[str, int] = field(default_factory=dict)
    aliases_dropped: int = 0  # possible matches' aliases dropped past limits.match_aliases
    unknown: str | None = None  # an internal message type this version does not know (skipped)
    #: input topics of the parked events an arriving profile brought that are older than the watermark
    #: here: late, as an input event would be (a merge's round trips took longer than the clocks)
    late_absorbed: list[str] = field(default_factory=list)


def dispatch(states: MutableMapping[str, State | None], blocks: MutableMapping[str, Any], key: str,
             message: dict[str, Any], watermark: int | None, rules: RuleSet) -> Effects:
    """Handles one entry for ``key``; updates ``states[key]`` (or ``blocks[key]``)."""
    kind = message.get("type")
    if kind == graph.BLOCK:
        effects = _on_block(blocks, key, message)
        effects.changed = True
        return effects
    state = states.get(key)
    if kind == graph.LINK:
        routing = graph.on_link(key, state, message, rules.identity_limits)
        if routing.erase_as_of is not None:
            effects = _erase_as_of(states, key, state, routing.erase_as_of, f"{kind}:{message['root']}", rules,
                                   message.get("erased_keys"))
        else:
            effects = _apply(states, key, routing)
    elif kind == graph.ABSORB:
        effects = _on_absorb(states, key, state, message, watermark, rules)
    elif kind == graph.POSSIBLE:
        effects = _on_possible(states, key, state, message, rules)
    elif kind == possible_matches.ALIAS:
        effects = _on_alias(states, key, state, message, rules.limits.match_aliases)
    elif kind == possible_matches.UNMATCH:
        effects = _on_unmatch(states, key, state, message)
    elif kind == graph.FORGET:
        effects = _on_forget(states, key, state, message, rules)
    elif isinstance(kind, str) and kind.startswith("_"):
        # from a newer worker of a rolling upgrade: skipped, not taken for an input event
        return Effects(unknown=kind)
    else:
        effects = _on_event(states, key, state, message, watermark, rules)
    effects.changed = (effects.changed or states.get(key) is not state or effects.republish
                       or effects.outcome in ("processed", "erased"))
    return effects


def _apply(states: MutableMapping[str, State | None], key: str, routing: graph.Routing) -> Effects:
    states[key] = routing.state
    effects = Effects(send=list(routing.send), limited=list(routing.limited), changed=routing.changed)
    if routing.retired is not None:
        effects.tombstones.append((routing.retired, "merged"))
    if routing.erased is not None:
        effects.tombstones.append((routing.erased, "erased"))
    effects.withdrawn += routing.withdrawn
    return effects


def _on_event(states: MutableMapping[str, State | None], key: str, state: State | None, event: dict[str, Any],
              watermark: int | None, rules: RuleSet) -> Effects:
    if "hop" in event or "returned" in event:  # (passed on by a redirect: :func:`graph.passed_on`)
        back = graph.returned_to(key, state, event, event["ts"])
        if back is not None:  # (crossed the erase's ``_forget`` to the key it was meant for)
            return Effects(send=[(back, graph.sent_back(event))])
        if not graph.is_redirect(state):
            event = graph.arrived_as_sent(event)
    if graph.is_redirect(state):
        erased_at = state.get("erased_at")
        if erased_at is not None and event["ts"] <= erased_at:
            return Effects(outcome="forgotten")  # the erased person's, as at the key's marker before
        return Effects(send=[(state["merged_into"], graph.passed_on(key, state, event))])
    got = receive(state, key, event, watermark, rules)
    effects = Effects(outcome=got.outcome, late=got.late, seen_dropped=got.seen_dropped,
                      before_dedupe=got.before_dedupe)
    if got.outcome == "erased":
        _erased(states, key, state, got, rules, effects)
        return effects
    if got.outcome != "processed" or got.state is None:
        return effects
    new = cast(LiveState, got.state)  # a processed event is in a live profile
    routing = graph.place(key, new, event, rules.identity_limits)
    root = routing.state["merged_into"] if graph.is_redirect(routing.state) else key
    record = person_record(event) if event["type"] == "identify" else None
    if record is not None:
        keys = block_keys(record)
        registered: list[list[str]] = new.setdefault("blocks", [])  # [block, member key] pairs, oldest first
        for block in keys:  # a block named again is the newest (the bound drops the oldest)
            if [block, root] in registered:
                registered.remove([block, root])
            registered.append([block, root])
        effects.send += [(block, {"type": graph.BLOCK, "key": root, "person": record, "at": event["ts"]})
                         for block in keys]
        effects.send += _bound_blocks(registered, rules.limits.blocks, effects)
    applied = _apply(states, key, routing)
    effects.send = applied.send + effects.send
    effects.tombstones += applied.tombstones
    effects.limited += applied.limited
    return effects


def _erased(states: MutableMapping[str, State | None], key: str, state: State | None, got: Received,
            rules: RuleSet, effects: Effects, also: Any = None) -> None:
    """``key``'s person was erased (``got``, what :func:`receive` made of the erase): the marker is
    stored, and the profile's tombstone, withdrawals, block drops and forgets go into ``effects``.
    The marker keeps how many identifiers of each kind the person had (``erased_keys``), so that a
    profile an older event linked here can be asked whether it would have taken them in; so does the
    marker each of its ``_forget`` leaves (at the key the erase was sent to, when a redirect passed it
    on here, and at every other identifier of the person), so an older link that reaches one of them
    first is weighed as it would have been here."""
    assert got.state is not None
    marker = got.state
    counts = _erased_keys(key, state, also)
    if counts is not None:
        marker["erased_keys"] = counts
    kept: set[str] = set()  # identifiers of events stamped after the erasure that had arrived before it
    if "profile" in marker:
        first_named = _first_named(marker)
        later_keys = first_named.keys() - {key}
        # as placing those events after the erase would have: within the identity limits
        admitted, _, limited = graph.admit(key, marker, sorted(later_keys, key=rank), rules.identity_limits)
        kept = set(admitted)
        marker["links"] = admitted
        effects.limited += limited
        # each of them is told so, with the time of the first later event that named it: one the erase
        # left a marker (it was the person's too) then takes the later activity in, as it would an
        # event naming it after the erasure (else the later profile listed it while it started a
        # second profile of its own)
        mine = sorted(graph.identity_keys(key, marker), key=rank)
        effects.send += [(other, graph.taken_in(key, mine, first_named[other])) for other in admitted]
    if graph.is_live(state):  # as it was before the erase (``receive`` keeps the input's shape)
        if state.get("due") is not None:
            marker["due"] = state["due"]  # so the caller deletes the due entry
        if state.get("published"):
            effects.tombstones.append((state["profile"]["profile_id"], "erased"))
        # what is on its way for them, made up to the erase or anything folded since (a late erase)
        effects.withdrawn += graph.withdrawals(key, state, "erased", marker["erased_at"])
        # the person's person records leave their blocks, which take their possible matches out of the
        # other people's profiles; their other identifiers forget them
        effects.send += _erased_drops(state, key, rules)
        # askers whose asks it approved are the person's: the yes goes again with the erasure time, so
        # the asker is erased as of it when it comes, also after the first yes was overtaken
        for asker in state.get("claimed", {}):
            if asker not in kept:
                again: dict[str, Any] = {"type": graph.LINK, "root": key, "kind": "exact", "ok": True,
                                         "erased_at": marker["erased_at"]}
                if counts is not None:  # (as a marker's yes: the asker's marker counts the person's too)
                    again["erased_keys"] = counts
                effects.send.append((asker, again))
        for other in state.get("links", []):
            if other not in kept:
                forget: dict[str, Any] = {"type": graph.FORGET, "root": key, "erased_at": marker["erased_at"]}
                if counts is not None:  # (so the marker it leaves weighs an older link as this key would)
                    forget["erased_keys"] = counts
                effects.send.append((other, forget))
    states[key] = marker


def _first_named(state: LiveState) -> dict[str, int]:
    """Identifier -> the time of the first parked event that names it."""
    first_named: dict[str, int] = {}
    for entry in state.get("pending", ()):
        for named in graph.identifier_keys(entry[3]):
            first_named[named] = min(first_named.get(named, entry[0]), entry[0])
    return first_named


def _erased_keys(key: str, state: State | None, also: Any = None) -> dict[str, int] | None:
    """How many identifiers of each kind the person erased at ``key`` had: the profile's, added to
    those of an earlier erasure whose later activity it was (the key counted once), or to ``also``,
    the counts of the marker that told it the person was erased (more is the side that erases less);
    this key alone where nothing was; an earlier erasure's at a marker.  Sorted: the stored bytes
    must not depend on the order of a set."""
    if graph.is_live(state):
        counts = graph.key_counts(graph.identity_keys(key, state))
        kind = graph.LIMIT_OF_KIND.get(key.partition(":")[0])
        for earlier, overlap in ((state.get("erased_keys"), kind), (also, None)):
            for name, count in (graph.person_counts(earlier) or {}).items():
                counts[name] = counts.get(name, 0) + max(0, count - (name == overlap))
        return graph.person_counts(counts)
    if state is None:
        return graph.key_counts([key])
    return graph.person_counts(state.get("erased_keys"))


def _bound_blocks(registered: list[list[str]], most: int, effects: Effects) -> list[tuple[str, dict[str, Any]]]:
    """Past ``most`` registrations the oldest go (counted), and their blocks are told to drop the
    member, as at an erasure: a person whose name and address change without end (each identify
    registers up to 10 blocks) must not grow the state past the broker's message limit, nor leave
    records in blocks it no longer knows of."""
    over = len(registered) - most
    if over <= 0:
        return []
    gone = registered[:over]
    del registered[:over]
    effects.blocks_dropped += over
    return _block_drops(gone)


def _erased_drops(state: LiveState, key: str, rules: RuleSet) -> list[tuple[str, dict[str, Any]]]:
    """The erased person's records leave their blocks, each of which withdraws the possible matches it
    reported on them (``_unmatch`` to its other members, after what it sent them on the same way).  Not
    the profile itself: its ``_unmatch`` comes on another way than the blocks' matches, and could take
    out a match a block scored on the person's later activity under the same key, which came first.
    Only a profile whose registrations reached their bound (the oldest left their blocks without an
    erase, and those blocks' matches with nobody to withdraw them) tells its possible matches itself."""
    registered = state.get("blocks", [])
    sent = _block_drops(registered, erased=True)
    if len(registered) >= rules.limits.blocks:
        sent += possible_matches.withdrawals(state["profile"]["possible_matches"], key)
    return sent


def _block_drops(registered: Iterable[list[str]], erased: bool = False,
                 until: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Tells each fuzzy-matching block of these [block, member key] pairs to drop the member's record
    (``erased``: the member's person was erased, and the block withdraws the matches it reported;
    ``until``: the erasure's time, so a later record of the key stays)."""
    extra: dict[str, Any] = {"erased": True} if erased else {}
    if until is not None:
        extra["until"] = until
    return [(block, {"type": graph.BLOCK, "key": member, "drop": True, **extra}) for block, member in registered]


def _on_absorb(states: MutableMapping[str, State | None], key: str, state: State | None,
               message: dict[str, Any], watermark: int | None, rules: RuleSet) -> Effects:
    absorbed: LiveState = message["state"]
    effects = Effects()
    told: dict[str, int] = {}  # identifiers the arrival brings to later activity here -> when they were named
    mark = absorb_mark(absorbed["seen"]) if absorbed.get("seen") else None
    if state is not None and graph.is_live(state) and mark is not None and \
            (mark in state.get("absorbed", ()) or state["seen"].keys() >= absorbed["seen"].keys()):
        return effects  # delivered again (at least once): its events are all here already
    erased_at = state.get("erased_at") if state is not None else None
    if state is not None and erased_at is not None and _the_erased_persons(state, absorbed, message, erased_at):
        # The person here was erased (an erasure marker, their later activity, or the redirect their
        # later activity left when it joined someone else), and what arrives is theirs: it is dropped
        # too (its person records leave their blocks), but for its parked events stamped after the
        # erasure, their later activity, which stay (at a redirect: go on to its root).
        effects.withdrawn += graph.withdrawals(message["from"], absorbed, "erased", erased_at)
        effects.send += _erased_drops(absorbed, message["from"], rules)
        dropped: dict[str, int] = {}
        later = later_activity(absorbed, message["from"], erased_at, rules, dropped)
        effects.seen_dropped += dropped.get("seen", 0)
        if later is None:
            return effects
        # (its identifiers that those events named are the later activity's too)
        named = _first_named(later)
        later["links"] = [other for other in absorbed.get("links", ()) if other in named]
        # (and its own key, which this profile lists from now on: the erase's yes again to it, sent
        # before this word on the same way, leaves it a marker, which this word makes a redirect again)
        told = {other: named[other] for other in [*later["links"], message["from"]] if other in named}
        absorbed = later
        message = {**message, "state": later}
    elif erased_at is not None and (at := graph.event_time(message)) is not None:
        told = dict.fromkeys(absorbed.get("links", ()), at)  # (a profile linked after the erasure)
    if graph.is_redirect(state):
        forwarded = _apply(states, key, graph.forward_absorb(state, message))
        forwarded.withdrawn += effects.withdrawn
        forwarded.send += effects.send
        return forwarded
    if erased_at is None and "erased_at" in absorbed:
        # The later activity of an erased person's key joins a profile that is not theirs (someone named
        # that key after the erase).  Its erasure time guards the key's older events, which the key's
        # redirect goes on dropping (``identity_graph._redirect``); here it would drop this profile's own.
        absorbed = cast(LiveState, {k: v for k, v in absorbed.items() if k not in ("erased_at", "erased_keys")})
    limits = rules.limits
    if watermark is not None:
        # new here: neither parked here nor folded here (merge_pending drops those it already folded)
        known: set[str] = set()
        if graph.is_live(state):
            known = {entry[2] for entry in state.get("pending", ())} | state["seen"].keys()
        effects.late_absorbed = [entry[3]["src"][0] for entry in absorbed.get("pending", ())
                                 if entry[0] < watermark and entry[2] not in known and entry[3].get("src")]
    if graph.holds_someone(state):
        if erased_at is not None:
            # a later link's profile joins the person's later activity: its own parked events stamped
            # before the erasure are its own, not the person's, and stay (the erasure time is kept);
            # so are those of one that is another erased key's later activity: its erasure time guards
            # that key's older events, which the key's redirect goes on dropping
            merged = merge_states(cast(LiveState, {k: v for k, v in state.items() if k != "erased_at"}),
                                  cast(LiveState, {k: v for k, v in absorbed.items()
                                                   if k not in ("erased_at", "erased_keys")}),
                                  key, limits, effects.merge_dropped)
            merged["erased_at"] = erased_at
        else:
            merged = merge_states(state, absorbed, key, limits, effects.merge_dropped)
        merged["due"] = state.get("due")
        if not graph.is_holding(absorbed):  # (one with nobody in it brings only its claims and links)
            effects.merges.append(message.get("kind", "exact"))
        effects.history_dropped = _history_size(state) + _history_size(absorbed) - _history_size(merged)
    else:  # nothing here yet (or only the claims of askers, or a marker): the arriving profile settles here
        # from a state of neutral times (created latest, updated earliest): the arrival's are the profile's
        merged = merge_states(graph.holding(key), absorbed, key, limits, effects.merge_dropped)
        if erased_at is not None and state is not None:  # an erased person's later activity: older events stay dropped
            merged["erased_at"] = max(erased_at, merged.get("erased_at", erased_at))
            if "erased_keys" in state:  # where the erase was carried out
                merged["erased_keys"] = state["erased_keys"]
        if graph.is_live(state):  # a holding: its claims, and the links of holdings it took in
            merged["due"] = state.get("due")
            graph.add_claims(merged, state.get("claimed", {}))
            merged["links"] = [*merged.get("links", []), *state.get("links", [])]
    if merged["profile"]["consent"].get("email") is False and absorbed["profile"]["consent"].get("email") is not False:
        # all it made is stamped up to its clock; it makes nothing more under its own ids
        effects.withdrawn += graph.withdrawals(message["from"], absorbed, "consent",
                                               merged["profile"]["consent_times"]["email"][0])
    links = {*merged.get("links", []), *absorbed.get("links", []), message["from"]} - {key}
    merged["links"] = sorted(links, key=rank)
    if told:
        # Later activity joins the person's later activity here (a profile linked after the erasure, or
        # what the person's own profile holds stamped after it): the identifiers it brings are told, with
        # the time they were named, as the events that named them would have told them here.  The
        # erase's ``_forget`` may have reached one after its profile's word that it moved: it became a
        # marker while this profile lists it, and the key's next event started a second profile.
        mine = sorted(graph.identity_keys(key, merged), key=rank)
        effects.send += [(other, graph.taken_in(key, mine, at)) for other, at in told.items() if other != key]
    graph.add_claims(merged, absorbed.get("claimed", {}))
    graph.arrived(merged, message["from"])
    if mark is not None:
        merged["absorbed"] = newest_marks([*merged.get("absorbed", ()), mark])
    blocks = [*merged.get("blocks", [])]
    blocks += [pair for pair in absorbed.get("blocks", []) if pair not in blocks]
    merged["blocks"] = blocks
    effects.send += _bound_blocks(blocks, limits.blocks, effects)
    aliases = possible_matches.union_aliases(merged.get("match_aliases", {}), absorbed.get("match_aliases", {}))
    if aliases:
        merged["match_aliases"] = aliases
    # the absorbed side's possible matches now live under this key: their other sides are told
    effects.send += possible_matches.aliases_to_send(absorbed.get("profile", {}).get("possible_matches", ()), key)
    if graph.is_holding(merged):  # nobody in it yet: nothing to evaluate or publish
        states[key] = merged
        return effects
    merged["rules"]["dirty"] = True  # segments are evaluated again at the next step
    effects.matches_dropped = possible_matches.trim(merged["profile"]["possible_matches"], limits.possible_matches)
    if aliases:  # (after the matches' own trim: the aliases of matches dropped there are not kept first)
        effects.aliases_dropped = possible_matches.trim_aliases(aliases, merged["profile"]["possible_matches"],
                                                                limits.match_aliases)
    trimmed = effects.merge_dropped
    bound_merged(merged["profile"], limits, trimmed)
    trim_traits(merged["profile"]["traits"], merged["profile"]["trait_times"], trimmed, limits)
    trim_currencies(merged["profile"]["aggregates"]["spend_by_currency"], trimmed, limits)
    if rules.scorer is not None:
        here = state["profile"]["predictions"] if graph.is_live(state) and state is not None else None
        score_timer.past_changed(rules.config.scoring, merged, [here, absorbed["profile"]["predictions"]])
    states[key] = merged
    effects.republish = not graph.is_holding(absorbed)  # (one with nobody in it changed nothing published)
    return effects


def _the_erased_persons(state: State, absorbed: LiveState, message: dict[str, Any], erased_at: int) -> bool:
    """Whether a profile arriving at a key whose person was erased is that person's.  The absorb says
    when the link it answers was made (``at``): at or before the erasure, it is the person's profile,
    which their profile here agreed to take in before the erase reached it; after it, a later link's
    (a newcomer's, or the person's later activity's), whatever its history.  Without a time (an older
    worker's) it is theirs if it holds anything stamped at or before the erasure, but a fuzzy match's
    (a guess) only at a marker, where a holding with nobody in it is dropped too."""
    at = graph.event_time(message)
    if at is not None:
        return at <= erased_at
    if not graph.is_live(state):
        return graph.is_holding(absorbed) or graph.oldest_event_ms(absorbed) <= erased_at
    return message.get("kind") != "fuzzy" and graph.oldest_event_ms(absorbed) <= erased_at


def _history_size(state: LiveState) -> int:
    """Timestamps a state holds for the segments' windowed counts."""
    rules = state.get("rules")
    return sum(len(times) for times in rules["history"].values()) if rules else 0


def _not_at_a_profile(state: State | None, message: dict[str, Any]) -> Effects:
    """A message for a live profile at any other key: a redirect forwards it to its root, an erasure
    marker or an empty key drops it."""
    if graph.is_redirect(state):
        return Effects(send=[(state["merged_into"], message)])
    return Effects()


def _on_possible(states: MutableMapping[str, State | None], key: str, state: State | None,
                 message: dict[str, Any], rules: RuleSet) -> Effects:
    """A scored pair (:mod:`streams.domain.possible_matches`); tells the other side this person's root when
    the pair was scored under another of their keys.  (A holding profile, with nobody in it yet, takes
    none: as an empty key did.)"""
    mine, other, score = message.get("to", key), message.get("other"), message.get("score")
    if is_marker(state) or (graph.holds_someone(state) and graph.made_on_erased_data(key, state, message)):
        # made on the erased person's record (its block held it until the erase's drop came): not
        # taken; the block withdraws the other side's copy when the drop reaches it (an _unmatch from
        # here could take out a match on the person's later activity that the other side has already).
        # The block holds the record still (its drop overtook the registration, from another sender):
        # it drops it now, unless it holds a later record of the key, and withdraws its matches
        block, erased_at = message.get("block"), graph.event_time(state, "erased_at")
        if isinstance(block, str) and block.startswith("b:") and is_identity_key(mine) and erased_at is not None:
            return Effects(send=_block_drops([[block, mine]], erased=True, until=erased_at))
        return Effects()
    if not graph.holds_someone(state):
        return _not_at_a_profile(state, message)
    if not (is_identity_key(mine) and is_identity_key(other) and isinstance(score, int | float)
            and not isinstance(score, bool) and 0 <= score <= 1):
        return Effects()  # not one of ours: stored, it would fail this profile's later steps
    entries = state["profile"]["possible_matches"]
    if not possible_matches.record(entries, mine, other, message["score"]):
        return Effects()
    dropped = possible_matches.trim(entries, rules.limits.possible_matches)
    if dropped and not any(entry[:2] == [mine, other] for entry in entries if isinstance(entry, list)):
        # the new pair was the worst: nothing changed, unless the list was over a lowered limit and
        # lost more than the new pair, a change to write and publish
        return Effects(matches_dropped=dropped, republish=dropped > 1)
    states[key] = state
    effects = Effects(republish=True, matches_dropped=dropped)
    if mine != key:
        effects.send.append((other, {"type": possible_matches.ALIAS, "old": mine, "new": key}))
    return effects


def _on_alias(states: MutableMapping[str, State | None], key: str, state: State | None,
              message: dict[str, Any], most: int) -> Effects:
    """The other side of a possible match is now part of the profile at ``new``."""
    if not graph.holds_someone(state):
        return _not_at_a_profile(state, message)
    if not (is_identity_key(message.get("old")) and is_identity_key(message.get("new"))):
        return Effects()  # not one of ours: stored, it would fail this profile's later steps
    aliases = state.setdefault("match_aliases", {})
    new = message["old"] not in aliases
    if not possible_matches.add_alias(aliases, message["old"], message["new"]):
        return Effects()
    dropped = possible_matches.trim_aliases(aliases, state["profile"]["possible_matches"], most)
    if new and dropped == 1 and message["old"] not in aliases:  # it was the one past the bound: no change
        return Effects(aliases_dropped=dropped)
    states[key] = state
    return Effects(republish=True, aliases_dropped=dropped)


def _on_unmatch(states: MutableMapping[str, State | None], key: str, state: State | None,
                message: dict[str, Any]) -> Effects:
    """The other side of some possible matches was erased: they go, and the profile is published again."""
    if not graph.holds_someone(state):
        return _not_at_a_profile(state, message)
    keys = message.get("keys")
    if not (isinstance(keys, list) and all(is_identity_key(other) for other in keys)):
        return Effects()  # not one of ours
    if not possible_matches.withdraw(state["profile"]["possible_matches"], state.get("match_aliases", {}), keys):
        return Effects()
    states[key] = state
    return Effects(republish=True)


def _on_block(blocks: MutableMapping[str, Any], key: str, message: dict[str, Any]) -> Effects:
    if not is_identity_key(message.get("key")) or not (message.get("drop") or isinstance(message.get("person"), dict)):
        return Effects()  # not one of ours: no member key, or no record to store
    members = blocks.get(key)
    if message.get("drop"):
        gone, until = message["key"], graph.event_time(message, "until")
        if members and gone in members:
            if until is not None and (graph.event_time(members[gone]) or 0) > until:
                return Effects()  # a record of the key's later activity: not the erased person's
            blocks[key] = drop_member(members, gone) or None
        if members and message.get("erased") is True:
            # A possible match this block reported on the erased person's record may still be on its
            # way to the other member, and arrive after the erased profile's own _unmatch: this one,
            # sent after it on the same way, takes it out there.  (To every other member, also when the
            # drop is read again: a match scored on an older record of the key, or a first _unmatch
            # lost with the outputs of a step whose table write survived, leaves nothing behind.)
            return Effects(send=[(other, {"type": possible_matches.UNMATCH, "keys": [gone]})
                                 for other in sorted(members) if other != gone and is_identity_key(other)])
        return Effects()
    outcome = on_block_message(members, message["key"], message["person"], at=graph.event_time(message))
    blocks[key] = outcome.members
    effects = Effects(blocks_skipped=int(outcome.skipped))

    def stamped(sent: dict[str, Any], *scored: str) -> dict[str, Any]:
        # the times of the records matched: the member key of a person erased since refuses a match on
        # their record (the erase's drop reached the block after the match, or after a late record)
        records = {member: at for member in scored
                   if (at := graph.event_time(outcome.members.get(member, {}))) is not None}
        return {**sent, "records": records} if records else sent

    for a, b, _ in outcome.links:
        small, large = sorted((a, b), key=rank)
        effects.send.append((large, stamped({"type": graph.LINK, "root": small, "kind": "fuzzy"}, large, small)))
    for a, b, score in outcome.possible:
        # (with the block: a side whose person was erased since has it drop their record again)
        effects.send.append((a, stamped({"type": graph.POSSIBLE, "to": a, "other": b, "score": round(score, 4),
                                         "block": key}, a)))
        effects.send.append((b, stamped({"type": graph.POSSIBLE, "to": b, "other": a, "score": round(score, 4),
                                         "block": key}, b)))
    return effects


@dataclass
class LocalRun:
    """What :func:`run_locally` produced."""

    states: dict[str, State | None]
    profiles: dict[str, dict[str, Any]]  # profile_id -> snapshot of every live profile
    segment_changes: list[dict[str, Any]]
    triggers: list[dict[str, Any]]
    merges: list[str]
    scores: list[dict[str, Any]] = field(default_factory=list)
    limited: list[str] = field(default_factory=list)  # kinds of identity limits that kept two apart


def reachable_keys(event: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """The profile and identifier keys that this event, or a message it causes, can read or write
    (links, absorbs and forgets travel between them), and for an ``identify`` with a name the person
    record it sends to its fuzzy-matching blocks (:func:`block_keys`), whose members it may be linked
    with (:func:`streams.domain.resolution.blocks.linkable_pairs`)."""
    record = person_record(event) if event["type"] == "identify" else None
    return [profile_key(event), *graph.identifier_keys(event)], record


class LocalPipeline:
    """The profile hop without a broker, fed in steps: :meth:`feed` delivers events and every message
    they cause (FIFO, or in a random order with ``shuffle``); :meth:`advance` moves every live
    profile to a watermark, as the stream does when the watermark moves.  Used by tests
    (:func:`run_locally`) and by ``train`` and ``score``, which cut a history at several times."""

    def __init__(self, rules: RuleSet, shuffle: random.Random | None = None) -> None:
        self.rules = rules
        self.shuffle = shuffle
        self.states: dict[str, State | None] = {}
        self.blocks: dict[str, Any] = {}
        self.merges: list[str] = []
        self.limited: list[str] = []

    def feed(self, events: Iterable[dict[str, Any]]) -> None:
        """Delivers accepted, non-tick events (and what they cause) until nothing is left to deliver."""
        queue: deque[tuple[str, dict[str, Any]]] = deque((profile_key(event), event) for event in events)
        while queue:
            if self.shuffle is not None and len(queue) > 1:
                queue.rotate(-self.shuffle.randrange(len(queue)))
            key, message = queue.popleft()
            effects = dispatch(self.states, self.blocks, key, message, None, self.rules)
            queue.extend(effects.send)
            self.merges += effects.merges
            self.limited += effects.limited

    def advance(self, watermark: int) -> LocalRun:
        """Every live profile walked forward to ``watermark``: what that emitted, and the snapshots."""
        run = LocalRun(self.states, {}, [], [], self.merges, limited=self.limited)
        for state in self.states.values():
            if graph.holds_someone(state):  # (a holding has nobody in it: never published)
                out = advance(state, watermark, self.rules, 0)
                run.segment_changes += out.segment_changes
                run.triggers += out.triggers
                run.scores += out.scores
                run.profiles[state["profile"]["profile_id"]] = snapshot(state)
        return run

    def live(self) -> Iterator[tuple[str, LiveState]]:
        """(key, state) of every live profile."""
        for key, state in self.states.items():
            if graph.holds_someone(state):
                yield key, state

    def root_of(self, key: str) -> str | None:
        """The key of the live profile that ``key``'s person is in now (None: erased or unknown)."""
        for _ in range(64):  # redirects point at keys of lower rank: chains are short and end
            state = self.states.get(key)
            if graph.is_redirect(state):
                key = state["merged_into"]
            else:
                return key if graph.is_live(state) else None
        return None


def run_locally(events: Iterable[dict[str, Any]], watermark: int, rules: RuleSet,
                shuffle: random.Random | None = None) -> LocalRun:
    """Every (accepted, non-tick) event and every message they cause delivered, then every live
    profile advanced to ``watermark`` once.  The yardstick of tests: the stream must end up the same."""
    local = LocalPipeline(rules, shuffle)
    local.feed(events)
    return local.advance(watermark)


def _on_forget(states: MutableMapping[str, State | None], key: str, state: State | None,
               message: dict[str, Any], rules: RuleSet) -> Effects:
    """The person ``key`` redirected to was erased: the key becomes an erasure marker too, so their
    older events arriving under it are dropped and newer activity starts a new profile here.

    With ``claimed``, the word of an erased key whose person's profile had asked to join this one,
    and was let in, before the erase reached it: this profile is the person's, and is erased as of
    the same time (its redirects pass the word on to their root, where the claim went).  Only a
    profile that holds the key's claim, or has it among its links, takes it for itself."""
    root, erased_at = message.get("root"), graph.event_time(message, "erased_at")
    if not isinstance(root, str) or erased_at is None:
        return Effects()  # not one of ours
    asker = message.get("ask")
    if isinstance(asker, str):
        return _forget_along(key, state, root, erased_at, asker, message)
    if graph.is_redirect(state):
        if state["merged_into"] == root:
            # (a redirect that already keeps a later erasure, its key's own: the later one stands; with
            # counts, the key the erase was sent to: as good as carried out here.  One that keeps this
            # erasure forgot the person already, and the later activity took it in since: the word is a
            # copy read again, which made it a marker again while that profile lists it)
            if state.get("erased_at") != erased_at:
                states[key] = graph.forgotten(state, erased_at, message.get("erased_keys"))
        elif message.get("claimed") is True:
            return Effects(send=[(state["merged_into"], message)])
        else:
            # This key still points at a profile that joined the erased root after this key joined it
            # (the root's word that it moved reached that profile's other keys, not this one): the
            # key it points at is asked whether it was the erased person's, along its redirects.
            return Effects(send=[(state["merged_into"], {**message, "ask": key})])
        return Effects()
    if (message.get("claimed") is True and graph.is_live(state)
            and (root in state.get("claimed", {}) or root in state.get("links", ()))):
        return _erase_as_of(states, key, state, erased_at, f"{graph.FORGET}:{root}", rules)
    return Effects()


def _forget_along(key: str, state: State | None, root: str, erased_at: int, asker: str,
                  message: dict[str, Any]) -> Effects:
    """``asker``, a redirect to this key, was told that ``root``'s person was erased: it is theirs if
    this key is (a redirect to ``root``, or the marker ``root``'s word left here), and is told so as
    this key's own identifier; a redirect elsewhere passes the question on; a live profile (someone
    the identity limits kept apart) leaves the asker as it is."""
    if graph.is_redirect(state):
        if state["merged_into"] != root:
            return Effects(send=[(state["merged_into"], message)])
    elif state is None or graph.is_live(state) or state.get("erased_at") != erased_at:
        return Effects()
    told: dict[str, Any] = {"type": graph.FORGET, "root": key, "erased_at": erased_at}
    if "erased_keys" in message:
        told["erased_keys"] = message["erased_keys"]
    return Effects(send=[(asker, told)])


def _erase_as_of(states: MutableMapping[str, State | None], key: str, state: State | None, erased_at: int,
                 cause: str, rules: RuleSet, also: Any = None) -> Effects:
    """The live profile at ``key`` turned out to be a person's who was erased at ``erased_at``: it is
    erased as the erase would have erased it.  One that holds nothing stamped at or before then (a
    newcomer's, or nobody's yet) is their later activity: it keeps what it has, and from now on
    drops what comes stamped at or before the erasure, as a profile started after an erase does."""
    if not graph.is_live(state):
        return Effects()
    if graph.oldest_event_ms(state) > erased_at:
        if state.get("erased_at", erased_at - 1) >= erased_at:
            return Effects()
        state["erased_at"] = erased_at
        return Effects(changed=True)
    got = receive(state, key, {"type": "erase", "event_id": cause, "ts": erased_at, "kind": "identities"},
                  None, rules)
    effects = Effects(changed=True, seen_dropped=got.seen_dropped)
    if got.outcome == "erased":
        _erased(states, key, state, got, rules, effects, also=also)
    return effects
