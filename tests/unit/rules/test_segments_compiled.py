"""The segment rules compiled to one generated function give exactly what asking the condition
objects gives: on random rules (every operator, event windows with min and max counts, all, any, not,
nested past the depth the generated code inlines), random facts (present, missing, null, of another
kind, containers) and random histories."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.config import Segments
from streams.domain.rules.segments import (
    _MOST_NESTED,
    Segment,
    compile_evaluator,
    compile_rule,
    compile_segments,
    evaluate,
)

T0 = 1_772_000_000_000
H = 3_600_000
PATHS = ("aggregates.orders", "aggregates.total_spend", "cart.item_count", "cart.value", "traits.tier",
         "traits.vip", "traits.nested.deep", "predictions.churn_probability", "context.device", "consent.email")
TYPES = ("product_view", "cart_add", "purchase", "email_open", "identify")

scalars = st.one_of(st.integers(-5, 5), st.floats(-5, 5, allow_nan=False), st.sampled_from(["a", "b", "gold"]),
                    st.booleans())
operand_rules = st.one_of(
    st.tuples(st.sampled_from(["gt", "gte", "lt", "lte"]), st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b"]))),
    st.tuples(st.sampled_from(["eq", "ne"]), scalars),
    st.tuples(st.just("in"), st.lists(scalars, min_size=1, max_size=3)),
    st.tuples(st.just("exists"), st.booleans()),
)
fields = st.builds(lambda path, op: {"field": {"path": path, op[0]: op[1]}}, st.sampled_from(PATHS), operand_rules)


def _event(types: list[str], hours: int, least: int, extra: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": types[0] if len(types) == 1 else types, "within": f"{hours}h", "min_count": least}
    if extra is not None:
        body["max_count"] = least + extra
    return {"event": body}


events = st.builds(_event, st.lists(st.sampled_from(TYPES), min_size=1, max_size=2, unique=True),
                   st.integers(1, 48), st.integers(0, 3), st.one_of(st.none(), st.integers(0, 2)))
rules = st.recursive(
    st.one_of(fields, events),
    lambda children: st.one_of(
        st.builds(lambda c: {"all": c}, st.lists(children, min_size=1, max_size=4)),
        st.builds(lambda c: {"any": c}, st.lists(children, min_size=1, max_size=4)),
        st.builds(lambda c: {"not": c}, children),
    ),
    max_leaves=12,
)
values = st.one_of(st.none(), scalars, st.just({"deep": 3}), st.just([1, 2]))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, list[int]], int]:
    facts: dict[str, Any] = {"aggregates": {}, "traits": {}, "cart": {}, "predictions": {}, "context": {},
                             "consent": {}}
    for path in PATHS:
        if draw(st.booleans()):
            *parents, last = path.split(".")
            node = facts
            for key in parents:
                node = node.setdefault(key, {}) if isinstance(node.get(key), dict | None) else {}
            node[last] = draw(values)
    t = T0 + draw(st.integers(0, 96)) * H
    history = {kind: sorted(draw(st.lists(st.integers(T0 - 72 * H, t + 2 * H), max_size=6))) for kind in TYPES
               if draw(st.booleans())}
    return facts, history, t


@settings(max_examples=400, deadline=None)
@given(st.lists(rules, min_size=1, max_size=6), st.lists(worlds(), min_size=1, max_size=5))
def test_the_generated_function_answers_as_the_condition_objects(
        definitions: list[Any], cases: list[tuple[dict[str, Any], dict[str, list[int]], int]]) -> None:
    segments = tuple(Segment(f"s{i}", compile_rule(rule, f"segments.s{i}.rule")) for i, rule in enumerate(definitions))
    compiled = compile_evaluator(segments)
    for facts, history, t in cases:
        assert compiled(facts, history, t) == evaluate(segments, facts, history, t)


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_the_builtins_compiled_answer_as_their_objects(case: tuple[dict[str, Any], dict[str, list[int]], int]) -> None:
    facts, history, t = case
    builtins = compile_segments(Segments())
    assert compile_evaluator(builtins)(facts, history, t) == evaluate(builtins, facts, history, t)


def test_rules_nested_past_the_inlined_depth_are_asked_through_their_objects() -> None:
    rule: dict[str, Any] = {"field": {"path": "aggregates.orders", "gte": 1}}
    for level in range(_MOST_NESTED + 4):
        rule = {"all": [rule, {"event": {"type": "purchase", "within": f"{level + 1}h"}}]} if level % 2 else \
            {"any": [rule, {"not": {"field": {"path": "traits.tier", "eq": "gold"}}}]}
    segments = (Segment("deep", compile_rule(rule, "segments.deep.rule")),)
    history = {"purchase": [T0 - 2 * H, T0 - H]}
    for orders, tier in ((0, "gold"), (2, "gold"), (2, "silver"), (None, None)):
        facts = {"aggregates": {"orders": orders}, "traits": {"tier": tier}}
        assert compile_evaluator(segments)(facts, history, T0) == evaluate(segments, facts, history, T0)
