"""The stored state shapes of ``streams/domain/state.py`` describe the states this version really
stores: every state of the golden upgrade file (live profiles with parked events, redirects, erasure
markers, merged people) has exactly the keys its TypedDict names, with values of the declared types
(msgspec checks them, strictly).  Types that drifted from the data would check code against a fiction."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import msgspec
import pytest

from streams.domain.state import ErasureMarker, LiveState, Redirect, State, is_live, is_redirect

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
    args = [arg for arg in get_args(shape) if arg is not type(None)]
    if get_origin(shape) is dict and isinstance(value, dict) and len(args) == 2 and _is_typeddict(args[1]):
        return [found for key, item in value.items() for found in _unknown_keys(item, args[1], f"{where}[{key}]")]
    if len(args) == 1 and _is_typeddict(args[0]):  # X | None
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
