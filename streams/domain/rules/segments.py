"""The segment rule language: compile rules once, then evaluate them per event (docs/segments.md).

Compiling turns a rule (plain YAML data) into a small tree of frozen condition objects, so that
evaluation -- which runs for every event -- does no parsing, only dictionary look-ups and bisects over
the person's sorted event history. Everything runs on event time ``t`` (epoch ms) given by the caller:
no clock, no I/O, no state between calls, so a replay computes exactly what live traffic did.
"""

from __future__ import annotations

import heapq
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from schemas.events import CART_TYPES, CLICK_TYPES, MAX_CONSENT_NAME, PURCHASE_TYPES, Context
from schemas.identifiers import comparable
from schemas.timeparse import MAX_SPAN_MS

if TYPE_CHECKING:
    from streams.domain.config import Segments

Facts = Mapping[str, Any]
History = Mapping[str, Sequence[int]]

#: Event types an ``event`` condition may count: the contract's input types (``erase`` ends a profile).
EVENT_TYPES: tuple[str, ...] = (*CLICK_TYPES, *CART_TYPES, *PURCHASE_TYPES, "identify")
#: Top-level keys of the facts the caller builds from a profile; a path must start with one of them.
FACT_ROOTS: tuple[str, ...] = ("aggregates", "traits", "consent", "context", "cart", "predictions")
#: The fields of the roots whose shape is fixed (what ``timeline._facts`` gives the rules; traits and
#: consent are free-form, and an event's context keeps only the contract's fields), each with whether a key
#: follows it (``event_counts.purchase``): a path naming another field is a typo, which would never
#: match (or, with ``ne``, always).
FIXED_FIELDS: dict[str, dict[str, bool]] = {
    "aggregates": {"event_counts": True, "kind_counts": True, "first_seen": True, "last_seen": True, "orders": False,
                   "total_spend": False, "spend_by_currency": True, "first_purchase_at": False,
                   "last_purchase_at": False},
    "cart": {"item_count": False, "value": False, "lines": False},
    "predictions": {"churn_probability": False, "purchase_probability": False, "model_version": False, "at": False},
    "context": dict.fromkeys(Context.model_fields, False),
}
#: Built-in segment names in contract order.
BUILTIN_SEGMENTS: tuple[str, ...] = (
    "recent_browsers", "cart_holders", "recent_buyers", "lapsed_customers",
    "high_value", "engaged_email", "churn_risk", "high_intent",
)

_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "exists")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_DURATION_HINT = "(use e.g. 30d, 48h, 15m)"
_MISSING: Any = object()  # a path that leads nowhere (or to null)

#: (member now, earliest time > t at which that could change by time alone, or None)
Membership = tuple[bool, int | None]


