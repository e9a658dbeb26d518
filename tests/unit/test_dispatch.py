"""At-least-once, as a rebalance or a crash delivers it: a profile partition goes back to its last
committed states and reads again what came after, while the messages it sent the first time stay
sent; and the ingest hop forwards some events twice.  The identity graph, the merges and the rules
must come out exactly as if nothing happened."""

from __future__ import annotations

import copy
import random
from datetime import date
from typing import Any

import pytest

from schemas.timeparse import parse_timestamp
from streams.domain import identity_graph as graph
from streams.domain.config import PipelineConfig
from streams.domain.dispatch import dispatch, run_locally
from streams.domain.identity import profile_key
from streams.domain.profile import snapshot
from streams.domain.timeline import RuleSet, advance
from streams.routing import partition_for
from streams.tools.generate import generate_history
from tests.households import households
from tests.integration.expected import accepted_events

PARTITIONS = 8
UNTIL = parse_timestamp("2026-03-08T00:00:00Z")
RULES = RuleSet.build(PipelineConfig(), 7 * 86_400_000, None)


def _run_with_rollbacks(events: list[dict[str, Any]], seed: int, watermark_moves: bool
                        ) -> tuple[dict[str, Any], set[str], set[Any], int]:
    """:func:`_read_with_rollbacks`, then every live profile walked to the end: profiles, trigger ids,
    segment changes and how many messages were read twice."""
    states, read_twice = _read_with_rollbacks(events, seed, watermark_moves)
    profiles: dict[str, Any] = {}
    triggers: set[str] = set()
    changes: set[Any] = set()
    for state in states.values():
        if graph.is_live(state):
            out = advance(state, UNTIL, RULES, 0)
            triggers |= {t["trigger_id"] for t in out.triggers}
            changes |= {(c["profile_id"], c["segment"], c["change"], c["at"]) for c in out.segment_changes}
            profiles[state["profile"]["profile_id"]] = snapshot(state)
    return profiles, triggers, changes, read_twice


def _read_with_rollbacks(events: list[dict[str, Any]], seed: int, watermark_moves: bool,
                         partitions: int = PARTITIONS) -> tuple[dict[str, Any], int]:
    """Reads the partitions of the internal topic in random runs; after a run, the partition either
    commits (its states at that point are what a restart recovers) or, now and then, rolls back to
    its last commit and is read again from there.  With ``watermark_moves`` the watermark jumps to
    random event times meanwhile and each profile read is walked forward to it, so events are folded
    (and duplicates must be caught) before the end; else everything waits for the end.  Returns the
    states and how many messages were read twice."""
    rng = random.Random(seed)
    times = [event["ts"] for event in events]
    watermark: int | None = None
    states: dict[str, Any] = {}
    blocks: dict[str, Any] = {}
    log: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in range(partitions)]  # the topic's partitions
    position, committed = [0] * partitions, [0] * partitions
    saved: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {}) for _ in range(partitions)]
    # the ingest hop is at least once too: some events are forwarded twice (read again after a crash)
    for event in events + rng.sample(events, len(events) // 20):
        key = profile_key(event)
        log[partition_for(key, partitions)].append((key, event))
    read_twice = 0

    def of_partition(table: dict[str, Any], partition: int) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in table.items() if partition_for(k, partitions) == partition}

    while unread := [p for p in range(partitions) if position[p] < len(log[p])]:
        partition = rng.choice(unread)
        for key, message in log[partition][position[partition]:position[partition] + rng.randrange(1, 20)]:
            position[partition] += 1
            for target, sent in dispatch(states, blocks, key, message, watermark, RULES).send:
                log[partition_for(target, partitions)].append((target, sent))
            if watermark is not None and graph.is_live(states.get(key)):
                advance(states[key], watermark, RULES, 0)
        if watermark_moves and rng.random() < 0.05:
            watermark = max(watermark or 0, rng.choice(times))
        roll = rng.random()
        if roll < 0.3:
            committed[partition] = position[partition]
            saved[partition] = (of_partition(states, partition), of_partition(blocks, partition))
        elif roll < 0.4:
            read_twice += position[partition] - committed[partition]
            for table, kept in zip((states, blocks), saved[partition], strict=True):
                for key in [k for k in table if partition_for(k, partitions) == partition]:
                    del table[key]
                table.update(copy.deepcopy(kept))
            position[partition] = committed[partition]
    return states, read_twice


