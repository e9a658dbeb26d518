"""identity.max_per_profile (contract 3, v1.1): a link that would give a profile more identifiers of a
kind than allowed does not merge; it becomes a possible match and is counted."""

from __future__ import annotations

import random
from typing import Any

import pytest

from streams.domain import possible_matches
from streams.domain.config import PipelineConfig
from streams.domain.dispatch import run_locally
from streams.domain.timeline import RuleSet
from tests.unit.test_identity_graph import UNTIL, ev

RULES = RuleSet.build(PipelineConfig(), 7 * 86_400_000)
LIMITS = RULES.identity_limits


def _within_limits(profiles: dict[str, dict[str, Any]], limits: dict[str, int]) -> None:
    for profile in profiles.values():
        for kind, most in limits.items():
            assert len(profile["identifiers"][kind]) <= most, (kind, profile["identifiers"])


def test_the_defaults_are_the_readmes() -> None:
    assert LIMITS == {"user_ids": 5, "emails": 10, "phones": 5, "anonymous_ids": 100}


def _two_people_with_three_accounts_each() -> list[dict[str, Any]]:
    events = []
    for person in ("a", "b"):
        events += [ev(f"{person}{n}", "identify", n, user_id=f"u-{person}{n}", email=f"{person}@example.com")
                   for n in range(3)]
    # one event names an account of each: six user ids would be one profile
    events.append(ev("x", "identify", 10, user_id="u-a0", email="b@example.com"))
    return events


def test_a_link_past_the_limit_becomes_a_possible_match_and_is_counted() -> None:
    run = run_locally(_two_people_with_three_accounts_each(), UNTIL, RULES)
    assert sorted(sorted(p["identifiers"]["user_ids"]) for p in run.profiles.values()) == [
        ["u-a0", "u-a1", "u-a2"], ["u-b0", "u-b1", "u-b2"]]
    assert "user_ids" in run.limited
    for profile in run.profiles.values():
        [match] = profile["possible_matches"]
        assert match["profile_id"] in run.profiles and match["profile_id"] != profile["profile_id"]
        assert match["score"] == 0.0


def test_within_a_raised_limit_the_same_link_merges() -> None:
    config = PipelineConfig.model_validate({"identity": {"max_per_profile": {"user_ids": 6}}})
    run = run_locally(_two_people_with_three_accounts_each(), UNTIL, RuleSet.build(config, 7 * 86_400_000))
    [profile] = run.profiles.values()
    assert len(profile["identifiers"]["user_ids"]) == 6 and run.limited == []


def test_one_profile_keeps_at_most_the_limit_of_its_own_identifiers() -> None:
    events = [ev(f"i{n}", "identify", n, user_id="u-1", email=f"address{n:02}@example.com") for n in range(14)]
    run = run_locally(events, UNTIL, RULES)
    [profile] = run.profiles.values()
    assert len(profile["identifiers"]["emails"]) == LIMITS["emails"]
    assert run.limited.count("emails") == 14 - LIMITS["emails"]
    assert profile["aggregates"]["event_counts"] == {"identify": 14}  # the events themselves count


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_four_hundred_people_sharing_a_kiosk_id_stay_in_groups_within_the_limit(seed: int | None) -> None:
    """A shared identifier the blocked values don't name (a shop kiosk's browser id): people meet
    through it at most a limit's worth at a time, whatever order the messages arrive in."""
    events = [ev(f"i{n}", "identify", n % 600, user_id=f"u-{n:03}", email=f"person{n:03}@example.com",
                 anonymous_id="kiosk-1") for n in range(400)]
    events += [ev(f"v{n}", "product_view", 600 + n % 60, user_id=f"u-{n:03}", product_id="sku-1")
               for n in range(0, 400, 7)]
    rng = None if seed is None else random.Random(seed)
    if rng is not None:
        rng.shuffle(events)
    run = run_locally(events, UNTIL, RULES, shuffle=rng)
    _within_limits(run.profiles, LIMITS)
    people = sorted(u for p in run.profiles.values() for u in p["identifiers"]["user_ids"])
    assert people == [f"u-{n:03}" for n in range(400)]  # nobody lost, nobody twice
    assert len(run.profiles) >= 400 // LIMITS["user_ids"]
    assert run.limited.count("user_ids") >= len(run.profiles) - 1
    assert all(len(p["possible_matches"]) <= possible_matches.MOST for p in run.profiles.values())
    # each person's own events stayed with them
    for profile in run.profiles.values():
        assert profile["aggregates"]["event_counts"]["identify"] == len(profile["identifiers"]["user_ids"])


def test_events_after_an_erase_that_arrived_before_it_keep_the_limits() -> None:
    later = [ev(f"i{n}", "identify", 10 + n, user_id="u-1", email=f"address{n:02}@example.com") for n in range(14)]
    run = run_locally([*later, ev("x", "erase", 5, user_id="u-1")], UNTIL, RULES)  # the erase arrives last
    [profile] = run.profiles.values()
    assert len(profile["identifiers"]["emails"]) == LIMITS["emails"]
    assert sum(1 for link in run.states["u:u-1"]["links"] if link.startswith("e:")) == LIMITS["emails"]
    assert profile["aggregates"]["event_counts"] == {"identify": 14}


