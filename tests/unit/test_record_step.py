"""At-least-once through the real step: the profile hop's partitions driven as the worker drives them
(:func:`streams.record_step.step_isolated`, then :func:`streams.record_step.apply_result` into
tables, the real due index and a log of sends), read in random runs, each run either committed or
rolled back to the last commit and read again (as a rebalance or crash does), while the messages
sent the first time stay sent and the ingest hop forwards some events twice.

Unlike ``test_dispatch.py``, which drives the pure dispatch and advance functions, this covers the
plumbing between them where a loss would lie: the encoded states with their due header, the due
index (pushes, discards, and its rebuild from the tables after a rollback), the clocks and the
internal records the step routes.  The expected outcome is :func:`streams.domain.dispatch.run_locally`.
"""

from __future__ import annotations

import random
from datetime import date
from functools import partial
from typing import Any

import orjson
import pytest

from schemas.events import INPUT_TOPICS
from schemas.timeparse import parse_timestamp
from streams import topics as names
from streams.domain.config import PipelineConfig
from streams.domain.dispatch import run_locally
from streams.domain.identity import profile_id_for
from streams.domain.profile import DEFAULT_LIMITS
from streams.domain.timeline import RuleSet
from streams.ingest import IngestPolicy, Source
from streams.record_step import (
    MAX_VALUE_BYTES,
    SOFT_STATE_BYTES,
    DuePops,
    StepContext,
    StepIO,
    apply_due,
    apply_result,
    apply_run,
    decode_run,
    step,
    step_isolated,
)
from streams.routing import InputRecord, partition_for, route_batch
from streams.tools.generate import generate_history
from streams.tools.produce import topic_for
from streams.watermark import DueIndex, clock_name, due_bytes, expected_clocks, stored_due
from tests.households import households
from tests.integration.expected import accepted_events

PARTITIONS = 8
INPUT_PARTITIONS = 4
UNTIL = parse_timestamp("2026-03-08T00:00:00Z")
NOW = UNTIL + 3_600_000
RULES = RuleSet.build(PipelineConfig(), 7 * 86_400_000, None)
CTX = StepContext(rules=RULES, expected_clocks=expected_clocks({t: INPUT_PARTITIONS for t in INPUT_TOPICS}),
                  wall_delay_ms=None, partitions=PARTITIONS, events_topic=names.events_topic("mailpulse"))


class CheckedDueIndex(DueIndex):
    """The in-memory due index, counting the moves and discards whose ``previous`` names no entry it
    holds: in a worker's RocksDB tier each is a delete of nothing, a tombstone its pops step over."""

    def __init__(self) -> None:
        super().__init__()
        self.absent = 0

    def _holds(self, partition: int, key: bytes, previous: int | None) -> None:
        if previous is not None and self.keys(partition).get(key) != due_bytes(previous) + key:
            self.absent += 1

    def push(self, partition: int, due: int, key: bytes, previous: int | None = None) -> None:
        self._holds(partition, key, previous)
        super().push(partition, due, key, previous)

    def discard(self, partition: int, key: bytes, previous: int | None = None) -> None:
        self._holds(partition, key, previous)
        super().discard(partition, key, previous)


class Hop:
    """The profile partitions of one worker: a log of internal records per partition, the tables as
    committed and as read since, the due index, and what was sent to the output topics."""

    def __init__(self, due_updates: bool = True, entries_may_fail: bool = False) -> None:
        self.due_updates = due_updates
        self.entries_may_fail = entries_may_fail
        self.log: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        self.position = [0] * PARTITIONS
        self.committed = [0] * PARTITIONS
        self.tables: list[dict[str, dict[bytes, bytes]]] = [self._empty() for _ in range(PARTITIONS)]
        self.saved: list[dict[str, dict[bytes, bytes]]] = [self._empty() for _ in range(PARTITIONS)]
        self.index = CheckedDueIndex()
        self.index.build([])
        self.outputs: dict[str, list[tuple[bytes | None, bytes | None]]] = {}
        self.read_twice = 0
        self.runs = 0
        self.records_read = 0

    @staticmethod
    def _empty() -> dict[str, dict[bytes, bytes]]:
        return {"states": {}, "blocks": {}, "clocks": {}}

    # the RecordSink of apply_result
    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> None:
        if topic == CTX.events_topic:
            assert partition is not None and value is not None
            self.log[partition].append(value)
        else:
            self.outputs.setdefault(topic, []).append((key, value))

    def _stage(self, table: str, key: bytes, value: bytes | None, partition: int) -> None:
        if value is None:
            self.tables[partition][table].pop(key, None)
        else:
            self.tables[partition][table][key] = value

    def stage_state(self, key: bytes, value: bytes | None, partition: int) -> None:
        self._stage("states", key, value, partition)

    def stage_block(self, key: bytes, value: bytes | None, partition: int) -> None:
        self._stage("blocks", key, value, partition)

    def stage_clocks(self, value: bytes, partition: int) -> None:
        self._stage("clocks", b"clocks", value, partition)

    def add_pairs(self, pairs: dict[str, list[list[Any]]], partition: int) -> None:
        self.outputs.setdefault("pairs", []).append((None, orjson.dumps(pairs)))

    def push_due(self, partition: int, due: int, key: bytes, previous: int | None) -> None:
        if self.due_updates:
            self.index.push(partition, due, key, previous)

    def discard_due(self, partition: int, key: bytes, previous: int | None) -> None:
        if self.due_updates:
            self.index.discard(partition, key, previous)

    def read_run(self, partition: int, most: int = 1) -> None:
        """The next run of up to ``most`` internal records of ``partition``, as the profile agent
        handles a fetched run (:func:`streams.record_step.apply_run`)."""
        start = self.position[partition]
        values = self.log[partition][start:start + most]
        self.position[partition] += len(values)
        run = decode_run((Source(CTX.events_topic, partition, start + n, None, NOW), value)
                         for n, value in enumerate(values))
        assert not run.undecodable
        results = apply_run(run, lambda arrived_ms: HopReader(self, partition), CTX, partition, self)
        # no entry left out (a profile that was only due may be: it is tried again, nothing is lost)
        assert self.entries_may_fail or all(len(result.failures) == len(result.due_failures) for result in results), \
            [result.failures for result in results]
        self.runs += 1
        self.records_read += len(values)

    def commit(self, partition: int) -> None:
        self.committed[partition] = self.position[partition]
        self.saved[partition] = {name: dict(table) for name, table in self.tables[partition].items()}

    def roll_back(self, partition: int) -> None:
        """``partition`` restarts from its last commit; the index is rebuilt from the tables, as a
        worker does after a rebalance (from the stored states' due header)."""
        self.read_twice += self.position[partition] - self.committed[partition]
        self.tables[partition] = {name: dict(table) for name, table in self.saved[partition].items()}
        self.position[partition] = self.committed[partition]
        self.index.reset()
        self.index.build((p, due, key) for p in range(PARTITIONS) for key, value in self.tables[p]["states"].items()
                         if (due := stored_due(value)) is not None)

    def unread(self) -> list[int]:
        return [p for p in range(PARTITIONS) if self.position[p] < len(self.log[p])]

    def latest(self, topic: str) -> dict[bytes, Any]:
        """Each key's last value on a compacted output topic (tombstones delete)."""
        out: dict[bytes, Any] = {}
        for key, value in self.outputs.get(topic, []):
            assert key is not None
            if value is None:
                out.pop(key, None)
            else:
                out[key] = orjson.loads(value)
        return out

    def values(self, topic: str) -> list[Any]:
        return [orjson.loads(value) for _, value in self.outputs.get(topic, []) if value is not None]


