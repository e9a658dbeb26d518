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
from tests.unit.test_identity_graph import UNTIL, _limited, ev

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
    """All at once, each person's ask reaches the shared address before anyone has arrived there.  An
    empty key approved each alone (nothing written), and all 15 became one profile of 16 addresses.
    The key now holds a profile with nothing in it but the claims, so each ask is decided on the union."""
    from streams.domain import identity_graph as graph

    events = [ev(f"i{n}", "identify", n, email=f"p{n:02}@example.com", traits={"email": "a-office@example.com"})
              for n in range(15)]
    run = run_locally(events, UNTIL, RULES, shuffle=None if seed is None else random.Random(seed))
    _within_limits(run.profiles, LIMITS)
    people = sorted(e for p in run.profiles.values() for e in p["identifiers"]["emails"] if e.startswith("p"))
    assert people == [f"p{n:02}@example.com" for n in range(15)]  # nobody lost, nobody twice
    assert sum(p["aggregates"]["event_counts"]["identify"] for p in run.profiles.values()) == 15
    assert len(run.profiles) == 7 and set(run.limited) == {"emails"} and len(run.limited) >= 6  # one for each apart
    assert not any(graph.is_holding(state) for state in run.states.values())  # the first arrival filled it
    office = run.states["e:a-office@example.com"]
    assert graph.is_live(office) and "claimed" not in office


def test_a_holding_profile_is_no_profile_until_someone_arrives() -> None:
    """Its claims count towards the limits; it is not published, matched or listed; the first arrival's
    times are the profile's, and the claims of askers still on their way stay."""
    from streams.domain import identity_graph as graph
    from streams.domain.dispatch import LocalPipeline, dispatch

    local = LocalPipeline(RULES)
    key = "e:a-office@example.com"
    ask = {"type": graph.LINK, "root": "e:p01@example.com", "kind": "exact", "keys": ["e:p01@example.com"]}
    effects = dispatch(local.states, local.blocks, key, ask, None, RULES)
    assert effects.changed and graph.is_holding(local.states[key])
    assert effects.send == [("e:p01@example.com", {"type": graph.LINK, "root": key, "kind": "exact", "ok": True,
                                                   "keys": [key, "e:p01@example.com"]})]
    second = {**ask, "root": "e:p02@example.com", "keys": ["e:p02@example.com"]}
    dispatch(local.states, local.blocks, key, second, None, RULES)
    assert sorted(local.states[key]["claimed"]) == ["e:p01@example.com", "e:p02@example.com"]
    possible = {"type": graph.POSSIBLE, "to": key, "other": "e:z@example.com", "score": 0.0}
    assert dispatch(local.states, local.blocks, key, possible, None, RULES).republish is False
    assert local.advance(UNTIL).profiles == {} and list(local.live()) == []
    local.feed([ev("i1", "identify", 5, email="p01@example.com", traits={"email": "a-office@example.com"})])
    run = local.advance(UNTIL)
    [profile] = run.profiles.values()
    assert profile["created_at"] == profile["updated_at"] == "2026-03-01T10:05:00.000Z"
    assert "e:p02@example.com" in local.states[key].get("claimed", {})  # still on its way


def _limits_rules(limits: dict[str, int]) -> RuleSet:
    return RuleSet.build(PipelineConfig.model_validate({"identity": {"max_per_profile": limits}}), 7 * 86_400_000)


def test_a_profile_made_of_holdings_takes_the_times_of_its_first_event_whatever_the_order() -> None:
    """Two asks of one person make two holdings; one holding can join the other before anyone
    arrived.  Settling from the arrival's creation time, the profile kept the holding's 2200."""
    events = [ev("i1", "identify", 0, email="c@example.com", traits={"email": "a@example.com"}),
              ev("i2", "identify", 1, email="c@example.com", traits={"email": "b@example.com"})]
    rules = _limits_rules({"emails": 3, "user_ids": 2, "anonymous_ids": 3, "phones": 2})
    for seed in range(120):
        run = run_locally(events, UNTIL, rules, shuffle=random.Random(seed))
        [profile] = run.profiles.values()
        assert (profile["created_at"], profile["updated_at"]) == \
            ("2026-03-01T10:00:00.000Z", "2026-03-01T10:01:00.000Z"), seed
        # every key that points to the profile is one of its links (a holding made of holdings lost
        # those of the holding it took in, and a later ask was then decided without them)
        [(root, state)] = [(key, state) for key, state in run.states.items() if "profile" in state]
        pointing = {key for key, state in run.states.items() if state.get("merged_into") == root}
        assert pointing <= set(state.get("links", [])), seed


