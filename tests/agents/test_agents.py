"""Agent tier: the real agents driven through Faust's test_context, tables in memory, sends recorded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import orjson
import pytest
from faust.types import TP

from schemas.events import INPUT_TOPICS
from streams import app as app_module
from streams import topics as names
from streams.app import Pipeline, create_app
from streams.consumer import RecordBatch
from streams.routing import partition_for
from streams.settings import Settings
from streams.tables import TieredDueIndex
from tests.fakes import RecordingOutput


class AgentFailed(Exception):
    """What ``stop_at_once`` raises here instead of ending the test process."""


@pytest.fixture(autouse=True)
def failures(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(agent, exception class) of each call of ``stop_at_once``, which raises :class:`AgentFailed`."""
    import streams.app as app_module

    calls: list[tuple[str, str]] = []

    def fail(agent_name: str, exc: BaseException) -> NoReturn:
        calls.append((agent_name, type(exc).__name__))
        raise AgentFailed(agent_name) from exc

    monkeypatch.setattr(app_module, "stop_at_once", fail)
    return calls


@pytest.fixture
async def pipeline(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Pipeline]:
    """A pipeline with memory tables and due index; ``parametrize("pipeline", ["rocksdb"], indirect=True)``:
    with RocksDB tables and the two-tier due index, as a worker runs."""
    if getattr(request, "param", "memory") == "rocksdb":
        yield _with_rocksdb(tmp_path)
        return
    settings = Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path, partitions=4)
    yield create_app(settings, output=RecordingOutput())


#: Runs a test with both the memory tables and the RocksDB tables of a worker (:func:`pipeline`).
BOTH_STORES = pytest.mark.parametrize("pipeline", ["memory", "rocksdb"], indirect=True)


def sent(p: Pipeline, topic: str) -> list[tuple[bytes | None, Any, int | None]]:
    assert isinstance(p.output, RecordingOutput)
    return p.output.sent.get(topic, [])


def agent(p: Pipeline, name: str) -> Any:
    return p.app.agents[name]


def sent_clocks(p: Pipeline) -> list[tuple[int | None, list[Any]]]:
    """(profile partition, clocks) of every clock entry sent on the internal topic, in order."""
    return [(partition, event["clocks"]) for _, batch, partition in sent(p, "mailpulse-profile-events")
            for key, event in batch if key is None and "clocks" in event]


async def test_ingest_routes_good_events_by_profile_and_bad_ones_to_dead_letter(pipeline: Pipeline) -> None:
    pipeline.delayed_clocks.delay_ms = 60_000  # none of the batches' clocks is due before the commit below
    good = {"event_id": "e-1", "type": "page_view", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-1"}
    async with agent(pipeline, "ingest").test_context() as ingest:
        await ingest.put(orjson.dumps(good), key=b"whatever")
        await ingest.put(b"{broken", key=b"k")
        await ingest.put(orjson.dumps({"type": "tick", "timestamp": 1772359260000}))
    internal = [(partition, key, event) for _, batch, partition in sent(pipeline, "mailpulse-profile-events")
                for key, event in batch]
    [(partition, key, event)] = [entry for entry in internal if entry[1] is not None]
    assert key == "u:u-1" and event["ts"] == 1772359200000 and event["kind"] == "clicks"
    assert partition == partition_for("u:u-1", 4)
    [(dl_key, letter, _)] = sent(pipeline, "dead-letter")
    assert dl_key == b"k" and letter["error"]["code"] == "not_json" and letter["raw"] == "{broken"
    # the tick is not forwarded as an event: it moves the input partition's clock, which reaches
    # every profile partition after the events of the same batch: MAILPULSE_CLOCK_DELAY_MS later, or
    # at the next offset commit's cut
    assert [entry for entry in internal if entry[1] is None and "clocks" in entry[2]] == []
    assert internal[-1] == (partition, None, {"batch": [pipeline.delayed_clocks.token, 1]})  # the batch's marker
    pipeline.write_staged(commit=False)  # a write-out because many values are staged: no commit, clocks wait
    assert not sent_clocks(pipeline)
    pipeline.write_staged()
    clocks = sent_clocks(pipeline)
    assert sorted(partition for partition, _ in clocks) == [0, 1, 2, 3]
    assert all([ts for _, _, ts in update] == [1772359260000] for _, update in clocks)
    assert pipeline.metrics.dead_letters.labels("not_json")._value.get() == 1


async def test_input_clocks_go_to_the_profile_partitions_a_delay_after_their_batch(tmp_path: Path) -> None:
    """With no marker applied on a partition this worker holds (as for another worker's), an event
    forwarded from a redirect gets the delay to reach its root before the clocks of its own batch
    (streams.routing.DelayedClocks); a later batch or the timer carries them."""
    settings = Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path, partitions=4,
                        clock_delay_ms=60_000)
    p = create_app(settings, output=RecordingOutput())
    timers = {task.__name__ for task in p.app._app_tasks}
    assert "delayed_clocks" in timers  # sends what is due when no batch comes
    assert "delayed_clocks" not in {task.__name__ for task in create_app(
        settings.model_copy(update={"clock_delay_ms": 0}), output=RecordingOutput()).app._app_tasks}

    def view(n: int) -> bytes:
        return orjson.dumps({"event_id": f"e-{n}", "type": "page_view", "timestamp": 1772359200000 + n,
                             "user_id": "u-1"})

    def clocks_sent() -> list[list[Any]]:
        return [clocks for _, clocks in sent_clocks(p)]

    async with agent(p, "ingest").test_context() as ingest:
        await ingest.put(view(1))
    assert clocks_sent() == [] and len(p.delayed_clocks) == 1
    await app_module._delayed_clocks(p)()  # the timer: not due yet
    assert clocks_sent() == []
    p.delayed_clocks.delay_ms = 0  # as if the delay had passed
    await app_module._delayed_clocks(p)()
    assert clocks_sent() == [[["<internal>", 0, 1772359200001]]] * 4 and len(p.delayed_clocks) == 0
    p.delayed_clocks.delay_ms = 60_000
    async with agent(p, "ingest").test_context() as ingest:
        await ingest.put(view(2))
    p.delayed_clocks._pending[0] = (0, *p.delayed_clocks._pending[0][1:])  # read long ago
    async with agent(p, "ingest").test_context() as ingest:
        await ingest.put(view(3))
    [batch] = [batch for _, batch, _ in sent(p, "mailpulse-profile-events") if batch[0][0] is not None
               and batch[0][1]["event_id"] == "e-3"]
    assert batch[1:-1] == [[None, {"clocks": [["<internal>", 0, 1772359200002]]}]]  # e-2's clock, due
    assert len(p.delayed_clocks) == 1  # e-3's waits
    p.delayed_clocks.delay_ms = 400
    commit = asyncio.ensure_future(p.write_out_soon())  # the background commit's cut: its offsets cover e-3
    await asyncio.sleep(0.1)
    assert not commit.done() and len(p.delayed_clocks) == 1  # it waits out e-3's delay...
    await commit
    assert clocks_sent()[-1] == [["<internal>", 0, 1772359200003]] and len(p.delayed_clocks) == 0  # ...then sends
    async with agent(p, "ingest").test_context() as ingest:
        await ingest.put(view(4))
    p.delayed_clocks._pending[0] = (0, *p.delayed_clocks._pending[0][1:])  # read long ago: due
    await asyncio.wait_for(p.write_out_soon(), 1)  # no wait
    assert clocks_sent()[-1] == [["<internal>", 0, 1772359200004]] and len(p.delayed_clocks) == 0
    async with agent(p, "ingest").test_context() as ingest:
        await ingest.put(view(5))
    p.app.commit_waiting = 1  # a rebalance's or a stop's commit waits for this one: no waiting
    await asyncio.wait_for(p.write_out_soon(), 1)
    assert clocks_sent()[-1] == [["<internal>", 0, 1772359200005]] and len(p.delayed_clocks) == 0


async def test_a_batchs_clocks_wait_until_the_profile_agent_applied_its_record(tmp_path: Path) -> None:
    """After a stall the delay alone passes before the profile hop has read the batch's events, and
    their forwards would come after the clocks (streams.routing.DelayedClocks)."""
    settings = Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path, partitions=4)
    p = create_app(settings, output=RecordingOutput())
    p.delayed_clocks._applied[partition_for("u:u-1", 4)] = 0  # this worker's agent has reported the partition
    view = {"event_id": "e-1", "type": "page_view", "timestamp": 1772359200001, "user_id": "u-1"}
    async with agent(p, "ingest").test_context() as ingest:
        await ingest.put(orjson.dumps(view))
    [(_, record, partition)] = sent(p, "mailpulse-profile-events")
    read_ms = p.delayed_clocks._pending[0][0]
    p.delayed_clocks._pending[0] = (read_ms - 1_000, *p.delayed_clocks._pending[0][1:])  # its delay is over
    p.send_clocks()
    assert len(p.delayed_clocks) == 1  # not applied there yet: it waits
    async with agent(p, "profiles").test_context() as profiles:
        await profiles.put(orjson.dumps(record), partition=partition)
    p.send_clocks()
    assert len(p.delayed_clocks) == 0
    assert sorted(sent_clocks(p)) == [(n, [["<internal>", 0, 1772359200001]]) for n in range(4)]


async def test_a_revoked_partition_no_longer_holds_the_clocks(pipeline: Pipeline) -> None:
    """Its markers may never be applied here: its batches wait the delay alone, not the hold."""
    clocks = pipeline.delayed_clocks
    clocks.applied(2, [[None, {"batch": [clocks.token, 1]}]])
    clocks.add({("clicks", 0): 7}, 1_000, 2, [2])
    assert clocks.due(1_000 + clocks.delay_ms) == {}
    events = names.events_topic(pipeline.settings.app_id)
    await app_module._on_revocation(pipeline)(None, {TP(events, 2), TP("clicks", 2)})
    assert clocks.due(1_000 + clocks.delay_ms) == {("clicks", 0): 7}


async def test_an_assigned_partition_holds_the_clocks_from_the_start(pipeline: Pipeline) -> None:
    """Also while its profile agent catches up on what an earlier owner left, before its first marker."""
    clocks = pipeline.delayed_clocks
    sender = SimpleNamespace(conf=SimpleNamespace(id=pipeline.settings.app_id))
    await app_module._on_assignment(pipeline)(sender, {TP(names.events_topic(pipeline.settings.app_id), 1)})
    clocks.add({("clicks", 0): 7}, 1_000, 1, [1])
    clocks.add({("clicks", 0): 8}, 1_000, 2, [3])  # another worker's partition: the delay alone
    assert clocks.due(1_000 + clocks.delay_ms) == {}
    clocks.applied(1, [[None, {"batch": [clocks.token, 1]}]])
    assert clocks.due(1_000 + clocks.delay_ms) == {("clicks", 0): 8}


async def test_assigned_partitions_are_counted_for_every_topic_the_agents_read(pipeline: Pipeline) -> None:
    """The co-occurrence topic's partitions were left out of ``mailpulse_assigned_partitions``."""
    app_id = pipeline.settings.app_id
    sender = SimpleNamespace(conf=SimpleNamespace(id=app_id))
    assigned = {TP("clicks", 0), TP(names.events_topic(app_id), 1), TP(names.cooccurrence_topic(app_id), 1),
                TP(names.cooccurrence_topic(app_id), 2)}
    await app_module._on_assignment(pipeline)(sender, assigned)

    def owned(topic: str) -> float | None:
        return pipeline.metrics.registry.get_sample_value("mailpulse_assigned_partitions", {"topic": topic})

    assert (owned("clicks"), owned("carts"), owned(names.events_topic(app_id))) == (1, 0, 1)
    assert owned(names.cooccurrence_topic(app_id)) == 2


def _event(event_id: str, etype: str = "page_view", **extra: Any) -> dict[str, Any]:
    kind = "identities" if etype == "erase" else "clicks"
    return {"event_id": event_id, "type": etype, "ts": 1772359200000, "kind": kind,
            "user_id": "u-1", "src": [kind, 0, 0, 1772359200000], **extra}


