"""Property tests of the exact-identifier identity protocol (docs/identity.md) against a tiny
union-find reference written here: random small histories of identify / view / cart / purchase
events over a few people who share identifiers, placeholders mixed in, delivered in random orders."""

from __future__ import annotations

import os
import random
from itertools import pairwise
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.timeparse import parse_timestamp
from streams.domain import identity_graph as graph
from streams.domain.config import PipelineConfig
from streams.domain.dispatch import LocalPipeline, dispatch
from streams.domain.identity import profile_key
from streams.domain.timeline import RuleSet
from streams.ingest import Accepted, Source, decode

T0 = parse_timestamp("2026-03-01T10:00:00Z")
MIN = 60_000
UNTIL = T0 + 3 * 86_400_000
RULES = RuleSet.build(PipelineConfig(), 7 * 86_400_000)

PLACEHOLDERS = {"null", "undefined", "test@test.com", "unknown", "0000000000", "+10000000000"}
USER_IDS = ["u-0", "u-1", "u-2", "null", "undefined"]
EMAILS = ["p0@example.com", "P1@Example.com", "p2@example.com", "shared@example.com", "test@test.com", "null"]
ANONYMOUS_IDS = ["a-0", "a-1", "a-2", "kiosk", "null", "unknown"]
PHONES = ["+12015550123", "+12015550177", "+12015550199", "0000000000", "+10000000000"]


def _key(kind: str, value: str) -> str | None:
    if value.strip().lower() in PLACEHOLDERS:
        return None
    return f"{kind}:{value.lower() if kind == 'e' else value}"


def reference_keys(raw: dict[str, Any]) -> set[str]:
    """The identifier keys an event names, computed here, not by the code under test."""
    traits = raw.get("traits") or {}
    named = [("u", raw.get("user_id")), ("e", raw.get("email")), ("e", traits.get("email")),
             ("a", raw.get("anonymous_id")), ("ph", raw.get("phone")), ("ph", traits.get("phone"))]
    return {k for kind, value in named if value and (k := _key(kind, value)) is not None}


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


@st.composite
def raw_event(draw: Any, n: int) -> dict[str, Any]:
    etype = draw(st.sampled_from(["identify", "identify", "product_view", "cart_add", "purchase"]))
    raw: dict[str, Any] = {"event_id": f"e{n}", "type": etype, "timestamp": T0 + draw(st.integers(0, 60)) * MIN}
    for name, pool in (("user_id", USER_IDS), ("email", EMAILS), ("anonymous_id", ANONYMOUS_IDS),
                       ("phone", PHONES)):
        if draw(st.integers(0, 2)) == 0:
            raw[name] = draw(st.sampled_from(pool))
    if etype == "identify" and draw(st.booleans()):
        raw["traits"] = {"email": draw(st.sampled_from(EMAILS))}
    if etype == "cart_add":
        raw |= {"product_id": "sku-1", "price": 5.0}
    elif etype == "product_view":
        raw["product_id"] = "sku-2"
    elif etype == "purchase":
        raw |= {"order_id": f"o{n}", "total": 5.0}
    return raw


@st.composite
def history(draw: Any, max_events: int = 12) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    size = draw(st.integers(1, max_events))
    out = []
    for n in range(size):
        raw = draw(raw_event(n))
        result = decode(orjson.dumps(raw), Source("t", 0, 0, None, 0), 0)
        if isinstance(result, Accepted):
            out.append((raw, result.event))
    return out