@pytest.fixture(scope="module")
def history() -> tuple[list[dict[str, Any]], Any]:
    events = accepted_events(generate_history(120, 6, 3, date(2026, 3, 1)))
    expected = run_locally(events, UNTIL, RULES)
    assert len(expected.merges) > 10 and len(expected.triggers) > 50  # merges and rules are exercised
    return events, expected


@pytest.mark.parametrize("seed", range(3))
def test_partitions_read_again_from_their_last_commit_change_no_profile_trigger_or_segment_change(
    history: tuple[list[dict[str, Any]], Any], seed: int
) -> None:
    events, expected = history
    profiles, triggers, changes, read_twice = _run_with_rollbacks(events, seed, watermark_moves=False)

    assert read_twice > 50  # the rollbacks did happen, over merges too
    assert profiles == expected.profiles
    assert triggers == {t["trigger_id"] for t in expected.triggers}
    assert changes == {(c["profile_id"], c["segment"], c["change"], c["at"]) for c in expected.segment_changes}


@pytest.mark.parametrize("seed", range(3))
def test_read_again_while_the_watermark_moves_gives_the_same_profiles(
    history: tuple[list[dict[str, Any]], Any], seed: int
) -> None:
    """Events are folded between the rollbacks here, so an event or a merge that arrives twice must
    be recognised.  (Triggers are not compared: a merge that reaches a profile after the watermark
    passed its events rightly decides differently from one that came first.)"""
    events, expected = history
    profiles, _, _, read_twice = _run_with_rollbacks(events, seed, watermark_moves=True)

    assert read_twice > 50
    assert profiles == expected.profiles


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("watermark_moves", [False, True])
def test_read_again_possible_matches_still_name_the_other_persons_profile(seed: int, watermark_moves: bool) -> None:
    """Families at shared addresses: possible matches between people whose keys merge meanwhile
    (``_possible`` and ``_alias`` messages read twice and in any order)."""
    events = accepted_events(households(seed, addresses=8))
    expected = run_locally(events, UNTIL, RULES)
    assert sum(len(p["possible_matches"]) for p in expected.profiles.values()) > 20
    profiles, _, _, read_twice = _run_with_rollbacks(events, seed, watermark_moves)

    assert read_twice > 20
    assert profiles == expected.profiles


@pytest.mark.parametrize("most", [2, 4])
def test_possible_matches_over_a_lowered_limit_are_trimmed_and_written(most: int) -> None:
    """A profile holds 4 possible matches; with ``limits.possible_matches`` lowered to 2, a new
    pair scored below them all is dropped, and so are the 2 past the limit: that trim is a change
    the step must write (and publish).  At a limit of 4 nothing but the new pair goes: no change."""
    from streams.domain.profile import new_state
    from streams.domain.timeline import ensure_rule_state

    rules = RuleSet.build(PipelineConfig.model_validate({"limits": {"possible_matches": most}}),
                          7 * 86_400_000, None)
    state = ensure_rule_state(new_state("u:a", 0))
    state["profile"]["possible_matches"] = [["u:a", f"u:{n}", 0.9 - n / 100] for n in range(4)]
    states: dict[str, Any] = {"u:a": state}
    effects = dispatch(states, {}, "u:a", {"type": graph.POSSIBLE, "to": "u:a", "other": "u:z", "score": 0.5},
                       None, rules)
    assert effects.changed == (most == 2) and effects.republish == (most == 2)
    assert effects.matches_dropped == (3 if most == 2 else 1)
    assert [entry[1] for entry in states["u:a"]["profile"]["possible_matches"]] == [f"u:{n}" for n in range(most)]