def _batch(*events: dict[str, Any], clock: int | None = None) -> bytes:
    """An internal-topic record: one partition's batch of [profile key, event] pairs, then (when
    ``clock`` is given) every input partition's clock moved to it."""
    pairs: list[Any] = [["u:u-1", ev] for ev in events]
    if clock is not None:
        pairs.append([None, {"clocks": [[topic, n, clock] for topic in INPUT_TOPICS for n in range(4)]}])
    return orjson.dumps(pairs)


@BOTH_STORES
async def test_profiles_agent_writes_table_publishes_and_drops_duplicates(pipeline: Pipeline) -> None:
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(_event("e-1"), _event("e-1")))
        state = orjson.loads(pipeline.profile_state.read(b"u:u-1"))
        assert state["profile"]["version"] == 0  # parked: the watermark has not reached it
        await profiles.put(_batch(_event("e-2", "product_view", product_id="sku-1"), clock=1772359200000))
        state = orjson.loads(pipeline.profile_state.read(b"u:u-1"))
        assert state["profile"]["aggregates"]["event_counts"] == {"page_view": 1, "product_view": 1}
        await profiles.put(_batch(_event("x-1", "erase")))
        # only an erasure marker stays: the key, the time and how many identifiers the person had
        assert orjson.loads(pipeline.profile_state.read(b"u:u-1")) == {
            "erased_at": 1772359200000, "erased_keys": {"user_ids": 1}}
        # its timers went with it
        assert all(key != b"u:u-1" for n in range(4) for _, key in pipeline.due_index.pop_due(n, 2**62))
        # table writes are staged until the next commit, which writes them first
        assert sent(pipeline, "mailpulse-profile-state-changelog") == []
        pipeline.write_staged()
        assert orjson.loads(pipeline.profile_state[b"u:u-1"]) == {"erased_at": 1772359200000,
                                                                   "erased_keys": {"user_ids": 1}}
    changelog = sent(pipeline, "mailpulse-profile-state-changelog")
    assert [key for key, _, _ in changelog][-1] == b"u:u-1"
    published = sent(pipeline, "profiles")
    assert [value["version"] if value else None for _, value, _ in published] == [2, None]
    assert len({key for key, _, _ in published}) == 1
    assert pipeline.metrics.events.labels("clicks", "duplicate")._value.get() == 1


async def test_an_event_before_the_dedupe_window_is_a_duplicate_counted_apart(pipeline: Pipeline) -> None:
    """20 days of views forget the ids of the first 13 (7 days' retention): an event stamped back then
    under an id never seen is dropped as a duplicate and counted in
    ``mailpulse_events_before_dedupe_window_total``; a repeat of a held id is a duplicate only."""
    day, t = 86_400_000, 1772359200000
    views = [{**_event(f"v-{n}", "product_view", product_id="sku-1"), "ts": t + n * day // 10} for n in range(200)]
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(*views, clock=t + 20 * day))
        await profiles.put(_batch({**_event("old-new", "product_view", product_id="sku-1"), "ts": t + day},
                                  views[-1]))
    assert pipeline.metrics.events.labels("clicks", "duplicate")._value.get() == 2
    assert pipeline.metrics.before_dedupe.labels("clicks")._value.get() == 1


async def test_what_a_state_caused_is_delivered_before_the_state_is_written(pipeline: Pipeline) -> None:
    # After a crash the changelog's state says its events were seen, so re-reading them causes
    # nothing: their snapshot and segment changes must be in their topics before that state is.
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(_event("e-1", "product_view", product_id="sku-1"), clock=1772359200000))
    assert sent(pipeline, "profiles") and sent(pipeline, "segment-changes")
    pipeline.write_staged()
    log = pipeline.output.log  # type: ignore[attr-defined]
    first_state = log.index("mailpulse-profile-state-changelog")
    last_output = max(i for i, topic in enumerate(log[:first_state]) if not topic.endswith("-changelog")
                      and topic != "flush")
    assert "flush" in log[last_output:first_state], log


@BOTH_STORES
async def test_profiles_agent_emits_segment_changes_and_a_trigger_when_the_watermark_passes(pipeline: Pipeline) -> None:
    t = 1772359200000
    cart = _event("k-1", "cart_add", product_id="sku-1", price=20.0)
    cart["kind"], cart["src"][0] = "carts", "carts"
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(cart, clock=t))
        assert [v["segment"] for _, v, _ in sent(pipeline, "segment-changes")] == ["cart_holders"]
        await profiles.put(_batch(clock=t + 30 * 60_000 - 1))
        assert sent(pipeline, "triggers") == []
        await profiles.put(_batch(clock=t + 30 * 60_000))  # only time moved
    [(key, trigger, _)] = sent(pipeline, "triggers")
    assert trigger["type"] == "cart_abandoned" and trigger["at"] == "2026-03-01T10:30:00.000Z"
    assert key == trigger["profile_id"].encode()
    assert trigger["payload"]["cart"]["items"][0]["product_id"] == "sku-1"
    assert pipeline.metrics.triggers.labels("cart_abandoned")._value.get() == 1


def _carts_of_people(people: int, t: int) -> bytes:
    """One record: a cart add of each of ``people`` people (``u:u-0``, ...), then the clocks at ``t``."""
    carts = []
    for n in range(people):
        cart = _event(f"k-{n}", "cart_add", product_id="sku-1", price=20.0)
        cart["kind"], cart["src"][0], cart["user_id"] = "carts", "carts", f"u-{n}"
        carts.append(cart)
    return orjson.dumps([[f"u:u-{n}", cart] for n, cart in enumerate(carts)] + orjson.loads(_batch(clock=t)))


@BOTH_STORES
async def test_a_clock_that_makes_many_profiles_due_advances_them_in_chunks_with_the_loop_turning_between(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that makes a whole partition due at once (a closing tick, the wall clock after a stop)
    advanced every due profile in one step: a partition of 100k profiles held the event loop for
    about a minute (/healthz failed, the broker's heartbeats stopped).  Now ``MOST_DUE_PER_STEP`` at a time,
    the loop turning between them, every one before the record is acked."""
    import asyncio

    import streams.record_step as record_step_module

    monkeypatch.setattr(app_module, "MOST_DUE_PER_STEP", 5)
    t = 1772359200000
    folded = _carts_of_people(12, t)
    steps: list[int] = []
    real_apply_due = record_step_module.apply_due

    def counted(keys: Any, *args: Any) -> Any:
        steps.append(len(keys))
        return real_apply_due(keys, *args)

    monkeypatch.setattr(app_module, "apply_due", counted)
    turns = 0

    async def turning() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(folded)
        assert sent(pipeline, "triggers") == []
        beside = asyncio.ensure_future(turning())
        await asyncio.sleep(0)
        turns = 0
        await profiles.put(_batch(clock=t + 30 * 60_000))  # only time moved: 12 profiles due at once
        beside.cancel()
    fired = sorted(trigger["payload"]["cart"]["items"][0]["product_id"] and key for key, trigger, _ in
                   sent(pipeline, "triggers") if trigger["type"] == "cart_abandoned")
    assert len(fired) == 12 == len(set(fired))
    assert steps == [5, 2]  # 5 in the record's own step, then the rest in chunks of 5
    assert turns >= 2  # the loop turned between the chunks
    assert pipeline.health.taken["profiles"] == 4  # two records, two chunks: busy, not wedged



@pytest.mark.parametrize("rebalance", [False, True])
async def test_the_due_profiles_a_record_left_go_in_chunks_to_the_last_one_unless_a_rebalance_comes_between(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, rebalance: bool) -> None:
    """The chunks after the record's own step: each advanced, a last one of a single profile too, with
    the staged writes written out between them when many are staged; a rebalance between two chunks
    (the due index reset) ends them, the partition perhaps another worker's now."""
    import streams.record_step as record_step_module

    monkeypatch.setattr(app_module, "MOST_DUE_PER_STEP", 5)
    monkeypatch.setattr(app_module, "STAGED_LIMIT", 0)
    t = 1772359200000
    folded = _carts_of_people(16, t)
    steps: list[int] = []
    writes: list[int] = []  # the chunks advanced by each write of the staged values
    real_apply_due, real_write_staged = record_step_module.apply_due, pipeline.write_staged

    def counted(keys: Any, *args: Any) -> Any:
        steps.append(len(keys))
        if rebalance:
            pipeline.due_index.reset()
        return real_apply_due(keys, *args)

    def written(commit: bool = True) -> None:
        writes.append(len(steps))
        real_write_staged(commit)

    monkeypatch.setattr(app_module, "apply_due", counted)
    monkeypatch.setattr(pipeline, "write_staged", written)
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(folded)
        writes.clear()
        await profiles.put(_batch(clock=t + 30 * 60_000))  # only time moved: 16 profiles due at once
    fired = [key for key, trigger, _ in sent(pipeline, "triggers") if trigger["type"] == "cart_abandoned"]
    if rebalance:
        assert steps == [5] and len(fired) == 10  # the record's own 5 and one chunk
    else:
        assert steps == [5, 5, 1] and len(fired) == 16 == len(set(fired))
        assert writes == [0, 1, 2, 3]  # after the record's step, then after each chunk

def _run(values: list[bytes], first_offset: int = 10) -> list[Any]:
    """A fetched run of internal records of partition 1, as the consumer delivers it (a ``RecordBatch``'s value)."""
    return RecordBatch([SimpleNamespace(topic="mailpulse-profile-events", partition=1, offset=offset,
                                        timestamp=1772359200000, timestamp_type=0, key=None, value=value,
                                        serialized_value_size=len(value))
                        for offset, value in enumerate(values, start=first_offset)]).value


@BOTH_STORES
async def test_a_fetched_run_of_internal_records_is_applied_in_order(pipeline: Pipeline) -> None:
    """The consumer delivers a run of one partition's internal records as one message (a
    ``RecordBatch``): its records are applied in order, as one step; a record that is not one of
    ours is dead-lettered with its own place, without stopping the rest of the run."""
    t = 1772359200000
    cart = _event("k-1", "cart_add", product_id="sku-1", price=20.0)
    cart["kind"], cart["src"][0] = "carts", "carts"
    values = [_batch(cart, clock=t), b"{not an internal record", _batch(clock=t + 30 * 60_000 - 1),
              _batch(clock=t + 30 * 60_000)]
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run(values))
    assert [v["segment"] for _, v, _ in sent(pipeline, "segment-changes")] == ["cart_holders"]
    [(_, trigger, _)] = sent(pipeline, "triggers")  # fired by the last record's clock, not before
    assert trigger["type"] == "cart_abandoned" and trigger["at"] == "2026-03-01T10:30:00.000Z"
    [(_, letter, _)] = sent(pipeline, "dead-letter")
    assert letter["error"]["code"] == "processing_error" and (letter["partition"], letter["offset"]) == (1, 11)
    state = orjson.loads(pipeline.profile_state.read(b"u:u-1", 1))
    assert state["rules"]["clock"] == t + 30 * 60_000


@BOTH_STORES
async def test_a_run_is_one_step_an_event_behind_an_earlier_record_s_clocks_is_not_late(pipeline: Pipeline) -> None:
    """A run's records are one step: an event of a later record is judged against the watermark the
    run started with, and the run's events are folded in event-time order.  (Record by record, e-1
    would have been late behind the first record's clocks, and folded after e-2.)"""
    t = 1772359200000
    late, early = _event("e-2", "product_view", product_id="sku-2"), _event("e-1", "product_view", product_id="sku-1")
    late["ts"], early["ts"] = t + 2_000, t + 1_000
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([_batch(late, clock=t + 5_000), _batch(early)]))
    assert pipeline.metrics.late_events.labels("clicks")._value.get() == 0
    state = orjson.loads(pipeline.profile_state.read(b"u:u-1", 1))
    assert state["rules"]["recent_products"] == ["sku-1", "sku-2"]  # folded in event-time order
    assert pipeline.metrics.events_applied._value.get() == 2