class RuleError(ValueError):
    """A rule that cannot be compiled; ``where`` is the key path so the user can find it."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


# --- compiled conditions ---------------------------------------------------------------------------


class Condition:
    """A compiled condition: ``state`` answers membership and when time alone could change it."""

    __slots__ = ()

    def state(self, facts: Facts, history: History, t: int) -> Membership:
        raise NotImplementedError

    def event_conditions(self) -> Iterator[EventCondition]:
        """The ``event`` leaves, so the caller knows which history to keep."""
        return iter(())


@dataclass(frozen=True, slots=True)
class _Junction(Condition):
    """``all`` / ``any``: a child that settles on :attr:`decisive` for good decides the whole."""

    children: tuple[Condition, ...]
    decisive: ClassVar[bool]

    def state(self, facts: Facts, history: History, t: int) -> Membership:
        value, nxt = not self.decisive, None
        for child in self.children:
            v, n = child.state(facts, history, t)
            if bool(v) == self.decisive:
                if n is None:  # settled for good (until new events): so is the whole
                    return self.decisive, None
                value = self.decisive
            if n is not None and (nxt is None or n < nxt):
                nxt = n
        return value, nxt

    def event_conditions(self) -> Iterator[EventCondition]:
        for child in self.children:
            yield from child.event_conditions()


@dataclass(frozen=True, slots=True)
class AllOf(_Junction):
    decisive: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class AnyOf(_Junction):
    decisive: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class NotOf(Condition):
    child: Condition

    def state(self, facts: Facts, history: History, t: int) -> Membership:
        v, n = self.child.state(facts, history, t)
        return not v, n

    def event_conditions(self) -> Iterator[EventCondition]:
        return self.child.event_conditions()


@dataclass(frozen=True, slots=True)
class FieldCondition(Condition):
    """A test of one fact; facts change only with events, so it never has a next-change time.

    ``op``/``operand`` say what ``test`` does, so equal rules compile to equal conditions.
    """

    path: tuple[str, ...]
    op: str
    operand: Any
    test: Callable[[Any], bool] = field(compare=False, repr=False)
    if_missing: bool = field(default=False, compare=False, repr=False)

    def state(self, facts: Facts, history: History, t: int) -> Membership:
        value: Any = facts
        try:
            for key in self.path:
                value = value[key]
        except (KeyError, TypeError, IndexError):
            return self.if_missing, None
        if value is None:
            return self.if_missing, None
        return self.test(value), None


@dataclass(frozen=True, slots=True)
class EventCondition(Condition):
    """``min_count <= #events of `types` with t - window_ms < ts <= t <= max_count``."""

    types: tuple[str, ...]
    window_ms: int
    min_count: int = 1
    max_count: int | None = None

    def state(self, facts: Facts, history: History, t: int) -> Membership:
        start = t - self.window_ms
        if len(self.types) == 1:
            times = history.get(self.types[0], ())
            if not times:
                return self.min_count == 0, None
            lo, hi = bisect_right(times, start), bisect_right(times, t)
        else:  # merge the in-window parts, small by construction (the caller trims history)
            parts = []
            for kind in self.types:
                times = history.get(kind, ())
                if times:
                    part = times[bisect_right(times, start):bisect_right(times, t)]
                    if part:
                        parts.append(part)
            if not parts:
                return self.min_count == 0, None
            times = parts[0] if len(parts) == 1 else list(heapq.merge(*parts))
            lo, hi = 0, len(times)
        count = hi - lo
        # The count only falls as time passes; the truth flips when it falls to max_count (if above)
        # or below min_count, i.e. when the k-th oldest in-window event leaves the window.
        if self.max_count is not None and count > self.max_count:
            return False, times[lo + count - self.max_count - 1] + self.window_ms
        if count >= self.min_count:
            return True, (times[lo + count - self.min_count] + self.window_ms if self.min_count > 0 else None)
        return False, None

    def event_conditions(self) -> Iterator[EventCondition]:
        yield self


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    condition: Condition


# --- evaluation ------------------------------------------------------------------------------------


def evaluate(segments: Sequence[Segment], facts: Facts, history: History, t: int) -> tuple[frozenset[str], int | None]:
    """Members at event time ``t``, and the earliest later time at which time alone could change that.

    The time may be early (the caller then re-evaluates and finds nothing changed) but never late.
    Asks each segment's condition objects: the reference of :func:`compile_evaluator`, whose
    function gives the same answer faster to a caller that evaluates one rule set again and again
    (the worker's :attr:`RuleSet.evaluate_segments`).
    """
    members = []
    nxt: int | None = None
    for segment in segments:
        value, n = segment.condition.state(facts, history, t)
        if value:
            members.append(segment.name)
        if n is not None and (nxt is None or n < nxt):
            nxt = n
    return frozenset(members), nxt


# --- compiling a rule set to one function -----------------------------------------------------------

Evaluator = Callable[[Facts, History, int], tuple[frozenset[str], int | None]]
#: Junctions nested deeper than this are asked through their objects (each level of the generated
#: code is a ``while`` block, and CPython allows 20 nested blocks).
_MOST_NESTED = 8


