"""Possible matches as order-free facts (streams.domain.possible_matches)."""

from __future__ import annotations

import random
from typing import Any

from streams.domain import possible_matches as pm
from streams.domain.identity import profile_id_for


def test_a_pair_is_kept_once_with_its_highest_score() -> None:
    entries: list[list[object]] = []
    assert pm.record(entries, "e:mary@x", "e:peter@x", 0.6)
    assert not pm.record(entries, "e:mary@x", "e:peter@x", 0.55)  # delivered again, or a lower score
    assert pm.record(entries, "e:mary@x", "e:peter@x", 0.7)
    assert pm.record(entries, "u:mary", "e:peter@x", 0.5)
    assert entries == [["e:mary@x", "e:peter@x", 0.7], ["u:mary", "e:peter@x", 0.5]]
    older = [["e:mary@x", "e:peter@x", 0.65], {"profile_id": "p-old", "score": 0.6}, ["p-older", 0.55]]
    assert pm.union(entries, older) == [{"profile_id": "p-old", "score": 0.6}, {"profile_id": "p-older", "score": 0.55},
                                        ["e:mary@x", "e:peter@x", 0.7], ["u:mary", "e:peter@x", 0.5]]


def test_an_alias_keeps_the_smallest_key_whatever_order_they_arrive_in() -> None:
    first: dict[str, str] = {}
    assert pm.add_alias(first, "a:anon", "e:peter@x") and pm.add_alias(first, "a:anon", "u:peter")
    second: dict[str, str] = {}
    assert pm.add_alias(second, "a:anon", "u:peter") and not pm.add_alias(second, "a:anon", "e:peter@x")
    assert first == second == {"a:anon": "u:peter"}
    assert not pm.add_alias(first, "u:peter", "u:peter")
    assert pm.resolve({"a:anon": "e:peter@x", "e:peter@x": "u:peter"}, "a:anon") == "u:peter"
    assert pm.union_aliases({"a:anon": "e:peter@x"}, {"a:anon": "u:peter", "ph:+44": "u:peter"}) == \
        {"a:anon": "u:peter", "ph:+44": "u:peter"}


def test_the_view_names_each_other_person_once_by_their_root_and_never_the_profile_itself() -> None:
    entries = [["u:mary", "a:anon", 0.6], ["u:mary", "e:peter@x", 0.7], ["u:mary", "e:susan@x", 0.55],
               ["e:mary@x", "e:mary-work@x", 0.8], {"profile_id": "p-legacy", "score": 0.5},
               {"profile_id": profile_id_for("e:mary@x"), "score": 0.9}]
    aliases = {"a:anon": "e:peter@x", "e:peter@x": "u:peter"}
    view = pm.view(entries, aliases, own_keys={"u:mary", "e:mary@x", "e:mary-work@x"})
    assert view == [{"profile_id": profile_id_for("u:peter"), "score": 0.7},
                    {"profile_id": profile_id_for("e:susan@x"), "score": 0.55},
                    {"profile_id": "p-legacy", "score": 0.5}]


def test_entries_held_under_another_key_tell_the_other_side_the_new_root() -> None:
    entries = [["u:mary", "e:peter@x", 0.7], ["e:mary@x", "e:peter@x", 0.6], ["a:m", "e:susan@x", 0.5],
               {"profile_id": "p-legacy", "score": 0.5}]
    assert list(pm.aliases_to_send(entries, "u:mary")) == [
        ("e:peter@x", {"type": pm.ALIAS, "old": "e:mary@x", "new": "u:mary"}),
        ("e:susan@x", {"type": pm.ALIAS, "old": "a:m", "new": "u:mary"})]


def test_a_profile_keeps_the_best_possible_matches_and_counts_what_it_drops() -> None:
    scored = [(f"e:p{n:03}@x", round(random.Random(n).random(), 3)) for n in range(pm.MOST + 40)]
    everything: list[Any] = []
    for other, score in scored:
        pm.record(everything, "u:me", other, score)
    best = sorted(pm.union(everything, []), key=lambda e: (-e[2], e[1]))[:pm.MOST]
    for seed in range(3):  # any order, any split: the same best entries
        order = list(scored)
        random.Random(seed).shuffle(order)
        a: list[Any] = []
        b: list[Any] = []
        dropped = 0
        for i, (other, score) in enumerate(order):
            part = a if i % 2 else b
            pm.record(part, "u:me", other, score)
            dropped += pm.trim(part)
        merged = pm.union(a, b)
        dropped += pm.trim(merged)
        assert len(merged) == pm.MOST and sorted(map(tuple, merged)) == sorted(map(tuple, best))
        assert dropped == len(scored) - pm.MOST