async def test_an_entry_left_out_of_a_run_is_dead_lettered_with_its_own_record_s_place(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An internal message (not an input event) names the internal record it came in: within a run,
    its own record, not the run's first or last."""
    import streams.record_step as record_step

    real = record_step.dispatch

    def dispatch(states: Any, blocks: Any, key: str, message: dict[str, Any], *args: Any) -> Any:
        if message.get("type") == "poison":
            raise KeyError("boom")
        return real(states, blocks, key, message, *args)

    monkeypatch.setattr(record_step, "dispatch", dispatch)
    poisoned = orjson.dumps([["u:u-9", {"type": "poison"}]])
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([_batch(_event("e-1")), poisoned, _batch(_event("e-2"))], first_offset=20))
    [(_, letter, _)] = sent(pipeline, "dead-letter")
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("mailpulse-profile-events", 1, 21)
    assert orjson.loads(letter["raw"]) == ["u:u-9", {"type": "poison"}]
    assert set(orjson.loads(pipeline.profile_state.read(b"u:u-1", 1))["seen"]) == {"e-1", "e-2"}


async def test_each_record_of_a_run_has_its_batch_marker_noted(pipeline: Pipeline) -> None:
    """A run is one step, but each record's marker is noted as that record's (a marker ends its
    record; the run's last record may be one without a marker, e.g. forwarded events)."""
    clocks = pipeline.delayed_clocks
    marked = [*orjson.loads(_batch(_event("e-1"))), [None, {"batch": [clocks.token, 1]}]]
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([orjson.dumps(marked), _batch(_event("e-2"))]))
    assert clocks._applied.get(1) == 1


def _of(user: str, event: dict[str, Any]) -> list[Any]:
    """The internal entry of ``event`` for user ``user``."""
    return [f"u:{user}", {**event, "user_id": user}]