def test_aliases_of_possible_matches_are_bounded_keeping_those_the_view_follows() -> None:
    """A profile told of 30 keys of other people merged elsewhere (``_alias``), at
    ``limits.match_aliases`` 8: it keeps 8, the ones its possible matches lead to among them, and
    counts the 22 it dropped.  The published view still names each match by its new root."""
    from streams.domain import possible_matches as pm
    from streams.domain.profile import new_state
    from streams.domain.timeline import ensure_rule_state

    rules = RuleSet.build(PipelineConfig.model_validate({"limits": {"match_aliases": 8}}), 7 * 86_400_000, None)
    state = ensure_rule_state(new_state("u:a", 0))
    state["profile"]["possible_matches"] = [["u:a", "a:m1", 0.9], ["u:a", "a:m2", 0.8]]
    states: dict[str, Any] = {"u:a": state}
    dropped = 0
    order = [f"a:x{n:02}" for n in range(28)] + ["a:m1", "a:m2"]
    random.Random(3).shuffle(order)
    for old in order:
        new = {"a:m1": "e:m1@x", "a:m2": "u:m2"}.get(old, "u:elsewhere")
        effects = dispatch(states, {}, "u:a", {"type": pm.ALIAS, "old": old, "new": new}, None, rules)
        # written and published, unless it was itself the one past the bound
        assert effects.republish == effects.changed == (old in states["u:a"]["match_aliases"])
        dropped += effects.aliases_dropped
    aliases = states["u:a"]["match_aliases"]
    assert len(aliases) == 8 and dropped == 22
    assert aliases["a:m1"] == "e:m1@x" and aliases["a:m2"] == "u:m2"
    assert sorted(k for k in aliases if k.startswith("a:x")) == [f"a:x{n:02}" for n in range(6)]  # the first by key
    view = snapshot(states["u:a"])["possible_matches"]
    assert [match["profile_id"] for match in view] == [graph.profile_id_for("e:m1@x"), graph.profile_id_for("u:m2")]


def test_many_profiles_of_one_person_merged_one_by_one_stay_within_the_bounds() -> None:
    """Forty anonymous profiles, each with as many consent keys of the longest name as the bound
    allows, then joined one by one under one user id: before, a merge added the consent keys (and
    trait keys, cart lines, moves) of both sides, so the person's state grew past the broker's value
    limit and the step failed; the merged profile now keeps the fold's bounds."""
    from streams.domain.dispatch import LocalPipeline
    from streams.domain.profile import DEFAULT_LIMITS

    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    rules = RuleSet.build(PipelineConfig(), 7 * 86_400_000)
    local = LocalPipeline(rules)
    anonymous = [{"event_id": f"a{n}", "type": "identify", "timestamp": t0 + n, "anonymous_id": f"anon-{n}",
                  "consent": {f"{n:03d}-{c:02d}-" + "k" * 57: True for c in range(DEFAULT_LIMITS.consent)}}
                 for n in range(40)]
    local.feed(accepted_events(anonymous))
    local.advance(t0 + 1_000)
    joins = [{"event_id": f"j{n}", "type": "identify", "timestamp": t0 + 2_000 + n, "user_id": "u-1",
              "anonymous_id": f"anon-{n}"} for n in range(40)]
    local.feed(accepted_events(joins))
    local.advance(t0 + 10_000)
    [(key, state)] = [(key, state) for key, state in local.live() if not graph.is_holding(state)]
    assert key == "u:u-1" and len(state["profile"]["identifiers"]["anonymous_ids"]) == 40
    assert len(state["profile"]["consent"]) == DEFAULT_LIMITS.consent
    assert len(str(state)) < 100_000


@pytest.mark.parametrize("order", ["pv er pr", "pv pr er", "er pv pr", "er pr pv", "pr pv er", "pr er pv"])
def test_an_erase_of_an_address_nobody_had_loses_no_one_elses_events_whatever_the_order(order: str) -> None:
    """An erase names an address nobody had; a later event names it beside a browser id a user had
    used before.  Before, when that event's profile (the erased key's later activity) joined the
    user's, the erasure time came along and dropped the user's own earlier events.  Now no event is
    lost in any order; the erased key's redirect still drops what is stamped up to the erasure."""
    from streams.domain.dispatch import LocalPipeline

    t = parse_timestamp("2026-03-01T10:00:00Z")
    events = {
        "pv": {"event_id": "pv", "type": "page_view", "timestamp": t - 60_000, "user_id": "u1", "anonymous_id": "a1"},
        "er": {"event_id": "er", "type": "erase", "timestamp": t, "email": "p@example.com"},
        "pr": {"event_id": "pr", "type": "product_view", "timestamp": t + 60_000, "anonymous_id": "a1",
               "email": "p@example.com", "product_id": "sku"},
    }
    rules = RuleSet.build(PipelineConfig(), 7 * 86_400_000)
    local = LocalPipeline(rules)
    local.feed(accepted_events([events[name] for name in order.split()]))
    late = [{"event_id": "old", "type": "page_view", "timestamp": t - 30_000, "email": "p@example.com"},
            {"event_id": "new", "type": "page_view", "timestamp": t + 30_000, "email": "p@example.com"}]
    local.feed(accepted_events(late))
    run = local.advance(t + 3_600_000)
    counted = [profile["aggregates"]["event_counts"] for profile in run.profiles.values()]
    assert sum(counts.get("page_view", 0) for counts in counted) == 2  # pv and "new"; "old" was the erased person's
    assert sum(counts.get("product_view", 0) for counts in counted) == 1
    assert all(state.get("erased_at") is None for _, state in local.live() if "u1" in str(state["profile"]["user_id"]))