def test_a_shared_address_that_sorts_first_gathers_no_more_than_the_limit_of_people_arriving_over_time() -> None:
    """An identify whose ``traits.email`` (a shared office address) sorts before its ``email`` names a
    smaller key than the one it was routed to.  That profile gave itself up to the smaller key at
    once, unasked, so every person of the office became one profile (16 addresses past a limit of 10);
    it asks now, and the shared profile decides on the union as for any link."""
    from streams.domain.dispatch import LocalPipeline

    local = LocalPipeline(RULES)
    for n in range(15):  # one at a time: each person's ask finds the shared profile there
        local.feed([ev(f"i{n}", "identify", n, email=f"p{n:02}@example.com", traits={"email": "a-office@example.com"})])
    run = local.advance(UNTIL)
    _within_limits(run.profiles, LIMITS)
    sizes = sorted(len(p["identifiers"]["emails"]) for p in run.profiles.values())
    assert sizes == [1] * 6 + [10] and local.limited == ["emails"] * 6


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_a_shared_address_that_sorts_first_gathers_no_more_than_the_limit_of_people_arriving_at_once(
        seed: int | None) -> None:
    """All at once, each person's ask reaches the shared address while it is still empty, and an
    empty key approves each alone.  The root that the first arrival made sends every later profile
    that would take it past the limits back to its key, which takes it up again."""
    events = [ev(f"i{n}", "identify", n, email=f"p{n:02}@example.com", traits={"email": "a-office@example.com"})
              for n in range(15)]
    run = run_locally(events, UNTIL, RULES, shuffle=None if seed is None else random.Random(seed))
    _within_limits(run.profiles, LIMITS)
    people = sorted(e for p in run.profiles.values() for e in p["identifiers"]["emails"] if e.startswith("p"))
    assert people == [f"p{n:02}@example.com" for n in range(15)]  # nobody lost, nobody twice
    assert sum(p["aggregates"]["event_counts"]["identify"] for p in run.profiles.values()) == 15
    assert len(run.limited) == len(run.profiles) - 1  # each profile sent back was counted


def _limits_rules(limits: dict[str, int]) -> RuleSet:
    return RuleSet.build(PipelineConfig.model_validate({"identity": {"max_per_profile": limits}}), 7 * 86_400_000)


@pytest.mark.parametrize("mode", ["at once", "one at a time"])
def test_people_over_two_shared_addresses_end_within_small_limits_whatever_the_message_order(mode: str) -> None:
    """Six people, some with user ids and shared browser ids, twenty identifies naming two shared
    addresses as a second e-mail: 60 message orders, none ends past a limit or loses an event."""
    from streams.domain.dispatch import LocalPipeline

    limits = {"emails": 3, "user_ids": 2, "anonymous_ids": 3, "phones": 2}
    rules = _limits_rules(limits)
    for seed in range(60):
        rng = random.Random(seed)
        events = []
        for n in range(20):
            person = rng.randrange(6)
            fields: dict[str, Any] = {"email": f"p{person}@example.com"}
            draw = rng.random()
            if draw < 0.5:
                fields["traits"] = {"email": "a-shared@example.com" if draw < 0.3 else "b-shared@example.com"}
            if rng.random() < 0.3:
                fields["user_id"] = f"u{person}"
            if rng.random() < 0.4:
                fields["anonymous_id"] = f"anon{rng.randrange(4)}"
            events.append(ev(f"i{n}", "identify", n, **fields))
        local = LocalPipeline(rules, random.Random(seed + 1000))
        for batch in ([events] if mode == "at once" else [[event] for event in events]):
            local.feed(batch)
        run = local.advance(UNTIL)
        _within_limits(run.profiles, limits)
        assert sum(p["aggregates"]["event_counts"]["identify"] for p in run.profiles.values()) == 20, seed


def test_a_profile_sent_back_is_taken_up_once_and_a_sender_of_an_older_version_is_taken_in() -> None:
    """The return at the dispatch level: the key takes its profile up again and points its links back;
    the same return delivered again, or a late copy after the profile left again, changes nothing;
    an absorb without ``returns`` (an older worker's, which could not take its profile back) is
    taken in past the limits, as before."""
    import copy

    from streams.domain import identity_graph as graph
    from streams.domain.dispatch import LocalPipeline, dispatch

    rules = _limits_rules({"emails": 2, "user_ids": 2, "anonymous_ids": 3, "phones": 2})
    local = LocalPipeline(rules)
    local.feed([ev("i1", "identify", 1, email="a@example.com", traits={"email": "b@example.com"}),
                ev("i2", "identify", 2, email="c@example.com", anonymous_id="anon-c")])
    root, asker = "e:a@example.com", "e:c@example.com"
    states, blocks = local.states, local.blocks
    leaving = copy.deepcopy(states[asker])
    given = graph._give_up(asker, leaving, root, "exact")  # as if an empty key had approved its ask
    states[asker] = given.state
    [(_, absorb)] = [sent for sent in given.send if sent[1]["type"] == graph.ABSORB]
    effects = dispatch(states, blocks, root, copy.deepcopy(absorb), None, rules)
    [(to, back)] = [sent for sent in effects.send if sent[1]["type"] == graph.RETURN]
    assert to == asker and effects.limited == ["emails"] and graph.is_live(states[root])
    taken = dispatch(states, blocks, asker, copy.deepcopy(back), None, rules)
    assert graph.is_live(states[asker]) and taken.republish
    assert taken.send == [("a:anon-c", {"type": graph.LINK, "root": asker, "kind": "exact", "from": root})]
    again = dispatch(states, blocks, asker, copy.deepcopy(back), None, rules)
    assert again.send == [] and not again.changed and graph.is_live(states[asker])
    # it leaves again; a late copy of the first return is not the profile now on its way
    second = graph._give_up(asker, copy.deepcopy(states[asker]), root, "exact")
    states[asker] = second.state
    late = dispatch(states, blocks, asker, copy.deepcopy(back), None, rules)
    assert graph.is_redirect(states[asker]) and late.send == []
    older = {key: value for key, value in absorb.items() if key != "returns"}
    merged = dispatch(states, blocks, root, older, None, rules)
    assert merged.merges == ["exact"] and len(graph.identity_keys(root, states[root])) > 3