class _Source:
    """The generated function's lines, and the values it reads (rule operands, paths, tests) as
    names of its namespace: nothing from a config is written into the source."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {"bisect_right": bisect_right}
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def constant(self, value: Any) -> str:
        name = self.name("c")
        self.namespace[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _emit_condition(src: _Source, node: Condition, indent: int, depth: int) -> tuple[str, str]:
    """Lines that set two new locals to ``node.state(facts, history, t)``; returns their names.
    The same steps as the ``state`` methods above, inlined."""
    v, n = src.name("v"), src.name("n")
    if isinstance(node, FieldCondition):
        walk = "facts" + "".join(f"[{src.constant(key)}]" for key in node.path)
        missing = src.constant(node.if_missing)
        src.emit(indent, "try:")
        src.emit(indent + 1, f"x = {walk}")
        src.emit(indent, "except (KeyError, TypeError, IndexError):")
        src.emit(indent + 1, "x = None")
        src.emit(indent, f"{v} = {missing} if x is None else {_inline_test(src, node)}")
        src.emit(indent, f"{n} = None")
    elif isinstance(node, EventCondition) and len(node.types) == 1:
        kind, window = src.constant(node.types[0]), src.constant(node.window_ms)
        least, most = src.constant(node.min_count), src.constant(node.max_count)
        src.emit(indent, f"times = history.get({kind}, ())")
        src.emit(indent, "if not times:")
        src.emit(indent + 1, f"{v}, {n} = {least} == 0, None")
        src.emit(indent, "else:")
        src.emit(indent + 1, f"lo = bisect_right(times, t - {window})")
        src.emit(indent + 1, "count = bisect_right(times, t) - lo")
        src.emit(indent + 1, f"if {most} is not None and count > {most}:")
        src.emit(indent + 2, f"{v}, {n} = False, times[lo + count - {most} - 1] + {window}")
        src.emit(indent + 1, f"elif count >= {least}:")
        src.emit(indent + 2, f"{v}, {n} = True, (times[lo + count - {least}] + {window} if {least} > 0 else None)")
        src.emit(indent + 1, "else:")
        src.emit(indent + 2, f"{v}, {n} = False, None")
    elif isinstance(node, NotOf):
        cv, cn = _emit_condition(src, node.child, indent, depth)
        src.emit(indent, f"{v}, {n} = not {cv}, {cn}")
    elif isinstance(node, _Junction) and depth < _MOST_NESTED:
        decisive = node.decisive
        src.emit(indent, f"{v}, {n} = {not decisive}, None")
        src.emit(indent, "while True:  # one pass; break: settled")
        for child in node.children:
            cv, cn = _emit_condition(src, child, indent + 1, depth + 1)
            src.emit(indent + 1, f"if bool({cv}) is {decisive}:")
            src.emit(indent + 2, f"if {cn} is None:  # settled for good (until new events): so is the whole")
            src.emit(indent + 3, f"{v}, {n} = {decisive}, None")
            src.emit(indent + 3, "break")
            src.emit(indent + 2, f"{v} = {decisive}")
            src.emit(indent + 1, f"if {cn} is not None and ({n} is None or {cn} < {n}):")
            src.emit(indent + 2, f"{n} = {cn}")
        src.emit(indent + 1, "break")
    else:  # several event types, or nested too deep: asked through the object
        src.emit(indent, f"{v}, {n} = {src.constant(node)}.state(facts, history, t)")
    return v, n


_COMPARISONS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_NUMBER = "(isinstance(x, (int, float)) and x is not True and x is not False)"  # _is_number, inlined
_OF_KIND = {"number": _NUMBER, "string": "isinstance(x, str)", "bool": "(x is True or x is False)"}


def _inline_test(src: _Source, node: FieldCondition) -> str:
    """``node.test(x)`` as an expression (what :func:`_compile_op` built), or a call of it."""
    kind = _scalar_kind(node.operand)
    if node.op == "exists":
        return src.constant(node.operand)
    if node.op in _COMPARISONS and kind in ("number", "string"):
        return f"({_OF_KIND[kind]} and x {_COMPARISONS[node.op]} {src.constant(node.operand)})"
    if node.op in ("eq", "ne") and kind is not None:
        same = f"({_OF_KIND[kind]} and x == {src.constant(node.operand)})"
        return same if node.op == "eq" else f"(not {same})"
    return f"{src.constant(node.test)}(x)"


def compile_evaluator(segments: Sequence[Segment]) -> Evaluator:
    """The rule set as one generated function, ``(facts, history, t) -> (members, next change)``:
    the answer of :func:`evaluate` without a method call and a returned tuple per condition
    (an evaluation runs after every step of every profile)."""
    src = _Source()
    src.emit(0, "def evaluate(facts, history, t):")
    src.emit(1, "members = []")
    src.emit(1, "nxt = None")
    for segment in segments:
        v, n = _emit_condition(src, segment.condition, 1, 0)
        src.emit(1, f"if {v}:")
        src.emit(2, f"members.append({src.constant(segment.name)})")
        src.emit(1, f"if {n} is not None and (nxt is None or {n} < nxt):")
        src.emit(2, f"nxt = {n}")
    src.emit(1, "return frozenset(members), nxt")
    exec(compile("\n".join(src.lines), "<segment rules>", "exec"), src.namespace)
    evaluator: Evaluator = src.namespace["evaluate"]
    return evaluator


def history_windows(segments: Sequence[Segment]) -> dict[str, int]:
    """Event type -> the longest look-back (ms) any rule needs: what history the caller must keep."""
    windows: dict[str, int] = {}
    for segment in segments:
        for leaf in segment.condition.event_conditions():
            for kind in leaf.types:
                windows[kind] = max(windows.get(kind, 0), leaf.window_ms)
    return windows


# --- built-ins and config --------------------------------------------------------------------------


def _ms(amount: float, unit: str) -> int:
    return max(1, round(amount * _UNIT_MS[unit]))


def _at_least(path: str, bound: float) -> FieldCondition:
    return FieldCondition(tuple(path.split(".")), "gte", bound, lambda v: _is_number(v) and v >= bound)


def builtin_segments(cfg: Segments) -> tuple[Segment, ...]:
    """The contract's eight built-ins with the configured thresholds, in contract order."""
    no_recent_purchase = NotOf(EventCondition(("purchase",), _ms(cfg.lapsed_customers.after_days, "d")))
    high_intent: Condition = _at_least("predictions.purchase_probability", cfg.high_intent.min_probability)
    if cfg.high_intent.no_purchase_days > 0:
        recent = EventCondition(("purchase",), _ms(cfg.high_intent.no_purchase_days, "d"))
        high_intent = AllOf((high_intent, NotOf(recent)))
    return (
        Segment("recent_browsers", EventCondition(("product_view",), _ms(cfg.recent_browsers.within_hours, "h"))),
        Segment("cart_holders", _at_least("cart.item_count", cfg.cart_holders.min_items)),
        Segment("recent_buyers", EventCondition(("purchase",), _ms(cfg.recent_buyers.within_days, "d"))),
        Segment("lapsed_customers", AllOf((_at_least("aggregates.orders", 1), no_recent_purchase))),
        Segment("high_value", _at_least("aggregates.total_spend", cfg.high_value.min_spend)),
        Segment("engaged_email",
                EventCondition(("email_open", "email_click"), _ms(cfg.engaged_email.within_days, "d"))),
        Segment("churn_risk", _at_least("predictions.churn_probability", cfg.churn_risk.min_probability)),
        Segment("high_intent", high_intent),
    )