def _fail_advance_of(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    import streams.record_step as record_step

    real = record_step.advance

    def advance(state: Any, *args: Any, **kwargs: Any) -> Any:
        if state["profile"]["key"] == key:
            raise ZeroDivisionError
        return real(state, *args, **kwargs)

    monkeypatch.setattr(record_step, "advance", advance)


@BOTH_STORES
async def test_a_profile_failing_in_one_record_of_a_run_keeps_its_entries_of_the_others(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the run's step leaves something out, the run is stepped again record by record, so a
    failure costs what it cost when each record was its own step."""
    import streams.record_step as record_step

    real = record_step.advance

    def advance(state: Any, *args: Any, **kwargs: Any) -> Any:
        if any(entry[2] == "poison" for entry in state.get("pending", ())):
            raise ZeroDivisionError
        return real(state, *args, **kwargs)

    monkeypatch.setattr(record_step, "advance", advance)
    t = 1772359200000
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([_batch(_event("e-1"), clock=t), _batch(_event("poison"), clock=t),
                                 _batch(_event("e-3"), clock=t)]))
    letters = [orjson.loads(letter["raw"])["event_id"] for _, letter, _ in sent(pipeline, "dead-letter")]
    assert letters == ["poison"]
    assert set(orjson.loads(pipeline.profile_state.read(b"u:u-1", 1))["seen"]) == {"e-1", "e-3"}
    # the dropped result of the run's step is not counted: each event once, as its record's step saw it
    m = pipeline.metrics
    assert m.events.labels("clicks", "processed")._value.get() == 2
    assert m.events.labels("clicks", "dead_letter")._value.get() == 1
    assert m.processing_errors.labels("profiles", "advance")._value.get() == 1
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "processing_error" in r.getMessage()]
    assert len(warned) == 1  # one failure, one warning: the run's own attempt is logged at debug level


async def test_a_damaged_record_in_a_run_costs_its_own_entries_only(pipeline: Pipeline) -> None:
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([_batch(_event("e-1")), b"[1]", _batch(_event("e-2"))], first_offset=30))
    [(_, letter, _)] = sent(pipeline, "dead-letter")
    assert (letter["offset"], letter["error"]["message"]) == (31, "profile hop, dispatch: TypeError")  # (its entry)
    assert set(orjson.loads(pipeline.profile_state.read(b"u:u-1", 1))["seen"]) == {"e-1", "e-2"}


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_a_run_stepped_again_record_by_record_gives_back_what_it_took_from_the_due_index(
    pipeline: Pipeline, rocksdb_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    """u-1's parked event falls due in the run, whose first step fails for u-2: the keys that step
    popped from the due index are pushed back, so the records stepped one by one still fold u-1.
    (With RocksDB tables the index is the two-tier one a worker runs, ``TieredDueIndex``.)"""
    pipeline = rocksdb_pipeline if store == "rocksdb" else pipeline
    assert isinstance(pipeline.due_index, TieredDueIndex) == (store == "rocksdb")
    _fail_advance_of(monkeypatch, "u:u-2")
    t = 1772359200000
    clock = _clock(t + 1_000)
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([orjson.dumps([_of("u-1", _event("e-1"))])]))  # parked: no clock yet
        await profiles.put(_run([orjson.dumps([_of("u-2", _event("e-2")), clock]),
                                 orjson.dumps([_of("u-3", _event("e-3"))])], first_offset=11))
    state = orjson.loads(pipeline.profile_state.read(b"u:u-1", 1))
    assert state["profile"]["aggregates"]["event_counts"] == {"page_view": 1}
    assert [orjson.loads(letter["raw"])["event_id"] for _, letter, _ in sent(pipeline, "dead-letter")] == ["e-2"]


def _with_rocksdb(tmp_path: Path) -> Pipeline:
    settings = Settings(broker="kafka://127.0.0.1:1", table_store="rocksdb", data_dir=tmp_path, partitions=4)
    return _with_rocksdb_of(create_app(settings, output=RecordingOutput()))


def _with_rocksdb_of(p: Pipeline) -> Pipeline:

    class Everything:
        def __contains__(self, tp: Any) -> bool:
            return True

    # Faust's RocksDB store iterates only the partitions assigned to the worker; none are here.
    p.app.assignor.assigned_actives = Everything  # type: ignore[method-assign]
    assert isinstance(p.due_index, TieredDueIndex)
    return p


@pytest.fixture
async def rocksdb_pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    yield _with_rocksdb(tmp_path / "rocksdb")


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
@pytest.mark.parametrize("written", [False, True])
async def test_the_due_index_is_rebuilt_from_profile_state_after_a_rebalance(
        pipeline: Pipeline, rocksdb_pipeline: Pipeline, store: str, written: bool) -> None:
    # The due time lives in each stored state; a rebalance resets the index, and the next record
    # rebuilds it from the table (staged values included), so a timer set before still fires.
    # With RocksDB tables the index keeps what is not due soon in a RocksDB database (TieredDueIndex).
    pipeline = rocksdb_pipeline if store == "rocksdb" else pipeline
    assert isinstance(pipeline.due_index, TieredDueIndex) == (store == "rocksdb")
    t = 1772359200000
    cart = _event("k-1", "cart_add", product_id="sku-1", price=20.0)
    cart["kind"], cart["src"][0] = "carts", "carts"
    async with agent(pipeline, "profiles").test_context() as profiles:
        partition = partition_for("u:u-1", 4)  # where the ingest agent sends the person's events
        await profiles.put(_batch(cart, clock=t), partition=partition)
        if written:
            pipeline.write_staged()
        assert orjson.loads(pipeline.profile_state.read(b"u:u-1"))["due"] == t + 30 * 60_000
        pipeline.due_index.reset()
        await profiles.put(_batch(clock=t + 30 * 60_000), partition=partition)
    [(_, trigger, _)] = sent(pipeline, "triggers")
    assert trigger["type"] == "cart_abandoned"


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_a_stored_state_that_cannot_be_read_costs_its_own_entries_not_the_worker(
        pipeline: Pipeline, rocksdb_pipeline: Pipeline, store: str, failures: list[tuple[str, str]]) -> None:
    # A value, key or due time this version cannot read or index (another program's, or a newer
    # version's after a rollback) was read by every rebuild of the due index, which ended the worker at
    # every start. Now it is counted and has no timer; an event for it is dead-lettered by the step's
    # isolation, or goes in if the state is otherwise readable.
    pipeline = rocksdb_pipeline if store == "rocksdb" else pipeline
    t = 1772359200000
    cart = _event("k-1", "cart_add", product_id="sku-1", price=20.0)
    cart["kind"], cart["src"][0] = "carts", "carts"
    partition = partition_for("u:u-1", 4)
    clocks = [None, {"clocks": [[topic, n, t + 30 * 60_000] for topic in INPUT_TOPICS for n in range(4)]}]
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(orjson.dumps([["u:u-1", cart], _of("u-4", _event("p-4"))]), partition=partition)
        pipeline.write_staged()
        table = pipeline.profile_state
        table.stage(b"u:u-2", b"\x00 not a state", partition)
        table.stage(b"u:\xff", b'{"due":5}', partition)
        table.stage(b"u:u-3", b'{"due":9223372036854775808,"profile":{}}', partition)  # past the index's range
        table.stage(b"u:u-4", orjson.dumps({**orjson.loads(table.read(b"u:u-4", partition) or b""), "due": 1.5}),
                    partition)
        pipeline.due_index.reset()  # a rebalance, or a start: rebuilt from the table
        views = [_of(f"u-{n}", _event(f"v-{n}", "product_view", product_id="sku-1")) for n in (2, 4)]
        await profiles.put(orjson.dumps([*views, clocks]), partition=partition)
    assert failures == []
    [(_, trigger, _)] = sent(pipeline, "triggers")  # u-1's timer was rebuilt and fired
    assert trigger["type"] == "cart_abandoned"
    letters = [letter for _, letter, _ in sent(pipeline, "dead-letter")]
    assert {letter["error"]["code"] for letter in letters} == {"processing_error"}
    assert [orjson.loads(letter["raw"])["event_id"] for letter in letters] == ["v-2"]
    assert decode_due(table.read(b"u:u-4", partition)) is not None  # its view went in, with a due time again
    assert pipeline.metrics.processing_errors.labels("profiles", "stored_state")._value.get() == 4


@pytest.mark.parametrize("stored", [b"\x00 not JSON", b"[1, 2]", b'{"clicks/0": null}', b'{"clicks/0": "x"}'])
async def test_stored_clocks_that_cannot_be_read_cost_nothing_but_themselves(
        pipeline: Pipeline, stored: bytes, failures: list[tuple[str, str]]) -> None:
    # A partition's stored clocks this version cannot read (another program's, a newer version's after
    # a rollback) left every record of the partition out whole, dead-lettered, or failed every clock
    # entry merged into them, so the watermark never moved there again and events stayed parked.
    partition = partition_for("u:u-1", 4)
    pipeline.partition_clocks.stage(b"clocks|%d" % partition, stored, partition)
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(_event("e-1")), partition=partition)
        await profiles.put(_batch(_event("e-2", "product_view", product_id="sku-1"), clock=1772359200000),
                           partition=partition)
    assert failures == [] and sent(pipeline, "dead-letter") == []
    state = orjson.loads(pipeline.profile_state.read(b"u:u-1", partition) or b"null")
    assert state["profile"]["aggregates"]["event_counts"] == {"page_view": 1, "product_view": 1}
    clocks = orjson.loads(pipeline.partition_clocks.read(b"clocks|%d" % partition, partition) or b"null")
    assert clocks["clicks/0"] == 1772359200000


def decode_due(value: bytes | None) -> Any:
    return orjson.loads(value or b"{}").get("due")


async def test_wall_clock_moves_the_watermark_without_input_clocks(tmp_path: Path) -> None:
    settings = Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path, partitions=4,
                        clock="wall", wall_clock_delay_s=5)
    p = create_app(settings, output=RecordingOutput())
    t = 1772359200000
    async with agent(p, "profiles").test_context() as profiles:
        await profiles.put(_batch(_event("e-1", "product_view", product_id="sku-1")))
        assert sent(p, "segment-changes") == []  # no input clock has moved: parked
        await profiles.put(orjson.dumps([[None, {"wall": t + 4_999}]]))
        assert sent(p, "segment-changes") == []  # the wall clock minus the 5 s delay is still before it
        await profiles.put(orjson.dumps([[None, {"wall": t + 5_000}]]))
    [(_, change, _)] = sent(p, "segment-changes")
    assert (change["segment"], change["change"], change["at"]) == ("recent_browsers", "entered",
                                                                  "2026-03-01T10:00:00.000Z")


async def test_co_occurrences_are_counted_per_product_and_feed_recommendations(pipeline: Pipeline) -> None:
    t = 1772359200000
    views = [_event(f"v-{n}", "product_view", product_id=product) for n, product in enumerate("ab")]
    views[1]["ts"] += 1000
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(*views, clock=t + 1000))
        assert sent(pipeline, "mailpulse-co-occurrence") == []  # summed until the next commit's cut
        again = _event("v-2", "product_view", product_id="b")  # another record: its pairs are summed
        again["ts"] += 1500
        await profiles.put(_batch(again, clock=t + 1500))
    pipeline.write_staged()  # what an offset commit does first
    records = sent(pipeline, "mailpulse-co-occurrence")
    assert len(records) == len({partition_for(product, pipeline.settings.partitions) for product in "ab"})
    counted = {product: pairs for _, entries, _ in records for product, pairs in entries}
    assert counted == {"b": [["a", 2]], "a": [["b", 2]]}
    assert pipeline.pairs.held == 0
    async with agent(pipeline, "cooccurrence").test_context() as cooccurrence:
        for _, entries, _ in sent(pipeline, "mailpulse-co-occurrence"):
            await cooccurrence.put(orjson.dumps(entries))
    published = {key: value for key, value, _ in sent(pipeline, "mailpulse-product-recs")}
    assert published == {b"a": ["b"], b"b": ["a"]}

    # a trigger's payload recommends the published neighbours of the cart, leaving the cart out
    for key, value in published.items():
        pipeline.product_recs.apply(key, orjson.dumps([*value, "z"]))
    cart = _event("k-1", "cart_add", product_id="a", price=2.0)
    cart["kind"], cart["src"][0], cart["ts"] = "carts", "carts", t + 2000
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(cart, clock=t + 2000 + 30 * 60_000))
    [(_, trigger, _)] = sent(pipeline, "triggers")
    assert trigger["payload"]["recommendations"] == [{"product_id": "b"}, {"product_id": "z"}]


@pytest.mark.parametrize("damaged", [b"5", b'[["x"]]', b"not json", orjson.dumps([f"p-{n}" for n in range(11)])])
async def test_a_damaged_product_recs_record_is_left_out_not_the_triggers_that_name_its_product(
        pipeline: Pipeline, damaged: bytes) -> None:
    """Every worker reads the recommendations topic into a replica; a record there that is not a list of
    at most ten product ids failed the step of each profile whose trigger named the product (its good
    events dead-lettered), and one that is not JSON made the reader start again at it for good."""
    pipeline.product_recs.apply(b"a", orjson.dumps(["b"]))
    pipeline.product_recs.apply(b"a", damaged)  # what the reader thread does with each record
    assert pipeline.product_recs.get("a") is None  # (the damaged value replaced the older one)
    t = 1772359200000
    cart = _event("k-1", "cart_add", product_id="a", price=2.0)
    cart["kind"], cart["src"][0], cart["ts"] = "carts", "carts", t + 2000
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(cart, clock=t + 2000 + 30 * 60_000))
    assert sent(pipeline, "dead-letter") == []
    [(_, trigger, _)] = sent(pipeline, "triggers")
    assert trigger["payload"]["recommendations"] == []
    assert pipeline.metrics.processing_errors.labels("product_recs", "record")._value.get() == 1


async def test_a_co_occurrence_record_read_again_after_its_counts_were_written_is_not_counted_twice(
        pipeline: Pipeline) -> None:
    """A revocation's commit writes the staged counts without the offsets of their records (Faust has
    forgotten the revoked partitions' acks by then), and so does a background commit a rebalance
    stops: whoever reads the records again must not add them again.  The partition's table keeps the
    offset of the last record counted, after the counts in its changelog."""
    record, other = orjson.dumps([["a", [["b", 1]]]]), orjson.dumps([["a", [["c", 1]]]])
    async with agent(pipeline, "cooccurrence").test_context() as cooccurrence:
        await cooccurrence.put(record, partition=0)  # offset 0: counted and acked, its offset not committed
    pipeline.write_staged()  # the revocation's commit
    changelog = [key for key, _, partition in sent(pipeline, "mailpulse-product-neighbours-changelog")]
    assert changelog == [b"a", b"\xffapplied|0"]  # the mark after what it covers
    async with agent(pipeline, "cooccurrence").test_context() as cooccurrence:  # read again from offset 0
        await cooccurrence.put(record, partition=0)
        await cooccurrence.put(other, partition=0)  # offset 1: new
    pipeline.write_staged()
    assert pipeline.product_neighbours.read_json(b"a", 0) == {"b": 1, "c": 1}


def test_the_recommendations_replica_keeps_at_most_its_bound_and_counts_what_goes(tmp_path: Path) -> None:
    """Product ids come from the input: past ``MAILPULSE_RECS_PRODUCTS`` the products written longest
    ago leave each worker's replica (counted), so bogus ids cannot grow its memory without end."""
    settings = Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path, recs_products=3)
    p = create_app(settings, output=RecordingOutput())
    recs = p.product_recs
    for product in "abcd":
        recs.apply(product.encode(), orjson.dumps(["x"]))
    recs.apply(b"b", orjson.dumps(["y"]))  # written again: now the newest
    recs.apply(b"e", orjson.dumps(["x"]))
    assert [recs.get(product) for product in "abcde"] == [None, ["y"], None, ["x"], ["x"]]
    assert p.metrics.product_recs_evicted._value.get() == 2


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_the_product_neighbours_table_keeps_at_most_its_bound_per_partition_and_tombstones_what_goes(
        tmp_path: Path, store: str) -> None:
    """Product ids come from the input: past ``MAILPULSE_RECS_PRODUCTS`` over the partitions the least
    recently counted products leave the table (a changelog tombstone) and the recommendations topic (a
    tombstone there too), counted; after a restart the products with the fewest counts go first."""
    settings = Settings(broker="kafka://127.0.0.1:1", table_store=store, data_dir=tmp_path, partitions=4,
                        recs_products=8)  # 2 products per partition
    p = create_app(settings, output=RecordingOutput())
    if store == "rocksdb":
        p = _with_rocksdb_of(p)
    products = [product for product in (f"p{n}" for n in range(200)) if partition_for(product, 4) == 0][:4]
    first, second, third, fourth = products
    async with agent(p, "cooccurrence").test_context() as cooccurrence:
        await cooccurrence.put(orjson.dumps([[first, [["x", 5]]], [second, [["x", 1]]]]), partition=0)
        await cooccurrence.put(orjson.dumps([[first, [["y", 1]]], [third, [["x", 1]]]]), partition=0)
    table = p.product_neighbours
    assert table.read_json(second.encode(), 0) is None  # counted longest ago: gone
    assert table.read_json(first.encode(), 0) == {"x": 5, "y": 1} and table.read_json(third.encode(), 0) == {"x": 1}
    assert (second.encode(), None) in [(key, value) for key, value, _ in sent(p, "mailpulse-product-recs")]
    assert p.metrics.product_neighbours_evicted._value.get() == 1
    p.write_staged()
    changelog = [(key, value) for key, value, _ in p.output.sent.get(table.changelog_topic.get_topic_name(), [])]
    assert (second.encode(), None) in changelog

    p.counted_products.drop({0})  # the partition went and came back: its order is built from the table
    async with agent(p, "cooccurrence").test_context() as cooccurrence:
        for _ in range(2):  # (offsets 0 and 1 again: counted already)
            await cooccurrence.put(b"[]", partition=0)
        await cooccurrence.put(orjson.dumps([[fourth, [["x", 1]]]]), partition=0)
    assert table.read_json(third.encode(), 0) is None  # the fewest counts: first to go
    assert table.read_json(first.encode(), 0) == {"x": 5, "y": 1}
    assert table.read_json(fourth.encode(), 0) == {"x": 1}
    assert p.metrics.product_neighbours_evicted._value.get() == 2


async def test_co_occurring_products_past_the_strongest_fifty_are_counted_as_dropped(pipeline: Pipeline) -> None:
    pairs = [[f"p{n:02d}", 2] for n in range(50)]
    async with agent(pipeline, "cooccurrence").test_context() as cooccurrence:
        await cooccurrence.put(orjson.dumps([["a", pairs]]))
        await cooccurrence.put(orjson.dumps([["a", [["weak", 1], ["p00", 1]]]]))
    assert len(pipeline.product_neighbours.read_json(b"a", 0)) == 50
    assert "weak" not in pipeline.product_neighbours.read_json(b"a", 0)
    assert pipeline.metrics.product_neighbours_dropped._value.get() == 1


async def test_a_co_occurrence_entry_that_cannot_be_counted_costs_only_itself(pipeline: Pipeline) -> None:
    good = ["a", [["b", 2]]]
    bad = [["c", [["d", 1], ["x", "many"]]], "not an entry", ["e", [["f", 2**40]]], ["g", [["h", 1e308]]]]
    async with agent(pipeline, "cooccurrence").test_context() as cooccurrence:
        await cooccurrence.put(orjson.dumps([bad[0], good, *bad[1:]]))
        await cooccurrence.put(b"not json")
        nested = b'[["a",[["b",1]]],' + b"[" * 300 + b'["b",1]' + b"]" * 300 + b"]"
        # orjson reads 1,024 levels but writes 254: the letter cannot re-encode the bad entry, it keeps the record
        await cooccurrence.put(nested)
    assert [(key, value) for key, value, _ in sent(pipeline, "mailpulse-product-recs")] == [(b"a", ["b"])]
    letters = [letter for _, letter, _ in sent(pipeline, "dead-letter")]
    assert [letter["error"]["code"] for letter in letters] == ["processing_error"] * 3
    assert orjson.loads(letters[0]["raw"]) == bad and letters[1]["raw"] == "not json"
    assert letters[2]["raw"].encode() == nested
    assert pipeline.product_neighbours.read_json(b"c", 0) is None  # nothing of a bad entry is counted


async def test_a_co_occurrence_send_that_fails_ends_the_worker_not_as_the_inputs_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: list[tuple[str, str]]
) -> None:
    """The producer's failure is not the record's: no dead letter, the worker ends before the ack."""
    class Refusing(RecordingOutput):
        def send(self, topic: str, *args: Any, **kwargs: Any) -> None:
            if topic == "mailpulse-product-recs":
                raise OSError("the producer is gone")
            super().send(topic, *args, **kwargs)

    settings = Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path, partitions=4)
    pipeline = create_app(settings, output=Refusing())
    _, acked_when_failing = await _put_until_it_fails(pipeline, "cooccurrence", orjson.dumps([["a", [["b", 1]]]]),
                                                      monkeypatch, failures)
    assert failures == [("cooccurrence", "OSError")] and acked_when_failing == [False]
    assert sent(pipeline, "dead-letter") == []


async def test_co_occurrences_go_out_at_a_background_commits_cut_and_a_lost_partitions_are_dropped(
        pipeline: Pipeline) -> None:
    t = 1772359200000
    views = [_event(f"v-{n}", "product_view", product_id=product) for n, product in enumerate("ab")]
    views[1]["ts"] += 1000
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(*views, clock=t + 1000))
    await pipeline.write_out_soon()  # the background commit's: sent before it waits for delivery
    log = pipeline.output.log  # type: ignore[attr-defined]
    assert "mailpulse-co-occurrence" in log
    assert log.index("mailpulse-co-occurrence") < log.index("delivered")

    async with agent(pipeline, "profiles").test_context() as profiles:
        later = [dict(view, event_id=f"w-{n}", ts=view["ts"] + 2000) for n, view in enumerate(views)]
        await profiles.put(_batch(*later, clock=t + 3000))
    assert pipeline.pairs.held
    revoked = {TP("mailpulse-profile-events", partition) for partition in range(pipeline.settings.partitions)}
    await pipeline.app.on_partitions_revoked.send(revoked=revoked)
    assert pipeline.pairs.held == 0  # the new owner folds those events again