def test_a_redirect_moves_only_to_a_smaller_key_so_forwards_always_end() -> None:
    """Crafted links once pointed two redirects at each other, and an event bounced between them for good."""
    rules = RuleSet.build(PipelineConfig(), 7 * 86_400_000)
    states: dict[str, Any] = {}
    for key, message in [("a:p", {"type": "_link", "root": "a:a"}),
                         ("a:p", {"type": "_link", "root": "a:q", "from": "a:a"}),
                         ("a:q", {"type": "_link", "root": "a:p"})]:
        dispatch(states, {}, key, message, None, rules)
    assert states["a:p"] == {"merged_into": "a:a"} and states["a:q"] == {"merged_into": "a:p"}
    [event] = accepted_events([{"event_id": "v1", "type": "page_view", "timestamp": "2026-03-01T10:00:00Z",
                                "anonymous_id": "q"}])
    queue, hops = [(profile_key(event), event)], 0
    while queue and hops < 10:
        hops += 1
        key, message = queue.pop(0)
        queue += dispatch(states, {}, key, message, None, rules).send
    assert not queue and hops < 10
    assert [entry[2] for entry in states["a:a"]["pending"]] == ["v1"]  # it ended at the root


def test_links_name_only_identifier_keys_so_claims_stay_within_the_identity_limits() -> None:
    """A link whose root (or whose keys) are not of the four identifier kinds is not ours: before, each
    such ask was stored as a claim the identity limits did not count, without any bound."""
    rules = RuleSet.build(PipelineConfig(), 7 * 86_400_000)
    states: dict[str, Any] = {}
    [event] = accepted_events([{"event_id": "v1", "type": "page_view", "timestamp": "2026-03-01T10:00:00Z",
                                "user_id": "t"}])
    dispatch(states, {}, "u:t", event, None, rules)
    for n in range(50):
        dispatch(states, {}, "u:t", {"type": "_link", "root": f"zz:{n}", "keys": [f"zz:{n}"]}, None, rules)
        ask = {"type": "_link", "root": f"a:{n}", "keys": [f"a:{n}", *(f"zz:{n}-{i}" for i in range(40))]}
        dispatch(states, {}, "u:t", ask, None, rules)
    claimed = states["u:t"].get("claimed", {})
    assert not any(key.startswith("zz:") for key in claimed)
    assert all(not key.startswith("zz:") for keys in claimed.values() for key in keys)


@pytest.mark.parametrize("damaged", [
    {"type": "_alias", "old": "u:zz", "new": 5},
    {"type": "_alias", "old": ["u:zz"], "new": "u:t"},
    {"type": "_possible", "other": "u:zz", "score": "high"},
    {"type": "_possible", "other": 7, "score": 0.5},
    {"type": "_possible", "other": "u:zz", "score": 1e308},
])
def test_a_damaged_possible_match_message_is_not_stored_to_fail_the_profile_later(damaged: dict[str, Any]) -> None:
    """Before, such a message was stored without a check, and the profile's later good messages and
    snapshots failed on it (found in review)."""
    rules = RuleSet.build(PipelineConfig(), 7 * 86_400_000)
    states: dict[str, Any] = {}
    [event] = accepted_events([{"event_id": "v1", "type": "page_view", "timestamp": "2026-03-01T10:00:00Z",
                                "user_id": "t"}])
    dispatch(states, {}, "u:t", event, None, rules)
    before = copy.deepcopy(states["u:t"])
    assert not dispatch(states, {}, "u:t", damaged, None, rules).republish
    assert states["u:t"] == before
    dispatch(states, {}, "u:t", {"type": "_possible", "other": "u:zz", "score": 0.5}, None, rules)
    dispatch(states, {}, "u:t", {"type": "_alias", "old": "u:zz", "new": "u:b"}, None, rules)
    advance(states["u:t"], parse_timestamp("2026-03-01T11:00:00Z"), rules, 0)
    assert snapshot(states["u:t"])["possible_matches"]