def compile_segments(cfg: Segments) -> tuple[Segment, ...]:
    """Built-ins in contract order, then the custom segments of the config by name."""
    custom = tuple(
        Segment(name, compile_rule(definition["rule"], f"segments.{name}.rule"))
        for name, definition in sorted(cfg.custom().items())
    )
    return builtin_segments(cfg) + custom


# --- compiling rules -------------------------------------------------------------------------------


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return "a mapping" if isinstance(value, Mapping) else repr(value)


def _keys(keys: Sequence[str]) -> str:
    return ", ".join(keys)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar_kind(value: Any) -> str | None:
    """Values compare only within a kind: a bool is not the number 1, a number never equals a string."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def compile_rule(rule: Any, where: str, most_history: int | None = None) -> Condition:
    """Compile one condition; a bad rule raises RuleError naming its key path below ``where``.
    ``most_history``: the event times a profile keeps per type (``limits.history_per_type``), which
    an event condition's counts must stay within."""
    if not isinstance(rule, Mapping) or len(rule) != 1:
        got = f"got keys {_keys([str(k) for k in rule])}" if isinstance(rule, Mapping) else f"got {_kind(rule)}"
        raise RuleError(where, f"a condition is a mapping with exactly one key (all, any, not, field, event); {got}")
    ((key, body),) = rule.items()
    here = _join(where, str(key))
    if key in ("all", "any"):
        if not isinstance(body, list) or not body:
            raise RuleError(here, f"needs a non-empty list of conditions, got {_kind(body)}")
        children = tuple(compile_rule(child, f"{here}[{i}]", most_history) for i, child in enumerate(body))
        return AllOf(children) if key == "all" else AnyOf(children)
    if key == "not":
        return NotOf(compile_rule(body, here, most_history))
    if key == "field":
        return _compile_field(body, here)
    if key == "event":
        return _compile_event(body, here, most_history)
    raise RuleError(here, "unknown condition (use all, any, not, field, event)")