def test_an_asker_that_asks_again_replaces_its_claim_and_a_refusal_frees_the_room() -> None:
    """It took another address in after it was approved, so it asked again and was refused: its old
    claim held the room for good, and a later asker that fits was refused too."""
    from streams.domain import identity_graph as graph
    from streams.domain.dispatch import LocalPipeline, dispatch

    rules = _limits_rules({"emails": 2, "user_ids": 2, "anonymous_ids": 3, "phones": 2})
    local = LocalPipeline(rules)
    key, p1 = "e:a-office@example.com", "e:p1@example.com"
    dispatch(local.states, local.blocks, key, {"type": graph.LINK, "root": p1, "kind": "exact", "keys": [p1]},
             None, rules)
    assert local.states[key]["claimed"] == {p1: [key, p1]}
    again = dispatch(local.states, local.blocks, key, {"type": graph.LINK, "root": p1, "kind": "exact",
                                                      "keys": [p1, "e:z@example.com"]}, None, rules)
    assert again.limited == ["emails"] and again.changed and "claimed" not in local.states[key]  # written back
    local.feed([ev("i3", "identify", 2, email="q@example.com", traits={"email": "a-office@example.com"})])
    [profile] = local.advance(UNTIL).profiles.values()
    assert sorted(profile["identifiers"]["emails"]) == ["a-office@example.com", "q@example.com"]


def test_an_asker_the_root_already_links_is_claimed_with_the_keys_it_brings() -> None:
    """The root had linked the asker's key itself (its own event named it); the asker brings one more
    address.  The root approved on the union, so it must hold that union until the asker arrives: a
    third asker's addresses are then refused, not let in past the limit."""
    rules = _limited(emails=2)
    events = [ev("e0", "identify", 0, email="p0@example.com", traits={"email": "p2@example.com"}),
              ev("e1", "product_view", 0, user_id="u-0", email="p0@example.com", phone="+12015550123"),
              ev("e2", "product_view", 0, email="p1@example.com", phone="+12015550123")]
    run = run_locally(events, UNTIL, rules)
    _within_limits(run.profiles, rules.identity_limits)
    assert "emails" in run.limited


def test_identity_limits_that_would_make_a_profile_too_big_to_store_are_refused() -> None:
    """Identifiers are never dropped: a profile keeps each (up to 512 characters) in its identifiers
    and its links, ~1 KB each.  ``anonymous_ids: 1000`` let a person with long anonymous ids grow past
    the value limit, and every later event of theirs was dead-lettered (``processing_error``); such
    limits are refused at start, and a person at the largest accepted ones is stored."""
    from pydantic import ValidationError

    from schemas.timeparse import parse_timestamp
    from streams.domain.config import MOST_IDENTIFIERS
    from streams.record_step import SOFT_STATE_BYTES, StepContext
    from tests.unit.test_record_step import CTX, PARTITIONS, one_person_in_one_step

    with pytest.raises(ValidationError, match="1020 identifiers in all"):
        PipelineConfig.model_validate({"identity": {"max_per_profile": {"anonymous_ids": 1000}}})
    most = {"user_ids": 5, "emails": 10, "phones": 5, "anonymous_ids": MOST_IDENTIFIERS - 20}
    rules = RuleSet.build(PipelineConfig.model_validate({"identity": {"max_per_profile": most}}), 7 * 86_400_000, None)
    ctx = StepContext(rules=rules, expected_clocks=CTX.expected_clocks, wall_delay_ms=None, partitions=PARTITIONS,
                      events_topic=CTX.events_topic)
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    raw = [{"event_id": f"v{n}", "type": "page_view", "timestamp": t0 + n * 1000, "user_id": "u" * 512,
            "anonymous_id": f"{n:05d}".ljust(512, "a")} for n in range(most["anonymous_ids"])]
    _, value = one_person_in_one_step(raw, ctx)
    assert len(value) < SOFT_STATE_BYTES