def test_an_erased_persons_late_absorb_at_the_redirect_their_later_activity_left_is_dropped_there() -> None:
    """The erased person's piece (linked before the erase, its absorb late) reaches the erased key
    after the key's later activity joined someone else: the redirect keeps the erasure time and drops
    it, as the marker would have, instead of passing it on to the newcomer (found in review)."""
    rules = RuleSet.build(PipelineConfig(), 7 * 86_400_000)
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    t1 = t0 + 60_000  # the erase
    states: dict[str, Any] = {}
    held: list[tuple[str, dict[str, Any]]] = []

    def send(**event: Any) -> None:
        [accepted] = accepted_events([event])
        queue = [(profile_key(accepted), accepted)]
        while queue:
            key, message = queue.pop(0)
            if message.get("type") == "_absorb" and message.get("from") == "a:z" and not held:
                held.append((key, message))
                continue
            queue += dispatch(states, {}, key, message, None, rules).send

    send(event_id="z0", type="product_view", timestamp=t0, anonymous_id="z", product_id="secret-item")
    send(event_id="p0", type="page_view", timestamp=t0, email="p@x.com")
    send(event_id="p1", type="page_view", timestamp=t0 + 1000, email="p@x.com", anonymous_id="z")
    send(event_id="er", type="erase", timestamp=t1, email="p@x.com")
    send(event_id="p2", type="page_view", timestamp=t1 + 1000, email="p@x.com")  # later activity
    send(event_id="n1", type="identify", timestamp=t1 + 2000, user_id="new", email="p@x.com")  # joins u:new
    # (it keeps what the marker kept: older links are weighed by the person's counts there)
    assert held and states["e:p@x.com"] == {"merged_into": "u:new", "erased_at": t1,
                                            "erased_keys": {"anonymous_ids": 1, "emails": 1}}
    queue = list(held)
    while queue:
        key, message = queue.pop(0)
        queue += dispatch(states, {}, key, message, None, rules).send
    root = states["u:new"]
    kept = set(root["seen"]) | {entry[2] for entry in root.get("pending", ())}
    assert kept >= {"p2", "n1"} and not kept & {"z0", "p0", "p1"}


def test_a_forget_at_a_redirect_that_keeps_a_later_erasure_keeps_the_later_time() -> None:
    rules = RuleSet.build(PipelineConfig(), 7 * 86_400_000)
    t1 = parse_timestamp("2026-03-02T10:00:00Z")
    t2 = t1 - 86_400_000
    states: dict[str, Any] = {"a:x": {"merged_into": "u:y", "erased_at": t1}}
    dispatch(states, {}, "a:x", {"type": "_forget", "root": "u:y", "erased_at": t2}, None, rules)
    assert states["a:x"] == {"erased_at": t1}
    [old] = accepted_events([{"event_id": "old", "type": "page_view", "timestamp": t1 - 1000, "anonymous_id": "x"}])
    assert dispatch(states, {}, "a:x", old, None, rules).outcome == "forgotten"


def _erased_and_later(**erased_by: str) -> list[dict[str, Any]]:
    """A view names u-2 and a-2, the person is erased, and later views name both, then a-2 alone."""
    t = parse_timestamp("2026-03-01T10:00:00Z")
    return accepted_events([
        {"event_id": "v1", "type": "product_view", "timestamp": t, "user_id": "u-2", "anonymous_id": "a-2",
         "product_id": "s"},
        {"event_id": "x2", "type": "erase", "timestamp": t + 60_000, **erased_by},
        {"event_id": "v3", "type": "product_view", "timestamp": t + 120_000, "user_id": "u-2",
         "anonymous_id": "a-2", "product_id": "s"},
        {"event_id": "v4", "type": "product_view", "timestamp": t + 180_000, "anonymous_id": "a-2",
         "product_id": "s"}])


