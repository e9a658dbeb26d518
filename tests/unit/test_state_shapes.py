"""The stored state shapes of ``streams/domain/state.py`` describe the states this version really
stores: every state of the golden upgrade file (live profiles with parked events, redirects, erasure
markers, merged people) has exactly the keys its TypedDict names, with values of the declared types
(msgspec checks them, strictly).  Types that drifted from the data would check code against a fiction."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import msgspec
import orjson
import pytest

from schemas.timeparse import parse_timestamp
from streams.domain.dispatch import LocalPipeline
from streams.domain.profile import VIEW_FROM_MOVES, VIEWS_OF, fold_event, new_state
from streams.domain.state import ErasureMarker, LiveState, Redirect, State, is_live, is_redirect
from tests.integration.expected import accepted_events

GOLDEN = Path(__file__).parents[1] / "data" / "golden"


def _stored_states() -> list[tuple[str, State]]:
    files = sorted(GOLDEN.glob("states-v*.json.gz"))
    assert files
    states: list[tuple[str, State]] = []
    for path in files:
        tables = json.loads(gzip.decompress(path.read_bytes()))
        states += [(f"{path.name}:{key}", json.loads(value)) for key, value in tables["states"].items()]
    return states


def _shape(state: State) -> type:
    return LiveState if is_live(state) else Redirect if is_redirect(state) else ErasureMarker


def _is_typeddict(shape: Any) -> bool:
    return isinstance(shape, type) and hasattr(shape, "__required_keys__")


def _unknown_keys(value: Any, shape: Any, where: str) -> list[str]:
    """Keys of ``value`` its TypedDict ``shape`` does not name, here and in nested TypedDicts (also
    as the values of a mapping, e.g. cart lines, and in optional ones)."""
    origin, args = get_origin(shape), [arg for arg in get_args(shape) if arg is not type(None)]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return [found for key, item in value.items() for found in _unknown_keys(item, args[1], f"{where}[{key}]")]
    if origin is list and isinstance(value, list) and len(args) == 1:
        return [found for i, item in enumerate(value) for found in _unknown_keys(item, args[0], f"{where}[{i}]")]
    if origin in (Union, UnionType) and len(args) == 1:  # X | None
        shape = args[0]
    if not _is_typeddict(shape) or not isinstance(value, dict):
        return []
    hints = get_type_hints(shape)
    found = [f"{where}.{key}" for key in value if key not in hints]
    for key, field in hints.items():
        if key in value:
            found += _unknown_keys(value[key], field, f"{where}.{key}")
    return found


STATES = _stored_states()


def test_the_golden_file_holds_every_shape() -> None:
    shapes = {_shape(state) for _, state in STATES}
    assert shapes == {LiveState, Redirect, ErasureMarker}
    assert any("rules" in state and state.get("blocks") for _, state in STATES)  # merged, fuzzy-matched people


@pytest.mark.parametrize(("where", "state"), STATES, ids=[where for where, _ in STATES])
def test_a_stored_state_is_of_its_declared_shape(where: str, state: State) -> None:
    shape = _shape(state)
    msgspec.convert(state, shape, strict=True)  # required keys present, every value of its type
    assert _unknown_keys(state, shape, "state") == []


def test_a_busy_cart_stores_its_line_summaries_as_declared() -> None:
    """No golden person has a cart line past VIEW_FROM_MOVES moves: such a line's summary (``view``)
    and the cart's ``views_of`` are checked on a state folded here."""
    t0 = 1_772_359_200_000
    state = new_state("u:u-1", t0)
    for index in range(VIEW_FROM_MOVES + 3):
        fold_event(state["profile"], {"event_id": f"e-{index}", "type": "cart_add", "ts": t0 + index * 1000,
                                      "kind": "carts", "user_id": "u-1", "src": ["carts", 0, index, t0],
                                      "product_id": "sku-1", "quantity": 1, "price": 2.5, "currency": "USD",
                                      "cart_id": "c-1"})
    profile = state["profile"]
    assert "view" in profile["cart"]["sku-1"] and VIEWS_OF in profile["cart_meta"]
    msgspec.convert(state, LiveState, strict=True)
    assert _unknown_keys(state, LiveState, "state") == []


def _containers(value: Any, where: str) -> list[tuple[int, str]]:
    """(id, path) of every dict and list within ``value``, ``value`` included."""
    found, todo = [], [(value, where)]
    while todo:
        item, path = todo.pop()
        if isinstance(item, dict):
            found.append((id(item), path))
            todo += [(inner, f"{path}/{name}") for name, inner in item.items()]
        elif isinstance(item, list):
            found.append((id(item), path))
            todo += [(inner, f"{path}[{index}]") for index, inner in enumerate(item)]
    return found


def test_a_state_in_memory_is_what_its_stored_bytes_read_back_as() -> None:
    """The states the pure functions leave in memory (``run_locally``, the tests' yardstick, never
    encodes them) equal their JSON read back, and share no dict or list, within a state or between
    two: the step decodes every state afresh for each record, so a tuple kept where JSON gives a
    list, or one list shared by two fields, would make the yardstick hold what no worker holds."""
    from tests.unit.test_golden import UNTIL, _rules

    history = [orjson.loads(line) for line in gzip.decompress((GOLDEN / "history.jsonl.gz").read_bytes()).splitlines()]
    events = accepted_events(history)
    local = LocalPipeline(_rules())
    step = len(events) // 8
    cuts = [events[min(start + step, len(events)) - 1]["ts"] - 3_600_000 for start in range(0, len(events), step)]
    for start, cut in zip(range(0, len(events), step), [*cuts[:-1], parse_timestamp(UNTIL)], strict=True):
        local.feed(events[start:start + step])
        local.advance(cut)  # inside the history: parked events, timers set and not fired yet
        seen: dict[int, str] = {}
        for key, state in local.states.items():
            assert orjson.loads(orjson.dumps(state)) == state, key
            for ident, path in _containers(state, key):
                assert ident not in seen, f"{path} is also {seen[ident]}"
                seen[ident] = path
    assert sum(1 for _ in local.live()) > 50 and local.merges