class HopReader:
    """The reads of one step of a :class:`Hop` partition (the agent's ``_StepReader``)."""

    def __init__(self, hop: Hop, partition: int) -> None:
        self.hop, self.partition = hop, partition
        self.due = DuePops(partial(hop.index.pop_due, partition), partial(hop.index.push, partition))
        self.give_back = self.due.give_back

    def make_io(self) -> StepIO:
        tables = self.hop.tables[self.partition]

        def read(table: str) -> Any:
            return lambda key: None if (raw := tables[table].get(key.encode())) is None else orjson.loads(raw)

        clocks = tables["clocks"].get(b"clocks")
        return StepIO(self.partition, read("states"), read("blocks"), orjson.loads(clocks) if clocks else {},
                      self.due.pop_due, NOW, NOW)


def internal_records(raw_events: list[dict[str, Any]], rng: random.Random, clocks: bool) -> list[tuple[int, bytes]]:
    """The ingest hop's internal records for ``raw_events`` (with 5% forwarded twice), in batches of
    random size; without ``clocks``, the input clocks are left out: every event waits until the
    closing clocks."""
    inputs: list[InputRecord] = []
    for offset, event in enumerate(raw_events + rng.sample(raw_events, len(raw_events) // 20)):
        inputs.append((topic_for(event), offset % INPUT_PARTITIONS, offset, None, orjson.dumps(event), None))
    records: list[tuple[int, bytes]] = []

    def keep(partition: int, record: bytes) -> None:
        entries = [entry for entry in orjson.loads(record) if clocks or entry[0] is not None]
        if entries:
            records.append((partition, orjson.dumps(entries)))

    start = 0
    while start < len(inputs):
        size = rng.randrange(1, 60)
        route_batch(inputs[start:start + size], PARTITIONS, NOW, IngestPolicy(), keep, lambda *_: None)
        start += size
    return records


def run(raw_events: list[dict[str, Any]], seed: int, rollbacks: bool, due_updates: bool = True,
        clocks: bool = False, entries_may_fail: bool = False, hop: Hop | None = None, until: int = UNTIL) -> Hop:
    """``raw_events`` through the step, then the input clocks closed at ``until`` (on ``hop``: a later part)."""
    rng = random.Random(seed)
    hop = hop or Hop(due_updates, entries_may_fail)
    for partition, record in internal_records(raw_events, rng, clocks):
        hop.log[partition].append(record)
    closing = orjson.dumps([[None, {"clocks": [[topic, n, until] for topic in INPUT_TOPICS
                                               for n in range(INPUT_PARTITIONS)]}]])
    closed = False
    while True:
        unread = hop.unread()
        if not unread:
            if closed:
                break
            for partition in range(PARTITIONS):  # the closing tick of every input partition
                hop.log[partition].append(closing)
            closed = True
            continue
        partition = rng.choice(unread)
        hop.read_run(partition, rng.randrange(1, 5))  # runs of up to 4, as the agent takes them
        roll = rng.random()
        if roll < 0.3 or not rollbacks:
            hop.commit(partition)
        elif roll < 0.4:
            hop.roll_back(partition)
    assert all(clock_name(t, n) in orjson.loads(hop.tables[0]["clocks"][b"clocks"])
               for t in INPUT_TOPICS for n in range(INPUT_PARTITIONS))
    return hop


@pytest.fixture(scope="module")
def history() -> tuple[list[dict[str, Any]], Any]:
    raw = generate_history(120, 6, 3, date(2026, 3, 1))
    expected = run_locally(accepted_events(raw), UNTIL, RULES)
    assert len(expected.merges) > 10 and len(expected.triggers) > 50  # merges and rules are exercised
    return raw, expected


def outcome(hop: Hop) -> tuple[dict[str, Any], set[str], set[tuple[str, str, str, str]]]:
    profiles = {key.decode(): value for key, value in hop.latest(names.PROFILES).items()}
    triggers = {t["trigger_id"] for t in hop.values(names.TRIGGERS)}
    changes = {(c["profile_id"], c["segment"], c["change"], c["at"]) for c in hop.values(names.SEGMENT_CHANGES)}
    return profiles, triggers, changes


def expected_outcome(expected: Any) -> tuple[dict[str, Any], set[str], set[tuple[str, str, str, str]]]:
    return (expected.profiles, {t["trigger_id"] for t in expected.triggers},
            {(c["profile_id"], c["segment"], c["change"], c["at"]) for c in expected.segment_changes})


def test_the_step_without_rollbacks_gives_what_the_pure_functions_give(history: tuple[list[Any], Any]) -> None:
    raw, expected = history
    hop = run(raw, 0, rollbacks=False)
    assert hop.records_read > hop.runs  # runs of several records were stepped as one
    assert outcome(hop) == expected_outcome(expected)


@pytest.mark.parametrize("seed", range(3))
def test_partitions_read_again_from_their_last_commit_change_no_output(history: tuple[list[Any], Any],
                                                                      seed: int) -> None:
    raw, expected = history
    hop = run(raw, seed, rollbacks=True)
    assert hop.read_twice > 50  # the rollbacks did happen
    assert outcome(hop) == expected_outcome(expected)


@pytest.mark.parametrize("seed", range(2))
def test_read_again_while_the_input_clocks_move_gives_the_same_profiles(history: tuple[list[Any], Any],
                                                                        seed: int) -> None:
    """The ingest's clocks move the watermark between the rollbacks, so events are folded before the
    end and an event or a merge that arrives twice must be recognised in folded profiles too.
    (Triggers are not compared: a merge that reaches a profile after the watermark passed its
    events rightly decides differently from one that came first.)"""
    raw, expected = history
    hop = run(raw, seed, rollbacks=True, clocks=True)
    assert hop.read_twice > 50
    assert outcome(hop)[0] == expected.profiles


@pytest.mark.parametrize(("seed", "rollbacks"), [(0, False), (1, True)])
def test_profiles_that_fail_now_and_then_while_due_end_as_the_pure_functions_give(
        history: tuple[list[Any], Any], monkeypatch: pytest.MonkeyPatch, seed: int, rollbacks: bool) -> None:
    """A fifth of the profiles that were only due fail the first time (with moving clocks; with and
    without rollbacks, whose rebuilt due index would hide a retry missing from it): each is
    dead-lettered, tried again ``DUE_RETRY_MS`` later in event time, and ends as if it had never
    failed, since its events and timers keep their own event times."""
    import streams.record_step as record_step

    rng = random.Random(seed)
    failed: set[str] = set()
    real = record_step._advance_one

    def advance_one(key: str, states: Any, blocks: Any, changed: bool, *args: Any) -> None:
        now_wm = args[2]  # (republish, popped, now_wm, ...)
        if (not changed and key not in failed and now_wm is not None
                and now_wm + record_step.DUE_RETRY_MS < UNTIL and rng.random() < 0.2):
            failed.add(key)
            raise ZeroDivisionError
        real(key, states, blocks, changed, *args)

    monkeypatch.setattr(record_step, "_advance_one", advance_one)
    raw, expected = history
    hop = run(raw, seed, rollbacks=rollbacks, clocks=True)
    letters = [orjson.loads(letter["raw"]) for letter in hop.values(names.DEAD_LETTER)]
    assert len(failed) > 10 and {letter[0] for letter in letters} == failed
    assert all(letter[1]["due"] for letter in letters)
    assert outcome(hop)[0] == expected.profiles


@pytest.mark.parametrize(("seed", "rollbacks"), [(0, False), (1, True)])
def test_events_that_make_the_step_raise_cost_only_themselves_as_runs_fall_back_record_by_record(
        history: tuple[list[Any], Any], monkeypatch: pytest.MonkeyPatch, seed: int, rollbacks: bool) -> None:
    """3% of the events make dispatch raise, every time they are read (with moving clocks; with and
    without rollbacks, whose rebuilt due index would hide a key the fallback failed to give back):
    each is dead-lettered, a run holding one is stepped again record by record (what its step took
    from the due index given back), and the profiles are what the pure functions give for the events
    without them.  (Triggers are not compared, as with moving clocks above.)"""
    import streams.record_step as record_step

    raw, _ = history
    accepted = accepted_events(raw)
    poisoned = {event["event_id"] for event in random.Random(seed).sample(accepted, len(accepted) * 3 // 100)}
    real_dispatch, real_isolated = record_step.dispatch, record_step.step_isolated
    steps = [0]

    def dispatch(states: Any, blocks: Any, key: str, message: dict[str, Any], *args: Any) -> Any:
        if message.get("event_id") in poisoned:
            raise KeyError("poisoned")
        return real_dispatch(states, blocks, key, message, *args)

    def step_isolated(*args: Any, **kwargs: Any) -> Any:
        steps[0] += 1
        return real_isolated(*args, **kwargs)

    monkeypatch.setattr(record_step, "dispatch", dispatch)
    monkeypatch.setattr(record_step, "step_isolated", step_isolated)
    hop = run(raw, seed, rollbacks=rollbacks, clocks=True, entries_may_fail=True)
    assert steps[0] > hop.runs  # runs fell back to a step per record
    assert {letter["raw"] and orjson.loads(letter["raw"])["event_id"] for letter in hop.values(names.DEAD_LETTER)} \
        == poisoned
    expected = run_locally([event for event in accepted if event["event_id"] not in poisoned], UNTIL, RULES)
    assert outcome(hop)[0] == expected.profiles


def test_without_the_due_index_updates_the_test_fails(history: tuple[list[Any], Any]) -> None:
    """The test can tell: with the step's due-index changes dropped, the closing clocks find nothing
    due, so parked events are never folded and the profiles, triggers and changes are missing."""
    raw, expected = history
    profiles, triggers, changes = outcome(run(raw, 0, rollbacks=False, due_updates=False))
    want_profiles, want_triggers, want_changes = expected_outcome(expected)
    assert profiles != want_profiles
    assert len(triggers) < len(want_triggers) / 2
    assert len(changes) < len(want_changes) / 2


def test_each_due_index_change_moves_an_entry_the_index_holds(history: tuple[list[Any], Any]) -> None:
    """A profile the step took from the due index (its pop) is written with no old entry to move:
    the fold of every parked event used to delete one, a RocksDB tombstone each."""
    raw, _ = history
    hop = run(raw, 0, rollbacks=False, clocks=True)
    assert hop.index.absent == 0


def test_keys_stay_in_their_partition(history: tuple[list[Any], Any]) -> None:
    raw, _ = history
    hop = run(raw, 1, rollbacks=True)
    for partition, tables in enumerate(hop.tables):
        assert all(partition_for(key.decode(), PARTITIONS) == partition for key in tables["states"])


def one_person_in_one_step(raw: list[dict[str, Any]], ctx: StepContext = CTX) -> tuple[Any, bytes]:
    """Every event of one person (no input clocks: they wait for the watermark) in one step, its
    result applied: (the step's result, the stored state)."""
    hop = Hop()
    records = internal_records(raw, random.Random(0), clocks=False)
    entries = [entry for _, record in records for entry in orjson.loads(record)]
    [partition] = {p for p, _ in records}
    tables = hop.tables[partition]
    io = StepIO(partition, lambda key: None if (v := tables["states"].get(key.encode())) is None else orjson.loads(v),
                lambda key: None, {}, lambda upto: set(), NOW, NOW)
    result = step_isolated(entries, lambda: io, ctx, Source(ctx.events_topic, partition, 0, None, NOW))
    assert not result.failures
    apply_result(result, partition, hop)
    [(_key, value)] = tables["states"].items()
    return result, value


def test_a_profile_fed_far_past_its_dedupe_bound_keeps_committing_and_counts_the_drops() -> None:
    """3,000 events of one person in one record: the step succeeds, the stored state stays small, and
    what the bound dropped is in the result (``mailpulse_profile_entries_dropped_total{collection="seen"}``)."""
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    raw = [{"event_id": f"v{n}", "type": "page_view", "timestamp": t0 + n * 1000, "user_id": "bot"}
           for n in range(3000)]
    result, value = one_person_in_one_step(raw)
    state = orjson.loads(value)
    # 1,000 parked events (timeline.MOST_PARKED, the rest released early) and 2,000 ids: far below the limit
    assert len(state["seen"]) <= 2000 + 32 and len(state["pending"]) <= 1000 and len(value) < MAX_VALUE_BYTES / 3
    assert result.entries_dropped["seen"] == 3000 - len(orjson.loads(value)["seen"])
    assert result.outcomes["clicks", "duplicate"] == 150  # the 5% the ingest forwarded twice


def test_a_profile_whose_parked_events_grow_large_folds_them_instead_of_failing() -> None:
    """Parked events are bounded by count (1,000), but 1,000 input messages of up to 64 KiB would be
    far over a broker's message limit: past a third of the limit the state folds its parked events
    early (counted), and every event is processed, none dead-lettered."""
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    raw = [{"event_id": f"s{n}", "type": "search", "timestamp": t0 + n * 1000, "user_id": "big",
            "query": "q" * 1000, "context": {f"k{i}": "v" * 200 for i in range(20)}} for n in range(300)]
    hop = Hop()
    records = internal_records(raw, random.Random(0), clocks=False)
    for partition, record in records:
        hop.log[partition].append(record)
    [partition] = {p for p, _ in records}
    released_early = 0
    while hop.unread():
        states = hop.tables[partition]["states"]
        io = StepIO(partition, lambda key, states=states: None if (v := states.get(key.encode())) is None  # type: ignore[misc]
                    else orjson.loads(v), lambda key: None, {}, lambda upto: set(), NOW, NOW)
        value = hop.log[partition][hop.position[partition]]
        hop.position[partition] += 1
        result = step_isolated(orjson.loads(value), lambda io=io: io, CTX,  # type: ignore[misc]
                               Source(CTX.events_topic, partition, 0, None, NOW))
        assert not result.failures
        apply_result(result, partition, hop)
        released_early += result.released_early
    state = orjson.loads(hop.tables[partition]["states"][b"u:big"])
    assert released_early > 0 and len(state["pending"]) < 300
    assert len(hop.tables[partition]["states"][b"u:big"]) < MAX_VALUE_BYTES
    assert state["profile"]["aggregates"]["event_counts"]["search"] + len(state["pending"]) == 300
    assert not hop.outputs.get(names.DEAD_LETTER)


def test_a_profile_fed_far_past_every_configured_bound_keeps_committing_and_counts_each_drop() -> None:
    """Small ``limits`` from the config, one person sending far more than each of them allows: the
    step succeeds, the stored state holds at most each bound, and every collection's drops are in
    the result (``mailpulse_profile_entries_dropped_total{collection}``, ``released_early``)."""
    limits = {"traits": 5, "consent": 3, "context": 2, "cart_lines": 4, "cart_moves": 3, "seen_ids": 64,
              "parked_events": 20, "history_per_type": 10}
    rules = RuleSet.build(PipelineConfig.model_validate({"limits": limits}), 7 * 86_400_000, None)
    ctx = StepContext(rules=rules, expected_clocks=CTX.expected_clocks, wall_delay_ms=None, partitions=PARTITIONS,
                      events_topic=CTX.events_topic)
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    raw: list[dict[str, Any]] = []
    for n in range(40):
        at = t0 + n * 4000
        raw += [{"event_id": f"i{n}", "type": "identify", "timestamp": at, "user_id": "p", "traits": {f"t{n}": "x"},
                 "consent": {f"c{n}": True},
                 "context": {"device": "d", "os": "o", "locale": "de-DE", "campaign_id": "c", "source": "s"}},
                {"event_id": f"v{n}", "type": "product_view", "timestamp": at + 1000, "user_id": "p",
                 "product_id": f"sku-{n}"},
                {"event_id": f"k{n}", "type": "cart_add", "timestamp": at + 2000, "user_id": "p",
                 "product_id": f"sku-{n}", "quantity": 1, "price": 1.0},
                {"event_id": f"m{n}", "type": "cart_add" if n % 2 else "cart_remove", "timestamp": at + 3000,
                 "user_id": "p", "product_id": "sku-0", "quantity": 1, "price": 1.0}]
    result, value = one_person_in_one_step(raw, ctx)
    state = orjson.loads(value)
    profile = state["profile"]
    assert len(profile["traits"]) == 5 and len(profile["consent"]) == 3 and len(profile["context"]) == 2
    assert len(profile["cart"]) == 4 and all(len(line["moves"]) <= 3 for line in profile["cart"].values())
    assert len(state["seen"]) <= 64 + 32 and len(state["pending"]) <= 20
    assert len(state["rules"]["history"]["product_view"]) == 10
    dropped = result.entries_dropped
    # the newest 20 events (5 of each kind) still wait for the watermark; the 35 before them are folded
    assert result.released_early == 140 and len(state["pending"]) == 20
    assert dropped["traits"] == 35 - 5 and dropped["consent"] == 35 - 3 and dropped["context"] == 35 * 3
    assert dropped["history"] == 35 - 10 and dropped["cart_lines"] > 0 and dropped["cart_moves"] > 0
    assert dropped["seen"] == 160 - len(state["seen"])
    assert profile["aggregates"]["event_counts"] == {"identify": 35, "product_view": 35, "cart_add": 52,
                                                     "cart_remove": 18}  # nothing lost but what a bound drops


def test_a_state_past_the_value_limit_within_its_bounds_is_shrunk_not_dead_lettered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cart lines of 100 moves each are within bounds a user may configure, but with the 128-character
    event ids an event may carry they make a state past the value limit (here a fifth of the real
    900 KB, so that the test is quick): it is made smaller (moves combined, counted) and stored, the
    cart's quantities kept, and no event is dead-lettered."""
    from streams import record_step
    from streams.domain.profile import cart_view

    monkeypatch.setattr(record_step, "MAX_VALUE_BYTES", MAX_VALUE_BYTES // 5)
    monkeypatch.setattr(record_step, "SOFT_STATE_BYTES", SOFT_STATE_BYTES // 5)
    rules = RuleSet.build(PipelineConfig.model_validate({"limits": {"cart_moves": 100}}), 7 * 86_400_000, None)
    ctx = StepContext(rules=rules, expected_clocks=CTX.expected_clocks, wall_delay_ms=None, partitions=PARTITIONS,
                      events_topic=CTX.events_topic)
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    raw = [{"event_id": f"{n:05d}".ljust(128, "x"), "type": "cart_add", "timestamp": t0 + n * 1000,
            "user_id": "hoarder", "product_id": f"sku-{n % 20}", "quantity": 1, "price": 1.0} for n in range(2_000)]
    result, value = one_person_in_one_step(raw, ctx)
    assert MAX_VALUE_BYTES // 5 < 20 * 100 * 140  # the moves alone were past the limit
    assert len(value) <= SOFT_STATE_BYTES // 5 and result.shrunk == 1
    state = orjson.loads(value)
    cart = cart_view(state["profile"])
    assert cart is not None and len(cart["items"]) == 20 and {item["quantity"] for item in cart["items"]} == {100}
    assert result.entries_dropped["cart_moves"] >= 20 * 50
    assert result.outcomes["carts", "processed"] == 2_000


@pytest.mark.parametrize(("events", "clocks"), [("generated", False), ("generated", True), ("households", True)])
def test_no_step_changes_a_state_it_does_not_write(history: tuple[list[Any], Any], monkeypatch: pytest.MonkeyPatch,
                                                   events: str, clocks: bool) -> None:
    """Each step decodes its states afresh, so a change it makes to a state it then does not write
    is gone at the next read (``run_locally``'s dict states keep it, so comparing outcomes cannot see
    it).  Every state a step read and did not write must be as it was read.  (The households are
    families at shared addresses: fuzzy merges, possible matches and their aliases.)"""
    import streams.record_step as record_step

    caches: list[Any] = []
    unsaved: list[str] = []

    class Watched(record_step._Cache):
        def __init__(self, load: Any) -> None:
            super().__init__(load)
            self.read_as: dict[str, bytes] = {}
            caches.append(self)

        def get(self, key: str, default: Any = None) -> Any:
            first = dict.get(self, key, self._NOT_READ) is self._NOT_READ
            value = super().get(key, default)
            if first:
                self.read_as[key] = orjson.dumps(value)
            return value

    real_step = record_step.step

    def step(entries: list[Any], io: StepIO, ctx: StepContext, skip: frozenset[int] = frozenset(),
             skip_keys: frozenset[str] = frozenset(), *rest: Any) -> Any:
        caches.clear()
        result = real_step(entries, io, ctx, skip, skip_keys, *rest)
        written = {key.decode() for key, _ in result.state_writes + result.block_writes}
        unsaved.extend(key for cache in caches for key, read_as in cache.read_as.items()
                       if key not in written and orjson.dumps(dict.get(cache, key)) != read_as)
        return result

    monkeypatch.setattr(record_step, "_Cache", Watched)
    monkeypatch.setattr(record_step, "step", step)
    raw = history[0] if events == "generated" else households(1, addresses=8)
    hop = run(raw, 0, rollbacks=False, clocks=clocks)
    assert hop.records_read > 0 and caches  # the watch was on
    if events == "households":  # possible matches were exercised
        assert sum(len(p["possible_matches"]) for p in hop.latest(names.PROFILES).values() if p) > 10
    assert unsaved == []


def test_the_identity_messages_of_a_step_are_cut_into_records_by_their_real_size() -> None:
    """A run of four full ingest records whose events all hit one redirect forwards ~1 MB to one
    partition: sized by an estimate (512 bytes a message), that went out as one record the producer
    refuses; by its encoding, into records of at most ``RECORD_BYTES``."""
    from types import SimpleNamespace

    from streams.record_step import RecordResult, _route_outbox
    from streams.routing import RECORD_BYTES

    event = {"event_id": "e", "type": "purchase", "items": [{"product_id": "a", "quantity": 1}] * 1000}
    outbox = [("e:x@y.com", "u:u-1", {**event, "event_id": f"e-{n}"}) for n in range(48)]
    result = RecordResult()
    _route_outbox(outbox, SimpleNamespace(partitions=4, events_topic="events"), result)  # type: ignore[arg-type]
    records = [value for topic, _, value, _ in result.sends if topic == "events"]
    assert value_ids(records) == [f"e-{n}" for n in range(48)]
    assert len(records) > 1 and max(len(value or b"") for value in records) <= RECORD_BYTES


def value_ids(records: list[bytes | None]) -> list[str]:
    return [entry[1]["event_id"] for record in records for entry in orjson.loads(record or b"[]")]


def test_a_next_due_time_the_due_index_cannot_hold_fails_the_profile_in_the_step() -> None:
    """A timer of a state another program wrote can put the next due time past what the due index
    encodes: the step's encoding raises for that profile (dead-lettered in its isolation), rather than
    the agent applying the result."""
    from streams.record_step import _encode_state

    state: Any = {"profile": {}, "seen": {}, "pending": [], "rules": {"timers": {"x": [2**64 - 1, "", {}]}}}
    with pytest.raises(ValueError, match="not a due time"):
        _encode_state(state)
    state["rules"]["timers"]["x"][0] = 1772359200000
    assert _encode_state(state)[1] == 1772359200000


def test_a_person_whose_name_and_address_keep_changing_keeps_a_bounded_block_list_and_commits() -> None:
    """Each identify with a name registers the person in up to ~8 fuzzy-matching blocks, and nothing
    bounded that list: 540 identifies with new long postcodes grew the state to the value limit, after
    which every identify of the person was dead-lettered. Past ``limits.blocks`` the oldest go, their
    blocks are told to drop the member, and each drop is counted."""
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    raw = [{"event_id": f"i-{n}", "type": "identify", "timestamp": t0 + n * 1000, "user_id": "u-b",
            "traits": {"first_name": "Ana", "last_name": "Lee", "birthday": f"{1950 + n % 60}-{1 + n % 12:02d}-"
                       f"{1 + n % 28:02d}", "postcode": f"{n:06d}" + "P" * 500, "street": f"{n} Main Street",
                       "city": "Lyon"}} for n in range(540)]
    result, value = one_person_in_one_step(raw)
    state = orjson.loads(value)
    assert result.failures == [] and result.outcomes["identities", "processed"] >= 500
    assert len(state["blocks"]) == DEFAULT_LIMITS.blocks and len(value) < SOFT_STATE_BYTES
    assert result.entries_dropped["blocks"] > 1000
    drops = [message for topic, _, record, _ in result.sends if topic == CTX.events_topic
             for _, message in orjson.loads(record or b"[]") if message.get("drop")]
    assert len(drops) == result.entries_dropped["blocks"] and {message["key"] for message in drops} == {"u:u-b"}


def test_a_cart_of_long_product_ids_and_fields_past_the_value_limit_drops_its_oldest_lines() -> None:
    """100 lines (the bound) of 512-character product ids, categories and cart ids of 4-byte characters
    are ~700 KB of cart, with one move per line, which no combining of moves shrinks: past the value
    limit the least recently moved lines go (counted), instead of every new product being dead-lettered."""
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    wide = "\U0001f600"
    raw = [{"event_id": f"{n:04d}" + wide * 124, "type": "cart_add", "timestamp": t0 + n * 1000, "user_id": "cart-1",
            "product_id": f"{n:04d}" + wide * 508, "category": wide * 512, "cart_id": wide * 512, "price": 1.0}
           for n in range(100)]
    result, value = one_person_in_one_step(raw)
    state = orjson.loads(value)
    assert result.failures == [] and result.outcomes["carts", "processed"] == 100
    assert len(value) <= SOFT_STATE_BYTES and result.entries_dropped["cart_lines"] > 0
    newest = f"{99:04d}" + wide * 508
    assert newest in state["profile"]["cart"]  # the newest line stayed


def test_a_stored_state_leaves_room_for_the_absorb_that_carries_it_with_one_more_event() -> None:
    """A state stored at up to the value limit (here 800 KB of cart moves with long event ids, all
    within bounds) could not be given away: the absorb message that carries it with the linking event
    was past the limit, so the link was dead-lettered, and every later one too. States are now made
    smaller once past all but 1/7 of the limit (``record_step.ABSORB_ROOM``)."""
    from streams.domain.profile import new_state
    from streams.domain.timeline import ensure_rule_state
    from streams.record_step import _encode_state

    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    state: Any = ensure_rule_state(new_state("a:a-big", t0))
    for line in range(100):
        moves = [[t0 + move, f"{line:03d}{move:03d}" + "\U0001f600" * 122, 1] for move in range(16)]
        state["profile"]["cart"][f"sku-{line}"] = {"moves": moves, "fields": {}}
    assert 770_000 < len(orjson.dumps(state)) < MAX_VALUE_BYTES  # storable as it is
    data, _, _, shrunk = _encode_state(state)
    assert shrunk is not None and shrunk["cart_moves"] > 0 and len(data) <= SOFT_STATE_BYTES
    stored = orjson.loads(data)
    stored["pending"].append([t0, 0, "link", {"event_id": "link", "traits": {"note": "x" * 65_000}}])
    absorb = orjson.dumps([["u:u-big", {"type": "_absorb", "from": "a:a-big", "kind": "exact", "state": stored}]])
    assert len(absorb) < MAX_VALUE_BYTES


def test_a_cart_that_is_not_the_largest_part_of_a_state_being_shrunk_keeps_its_lines() -> None:
    """A state past the shrink threshold because of its seen ids and history keeps every line of an
    ordinary cart (lines of one move each cannot be combined; dropping them would change the cart)."""
    from streams.domain.profile import new_state
    from streams.domain.timeline import ensure_rule_state
    from streams.record_step import _encode_state

    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    state: Any = ensure_rule_state(new_state("u:u-1", t0))
    state["seen"] = {f"{n:05d}" + "\U0001f600" * 120: t0 + n for n in range(1600)}
    state["rules"]["history"] = {f"type-{k}": [t0 + n for n in range(500)] for k in range(12)}
    for line in range(100):
        state["profile"]["cart"][f"sku-{line}"] = {"moves": [[t0 + line, f"k-{line}", 1]], "fields": {}}
    assert len(orjson.dumps(state)) > MAX_VALUE_BYTES - MAX_VALUE_BYTES // 7
    data, _, _, shrunk = _encode_state(state)
    assert shrunk is not None and shrunk["seen"] > 0 and "cart_lines" not in shrunk
    assert len(orjson.loads(data)["profile"]["cart"]) == 100


def shopper(who: str, at: int, id_field: str = "user_id", email: str | None = None) -> list[dict[str, Any]]:
    """An identify that gives e-mail consent at ``at``, and a cart add a minute later (its abandoned-cart
    trigger comes 30 minutes after that)."""
    person = {id_field: who}
    return [{"event_id": f"i-{who}", "type": "identify", "timestamp": at, **person,
             "traits": {"email": email or f"{who}@example.com"}, "consent": {"email": True}},
            {"event_id": f"k-{who}", "type": "cart_add", "timestamp": at + 60_000, **person,
             "product_id": "sku-1", "quantity": 1, "price": 10.0}]


@pytest.mark.parametrize("rollbacks", [False, True])
def test_a_consent_withdrawal_and_an_erasure_tell_deliver_what_to_drop(rollbacks: bool) -> None:
    """The withdrawals topic gets one message per published profile that withdrew e-mail consent
    (stamped at the event that withdrew it) and per erased one (stamped at the erase); consent given,
    kept, or withdrawn again gives none."""
    withdrawals = names.withdrawals_topic("mailpulse")
    t = parse_timestamp("2026-03-01T10:00:00Z")
    minute, DAY = 60_000, 86_400_000

    def identify(n: int, who: str, at: int, **fields: Any) -> dict[str, Any]:
        return {"event_id": f"i-{who}-{n}", "type": "identify", "timestamp": at, "user_id": who, **fields}

    raw = [
        identify(1, "pia", t, traits={"email": "pia@example.com"}, consent={"email": True}),
        {"event_id": "k-pia", "type": "cart_add", "timestamp": t + minute, "user_id": "pia", "product_id": "sku-1",
         "quantity": 1, "price": 10.0},
        identify(2, "pia", t + DAY + 40 * minute, consent={"email": False}),
        identify(3, "pia", t + DAY + 45 * minute, consent={"email": False}),
        identify(1, "eve", t, traits={"email": "eve@example.com"}, consent={"email": True}),
        {"event_id": "e-eve", "type": "erase", "timestamp": t + DAY + 50 * minute, "user_id": "eve"},
        identify(1, "max", t, traits={"email": "max@example.com"}, consent={"email": True}),
        identify(2, "max", t + 5 * minute, consent={"email": True}),
    ]
    hop = run(raw[:2] + raw[4:5] + raw[6:], 7, rollbacks=rollbacks, until=t + 35 * minute)
    assert not hop.outputs.get(withdrawals)
    # 10:31, with consent (sent once, or again after a rollback: the same trigger id)
    [cart] = {t["trigger_id"]: t for t in hop.values(names.TRIGGERS) if t["type"] == "cart_abandoned"}.values()
    # a day later her consent is withdrawn (twice: the second changes nothing) and eve is erased
    run(raw[2:4] + raw[5:6], 8, rollbacks=rollbacks, hop=hop)
    said = {(w["profile_id"], w["reason"], w["at"]) for w in hop.values(withdrawals)}
    pia, eve = profile_id_for("u:pia"), profile_id_for("u:eve")
    # each under the ids their triggers may carry: the profile's, and those its links' profiles had
    pia_ids, eve_ids = {pia, profile_id_for("e:pia@example.com")}, {eve, profile_id_for("e:eve@example.com")}
    assert said == {*((p, "consent", "2026-03-02T10:40:00.000Z") for p in pia_ids),
                    *((p, "erased", "2026-03-02T10:50:00.000Z") for p in eve_ids)}
    assert {key for key, _ in hop.outputs[withdrawals]} == {p.encode() for p in pia_ids | eve_ids}
    assert cart["profile_id"] == pia and parse_timestamp(cart["at"]) < t + DAY  # deliver drops it if still held


def test_a_merge_whose_newest_consent_is_false_withdraws_the_surviving_profile() -> None:
    """Pia's profile had consent; an anonymous visitor withdrew it the next day, and then logged in as
    her: the merged profile's consent is the newer, false, so what is on its way for Pia is withdrawn."""
    withdrawals = names.withdrawals_topic("mailpulse")
    t = parse_timestamp("2026-03-01T10:00:00Z")
    day = 86_400_000
    hop = run([{"event_id": "i-1", "type": "identify", "timestamp": t, "user_id": "pia",
                "traits": {"email": "pia@example.com"}, "consent": {"email": True}}], 3, False, until=t + 60_000)
    run([{"event_id": "i-2", "type": "identify", "timestamp": t + day, "anonymous_id": "anon-1",
          "consent": {"email": False}}], 4, False, hop=hop, until=t + day + 60_000)
    pia, anon = profile_id_for("u:pia"), profile_id_for("a:anon-1")
    assert {w["profile_id"] for w in hop.values(withdrawals)} == {anon}  # its own consent, from unknown
    run([{"event_id": "i-3", "type": "identify", "timestamp": t + 2 * day, "anonymous_id": "anon-1",
          "user_id": "pia"}], 5, False, hop=hop, until=t + 2 * day + 60_000)
    assert hop.latest(names.PROFILES)[pia.encode()]["consent"]["email"] is False
    [merged] = [w for w in hop.values(withdrawals) if w["profile_id"] == pia]
    assert merged["reason"] == "consent" and parse_timestamp(merged["at"]) >= t + day


def test_a_profile_with_consent_merged_into_one_that_withdrew_it_is_withdrawn_under_its_own_id() -> None:
    """A visitor gave consent under her e-mail at 9:00; signed in as zoe, she withdrew it at 10:00; as the
    visitor she left a cart at 11:00 and got its trigger at 11:30.  Then the two were linked: the
    e-mail's profile is merged away, its consent (older) gives way to zoe's, and what deliver still holds
    under its ids is withdrawn, up to the last time it made anything (after the withdrawal itself)."""
    withdrawals = names.withdrawals_topic("mailpulse")
    t = parse_timestamp("2026-03-01T10:00:00Z")
    hour, day = 3_600_000, 86_400_000
    hop = run([{"event_id": "i-1", "type": "identify", "timestamp": t - hour, "anonymous_id": "anon-2",
                "traits": {"email": "zoe@example.com"}, "consent": {"email": True}},
               {"event_id": "k-1", "type": "cart_add", "timestamp": t + hour, "anonymous_id": "anon-2",
                "product_id": "sku-1", "quantity": 1, "price": 10.0},
               {"event_id": "i-2", "type": "identify", "timestamp": t, "user_id": "zoe",
                "consent": {"email": False}}], 3, False, until=t + day)
    anon, zoe = profile_id_for("e:zoe@example.com"), profile_id_for("u:zoe")  # (the e-mail roots it)
    assert {w["profile_id"] for w in hop.values(withdrawals)} == {zoe}
    made = {t["type"]: t for t in hop.values(names.TRIGGERS) if t["profile_id"] == anon}
    assert {"welcome", "cart_abandoned"} <= made.keys()
    run([{"event_id": "i-3", "type": "identify", "timestamp": t + 2 * day, "anonymous_id": "anon-2",
          "user_id": "zoe"}], 4, False, hop=hop, until=t + 2 * day + 60_000)
    gone = [w for w in hop.values(withdrawals) if w["profile_id"] == anon]
    assert gone and {w["reason"] for w in gone} == {"consent"}
    up_to = max(parse_timestamp(w["at"]) for w in gone)
    assert parse_timestamp(made["cart_abandoned"]["at"]) > t and all(
        parse_timestamp(trigger["at"]) <= up_to for trigger in made.values())


def test_a_late_withdrawal_and_an_erase_after_a_merge_reach_every_trigger_already_made() -> None:
    """Ana's consent withdrawal stamped 10:10 arrives after her 10:31 abandoned-cart trigger was made:
    it withdraws up to her clock, so that trigger too.  Zoe's triggers were made under her e-mail's
    profile, which a sign-in then merged into her user profile; her erase withdraws that id as well."""
    withdrawals = names.withdrawals_topic("mailpulse")
    t = parse_timestamp("2026-03-01T10:00:00Z")
    minute, hour = 60_000, 3_600_000
    hop = run([*shopper("ana", t), *shopper("anon-3", t, "anonymous_id", "zoe@example.com")], 5, False,
              until=t + hour)
    made = {(trigger["profile_id"], trigger["type"]): parse_timestamp(trigger["at"])
            for trigger in hop.values(names.TRIGGERS)}
    ana, zoe_email = profile_id_for("u:ana"), profile_id_for("e:zoe@example.com")
    assert made[ana, "cart_abandoned"] == made[zoe_email, "cart_abandoned"] == t + 31 * minute
    run([{"event_id": "i-ana-2", "type": "identify", "timestamp": t + 10 * minute, "user_id": "ana",
          "consent": {"email": False}},
         {"event_id": "i-zoe-2", "type": "identify", "timestamp": t + 2 * hour, "anonymous_id": "anon-3",
          "user_id": "zoe"}], 6, False, hop=hop, until=t + 3 * hour)
    assert hop.latest(names.PROFILES)[ana.encode()]["consent"]["email"] is False
    run([{"event_id": "e-zoe", "type": "erase", "timestamp": t + 4 * hour, "user_id": "zoe"}], 7, False, hop=hop,
        until=t + 5 * hour)
    up_to: dict[str, int] = {}
    for w in hop.values(withdrawals):
        up_to[w["profile_id"]] = max(up_to.get(w["profile_id"], 0), parse_timestamp(w["at"]))
    assert all(at <= up_to.get(profile_id, -1) for (profile_id, _), at in made.items()), (made, up_to)


def test_consent_withdrawn_and_given_again_by_late_events_of_one_pass_withdraws_nothing() -> None:
    """Late events withdraw Ana's consent at 10:10 and give it again at 10:20, after her 10:31 trigger was
    made: her consent is true, so what is on its way for her may go."""
    withdrawals = names.withdrawals_topic("mailpulse")
    t = parse_timestamp("2026-03-01T10:00:00Z")
    minute, hour = 60_000, 3_600_000
    hop = run(shopper("ana", t), 5, False, until=t + hour)
    assert any(trigger["type"] == "cart_abandoned" for trigger in hop.values(names.TRIGGERS))
    run([{"event_id": "i-2", "type": "identify", "timestamp": t + 10 * minute, "user_id": "ana",
          "consent": {"email": False}},
         {"event_id": "i-3", "type": "identify", "timestamp": t + 20 * minute, "user_id": "ana",
          "consent": {"email": True}}], 6, False, hop=hop, until=t + 2 * hour)
    assert hop.latest(names.PROFILES)[profile_id_for("u:ana").encode()]["consent"]["email"] is True
    assert not hop.outputs.get(withdrawals)


@pytest.mark.parametrize("bad", [
    ["u:x"],  # not a [key, message] pair
    [None, {"clocks": [["clicks", 0, 1.5e12]]}],  # a clock time that is not an integer
    [None, {"clocks": [["clicks", 0, 2**70]]}],  # past 64 bits: the clocks could not be stored
    [None, {"clocks": [["clicks", 0, 2**62]]}],  # far ahead: every later event would be late
    [None, {"wall": 2**70}],
])
def test_a_damaged_entry_among_good_ones_is_left_out_alone(bad: list[Any]) -> None:
    """Before, a damaged entry failed outside the entry's isolation (its unpacking), or was stored and
    failed later steps (a float clock reached the due index, a clock past 64 bits could not be
    encoded): the whole record was left out and its good events dead-lettered with it."""
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    [event] = accepted_events([{"event_id": "v1", "type": "page_view", "timestamp": t0, "user_id": "u-1"}])
    entries = [["u:u-1", event], bad, [None, {"clocks": [["clicks", 0, t0 + 1]]}]]
    states: dict[bytes, bytes] = {}
    io = StepIO(0, lambda key: None if (v := states.get(key.encode())) is None else orjson.loads(v),
                lambda key: None, {}, lambda upto: set(), NOW, NOW)
    result = step_isolated(entries, lambda: io, CTX, Source(CTX.events_topic, 0, 0, None, NOW))
    assert not result.left_out_whole and len(result.failures) == 1
    assert [kb for kb, _ in result.state_writes] == [b"u:u-1"]
    assert result.clocks is not None and orjson.loads(result.clocks) == {clock_name("clicks", 0): t0 + 1}


@pytest.mark.parametrize("damage", ["timer", "cart", "identifiers", "bought", "none"])
def test_a_damaged_absorb_is_left_out_before_it_is_merged(damage: str) -> None:
    """Before, an absorb carrying a damaged state was merged without a check, and every later event
    of the person failed (found in review: a timer's payload, a cart line, identifiers, the bought
    list).  Now it fails alone, as its own entry; a sound one is merged."""
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    [mine, theirs] = accepted_events([
        {"event_id": "t1", "type": "page_view", "timestamp": t0, "user_id": "t"},
        {"event_id": "z1", "type": "cart_add", "timestamp": t0 + 5, "anonymous_id": "z", "product_id": "p",
         "price": 2.0}])
    states: dict[bytes, bytes] = {}
    io = StepIO(0, lambda key: None if (v := states.get(key.encode())) is None else orjson.loads(v),
                lambda key: None, {}, lambda upto: set(), NOW, NOW)
    source = Source(CTX.events_topic, 0, 0, None, NOW)
    for key, event in (("u:t", mine), ("a:z", theirs)):
        result = step_isolated([[key, event]], lambda: io, CTX, source)
        states.update(result.state_writes)
    absorbed = orjson.loads(states[b"a:z"])
    if damage == "timer":
        absorbed["rules"]["timers"]["post_purchase"] = [t0 + 86_400_000, "x", 5]
    elif damage == "cart":
        absorbed["profile"]["cart"]["p"] = {"moves": 7, "fields": {}}
    elif damage == "identifiers":
        absorbed["profile"]["identifiers"]["anonymous_ids"]["z"] = "yesterday"
    elif damage == "bought":
        absorbed["rules"]["bought"] = {"p": 1}
    absorb = ["u:t", {"type": "_absorb", "from": "a:z", "kind": "exact", "state": absorbed}]
    result = step_isolated([absorb], lambda: io, CTX, source)
    states.update(result.state_writes)
    merged = orjson.loads(states[b"u:t"])
    if damage == "none":
        assert not result.failures and "z1" in merged["seen"]
    else:
        assert [stage for stage, _ in result.failures] == ["dispatch"] and "z1" not in merged["seen"]
        assert [letter for topic, _, letter, _ in result.sends if topic == names.DEAD_LETTER]


def test_an_absorbed_state_an_older_version_stored_with_null_spend_passes_the_shape_check() -> None:
    """``profile.spent`` and ``money`` repair a spend an older version stored as null after an
    overflow; the shape check of absorbed states takes it as the merge does (found in review)."""
    from streams.domain.merge import merge_states
    from streams.domain.profile import new_state
    from streams.domain.timeline import ensure_rule_state
    from streams.record_step import check_absorbed

    old = ensure_rule_state(new_state("a:old", parse_timestamp("2026-03-01T10:00:00Z")))
    old["profile"]["aggregates"]["total_spend"] = None
    old["profile"]["aggregates"]["spend_by_currency"] = {"EUR": None}
    stored = orjson.loads(orjson.dumps(old))
    check_absorbed(stored)
    merged = merge_states(ensure_rule_state(new_state("u:n", parse_timestamp("2026-03-01T10:00:00Z"))), stored, "u:n")
    assert merged["profile"]["aggregates"]["total_spend"] == 0.0


def test_a_step_advances_at_most_most_due_of_its_due_profiles_and_leaves_the_rest_at_its_watermark() -> None:
    """``most_due``: a clock that makes more profiles due than that advances that many in the step; the
    rest, popped, are left in ``due_left`` (not advanced here: each is advanced once, by a later step),
    due at the watermark the record's clocks reached."""
    t0 = parse_timestamp("2026-03-01T10:00:00Z")
    tick = [None, {"clocks": [[t, n, t0 + 60_000] for t in INPUT_TOPICS for n in range(INPUT_PARTITIONS)]}]
    for due, left in ((3, []), (4, ["u:p-3"]), (6, ["u:p-3", "u:p-4", "u:p-5"])):
        advanced: list[str] = []  # the profiles the step read to advance (none is stored)
        popped: list[int] = []
        due_keys = {f"u:p-{n}" for n in range(due)}
        clocks = {clock_name(t, n): t0 for t in INPUT_TOPICS for n in range(INPUT_PARTITIONS)}
        io = StepIO(0, advanced.append, lambda key: None, clocks,
                    lambda upto, popped=popped, due_keys=due_keys: popped.append(upto) or due_keys, NOW, NOW)
        result = step([tick], io, CTX, most_due=3)
        assert popped == [t0 + 60_000]
        assert result.due_left == left and sorted(advanced) == ["u:p-0", "u:p-1", "u:p-2"]
        assert result.due_at == (t0 + 60_000 if left else None)


def test_due_profiles_whose_chunk_is_left_out_whole_go_back_to_the_due_index_at_their_watermark() -> None:
    """:func:`apply_due`: a chunk of due profiles whose step failed as a whole (nothing singled out)
    loses none of their timers: each is pushed back, due at the watermark they were left at."""
    class Failing:
        def make_io(self) -> StepIO:
            raise OSError("the table went away")

        def give_back(self) -> None:  # pragma: no cover - apply_due pushes its keys itself
            raise AssertionError("not popped by this step")

    pushed: list[tuple[int, bytes]] = []
    at = parse_timestamp("2026-03-01T10:00:00Z")
    result = apply_due(["u:a", "u:b"], at, Failing(), CTX, Source(CTX.events_topic, 0, 0, None, NOW), 0, Hop(),
                       lambda due, key: pushed.append((due, key)))
    assert result.left_out_whole and pushed == [(at, b"u:a"), (at, b"u:b")]


def test_an_identity_message_past_the_value_limit_fails_the_key_that_sent_it() -> None:
    """A forward too big for one value (nothing to make smaller in it) fails its sender's key in the
    step, rather than going to the producer, which refuses it."""
    from types import SimpleNamespace

    import pytest

    from streams.record_step import MAX_VALUE_BYTES, RecordResult, StepFailure, _route_outbox

    event = {"event_id": "e-1", "type": "identify", "traits": {"t": "z" * MAX_VALUE_BYTES}}
    with pytest.raises(StepFailure) as failed:
        _route_outbox([("e:x@y.com", "u:u-1", event)], SimpleNamespace(partitions=4, events_topic="events"),
                      RecordResult())  # type: ignore[arg-type]
    assert failed.value.stage == "route" and failed.value.key == "e:x@y.com"