async def test_free_memory_goes_back_after_a_large_write_out_and_when_the_worker_goes_idle(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.app

    trims: list[int] = []
    monkeypatch.setattr(streams.app, "release_free_memory", lambda: trims.append(len(trims)) or True)
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(_event("e-1"), clock=1772359200000))
        pipeline.write_staged()  # a small write-out: kept for later
        assert trims == [] and pipeline.untrimmed > 0
        pipeline.write_staged()  # the next commit has nothing staged: the worker went idle
        assert len(trims) == 1 and pipeline.untrimmed == 0
        pipeline.write_staged()  # idle and nothing written since: nothing to give back
        assert len(trims) == 1
        for n in range(streams.app.TRIM_AFTER):
            pipeline.profile_state.stage(b"k%d" % n, b"{}", 0)
        pipeline.write_staged()
        assert len(trims) == 2 and pipeline.untrimmed == 0


@BOTH_STORES
async def test_profiles_agent_scores_a_profile_an_hour_after_its_last_event(pipeline: Pipeline) -> None:
    t = 1772359200000
    version = pipeline.rules.scorer.version  # type: ignore[union-attr]
    assert pipeline.metrics.model_info.labels("purchase_probability", version)._value.get() == 1
    assert pipeline.metrics.model_info.labels("churn_probability", version)._value.get() == 1
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(_event("e-1", "product_view", product_id="sku-1"), clock=t))
        await profiles.put(_batch(clock=t + 60 * 60_000 - 1))
        assert sent(pipeline, "scores") == []
        await profiles.put(_batch(clock=t + 60 * 60_000))
    [(key, score, _)] = sent(pipeline, "scores")
    assert key == score["profile_id"].encode() and score["user_id"] == "u-1"
    assert score["at"] == "2026-03-01T11:00:00.000Z" and score["model_version"] == version
    assert score["churn_probability"] + score["purchase_probability"] == pytest.approx(1.0)
    latest = [value for _, value, _ in sent(pipeline, "profiles")][-1]
    assert latest["predictions"] == {k: v for k, v in score.items() if k not in ("profile_id", "user_id")}
    assert pipeline.metrics.scoring_seconds._sum.get() > 0


def _poison_dispatch(monkeypatch: pytest.MonkeyPatch, event_id: str) -> None:
    """The profile step's dispatch raises for one event id (a stand-in for any bug one input trips)."""
    import streams.record_step as record_step

    real = record_step.dispatch

    def dispatch(states: Any, blocks: Any, key: str, message: dict[str, Any], *args: Any) -> Any:
        if message.get("event_id") == event_id:
            raise KeyError("boom")
        return real(states, blocks, key, message, *args)

    monkeypatch.setattr(record_step, "dispatch", dispatch)