def _mapping(body: Any, where: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise RuleError(where, f"needs a mapping with {_keys(allowed)}, got {_kind(body)}")
    for key in body:
        if key not in allowed:
            raise RuleError(_join(where, str(key)), f"unknown key (use {_keys(allowed)})")
    return body


def _compile_field(body: Any, where: str) -> FieldCondition:
    spec = _mapping(body, where, ("path", *_OPS))
    path = spec.get("path")
    if not isinstance(path, str) or not all(path.split(".")):
        raise RuleError(_join(where, "path"), f"needs a dotted path such as aggregates.total_spend, got {_kind(path)}")
    keys = tuple(path.split("."))
    if keys[0] not in FACT_ROOTS:
        raise RuleError(_join(where, "path"), f"unknown root {keys[0]!r} (use {_keys(FACT_ROOTS)})")
    if keys[0] == "consent":  # a channel as events name it (schemas.events: case-folded), which holds a boolean
        channel = comparable(keys[1]) if len(keys) == 2 else ""
        if not 0 < len(channel) <= MAX_CONSENT_NAME:  # (events name no such channel: it would never match)
            raise RuleError(_join(where, "path"), f"consent takes one channel name after it, of 1 to "
                            f"{MAX_CONSENT_NAME} characters (consent.email), got {path[:80]!r}")
        keys = (keys[0], channel)
    fields = FIXED_FIELDS.get(keys[0])
    if fields is not None:
        if len(keys) < 2 or keys[1] not in fields:
            named = f"field {keys[1]!r}" if len(keys) > 1 else "no field"
            raise RuleError(_join(where, "path"), f"{named} of {keys[0]} (use {_keys(tuple(fields))})")
        if len(keys) > (3 if fields[keys[1]] else 2):
            raise RuleError(_join(where, "path"), f"{keys[0]}.{keys[1]} has no field {keys[2]!r}"
                            if not fields[keys[1]] else f"{keys[0]}.{keys[1]} takes one key after it")
    ops = [op for op in _OPS if op in spec]
    if len(ops) != 1:
        got = f"got {_keys(ops)}" if ops else "got none"
        raise RuleError(where, f"needs exactly one of {_keys(_OPS)}; {got}")
    op = ops[0]
    operand = spec[op]
    test, if_missing = _compile_op(op, operand, _join(where, op))
    return FieldCondition(keys, op, tuple(operand) if op == "in" else operand, test, if_missing)


def _compile_op(op: str, operand: Any, where: str) -> tuple[Callable[[Any], bool], bool]:
    """The test of a present value, and the answer when the path is missing."""
    if op == "exists":
        if not isinstance(operand, bool):
            raise RuleError(where, f"needs true or false, got {_kind(operand)}")
        return (lambda v: operand), not operand
    if op == "in":
        if not isinstance(operand, list) or not operand:
            raise RuleError(where, f"needs a non-empty list of values, got {_kind(operand)}")
        tagged = set()
        for i, item in enumerate(operand):
            kind = _scalar_kind(item)
            if kind is None:
                raise RuleError(f"{where}[{i}]", f"needs a string, number or boolean, got {_kind(item)}")
            _finite(item, f"{where}[{i}]")
            tagged.add((kind, item))
        members = frozenset(tagged)
        return (lambda v: (_scalar_kind(v), v) in members if _scalar_kind(v) else False), False
    kind = _scalar_kind(operand)
    _finite(operand, where)
    if op in ("eq", "ne"):
        if kind is None:
            raise RuleError(where, f"needs a string, number or boolean, got {_kind(operand)} (for null use exists)")
        if op == "eq":
            return (lambda v: _scalar_kind(v) == kind and v == operand), False
        return (lambda v: not (_scalar_kind(v) == kind and v == operand)), True
    if kind not in ("number", "string"):
        raise RuleError(where, f"needs a number or a string, got {_kind(operand)}")
    same: Callable[[Any], bool] = _is_number if kind == "number" else (lambda v: isinstance(v, str))
    if op == "gt":
        return (lambda v: same(v) and v > operand), False
    if op == "gte":
        return (lambda v: same(v) and v >= operand), False
    if op == "lt":
        return (lambda v: same(v) and v < operand), False
    return (lambda v: same(v) and v <= operand), False


def _finite(operand: Any, where: str) -> None:
    """A number to compare with is finite: YAML's .nan equals nothing and orders nowhere (a segment with
    gte: .nan stayed empty, one with ne: .nan held everyone), and .inf is past every value.  A whole
    number always is, however long (``math.isfinite`` would convert it to a float: an OverflowError)."""
    if isinstance(operand, float) and not math.isfinite(operand):
        raise RuleError(where, f"needs a finite number, got {operand}")


def parse_duration(text: Any, where: str) -> int:
    """``<number><unit>`` with unit s, m, h or d, in milliseconds (at least 1)."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise RuleError(where, f"bad duration {text!r} {_DURATION_HINT}")
    amount = float(match.group(1))
    if not math.isfinite(amount):  # (309 digits and more: an OverflowError rounding it)
        raise RuleError(where, f"duration {text[:40]!r}... is longer than a century")
    ms = round(amount * _UNIT_MS[match.group(2)])
    if ms <= 0:
        raise RuleError(where, f"duration {text!r} must be at least 1 ms")
    if ms > MAX_SPAN_MS:  # (its window's end would be no time the due index holds)
        raise RuleError(where, f"duration {text!r} is longer than a century")
    return ms


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RuleError(where, f"needs a whole number >= 0, got {_kind(value)}")
    return value


def _compile_event(body: Any, where: str, most_history: int | None = None) -> EventCondition:
    spec = _mapping(body, where, ("type", "within", "min_count", "max_count"))
    for required in ("type", "within"):
        if required not in spec:
            raise RuleError(where, f"missing {required!r}")
    raw_types = spec["type"]
    type_where = _join(where, "type")
    if isinstance(raw_types, str):
        items: list[tuple[str, Any]] = [(type_where, raw_types)]
    elif isinstance(raw_types, list) and raw_types:
        items = [(f"{type_where}[{i}]", item) for i, item in enumerate(raw_types)]
    else:
        raise RuleError(type_where, f"needs an event type or a non-empty list of them, got {_kind(raw_types)}")
    types: list[str] = []
    for item_where, item in items:
        if item not in EVENT_TYPES:
            raise RuleError(item_where, f"unknown event type {item!r} (use {_keys(EVENT_TYPES)})")
        if item not in types:
            types.append(item)
    window = parse_duration(spec["within"], _join(where, "within"))
    min_count = _count(spec.get("min_count", 1), _join(where, "min_count"))
    max_count = None
    if spec.get("max_count") is not None:
        max_count = _count(spec["max_count"], _join(where, "max_count"))
        if max_count < min_count:
            raise RuleError(_join(where, "max_count"), f"must be >= min_count ({min_count})")
    # A profile keeps the newest ``most_history`` times of each type, and a condition counts those of
    # all its types: a count past them is never seen (min_count 600 of 500 kept never held; max_count
    # 500 held however many there were).
    kept = None if most_history is None else most_history * len(types)
    per_type = "" if len(types) == 1 else f" ({most_history} per type of {len(types)})"
    if kept is not None and min_count > kept:
        raise RuleError(_join(where, "min_count"), f"{min_count} is more than the {kept} event times a "
                        f"profile keeps{per_type or ' per type'} (limits.history_per_type)")
    if kept is not None and max_count is not None and max_count >= kept:
        raise RuleError(_join(where, "max_count"), f"{max_count} must be below the {kept} event times a "
                        f"profile keeps{per_type or ' per type'} (limits.history_per_type)")
    return EventCondition(tuple(types), window, min_count, max_count)
