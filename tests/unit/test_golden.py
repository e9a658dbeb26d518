"""Golden outputs and an upgrade check for the profile hop's pure functions.

``tests/data/golden/`` holds a generated history (with merges, possible matches, repeats, erasures
and scoring), the states this version stores halfway through it (the bytes a worker writes to its
``profile-state`` and ``identity-blocks`` tables), and digests of what the pipeline emits:

- **golden**: the whole history through :func:`streams.domain.dispatch.run_locally` gives exactly the
  profiles, segment changes, triggers and scores pinned here (whole messages);
- **upgrade**: the states stored by every version so far (``states-<version>.json.gz``), read back
  and fed the second half, give exactly the outputs pinned for it.  A change of the state's
  encoding must keep reading them all (a worker's state folder and changelogs outlive a deploy):
  it adds its own file (``python -m tests.unit.test_golden --states v2``) and moves
  :data:`WRITTEN_BY_THIS_VERSION`; no stored file is ever rewritten.

A change that means to alter outputs rewrites the digests (``python -m tests.unit.test_golden``) and
says why in its commit.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import sys
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.bundle import SHIPPED_DIR, ModelBundle
from models.scoring import Predictor
from schemas.timeparse import parse_timestamp
from streams.domain.config import PipelineConfig
from streams.domain.dispatch import LocalPipeline, LocalRun
from streams.domain.identity_graph import is_live
from streams.domain.timeline import RuleSet, advance, idle, next_due
from streams.watermark import due_first
from tests.integration.expected import accepted_events

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
#: The stored states this version writes (JSON, due time first; v2: a marker says where the erase was carried out;
#: v4: an erased address the person's later activity named again is a redirect to it, not a marker; v6: the
#: markers an erase's ``_forget`` leaves keep the person's counts too; v7: a block's person record keeps the time of its
#: event, ``at``).
WRITTEN_BY_THIS_VERSION = "states-v7.json.gz"
#: States stored before v4 hold a marker where v4 leaves that redirect (an address the golden history's
#: erased person named again after the erase): carried on, they keep the two profiles it made then
#: (``second_half_of_states_before_v4``), which a later version cannot join without knowing who named it.
BEFORE_V4 = ("states-v1.json.gz", "states-v2.json.gz", "states-v3.json.gz")
UNTIL = "2026-03-20T00:00:00Z"


def _history() -> list[dict[str, Any]]:
    """Shop traffic with repeats and erasures, and families at shared addresses (fuzzy merges and
    possible matches), in time order."""
    from schemas.timeparse import parse_timestamp
    from streams.tools.generate import generate_history
    from tests.households import households

    events = generate_history(100, 6, 5, date(2026, 3, 1), repeats=0.02, erasures=0.3) + households(3)
    return sorted(events, key=lambda event: parse_timestamp(event["timestamp"]))


def _rules() -> RuleSet:
    # churn_risk for anyone (min_orders 0): in six days nobody who has bought crosses its threshold, and
    # the trigger's payload and frequency-cap records are to be pinned too (the default is unit-tested)
    config = PipelineConfig.model_validate({"triggers": {"churn_risk": {"min_orders": 0}}})
    return RuleSet.build(config, 7 * 86_400_000, Predictor(ModelBundle.load(SHIPPED_DIR)))


def _outputs(run: LocalRun) -> dict[str, Any]:
    """What a run emitted, in an order that does not depend on delivery."""
    def ordered(messages: list[dict[str, Any]]) -> list[bytes]:
        return sorted(orjson.dumps(message, option=orjson.OPT_SORT_KEYS) for message in messages)

    # whole messages: a trigger's at, send_at and payload count, not only its id (emitted_at is the
    # wall clock, 0 in a local run)
    return {
        "profiles": sorted(run.profiles.items()),
        "segment_changes": ordered(run.segment_changes),
        "triggers": ordered(run.triggers),
        "scores": ordered(run.scores),
        "merges": len(run.merges),
    }


def _digest(outputs: dict[str, Any]) -> dict[str, Any]:
    """Per part: how many, and a hash of the canonical JSON (a failure says which part moved)."""
    out: dict[str, Any] = {}
    for part, value in outputs.items():
        if isinstance(value, int):
            out[part] = value
        else:
            canonical = b"\n".join(item if isinstance(item, bytes) else orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
                                    for item in value)
            out[part] = [len(value), hashlib.sha256(canonical).hexdigest()]
    return out


def _stored(local: LocalPipeline) -> dict[str, Any]:
    """The table values a worker would hold now: each key's state as the record step writes it (due
    time first), each fuzzy-matching block's members; as text, so the file stays readable."""
    states = {}
    for key, state in sorted(local.states.items()):
        if state is None:
            continue
        if is_live(state):
            state["due"] = next_due(state)
        states[key] = orjson.dumps(due_first(state)).decode()
    blocks = {key: orjson.dumps(members).decode() for key, members in sorted(local.blocks.items()) if members}
    return {"states": states, "blocks": blocks}


def _halves(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The first half, the rest, and the watermark the first half is advanced to: an hour short of
    its last event, so the stored states hold parked events too."""
    half = len(events) // 2
    return events[:half], events[half:], events[half - 1]["ts"] - 3_600_000


def _compute(history: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stored states at the half, digests) as this version makes them from ``history``."""
    events = accepted_events(history)
    first, second, cut = _halves(events)
    rules = _rules()
    whole = LocalPipeline(rules)
    whole.feed(events)
    digests = {"whole": _digest(_outputs(whole.advance(parse_timestamp(UNTIL))))}
    local = LocalPipeline(rules)
    local.feed(first)
    digests["first_half"] = _digest(_outputs(local.advance(cut)))
    stored = _stored(local)
    local.merges = []  # the second half's own, as a pipeline started from the stored states counts them
    local.feed(second)
    digests["second_half"] = _digest(_outputs(local.advance(parse_timestamp(UNTIL))))
    return stored, digests


def _read_json_gz(name: str) -> Any:
    return orjson.loads(gzip.decompress((GOLDEN / name).read_bytes()))


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return orjson.loads((GOLDEN / "digests.json").read_bytes())


@pytest.fixture(scope="module")
def history() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gzip.decompress((GOLDEN / "history.jsonl.gz").read_bytes()).splitlines()]