async def test_an_entry_that_makes_the_step_raise_is_dead_lettered_and_the_rest_of_the_record_goes_on(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison_dispatch(monkeypatch, "bad")
    other = _event("o-1", "product_view", product_id="sku-2")
    other["user_id"] = "u-2"
    pairs = orjson.loads(_batch(_event("e-1", "product_view", product_id="sku-1"), _event("bad"),
                                _event("e-2"), clock=1772359200000))
    pairs.insert(1, ["u:u-2", other])
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(orjson.dumps(pairs))
        await profiles.put(_batch(_event("e-3"), clock=1772359200001))  # the agent still runs
    state = orjson.loads(pipeline.profile_state.read(b"u:u-1"))
    assert state["profile"]["aggregates"]["event_counts"] == {"page_view": 2, "product_view": 1}
    assert set(state["seen"]) == {"e-1", "e-2", "e-3"}
    assert orjson.loads(pipeline.profile_state.read(b"u:u-2"))["profile"]["aggregates"]["event_counts"] == \
        {"product_view": 1}
    [(_, letter, _)] = sent(pipeline, "dead-letter")
    assert letter["error"] == {"code": "processing_error", "message": "profile hop, dispatch: KeyError"}
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("clicks", 0, 0)
    assert orjson.loads(letter["raw"])["event_id"] == "bad"
    m = pipeline.metrics
    assert m.processing_errors.labels("profiles", "dispatch")._value.get() == 1
    assert m.dead_letters.labels("processing_error")._value.get() == 1
    assert m.events.labels("clicks", "dead_letter")._value.get() == 1
    assert m.events.labels("clicks", "processed")._value.get() == 4  # each good event once, retry or not


async def test_a_profile_whose_advance_raises_is_left_out_and_other_profiles_go_on(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streams.record_step as record_step

    real = record_step.advance

    def advance(state: Any, *args: Any, **kwargs: Any) -> Any:
        if state["profile"]["key"] == "u:u-1":
            raise ZeroDivisionError
        return real(state, *args, **kwargs)

    monkeypatch.setattr(record_step, "advance", advance)
    other = _event("o-1")
    other["user_id"] = "u-2"
    pairs = orjson.loads(_batch(_event("e-1"), _event("e-2"), clock=1772359200000))
    pairs.insert(0, ["u:u-2", other])
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(orjson.dumps(pairs))
    assert pipeline.profile_state.read(b"u:u-1") is None  # nothing half-applied was written
    assert orjson.loads(pipeline.profile_state.read(b"u:u-2"))["profile"]["version"] > 0
    letters = [letter for _, letter, _ in sent(pipeline, "dead-letter")]
    assert sorted(orjson.loads(letter["raw"])["event_id"] for letter in letters) == ["e-1", "e-2"]
    assert {letter["error"]["message"] for letter in letters} == {"profile hop, advance: ZeroDivisionError"}
    assert pipeline.metrics.processing_errors.labels("profiles", "advance")._value.get() == 2


@pytest.mark.parametrize(("store", "failing_call"), [("memory", "advance"), ("rocksdb", "advance"),
                                                     ("memory", "snapshot")])
async def test_a_due_profile_whose_advance_raises_is_dead_lettered_and_tried_again_later_not_lost(
    pipeline: Pipeline, rocksdb_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, store: str,
    failing_call: str
) -> None:
    """u-1's score timer comes due in a record that names no entry of u-1: the failure is
    dead-lettered and counted, nothing of the failed attempt is written (the stored state only gets
    its new due time, so a rebuilt due index agrees), u-1 is not tried again at every record nor
    after a rebalance, and ``DUE_RETRY_MS`` later (in event time) its timer fires as it would have.
    (A failing snapshot comes after the state's encoding: still nothing of it may be written.)"""
    import streams.record_step as record_step

    pipeline = rocksdb_pipeline if store == "rocksdb" else pipeline
    partition = partition_for("u:u-1", 4)
    t = 1772359200000
    hour, retry = 60 * 60_000, record_step.DUE_RETRY_MS
    real = getattr(record_step, failing_call)
    failing = True

    def fails(state: Any, *args: Any, **kwargs: Any) -> Any:
        if failing and state["profile"]["key"] == "u:u-1":
            raise ZeroDivisionError
        return real(state, *args, **kwargs)

    monkeypatch.setattr(record_step, failing_call, fails)
    failing = False
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(_event("e-1", "product_view", product_id="sku-1"), clock=t), partition=partition)
        before = pipeline.profile_state.read(b"u:u-1", partition)
        failing = True
        await profiles.put(_batch(clock=t + hour), partition=partition)  # the score timer is due: u-1 fails
        after = orjson.loads(pipeline.profile_state.read(b"u:u-1", partition))
        assert after == {**orjson.loads(before), "due": t + hour + retry}
        pipeline.due_index.reset()  # a rebalance: the index is rebuilt from the states
        await profiles.put(_batch(clock=t + hour + retry - 1), partition=partition)  # not tried again yet
        [(_, letter, _)] = sent(pipeline, "dead-letter")
        assert letter["error"] == {"code": "processing_error", "message": "profile hop, advance: ZeroDivisionError"}
        assert orjson.loads(letter["raw"]) == ["u:u-1", {"due": True, "retry_at": t + hour + retry}]
        assert pipeline.metrics.processing_errors.labels("profiles", "advance")._value.get() == 1
        assert pipeline.metrics.dead_letters.labels("processing_error")._value.get() == 1
        assert sent(pipeline, "scores") == []
        failing = False
        await profiles.put(_batch(clock=t + hour + retry), partition=partition)
    [(_, score, _)] = sent(pipeline, "scores")
    assert score["at"] == "2026-03-01T11:00:00.000Z"  # the timer's own time, not the retry's
    assert len(sent(pipeline, "dead-letter")) == 1


@BOTH_STORES
async def test_a_run_whose_only_failure_is_a_due_profile_is_applied_as_one_step_and_says_so_once(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A due profile left out costs no entry, so the run is not stepped again record by record; the
    failure is logged once, when the run's result is applied."""
    import streams.record_step as record_step

    t = 1772359200000
    real_advance, real_isolated = record_step.advance, record_step.step_isolated
    steps: list[int] = []
    failing = False

    def advance(state: Any, *args: Any, **kwargs: Any) -> Any:
        if failing and state["profile"]["key"] == "u:u-1":
            raise ZeroDivisionError
        return real_advance(state, *args, **kwargs)

    def step_isolated(entries: list[Any], *args: Any, **kwargs: Any) -> Any:
        steps.append(len(entries))
        return real_isolated(entries, *args, **kwargs)

    monkeypatch.setattr(record_step, "advance", advance)
    monkeypatch.setattr(record_step, "step_isolated", step_isolated)
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([orjson.dumps([_of("u-1", _event("e-1")), _clock(t)])]))
        failing, steps[:] = True, []
        await profiles.put(_run([orjson.dumps([_clock(t + 60 * 60_000)]),
                                 orjson.dumps([_of("u-2", _event("e-2"))])], first_offset=11))
    assert steps == [2]  # the run's two entries, in one step
    [(_, letter, _)] = sent(pipeline, "dead-letter")
    assert orjson.loads(letter["raw"])[0] == "u:u-1"
    assert orjson.loads(pipeline.profile_state.read(b"u:u-2", 1))["seen"] == {"e-2": t}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "processing_error" in warned[0] and "due" in warned[0]


@BOTH_STORES
async def test_a_due_profile_failing_with_its_entries_is_tried_again_later_for_what_was_due(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """u-1's parked event falls due in a record that also brings an entry of u-1, and u-1 fails: the
    entry is dead-lettered, and the parked event, which was due, is folded ``DUE_RETRY_MS`` later."""
    import streams.record_step as record_step

    t = 1772359200000
    real = record_step.advance
    failing = False

    def advance(state: Any, *args: Any, **kwargs: Any) -> Any:
        if failing and state["profile"]["key"] == "u:u-1":
            raise ZeroDivisionError
        return real(state, *args, **kwargs)

    monkeypatch.setattr(record_step, "advance", advance)
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([orjson.dumps([_of("u-1", _event("e-1"))])]))  # parked: no clock yet
        failing = True
        await profiles.put(_run([orjson.dumps([_of("u-1", _event("e-2")), _clock(t)])], first_offset=11))
        failing = False
        await profiles.put(_run([orjson.dumps([_clock(t + record_step.DUE_RETRY_MS - 1)])], first_offset=12))
        assert orjson.loads(pipeline.profile_state.read(b"u:u-1", 1))["profile"]["version"] == 0
        await profiles.put(_run([orjson.dumps([_clock(t + record_step.DUE_RETRY_MS)])], first_offset=13))
    assert [orjson.loads(letter["raw"])["event_id"] for _, letter, _ in sent(pipeline, "dead-letter")] == ["e-2"]
    state = orjson.loads(pipeline.profile_state.read(b"u:u-1", 1))
    assert state["profile"]["aggregates"]["event_counts"] == {"page_view": 1} and set(state["seen"]) == {"e-1"}


@BOTH_STORES
async def test_many_due_profiles_failing_in_one_record_are_left_out_in_place_and_the_record_goes_on(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five parked profiles fall due in a record of one event and its clocks, and each one's advance
    raises: each is left out by the step itself (advanced once, no attempt per profile), so the
    record's own event and clocks still go in."""
    import streams.record_step as record_step

    t = 1772359200000
    real = record_step.advance
    tries: dict[str, int] = {}

    def advance(state: Any, *args: Any, **kwargs: Any) -> Any:
        key = state["profile"]["key"]
        if key != "u:u-9":
            tries[key] = tries.get(key, 0) + 1
            raise ZeroDivisionError
        return real(state, *args, **kwargs)

    def of(user: str) -> list[Any]:
        return _of(user, _event(f"e-{user}"))

    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([orjson.dumps([of(f"u-{n}") for n in range(1, 6)])]))  # parked
        monkeypatch.setattr(record_step, "advance", advance)
        await profiles.put(_run([orjson.dumps([of("u-9"), _clock(t)])], first_offset=11))
    assert tries == {f"u:u-{n}": 1 for n in range(1, 6)}
    state = orjson.loads(pipeline.profile_state.read(b"u:u-9", 1))
    assert state["profile"]["aggregates"]["event_counts"] == {"page_view": 1}
    assert pipeline.partition_clocks.read_json(b"clocks|1", 1)  # the record's clocks went in
    letters = [orjson.loads(letter["raw"]) for _, letter, _ in sent(pipeline, "dead-letter")]
    assert letters == [[f"u:u-{n}", {"due": True, "retry_at": t + record_step.DUE_RETRY_MS}] for n in range(1, 6)]
    assert pipeline.metrics.processing_errors.labels("profiles", "advance")._value.get() == 5


@BOTH_STORES
async def test_a_due_profile_failing_in_a_run_of_empty_records_is_dead_lettered_with_the_runs_place(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An internal record ``[]`` has no entry to name a place; a due profile that fails while it is
    stepped (here: a stored due time behind the watermark, which a rebuilt index takes as due at
    once) is dead-lettered with the record's."""
    import streams.record_step as record_step

    t = 1772359200000
    real = record_step.advance
    failing = False

    def advance(state: Any, *args: Any, **kwargs: Any) -> Any:
        if failing:
            raise ZeroDivisionError
        return real(state, *args, **kwargs)

    monkeypatch.setattr(record_step, "advance", advance)
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_run([orjson.dumps([_of("u-1", _event("e-1")), _clock(t)])]))
        state = orjson.loads(pipeline.profile_state.read(b"u:u-1", 1))
        pipeline.profile_state.stage(b"u:u-1", orjson.dumps({**state, "due": t}), 1)
        pipeline.due_index.reset()  # a rebalance: rebuilt from the states
        failing = True
        await profiles.put(_run([b"[]"], first_offset=12))
    [(_, letter, _)] = sent(pipeline, "dead-letter")
    assert (letter["partition"], letter["offset"]) == (1, 12)
    assert orjson.loads(letter["raw"])[0] == "u:u-1"


def _clock(at: int) -> list[Any]:
    """An entry moving every input partition's clock to ``at``."""
    return [None, {"clocks": [[topic, n, at] for topic in INPUT_TOPICS for n in range(4)]}]


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
@pytest.mark.parametrize("as_run", [False, True])
async def test_a_record_left_out_whole_gives_back_the_due_profiles_its_step_took(
    pipeline: Pipeline, rocksdb_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, as_run: bool, store: str
) -> None:
    """A step's first attempt pops u-1 and u-2 (their parked events fall due) and fails for u-3,
    whose event is in the record; its second attempt fails for the whole record.  What the first
    popped is due again, so the next record folds u-1 and u-2.  In a run of two records, the run's
    step fails so, and then the first record's own step does too."""
    import streams.record_step as record_step

    pipeline = rocksdb_pipeline if store == "rocksdb" else pipeline
    assert isinstance(pipeline.due_index, TieredDueIndex) == (store == "rocksdb")

    t = 1772359200000
    real_advance, real_watermark = record_step.advance, record_step.watermark
    calls, failing = [0], True
    raising = {3, 6} if as_run else {3}  # the second attempt of each step that pops: nothing to single out

    def advance(state: Any, *args: Any, **kwargs: Any) -> Any:
        if failing and state["profile"]["key"] == "u:u-3":
            raise ZeroDivisionError
        return real_advance(state, *args, **kwargs)

    def watermark(*args: Any) -> Any:
        calls[0] += 1
        if failing and calls[0] in raising:
            raise ZeroDivisionError
        return real_watermark(*args)

    def of(user: str, event_id: str) -> list[Any]:
        return _of(user, _event(event_id))

    clock = _clock(t)
    async with agent(pipeline, "profiles").test_context() as profiles:
        # partition 1 throughout (_run): the due index is the partition's
        await profiles.put(_run([orjson.dumps([of("u-1", "e-1"), of("u-2", "e-2")])]))  # parked
        monkeypatch.setattr(record_step, "advance", advance)
        monkeypatch.setattr(record_step, "watermark", watermark)
        failing_record = orjson.dumps([of("u-3", "e-3"), clock])
        if as_run:
            await profiles.put(_run([failing_record, orjson.dumps([of("u-4", "e-4")])], first_offset=11))
        else:
            await profiles.put(_run([failing_record], first_offset=11))
        assert calls[0] >= max(raising)
        for key in (b"u:u-1", b"u:u-2"):
            assert orjson.loads(pipeline.profile_state.read(key, 1))["profile"]["version"] == 0
        failing = False
        # the same clocks again: the left-out record set none
        await profiles.put(_run([orjson.dumps([clock])], first_offset=13))
    for key in (b"u:u-1", b"u:u-2"):
        assert orjson.loads(pipeline.profile_state.read(key, 1))["profile"]["aggregates"]["event_counts"] == \
            {"page_view": 1}
    assert "e-3" in {orjson.loads(letter["raw"]).get("event_id") for _, letter, _ in sent(pipeline, "dead-letter")}


async def test_a_record_left_out_whole_counts_a_dead_letter_for_each_event_not_for_its_clocks_or_marker(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streams.record_step as record_step

    def watermark(*_: Any) -> int:
        raise ZeroDivisionError  # the partition's clocks: a failure no entry or key is named for

    monkeypatch.setattr(record_step, "watermark", watermark)
    pairs = orjson.loads(_batch(_event("e-1"), clock=1772359200000))
    pairs.append([None, {"batch": [pipeline.delayed_clocks.token, 1]}])
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(orjson.dumps(pairs))
    [(_, letter, _)] = sent(pipeline, "dead-letter")
    assert orjson.loads(letter["raw"])["event_id"] == "e-1"
    m = pipeline.metrics
    assert m.processing_errors.labels("profiles", "record")._value.get() == 3  # each entry left out
    assert m.dead_letters.labels("processing_error")._value.get() == 1  # each letter sent


async def test_an_internal_record_that_is_not_one_is_dead_lettered_whole(pipeline: Pipeline) -> None:
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(b'{"not": "a list"}')
        await profiles.put(b"\xff\xfe")
        await profiles.put(_batch(_event("e-1"), clock=1772359200000))
    assert orjson.loads(pipeline.profile_state.read(b"u:u-1"))["profile"]["version"] > 0
    codes = [letter["error"]["code"] for _, letter, _ in sent(pipeline, "dead-letter")]
    assert codes == ["processing_error", "processing_error"]


async def test_consumer_lag_counts_from_the_committed_offset_not_the_acked_ones(pipeline: Pipeline) -> None:
    """A commit that is stuck while events are still processed shows as lag: what a restart reads again."""
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.types import TP

    from streams.app import _consumer_lag

    tp = TP("clicks", 3)

    class Consumer:
        _committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None, {tp: 40})
        _acked = {tp: list(range(40, 95))}  # processed up to 94, committed only up to 40

        def assignment(self) -> set[TP]:
            return {tp, TP("clicks", 4)}

        def highwater(self, partition: TP) -> int:
            return 100

    fake = SimpleNamespace(app=SimpleNamespace(consumer=Consumer()), metrics=pipeline.metrics,
                           settings=pipeline.settings, broker_ends={}, read_to_end={})
    await _consumer_lag(fake, set())()  # type: ignore[arg-type]
    gauge = pipeline.metrics.consumer_lag
    assert gauge.labels("clicks", "3")._value.get() == 60
    assert gauge.labels("clicks", "4")._value.get() == 100  # nothing committed yet: all of it


async def test_the_early_lag_gives_up_a_committed_offsets_fetch_that_waits_for_the_broker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The group coordinator's fetch of committed offsets retries until the broker answers, and the
    consumer's thread runs two calls at a time: fetches left waiting through an outage held up
    Faust's own calls (seeks, commits) in that thread.  Each is given up in the thread."""
    from streams.app import _committed_offsets

    monkeypatch.setattr(app_module, "EARLY_LAG_EVERY_S", 0.05)
    ended: list[str] = []

    class Coordinator:
        async def fetch_committed_offsets(self, partitions: list[TP]) -> dict[TP, Any]:
            try:
                await asyncio.sleep(3600)  # the broker does not answer
            finally:
                ended.append("given up")
            return {}

    class Thread:
        def _ensure_consumer(self) -> Any:
            return SimpleNamespace(_coordinator=Coordinator())

        async def call_thread(self, fun: Any) -> Any:
            # (the thread's loop is here the test's; as in the thread, the call goes on when its caller
            # stops waiting for it)
            return await asyncio.shield(asyncio.ensure_future(fun()))

    consumer = SimpleNamespace(_thread=Thread())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(_committed_offsets(consumer, [TP("clicks", 0)]), 1)
    assert ended == ["given up"]


async def test_the_early_lag_keeps_one_call_in_the_consumers_thread_while_the_broker_does_not_answer(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call to the consumer's thread goes on when its caller stops waiting: an early lag that gave
    up on the broker's ends and asked again queued one more call there each round of an outage."""
    from streams.app import _early_lag

    monkeypatch.setattr(app_module, "EARLY_LAG_EVERY_S", 0.01)
    monkeypatch.setattr(app_module, "ENDS_EVERY_S", 0.01)
    calls: list[TP] = []

    class Consumer:
        def assignment(self) -> set[TP]:
            return {TP("clicks", 0)}

        async def highwaters(self, *tps: TP) -> dict[TP, int]:
            calls.extend(tps)
            await asyncio.shield(asyncio.Event().wait())  # (as in the thread: not ended by its caller)
            return {}

    health = SimpleNamespace(started=False)
    fake = SimpleNamespace(app=SimpleNamespace(consumer=Consumer()), metrics=pipeline.metrics,
                           settings=pipeline.settings, health=health)
    task = asyncio.ensure_future(_early_lag(fake, set())())  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    health.started = True
    task.cancel()
    assert calls == [TP("clicks", 0)]


async def test_health_reports_a_crashed_agent_and_the_worker_state(pipeline: Pipeline) -> None:
    import asyncio

    from streams.app import _health

    check = _health(pipeline)
    await check()
    assert pipeline.health.state() == "recovering"  # no partitions assigned yet
    pipeline.health.ready = True
    await check()

    def worker_state(state: str) -> float | None:  # as scraped
        return pipeline.metrics.registry.get_sample_value("mailpulse_worker_state", {"state": state})

    assert worker_state("running") == 1 and worker_state("starting") == 0
    # the event loop stops turning: the scrape says so without the loop's help
    beat = pipeline.health.beat
    pipeline.health.beat -= 60
    assert worker_state("error") == 1 and worker_state("running") == 0
    pipeline.health.beat = beat

    class Actor:
        _crashed = asyncio.Event()

    actor = Actor()
    actor._crashed.set()
    agent(pipeline, "ingest")._actors.add(actor)
    await check()
    assert pipeline.health.crashed == "ingest" and pipeline.health.answer("/healthz")[0] is False
    assert worker_state("error") == 1 and worker_state("running") == 0


async def test_health_reads_the_records_waiting_at_each_agent(pipeline: Pipeline) -> None:
    """What the health beat gives :meth:`Health.watch_agents`: the records Faust's conductor handed to
    the channels an agent's streams iterate, not taken yet; one whose records wait with none taken for
    AGENT_STALL_AFTER_S fails /healthz."""
    from streams.app import _health
    from streams.metrics import AGENT_STALL_AFTER_S

    events = agent(pipeline, "profiles").channel
    iterated = events.clone(is_iterator=True)  # as a stream's iteration makes it, with its own queue
    pipeline.app.topics.add(iterated)
    for n in range(3):
        iterated.queue.put_nowait(n)
    pipeline.health.ready = True
    check = _health(pipeline)
    await check()
    assert pipeline.health._idle["profiles"][0] == 0 and pipeline.health._idle.get("ingest", (0, 0))[0] == 0
    count, since = pipeline.health._idle["profiles"]
    pipeline.health._idle["profiles"] = (count, since - AGENT_STALL_AFTER_S - 1)  # no record taken since
    await check()
    healthy, body = pipeline.health.answer("/healthz")
    assert not healthy and body.startswith("agent profiles took no record for") and "while 3 wait" in body
    pipeline.health.took("profiles")
    await check()
    assert pipeline.health.answer("/healthz") == (True, "ok\n")


async def test_the_broker_ends_give_the_lag_and_a_partition_read_nothing_of_fails_healthz(pipeline: Pipeline) -> None:
    """The lag counted to the end as of the last fetch, so a fetch that stopped showed none; the check
    asks the broker for the ends, and reads each partition's position from its committed offset (else
    the partition's start)."""
    from streams.app import _consumer_lag, _partition_ends
    from streams.metrics import PARTITION_STALL_AFTER_S

    clicks = [TP("clicks", n) for n in range(3)]

    class Consumer:
        ends = {clicks[0]: 50, clicks[1]: 9, clicks[2]: 30}
        _committed_offset = {clicks[0]: 20, clicks[1]: 9}  # records up to 19 taken in, then nothing
        _acked: dict[TP, list[int]] = {}
        _unacked_messages: set[Any] = set()

        async def position(self, tp: TP) -> int:
            return self._committed_offset.get(tp, 30)  # (the fetch stopped there)

        def assignment(self) -> set[TP]:
            return {*clicks, TP("elsewhere", 0)}

        def highwater(self, tp: TP) -> int | None:
            return 20 if tp == clicks[0] else None  # as of the last fetch

        async def highwaters(self, *tps: TP) -> dict[TP, int]:
            return {tp: self.ends[tp] for tp in tps}

        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {tp: self.starts[tp] for tp in tps}

        starts = {clicks[0]: 0, clicks[1]: 0, clicks[2]: 30}  # (clicks/2: nothing committed, retention took all)

    pipeline.app.consumer = Consumer()  # type: ignore[assignment]
    pipeline.health.ready = True
    ends, lag = _partition_ends(pipeline), _consumer_lag(pipeline, set())
    await ends()
    await lag()
    assert pipeline.metrics.consumer_lag.labels("clicks", "0")._value.get() == 30
    assert pipeline.health.answer("/healthz") == (True, "ok\n")
    position, since = pipeline.health._reading["clicks/0"]
    pipeline.health._reading["clicks/0"] = (position, since - PARTITION_STALL_AFTER_S - 1)
    await ends()
    healthy, body = pipeline.health.answer("/healthz")
    assert not healthy and body.startswith("partition clicks/0 read nothing for") and "30 records wait" in body
    assert set(pipeline.health._reading) == {"clicks/0", "clicks/1", "clicks/2"}

    async def unanswered(*tps: TP) -> dict[TP, int]:
        raise TimeoutError

    pipeline.app.consumer.highwaters = unanswered  # type: ignore[method-assign]
    await ends()  # the broker does not answer: watched afresh once it does (no commit moves meanwhile)
    assert pipeline.health.answer("/healthz") == (True, "ok\n") and not pipeline.health._reading


async def test_a_partition_whose_unread_records_retention_deleted_is_read(pipeline: Pipeline) -> None:
    """A worker stopped longer than the input's retention: the records past its committed offset are
    gone, the fetch starts at the partition's start, which is its end, and with nothing to read no
    commit moves the committed offset.  The partition is read to its end: /healthz stays ok (a check
    from the committed offset alone failed it for good, and a restart changed nothing)."""
    from streams.app import _partition_ends
    from streams.metrics import PARTITION_STALL_AFTER_S

    clicks = TP("clicks", 0)

    class Consumer:
        _committed_offset = {clicks: 20}

        def assignment(self) -> set[TP]:
            return {clicks}

        def highwater(self, tp: TP) -> int | None:
            return None  # nothing fetched: there is nothing

        async def highwaters(self, *tps: TP) -> dict[TP, int]:
            return {clicks: 50}

        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {clicks: 50}  # records 20 to 49 deleted by retention

    pipeline.app.consumer = Consumer()  # type: ignore[assignment]
    pipeline.health.ready = True
    ends = _partition_ends(pipeline)
    await ends()
    position, since = pipeline.health._reading["clicks/0"]
    pipeline.health._reading["clicks/0"] = (position, since - PARTITION_STALL_AFTER_S - 1)
    await ends()
    assert pipeline.health.answer("/healthz") == (True, "ok\n")


async def test_a_partition_fetched_to_its_end_is_read_once_every_message_of_it_is_acked_and_committed(
        pipeline: Pipeline) -> None:
    """A producer writing in transactions leaves a commit marker after its records: the fetch passes over
    it and no agent gets it, so the committed offset stays one short of the broker's end.  A partition
    whose fetch position reached its end is read, unless a message of it waits for its ack (delivered,
    not acked) or for its commit (acked, not committed): that one is still behind."""
    from streams.app import _partition_ends
    from streams.metrics import PARTITION_STALL_AFTER_S

    marked, acked, unacked, fetching = (TP("clicks", n) for n in range(4))

    class Consumer:
        _committed_offset = {marked: 20, acked: 20, unacked: 20, fetching: 20}
        _acked = {acked: [20]}
        _unacked_messages = [SimpleNamespace(tp=unacked)]
        positions = {marked: 21, acked: 21, unacked: 21, fetching: 20}

        def assignment(self) -> set[TP]:
            return set(self._committed_offset)

        def highwater(self, tp: TP) -> int | None:
            return None

        async def highwaters(self, *tps: TP) -> dict[TP, int]:
            return {tp: 21 for tp in tps}

        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {tp: 0 for tp in tps}

        async def position(self, tp: TP) -> int:
            return self.positions[tp]

    pipeline.app.consumer = Consumer()  # type: ignore[assignment]
    pipeline.health.ready = True
    ends = _partition_ends(pipeline)
    await ends()
    for name, (position, since) in list(pipeline.health._reading.items()):
        pipeline.health._reading[name] = (position, since - PARTITION_STALL_AFTER_S - 1)
    await ends()
    assert {name: position for name, (position, _) in pipeline.health._reading.items()} == {
        "clicks/0": 21, "clicks/1": 20, "clicks/2": 20, "clicks/3": 20}
    healthy, body = pipeline.health.answer("/healthz")
    assert not healthy and body.startswith("partition clicks/1 read nothing for")
    # and its lag is 0, not the marker's 1 (the others' 1 waits to be committed or read)
    from streams.app import _consumer_lag

    await _consumer_lag(pipeline, set())()
    assert {partition: pipeline.metrics.registry.get_sample_value(
        "mailpulse_consumer_lag", {"topic": "clicks", "partition": partition}) for partition in "0123"} == {
        "0": 0, "1": 1, "2": 1, "3": 1}


async def test_the_worker_state_is_running_as_soon_as_it_is_ready(pipeline: Pipeline) -> None:
    """Recovery done, before the first health beat: /readyz and ``mailpulse_worker_state`` agree (a
    broker test once read "ready" and then a state that still said "starting")."""
    from streams.app import _health, _on_recovered

    _health(pipeline)  # the state gauges, without a beat
    assert pipeline.health.state() == "starting"
    await _on_recovered(pipeline)()
    assert pipeline.health.ready and pipeline.health.state() == "running"
    assert pipeline.metrics.registry.get_sample_value("mailpulse_worker_state", {"state": "running"}) == 1


async def test_identifiers_past_the_identity_limit_are_not_linked_and_are_counted(pipeline: Pipeline) -> None:
    identifies = [_event(f"i-{n}", "identify", email=f"a{n:02}@example.com", traits={}, consent={})
                  for n in range(12)]
    for event in identifies:
        event["kind"] = "identities"
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(*identifies))
    state = orjson.loads(pipeline.profile_state.read(b"u:u-1"))
    assert len(state["links"]) == 10
    links = [message for _, batch, _ in sent(pipeline, "mailpulse-profile-events") for _, message in batch
             if message.get("type") == "_link"]
    assert len(links) == 10
    assert pipeline.metrics.identity_limited.labels("emails")._value.get() == 2


async def test_an_ask_a_profile_agreed_to_counts_against_its_identity_limit_in_later_records(
    pipeline: Pipeline,
) -> None:
    """u-1 holds 9 e-mails (limit 10).  It agrees to take in a profile asking with one more; a second
    asker, in a later record, would make 11: it is kept apart.  The first agreement is noted in u-1's
    stored state (``claimed``) although the ask changes nothing else there."""
    identifies = [_event(f"i-{n}", "identify", email=f"a{n:02}@example.com", traits={}, consent={})
                  for n in range(9)]
    for event in identifies:
        event["kind"] = "identities"

    def ask(email: str) -> bytes:
        return orjson.dumps([["u:u-1", {"type": "_link", "root": f"e:{email}", "kind": "exact",
                                        "keys": [f"e:{email}"]}]])

    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(_batch(*identifies))
        await profiles.put(ask("x1@example.com"))
        assert orjson.loads(pipeline.profile_state.read(b"u:u-1"))["claimed"] == \
            {"e:x1@example.com": ["e:x1@example.com"]}
        await profiles.put(ask("x2@example.com"))
    answers = {(key, message.get("type"), message.get("ok"))
               for _, batch, _ in sent(pipeline, "mailpulse-profile-events") for key, message in batch
               if key in ("e:x1@example.com", "e:x2@example.com")}
    assert answers == {("e:x1@example.com", "_link", True), ("e:x2@example.com", "_possible", None)}
    assert pipeline.metrics.identity_limited.labels("emails")._value.get() == 1


async def test_a_fuzzy_matching_block_past_its_size_is_skipped_and_counted(pipeline: Pipeline) -> None:
    from streams.domain.resolution import MAX_BLOCK

    people = MAX_BLOCK + 3  # same name and birthday: one block outgrows its cap
    identifies = [{**_event(f"i-{n}", "identify", user_id=f"twin-{n}",
                            traits={"first_name": "Maria", "last_name": "Garcia", "birthday": "1990-01-01"}),
                   "kind": "identities"} for n in range(people)]
    async with agent(pipeline, "profiles").test_context() as profiles:
        for n in range(0, people, 50):
            await profiles.put(orjson.dumps([[f"u:twin-{i}", e] for i, e in enumerate(identifies[n:n + 50], n)]))
        blocks = [[key, message] for _, batch, _ in sent(pipeline, "mailpulse-profile-events") for key, message in batch
                  if key is not None and message.get("type") == "_block"]
        assert len(blocks) >= people
        for n in range(0, len(blocks), 100):  # the block messages, delivered to their partitions' agent
            await profiles.put(orjson.dumps(blocks[n:n + 100]))
    assert pipeline.metrics.identity_blocks_skipped._value.get() >= 3


def test_the_workers_producer_gathers_messages_as_long_as_the_setting_says(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, dict[str, Any]]] = []

    class Producer(RecordingOutput):
        def __init__(self, bootstrap: str, **config: Any) -> None:
            super().__init__()
            made.append((bootstrap, config))

    monkeypatch.setattr(app_module, "OutputProducer", Producer)
    settings = Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path, partitions=4,
                        producer_linger_ms=40)
    create_app(settings)
    assert made == [("127.0.0.1:1", {"linger.ms": 40})]
    assert Settings().producer_linger_ms == 25  # the default: fewer, fuller batches for the broker