def run(events: list[dict[str, Any]], seed: int | None, steps: int = 1, rules: RuleSet = RULES) -> LocalPipeline:
    local = LocalPipeline(rules, None if seed is None else random.Random(seed))
    chunk = max(1, -(-len(events) // steps))
    for n, start in enumerate(range(0, len(events), chunk)):
        local.feed(events[start:start + chunk])
        if start + chunk < len(events):  # the watermark moves between the steps
            local.advance(T0 + (n + 1) * 20 * MIN)
    local.advance(UNTIL)
    return local


def grouping(local: LocalPipeline) -> dict[frozenset[str], frozenset[str]]:
    """event ids -> identifier keys, for each live profile."""
    out = {}
    for _, state in local.live():
        ids = state["profile"]["identifiers"]
        keys = frozenset(f"{prefix}:{v}" for kind, prefix in (("user_ids", "u"), ("emails", "e"),
                                                              ("anonymous_ids", "a"), ("phones", "ph"))
                         for v in ids.get(kind, {}))
        events = frozenset(state["seen"])
        assert events not in out, "two profiles with the same events"
        out[events] = keys
    return out


def linked(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> UnionFind:
    """The identifier keys of ``pairs``' events, each event's keys joined."""
    uf = UnionFind()
    for raw, _ in pairs:
        keys = sorted(reference_keys(raw))
        for k in keys:
            uf.find(k)
        for a, b in pairwise(keys):
            uf.union(a, b)
    return uf


def reference_grouping(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> set[frozenset[str]]:
    uf = linked(pairs)
    groups: dict[str, set[str]] = {}
    for raw, _ in pairs:
        keys = reference_keys(raw)
        assert keys, raw  # an accepted event names someone
        groups.setdefault(uf.find(next(iter(keys))), set()).add(raw["event_id"])
    return {frozenset(g) for g in groups.values()}


# derandomized (fixed examples, no database): the same run in CI every time; a wider random search is
# MAILPULSE_PROPERTY_RANDOM=1
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=not os.environ.get("MAILPULSE_PROPERTY_RANDOM"), database=None)


@SETTINGS
@given(history(), st.integers(0, 10_000), st.integers(1, 3), st.randoms(use_true_random=False))
def test_profiles_are_the_union_find_components_in_any_order(pairs: Any, seed: int, steps: int,
                                                             rnd: random.Random) -> None:
    expected = reference_grouping(pairs)
    events = [event for _, event in pairs]
    rnd.shuffle(events)
    for s, st_ in ((None, 1), (seed, steps)):
        local = run(events, s, st_)
        got = grouping(local)
        assert set(got) == expected, (s, st_)
        keys_of_events: dict[str, set[str]] = {raw["event_id"]: reference_keys(raw) for raw, _ in pairs}
        for event_ids, keys in got.items():
            named = set().union(*(keys_of_events[e] for e in event_ids))
            assert keys == named, "a profile's identifiers are those its events name"
        # every identifier key ends at its component's root
        for keys in got.values():
            root = graph.smallest(list(keys))
            for k in keys:
                assert local.root_of(k) == root, (k, root)


def _limited_rules(**most: int) -> RuleSet:
    config = PipelineConfig.model_validate({"identity": {"max_per_profile": most}})
    return RuleSet.build(config, 7 * 86_400_000)


LIMITED = _limited_rules(user_ids=1, emails=2, anonymous_ids=2, phones=1)


@SETTINGS
@given(history(10), st.integers(0, 10_000), st.integers(1, 3), st.randoms(use_true_random=False))
def test_with_identity_limits_no_profile_passes_them_or_spans_components(pairs: Any, seed: int, steps: int,
                                                                         rnd: random.Random) -> None:
    expected = reference_grouping(pairs)
    component_of = {e: group for group in expected for e in group}
    events = [event for _, event in pairs]
    rnd.shuffle(events)
    keys_of_events = {raw["event_id"]: reference_keys(raw) for raw, _ in pairs}
    for s in (None, seed):
        local = run(events, s, steps, LIMITED)
        got = grouping(local)
        seen = [e for ids in got for e in ids]
        assert sorted(seen) == sorted(keys_of_events), "every event is in exactly one profile"
        for event_ids, keys in got.items():
            assert len({frozenset(component_of[e]) for e in event_ids}) == 1, "a profile spans components"
            named = set().union(*(keys_of_events[e] for e in event_ids))
            assert keys <= named, "a profile holds an identifier none of its events named"
            for prefix, kind in (("u", "user_ids"), ("e", "emails"), ("a", "anonymous_ids"), ("ph", "phones")):
                assert sum(k.startswith(prefix + ":") for k in keys) <= LIMITED.identity_limits[kind], keys
        if not local.limited:
            assert set(got) == expected, "nothing was limited, yet components were split"


@st.composite
def history_with_an_erase(draw: Any, max_events: int = 10) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Events in time order (one each half minute: no ties), one of them an erase by an identifier."""
    pairs = draw(history(max_events))
    for n, (raw, _) in enumerate(pairs):
        raw["timestamp"] = T0 + n * MIN
    at = draw(st.integers(0, len(pairs)))
    name, value = draw(st.sampled_from([("user_id", v) for v in USER_IDS[:3]] + [("email", v) for v in EMAILS[:4]]
                                       + [("anonymous_id", v) for v in ANONYMOUS_IDS[:4]]))
    erase = {"event_id": "x", "type": "erase", "timestamp": T0 + at * MIN - MIN // 2, name: value}
    raws = [raw for raw, _ in pairs]
    raws.insert(at, erase)
    out = []
    for raw in raws:
        result = decode(orjson.dumps(raw), Source("t", 0, 0, None, 0), 0)
        assert isinstance(result, Accepted), raw
        out.append((raw, result.event))
    return out


def reference_after_erase(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[set[frozenset[str]], set[str]]:
    """(the expected profiles' event ids, the erased keys): the erase drops the component of its key
    among the events stamped up to it; the other events group as a union-find over themselves."""
    [erase] = [raw for raw, _ in pairs if raw["type"] == "erase"]
    before = [(raw, e) for raw, e in pairs if raw["type"] != "erase" and raw["timestamp"] <= erase["timestamp"]]
    uf = linked(before)
    [target] = reference_keys(erase)
    dropped = {raw["event_id"] for raw, _ in before if uf.find(next(iter(reference_keys(raw)))) == uf.find(target)}
    erased_keys = {k for k in uf.parent if uf.find(k) == uf.find(target)} | {target}
    rest = [(raw, e) for raw, e in pairs if raw["type"] != "erase" and raw["event_id"] not in dropped]
    return (reference_grouping(rest) if rest else set()), erased_keys


def interleave(local: LocalPipeline, events: list[dict[str, Any]], rng: random.Random) -> None:
    """The input events in their order, each internal message they cause delivered at a random later
    point (internal messages in any order among themselves)."""
    pending: list[tuple[str, dict[str, Any]]] = []
    inputs = list(events)
    while inputs or pending:
        if inputs and (not pending or rng.random() < 0.4):
            event = inputs.pop(0)
            key, message = profile_key(event), event
        else:
            key, message = pending.pop(rng.randrange(len(pending)))
        effects = dispatch(local.states, local.blocks, key, message, None, local.rules)
        pending += effects.send
        local.limited += effects.limited


@SETTINGS
@given(history_with_an_erase(), st.integers(0, 10_000))
def test_an_erase_drops_the_persons_older_events_and_nothing_else(pairs: Any, seed: int) -> None:
    expected, erased = reference_after_erase(pairs)
    [erase] = [raw for raw, _ in pairs if raw["type"] == "erase"]
    later_keys = set().union(*(reference_keys(raw) for raw, _ in pairs
                               if raw["type"] != "erase" and raw["timestamp"] > erase["timestamp"]))
    events = [event for _, event in pairs]
    for mode in ("one at a time", "fifo", "interleaved"):
        local = LocalPipeline(RULES)
        if mode == "one at a time":
            for event in events:
                local.feed([event])
        elif mode == "fifo":
            local.feed(events)
        else:
            interleave(local, events, random.Random(seed))
        local.advance(UNTIL)
        got = grouping(local)
        if mode != "one at a time":
            # (an erase that comes while the person's profiles are still joining, or messages overtaking
            # each other around it: docs/identity.md, Erase, lists the orders in which a piece of the
            # person is left or joins their later activity; checked here: none of it crashes)
            continue
        if later_keys & erased:
            # (a later event names an erased identifier: a newcomer naming it as a second address stays
            # apart from the key's own later activity, a choice docs/identity.md (Erase) makes and
            # test_identity_graph's newcomer test holds; the union-find here would join them)
            continue
        assert set(got) == expected, mode
        for keys in got.values():
            assert not (keys & erased) - later_keys, (mode, "an erased identifier no later event named is listed")