@pytest.fixture(scope="module")
def this_version(history: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    return _compute(history)


def test_the_history_exercises_merges_matches_erasures_and_scores(history: list[dict[str, Any]],
                                                                   golden: dict[str, Any]) -> None:
    whole = golden["whole"]
    assert whole["merges"] > 5 and whole["scores"][0] > 100 and whole["triggers"][0] > 20
    assert _rules().config.triggers.churn_risk.min_orders == 0  # churn_risk triggers are in the digests
    assert whole["segment_changes"][0] > 100
    assert sum(event["type"] == "erase" for event in history) >= 5
    stored = [orjson.loads(value) for value in _read_json_gz(WRITTEN_BY_THIS_VERSION)["states"].values()]
    assert any(state.get("profile", {}).get("possible_matches") for state in stored)
    assert any(state.get("pending") for state in stored)
    assert any("merged_into" in state for state in stored) and any("erased_at" in state for state in stored)


def test_the_whole_history_gives_the_golden_outputs(this_version: tuple[dict[str, Any], dict[str, Any]],
                                                    golden: dict[str, Any]) -> None:
    assert this_version[1]["whole"] == golden["whole"]


@pytest.mark.parametrize("name", sorted(path.name for path in GOLDEN.glob("states-*.json.gz")))
def test_states_stored_by_every_version_are_read_and_carried_on(name: str, history: list[dict[str, Any]],
                                                                golden: dict[str, Any]) -> None:
    stored = _read_json_gz(name)
    _, second, _ = _halves(accepted_events(history))
    local = LocalPipeline(_rules())
    local.states = {key: orjson.loads(value) for key, value in stored["states"].items()}
    local.blocks = {key: orjson.loads(value) for key, value in stored["blocks"].items()}
    local.feed(second)
    expected = golden["second_half_of_states_before_v4"] if name in BEFORE_V4 else golden["second_half"]
    assert _digest(_outputs(local.advance(parse_timestamp(UNTIL)))) == expected


def test_the_files_are_what_this_version_writes(this_version: tuple[dict[str, Any], dict[str, Any]],
                                               golden: dict[str, Any]) -> None:
    """The stored states and the halves' digests are this version's own (so the upgrade check above
    starts from what a worker of this version really leaves behind)."""
    stored, digests = this_version
    assert digests["first_half"] == golden["first_half"]
    assert digests["second_half"] == golden["second_half"]
    assert stored == _read_json_gz(WRITTEN_BY_THIS_VERSION)


def main(argv: list[str]) -> None:
    """Rewrites the history and the digests from this version (an intended change of outputs); with
    ``--states TAG``, also writes the states this version stores as ``states-TAG.json.gz``, a new
    file only."""
    history = _history()
    stored, digests = _compute(history)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    if argv[:1] == ["--states"] and len(argv) == 2:
        path = GOLDEN / f"states-{argv[1]}.json.gz"
        if path.exists():
            raise SystemExit(f"{path} exists: stored states are never rewritten (a new version gets a new tag)")
        path.write_bytes(gzip.compress(orjson.dumps(stored, option=orjson.OPT_SORT_KEYS), mtime=0))
    elif argv:
        raise SystemExit("usage: python -m tests.unit.test_golden [--states TAG]")
    kept = GOLDEN / "digests.json"
    if kept.exists():  # what older versions' stored states give is theirs: carried over, never recomputed
        digests.update({part: value for part, value in orjson.loads(kept.read_bytes()).items()
                        if part.startswith("second_half_of_states_before_")})
    lines = b"\n".join(orjson.dumps(event) for event in history)
    (GOLDEN / "history.jsonl.gz").write_bytes(gzip.compress(lines, mtime=0))
    (GOLDEN / "digests.json").write_bytes(orjson.dumps(digests, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    print(f"wrote {GOLDEN}: {len(history)} events", file=sys.stderr)
    print(orjson.dumps(digests, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main(sys.argv[1:])


def test_a_state_idle_at_a_watermark_is_one_advance_leaves_as_it_was() -> None:
    """``timeline.idle`` lets the profile hop skip ``advance`` (an event's first pass at live rates):
    wherever it says so, on every stored live state at watermarks around its due time, with its
    merge flag and its bound on parked events either way, ``advance`` changes nothing and emits nothing."""
    rules = _rules()
    states = [orjson.loads(value) for value in _read_json_gz(WRITTEN_BY_THIS_VERSION)["states"].values()]
    said = {True: 0, False: 0}
    for stored in filter(is_live, states):
        for dirty in (False, True):
            state = copy.deepcopy(stored)
            if dirty:
                state["rules"]["dirty"] = True
            due = next_due(state)
            marks = [None, 0] if due is None else [None, due - 1, due, due + 1]
            for mark in marks:
                for most_parked in (0, rules.limits.parked_events):
                    quiet = idle(state, mark, most_parked, due)
                    said[quiet] += 1
                    if not quiet:
                        continue
                    walked = copy.deepcopy(state)
                    out = advance(walked, mark, rules, 0, most_parked=most_parked)
                    assert walked == state and not (out.steps or out.changed or out.released_early)
    assert said[True] > 50 and said[False] > 50