async def _put_until_it_fails(p: Pipeline, name: str, value: Any, monkeypatch: pytest.MonkeyPatch,
                              failures: list[tuple[str, str]]) -> tuple[Any, list[bool]]:
    """Puts ``value`` to agent ``name`` and waits until its handling fails (``stop_at_once``): the
    delivered event, and whether it was acked at the moment the worker would have ended."""
    import streams.app as app_module

    acked_when_failing: list[bool] = []
    real_fail = app_module.stop_at_once

    def fail(agent_name: str, exc: BaseException) -> NoReturn:
        acked_when_failing.append(event.message.acked)
        real_fail(agent_name, exc)

    monkeypatch.setattr(app_module, "stop_at_once", fail)
    async with agent(p, name).test_context() as wrapper:
        event = await wrapper.put(value, wait=False)
        for _ in range(200):
            if failures:
                break
            await asyncio.sleep(0.01)
    return event, acked_when_failing


async def test_a_run_whose_handling_raises_past_the_step_ends_the_worker_before_it_is_acked(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, failures: list[tuple[str, str]]
) -> None:
    """Handling that raises after the step (a table or producer failure, not the input's fault) ends
    the worker (``stop_at_once``) with nothing of the run acked, so the next start reads it again.
    Faust would otherwise restart the agent past the run, and a later commit could pass it."""
    import streams.app as app_module

    def count(*args: Any) -> None:
        raise OSError("the metrics could not be counted")

    monkeypatch.setattr(app_module, "_count", count)
    run = _run([_batch(_event("e-1")), _batch(_event("e-2"))])
    event, acked_when_failing = await _put_until_it_fails(pipeline, "profiles", run, monkeypatch, failures)
    assert failures == [("profiles", "OSError")]
    assert acked_when_failing == [False]
    assert not event.message.acked  # nor by the stream's iterator afterwards