@pytest.mark.parametrize("erased_by", [{"user_id": "u-2"}, {"anonymous_id": "a-2"}])
def test_an_erase_read_again_leaves_the_keys_its_later_activity_took_in_where_they_point(
        erased_by: dict[str, str]) -> None:
    """The user id's later activity answers a-2's ask on the view's link with the erasure's yes: a-2
    forgets the person, and its later view joins u-2's later activity.  Read again after a rollback,
    u-2 sent that yes once more, and the copy reaching a-2's redirect made it a marker again while
    u-2's profile listed it, so a-2's next view started a second profile (149 of these 400 runs,
    erased by the user id).  A redirect that keeps that erasure forgot the person already: it stays."""
    events = _erased_and_later(**erased_by)
    expected = run_locally(events, UNTIL, RULES).profiles
    rolled_back = 0
    for seed in range(400):
        states, read_twice = _read_with_rollbacks(events, seed, watermark_moves=False, partitions=16)
        rolled_back += read_twice > 0
        profiles: dict[str, Any] = {}
        for key, state in states.items():
            if graph.holds_someone(state):
                for other in state.get("links", ()):
                    assert states.get(other, {}).get("merged_into") == key, (seed, key, other, states.get(other))
                advance(state, UNTIL, RULES, 0)
                profiles[state["profile"]["profile_id"]] = snapshot(state)
        assert profiles == expected, seed
    assert rolled_back > 100


def _delivered_in_order(states: dict[str, Any], events: list[dict[str, Any]],
                        kind: str) -> list[tuple[str, dict[str, Any]]]:
    """``events`` and what they set off, each message delivered in the order it was sent; the
    internal messages of ``kind`` (key, message) as they were delivered."""
    seen: list[tuple[str, dict[str, Any]]] = []
    queue = [(profile_key(event), event) for event in events]
    while queue:
        key, message = queue.pop(0)
        if message.get("type") == kind:
            seen.append((key, message))
        queue += dispatch(states, {}, key, message, None, RULES).send
    return seen


def test_a_profile_taken_in_before_the_erase_and_delivered_again_after_it_brings_nothing_back() -> None:
    """The address's profile (i1, p3, which names the browser id a-1) joins the user id's on a link
    made after the erasure (p6), then the erase by a-1 reaches the user id's profile, which keeps only
    p6.  Its absorb read again (the address's partition rolled back and sent it once more) was taken
    for a later link's profile, as its erased state had lost the marks of what it took in: i1 and p3,
    the erased person's, came back.  The later activity keeps those marks, and the copy is known."""
    t = parse_timestamp("2026-03-01T10:00:00Z")
    events = accepted_events([
        {"event_id": "i1", "type": "identify", "timestamp": t + 60_000, "email": "p1@x.com"},
        {"event_id": "p3", "type": "product_view", "timestamp": t + 180_000, "email": "p1@x.com",
         "anonymous_id": "a-1", "product_id": "s"},
        {"event_id": "p6", "type": "product_view", "timestamp": t + 360_000, "email": "p1@x.com", "user_id": "u-1",
         "product_id": "s"},
        {"event_id": "x4", "type": "erase", "timestamp": t + 240_000, "anonymous_id": "a-1"}])  # (late)
    states: dict[str, Any] = {}
    absorbs = _delivered_in_order(states, events, graph.ABSORB)
    assert [(key, message["from"]) for key, message in absorbs] == [("u:u-1", "e:p1@x.com")]
    assert set(states["u:u-1"]["seen"]) == {"p6"}
    effects = dispatch(states, {}, *absorbs[0], None, RULES)
    assert set(states["u:u-1"]["seen"]) == {"p6"} and [e[2] for e in states["u:u-1"]["pending"]] == ["p6"]
    assert not effects.changed and not effects.send


def test_an_erases_forget_read_again_leaves_the_key_its_later_activity_took_in_where_it_points() -> None:
    """The erase by the user id tells a-2 to forget the person, and the later view naming both takes
    a-2 in again.  The ``_forget`` read again after that (the user id's partition rolled back and sent
    it once more) made a-2 a marker again, while u-2's profile listed it, so a-2's next view, coming
    before the later view's link sent again, started a second profile (in the simulation of rollbacks,
    an event held by two profiles).  A redirect that keeps that erasure forgot the person already: it
    stays."""
    events = _erased_and_later(user_id="u-2")
    states: dict[str, Any] = {}
    forgets = _delivered_in_order(states, events, graph.FORGET)
    assert [key for key, _ in forgets] == ["a:a-2"] and states["a:a-2"]["merged_into"] == "u:u-2"
    dispatch(states, {}, *forgets[0], None, RULES)
    [later] = accepted_events([{"event_id": "v5", "type": "product_view", "timestamp": "2026-03-01T10:05:00Z",
                                "anonymous_id": "a-2", "product_id": "s"}])
    queue = [(profile_key(later), later)]
    while queue:
        queue += dispatch(states, {}, *queue.pop(0), None, RULES).send
    assert [key for key, state in states.items() if graph.holds_someone(state)] == ["u:u-2"]
    assert states["a:a-2"].get("merged_into") == "u:u-2"
    assert {entry[2] for entry in states["u:u-2"]["pending"]} == {"v3", "v4", "v5"}