def test_aliases_past_their_bound_drop_those_no_entry_follows_first_then_by_key() -> None:
    entries: list[Any] = [["u:me", "a:anon", 0.7], {"profile_id": "p-legacy", "score": 0.5}]
    chain = {"a:anon": "e:peter@x", "e:peter@x": "u:peter"}  # the view follows both
    unused = {f"a:z{n}": "u:other" for n in range(5)}
    for order in (list(chain.items()) + list(unused.items()), list(unused.items()) + list(chain.items())):
        aliases = dict(order)
        assert pm.trim_aliases(aliases, entries, 4) == 3
        assert aliases == {**chain, "a:z0": "u:other", "a:z1": "u:other"}
        assert pm.trim_aliases(aliases, entries, 1) == 3 and aliases == {"e:peter@x": "u:peter"}  # by key
        assert pm.trim_aliases(aliases, entries, 1) == 0


def test_withdraw_takes_out_the_pairs_naming_the_erased_keys_directly_or_through_a_rename() -> None:
    """``_unmatch``: an erased person's keys leave every pair that names them (as scored, or renamed
    since), their renames, and a legacy entry of their profile id; the other pairs stay."""
    entries: list[Any] = [["e:m", "a:p", 0.6], ["e:m", "e:q", 0.7], ["e:m", "u:z", 0.5],
                          {"profile_id": profile_id_for("e:p"), "score": 0.55}]
    aliases = {"a:p": "e:p", "e:q": "u:q"}
    assert pm.withdraw(entries, aliases, ["e:p"])
    assert entries == [["e:m", "e:q", 0.7], ["e:m", "u:z", 0.5]] and aliases == {"e:q": "u:q"}
    assert not pm.withdraw(entries, aliases, ["e:p"])  # (again: nothing left to take out)
    assert pm.withdrawals([["e:p", "e:m", 0.6], ["a:p", "e:m", 0.6], ["e:p", "u:z", 0.5]], "e:p") == [
        ("e:m", {"type": pm.UNMATCH, "keys": ["a:p", "e:p"]}), ("u:z", {"type": pm.UNMATCH, "keys": ["e:p"]})]


def test_an_unmatch_takes_out_a_pair_scored_under_a_key_renamed_since_and_its_alias() -> None:
    """Peter was scored under his browser id, which was renamed to his address since: the _unmatch
    for the browser id takes the pair out (the key it names, not only where the alias leads) and
    the alias itself, which names his browser id; an alias alone gone is a change too."""
    entries: list[Any] = [["e:mary@example.com", "a:anon-p", 0.7]]
    aliases = {"a:anon-p": "e:peter@example.com"}
    assert pm.withdraw(entries, aliases, ["a:anon-p"]) is True
    assert entries == [] and aliases == {}
    aliases = {"a:anon-p": "e:peter@example.com"}
    assert pm.withdraw([], aliases, ["a:anon-p"]) is True and aliases == {}
    assert pm.withdraw([], {}, ["a:anon-p"]) is False


def test_an_erased_profiles_unmatch_names_every_key_it_was_scored_under_and_its_own() -> None:
    """The other side may name the erased profile by the key its pair was scored under or by the
    profile's own key (its root, which an alias or a later scoring gave it)."""
    entries = [["a:anon-p", "e:mary@example.com", 0.7], ["u:uid-p", "e:mary@example.com", 0.6],
               ["a:anon-p", "e:zoe@example.com", 0.5]]
    assert pm.withdrawals(entries, "e:peter@example.com") == [
        ("e:mary@example.com", {"type": pm.UNMATCH, "keys": ["a:anon-p", "e:peter@example.com", "u:uid-p"]}),
        ("e:zoe@example.com", {"type": pm.UNMATCH, "keys": ["a:anon-p", "e:peter@example.com"]})]