async def test_an_ingest_batch_whose_handling_raises_outside_the_per_input_guard_ends_the_worker_before_it_is_acked(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, failures: list[tuple[str, str]]
) -> None:
    """``take_events`` acks a batch when its body ends, even by an exception: the worker must end
    first, or the batch's events would be committed past without having been forwarded."""
    import streams.app as app_module

    def route_batch(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug outside the per-input guard")

    monkeypatch.setattr(app_module, "route_batch", route_batch)
    _, acked_when_failing = await _put_until_it_fails(pipeline, "ingest", orjson.dumps(_event("e-1")), monkeypatch,
                                                      failures)
    assert failures == [("ingest", "RuntimeError")]
    assert acked_when_failing == [False]
    assert sent(pipeline, "mailpulse-profile-events") == []


async def test_a_cooccurrence_record_whose_dead_letter_fails_too_ends_the_worker_before_it_is_acked(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, failures: list[tuple[str, str]]
) -> None:
    """A record the agent cannot count is dead-lettered and acked; when even its dead letter raises
    (the producer refuses it), the worker ends before the record is acked."""
    import streams.app as app_module

    def dead_letter(*args: Any) -> None:
        raise OSError("the producer refused the dead letter")

    monkeypatch.setattr(app_module, "_internal_dead_letter", dead_letter)
    event, acked_when_failing = await _put_until_it_fails(pipeline, "cooccurrence", b"not json", monkeypatch,
                                                          failures)
    assert failures == [("cooccurrence", "OSError")]
    assert acked_when_failing == [False]
    assert not event.message.acked


@pytest.mark.parametrize("size", [10_000, 900_000])
async def test_a_rejected_input_with_a_long_key_is_dead_lettered_with_its_first_4_kib_and_its_own_key_if_it_fits(
    pipeline: Pipeline, size: int
) -> None:
    """The letter carries the key's first 4 KiB (``key_truncated``), and the whole key as its own
    message key (contract: the original key) unless the two would pass the producer's limit, which
    would refuse the letter."""
    key = b"k" * size
    async with agent(pipeline, "ingest").test_context() as ingest:
        await ingest.put(b"oops", key=key)
    [(letter_key, letter, _)] = sent(pipeline, "dead-letter")
    assert letter_key == (key if size < 100_000 else None)
    assert letter["key_truncated"] is True and letter["key_bytes"] == len(key)
    assert letter["key"] == "k" * 4096 and letter["error"]["code"] == "not_json"


async def test_an_internal_records_topic_field_never_becomes_a_metric_label(pipeline: Pipeline) -> None:
    """The profile agent counts an event under the input topic its internal record names (``src``).
    A damaged or foreign record could name anything there, an address say, and each value became a
    ``topic`` label of ``mailpulse_events_total`` and ``mailpulse_late_events_total``: a series of its
    own, with personal data in it.  Now such an event is counted under ``other``."""
    events: list[Any] = [["u:u-1", {"event_id": f"e-{n}", "type": "page_view", "ts": 1772359200000, "kind": "clicks",
                                    "user_id": "u-1", "src": [f"ana{n}@example.com", 0, n, 1772359200000]}]
                         for n in range(3)]
    events.append([None, {"clocks": [[topic, n, 1772359300000 + 1000 * (topic == "clicks")]
                                     for topic in INPUT_TOPICS for n in range(4)]}])
    events.append(["u:u-2", {"event_id": "late-1", "type": "page_view", "ts": 1772359250000, "kind": "clicks",
                             "user_id": "u-2", "src": ["bo@example.com", 0, 9, 1772359200000]}])
    async with agent(pipeline, "profiles").test_context() as profiles:
        await profiles.put(orjson.dumps(events[:4]))
        await profiles.put(orjson.dumps(events[4:]))
    samples = {(sample.name, sample.labels["topic"]): sample.value for metric in pipeline.metrics.registry.collect()
               for sample in metric.samples if "topic" in sample.labels and sample.name.endswith("_total")
               and metric.name in ("mailpulse_events", "mailpulse_late_events")}
    # (the input topics' outcomes are exported at 0 from the start)
    assert {topic for _, topic in samples} <= {*INPUT_TOPICS, "other"}
    assert {labels for labels, value in samples.items() if value} == {
        ("mailpulse_events_total", "other"), ("mailpulse_late_events_total", "other")}


async def test_an_internal_message_of_an_unknown_type_is_counted_and_logged_without_its_text(
        pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    """A message of a type this version does not know (a newer worker's) is skipped.  It was counted by
    no metric, and its warning quoted the whole type, of any length and content, as the record held it."""
    import logging

    value = "_" + "ana@example.com " * 500
    with caplog.at_level(logging.WARNING):
        async with agent(pipeline, "profiles").test_context() as profiles:
            await profiles.put(orjson.dumps([["u:u-1", {"type": value}], ["u:u-2", {"type": "_newer_kind"}]]))
    assert pipeline.metrics.registry.get_sample_value("mailpulse_internal_messages_skipped_total") == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "skipped" in r.getMessage()]
    assert "example.com" not in line and "(not a type name, 8001 characters)" in line and line.startswith("skipped 2")


def test_a_damaged_absorbs_kind_does_not_become_a_merge_label() -> None:
    """An absorb's ``kind`` (copied from its link's) was the ``kind`` label of
    ``mailpulse_profile_merges_total`` as the internal message held it: a damaged or foreign one made a
    series of each value, an address among them (found in review).  Now it is ``other``."""
    from streams.domain.dispatch import dispatch, run_locally
    from streams.metrics import Metrics
    from streams.record_step import RecordResult
    from tests.unit.test_identity_graph import RULES, UNTIL, ev

    states: dict[str, Any] = dict(run_locally([ev("a-1", "page_view", 1, user_id="u-1")], UNTIL, RULES).states)
    other = run_locally([ev("b-1", "page_view", 2, anonymous_id="anon-9")], UNTIL, RULES).states
    [absorbed] = [state for state in other.values() if state is not None and "profile" in state]
    message = {"type": "_absorb", "from": "a:anon-9", "kind": "ana@example.com", "state": absorbed}
    merges = dispatch(states, {}, "u:u-1", message, None, RULES).merges
    assert merges == ["ana@example.com"]
    metrics = Metrics()
    app_module._count(SimpleNamespace(metrics=metrics), RecordResult(merges=merges, waits={}),  # type: ignore[arg-type]
                      {}, metrics.profiles_written.labels("updated"), metrics.events_applied)
    assert metrics.registry.get_sample_value("mailpulse_profile_merges_total", {"kind": "other"}) == 1
    kinds = {sample.labels["kind"] for metric in metrics.registry.collect() if metric.name == "mailpulse_profile_merges"
             for sample in metric.samples if "kind" in sample.labels}
    assert kinds == {"other"}


async def test_a_partition_database_copied_without_its_file_times_is_as_old_as_its_stamp_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each partition's write time is stamped beside its database (at most once a minute, as offsets
    are persisted): a copy without file times (``cp -r``) made a database last written a day ago look
    written just now, and it was kept with keys whose deletions compaction had dropped."""
    import os

    import streams.tables as tables_module

    p = _with_rocksdb(tmp_path)
    table = p.profile_state
    tp = TP(table.changelog_topic.get_topic_name(), 1)
    table.stage(b"u:erased", b'{"due":null}', 1)
    table.write_staged()
    table._persisted(tp.topic, 1, 0)  # the changelog took it
    now = time.time()
    monkeypatch.setattr(tables_module.time, "time", lambda: now - 13 * 3600)  # written 13 h ago
    table.save_persisted_offsets()
    monkeypatch.setattr(tables_module.time, "time", lambda: now)
    await table.on_rebalance(set(), {tp}, set())
    path = table.data.partition_path(1)
    for file in [path, *path.iterdir()]:  # the copy's file times: just now
        os.utime(file, (now, now))
    await table.on_rebalance({tp}, set(), {tp})
    assert table.read(b"u:erased", 1) is None  # rebuilt from the changelog
    assert not tables_module._stamp_path(path).exists()  # (the rebuilt database has its own times)


async def test_a_recovered_partition_is_stamped_as_written_when_its_recovery_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recovery writes through Faust, not the table's write-out: a partition stamped 11 h ago,
    recovered from its changelog and then left idle, would look as old as that stamp and be rebuilt
    again at its next assignment."""
    import streams.tables as tables_module

    p = _with_rocksdb(tmp_path)
    table = p.profile_state
    tp = TP(table.changelog_topic.get_topic_name(), 1)
    path = table.data.partition_path(1)
    path.mkdir(parents=True, exist_ok=True)
    now = time.time()
    tables_module._stamp(path, now - 11 * 3600)
    await table.on_recovery_completed({tp}, set())
    assert abs(tables_module._last_written(path) - now) < 60


@pytest.mark.parametrize("away_hours", [1, 13])
async def test_a_partition_back_after_half_a_day_on_another_worker_is_rebuilt_not_kept_stale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, away_hours: int) -> None:
    # With two workers a partition can move away and come back to a worker still running (or
    # restarted on the same state folder).  Its local database then still holds what the worker wrote
    # before; the changelog brings the changes made meanwhile, but a deletion (an erasure, a profile
    # absorbed, a block emptied) is kept there only delete.retention.ms (24 h) after compaction.  So
    # a partition whose database was last written longer ago than the state folder's limit starts
    # empty and is rebuilt from its changelog, as a whole state folder that old is
    # (streams.worker.STATE_MAX_AGE_S).
    import streams.tables as tables_module

    p = _with_rocksdb(tmp_path)
    table = p.profile_state
    tp = TP(table.changelog_topic.get_topic_name(), 1)
    table.stage(b"u:erased", b'{"due":null}', 1)
    table.write_staged()
    await table.on_rebalance(set(), {tp}, set())  # the partition moves to another worker
    now = time.time()
    monkeypatch.setattr(tables_module.time, "time", lambda: now + away_hours * 3600)
    await table.on_rebalance({tp}, set(), {tp})  # and comes back
    kept = table.read(b"u:erased", 1)
    assert kept == (b'{"due":null}' if away_hours == 1 else None)