def _read_topics_at_their_own_pace(events: list[dict[str, Any]], seed: int) -> tuple[dict[str, Any], int]:
    """The ingest reads each input topic at its own pace: runs of one topic's events (in its order, the
    clicks the longest runs) are delivered with every message they cause, under the watermark of the
    topics' clocks (the smallest time read last on any topic), as the profile hop gets them.  Returns
    the states and how many input events were taken for repeats."""
    rng = random.Random(seed)
    topics = {kind: [event for event in events if event["kind"] == kind]
              for kind in ("clicks", "carts", "purchases", "identities")}
    clocks = dict.fromkeys(topics, events[0]["ts"] - 1)
    states: dict[str, Any] = {}
    blocks: dict[str, Any] = {}
    duplicates = 0
    while unread := [kind for kind, left in topics.items() if left]:
        kind = rng.choice(unread)
        run = topics[kind][:rng.randrange(1, 2_000 if kind == "clicks" else 20)]
        del topics[kind][:len(run)]
        watermark = min(clocks.values())
        queue = [(profile_key(event), event) for event in run]
        while queue:
            key, message = queue.pop(0)
            effects = dispatch(states, blocks, key, message, watermark, RULES)
            duplicates += effects.outcome == "duplicate"
            queue += effects.send
        clocks[kind] = run[-1]["ts"]
    return states, duplicates


@pytest.mark.parametrize("seed", range(3))
def test_input_topics_read_at_their_own_pace_lose_no_event_to_the_dedupe_window(seed: int) -> None:
    """Ten days of people with a hundred events and more: the clicks are read days ahead of the
    identifies and purchases (each topic has its own partitions).  The dedupe window followed the
    profile's newest event, so an identify or a purchase read later than a week of clicks was taken for
    a repeat whose id was forgotten and dropped (the profile lost its traits, its first order).  Nothing
    is a repeat here, and the profiles are those of the history delivered in its order."""
    events = accepted_events(generate_history(300, 10, 3, date(2026, 3, 1)))
    until = parse_timestamp("2026-03-12T00:00:00Z")
    expected = run_locally(events, until, RULES)
    states, duplicates = _read_topics_at_their_own_pace(events, seed)

    profiles: dict[str, Any] = {}
    for state in states.values():
        if graph.holds_someone(state):
            advance(state, until, RULES, 0)
            profiles[state["profile"]["profile_id"]] = snapshot(state)
    assert duplicates == 0
    assert profiles == expected.profiles


@pytest.mark.parametrize("damaged", [
    {"type": "_block", "key": [], "drop": True},
    {"type": "_block", "key": {"a": 1}, "drop": True, "erased": True},
    {"type": "_block", "key": "e:b@example.com"},
    {"type": "_block", "key": "e:b@example.com", "drop": False},
    {"type": "_block", "key": 5, "person": {"first": "Ann"}},
    {"type": "_block", "key": "e:b@example.com", "person": "Ann"},
])
def test_a_damaged_block_message_leaves_the_block_as_it_is(damaged: dict[str, Any]) -> None:
    """A block message whose member key is no key or whose record is missing raised in the step
    (``unhashable``, ``KeyError``): the entry was dead-lettered as a processing error.  It is not one of
    ours: the block is left as it is, and its good messages go on."""
    rules = RuleSet.build(PipelineConfig(), 7 * 86_400_000)
    blocks: dict[str, Any] = {"b:x": {"e:a@example.com": {"first": "Ann", "last": "Lee"}}}
    before = copy.deepcopy(blocks)
    assert dispatch({}, blocks, "b:x", damaged, None, rules).send == []
    assert blocks == before
    dispatch({}, blocks, "b:x", {"type": "_block", "key": "e:a@example.com", "drop": True}, None, rules)
    assert blocks["b:x"] is None
