"""The app factory: one Faust app with its topics, tables and agents, built from :class:`Settings`.

Topology::

    clicks, carts, purchases, identities ──ingest──> <app>-profile-events ──profiles──> profiles
                     │                         (by profile; input clocks      ├──> segment-changes
                     └──> dead-letter           to every partition)           ├──> triggers
                                                                                     └──> scores
                                                       tables: profile-state, partition-clocks
                                                       (scores: the models of models/, at each
                                                        profile's score timer, streams.domain.rules.score_timer)
    profiles ──> <app>-co-occurrence (by product) ──cooccurrence──> <app>-product-recs (compacted,
                                                   table product-neighbours        read back by every worker)

Agents stay thin: they decode, call the pure functions of :mod:`streams.ingest`,
:mod:`streams.domain.timeline` and :mod:`streams.watermark`, write the tables and send outputs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn

import faust
import orjson

from models.bundle import MODEL_NAMES, SHIPPED_DIR, ModelBundle, ModelError
from models.scoring import Predictor
from schemas.events import INPUT_TOPICS
from streams import topics as names
from streams.broker import free_port
from streams.config_file import load_config
from streams.consumer import App, FetchTimeMonitor
from streams.cooccurrence import CountedProducts, PairBuffer
from streams.domain.config import PipelineConfig
from streams.domain.identity import profile_id_for
from streams.domain.rules.recommend import count_pairs, top_neighbours
from streams.domain.timeline import RuleSet
from streams.ingest import IngestPolicy, Source, arrival_ms, reject
from streams.metrics import (
    COMMIT_STAGES,
    MERGE_KINDS,
    WORKER_STATES,
    Health,
    Metrics,
    fixed_label,
    input_topic,
    observe_many,
)
from streams.native_memory import release_free_memory
from streams.output import FlushBeforeCommit, Output, OutputProducer
from streams.product_recs import ProductRecs
from streams.record_step import (
    MAX_VALUE_BYTES,
    MOST_DUE_PER_STEP,
    DuePops,
    RecordResult,
    StepContext,
    StepIO,
    apply_due,
    apply_run,
    decode_run,
)
from streams.routing import DelayedClocks, InputRecord, clock_records, partition_for, route_batch
from streams.settings import Settings
from streams.tables import ProfileTable, RocksDBMemory, TieredDueIndex, profile_table, rocksdb_options
from streams.watermark import DueIndex, DueOrder, expected_clocks, indexable_due, stored_clocks, stored_due

log = logging.getLogger(__name__)
#: What an internal message's type looks like (``_link``): a skipped one is named in the log only then.
_TYPE_NAME = re.compile(r"_[a-z][a-z_]{0,39}")

#: The exit status of a worker whose agent failed outside its per-input isolation (EX_SOFTWARE).
EXIT_AGENT_FAILED = 70


def stop_at_once(agent: str, exc: BaseException) -> NoReturn:
    """Ends the worker process now, as a crash would, when an agent's handling raised outside the
    isolation that dead-letters bad input (a bug, a table or producer failure).  Faust would restart
    the agent past the batch it failed on, and the batch's offsets, acked or not, could then be
    committed past it: lost.  Ending at once commits nothing more, so the next start reads the
    batch again from the last commit (the tables are rebuilt from their changelogs, as after any
    crash).  Logs the exception's class only: its text may hold input values."""
    try:
        log.critical("mailpulse: the %s agent failed outside its per-input isolation (%s); the worker stops at "
                     "once so that nothing after the last commit is committed: the next start reads it again",
                     agent, type(exc).__name__)
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    finally:  # whatever the log does: returning would let Faust go on past the batch
        os._exit(EXIT_AGENT_FAILED)


#: Staged table writes after which the profile agent writes them out without waiting for a commit
#: (more: fewer repeated writes of a busy key; fewer: less memory).
STAGED_LIMIT = 20_000
#: The most internal records the profile agent takes as one delivered message.  A fetched run is
#: applied as one step (:func:`streams.record_step.apply_run`) with nothing else run in between (so
#: it is acked, and a commit's cut taken, only once all of it is applied); a longer run comes as
#: several messages, so that it holds the event loop for a few records' worth at most.  At 1k
#: events/s 91% of the runs held at most 4 records (1: 43%, 2: 25%, 3: 14%, 4: 8%; the longest 16;
#: measured 2026-12-04; on 2026-12-06, cut at 4: 1: 14%, 2: 34%, 3: 19%, 4: 33%).
PROFILE_RUN_RECORDS = 4
#: A write-out of at least this many staged values gives the freed memory back to the OS after it.
TRIM_AFTER = 2_000
#: How often ``mailpulse_consumer_lag`` is updated (seconds).
LAG_EVERY_S = 1.0
#: How often the broker is asked for the end of each assigned partition (seconds): the lag and the
#: check that every partition is read (:meth:`streams.metrics.Health.watch_partitions`) use it.
ENDS_EVERY_S = 10.0
#: How often ``mailpulse_consumer_lag`` is read from the broker during the first table recovery,
#: before the lag timer runs (seconds; :func:`_early_lag`).
EARLY_LAG_EVERY_S = 2.0
#: How often the event loop reports to /healthz and ``mailpulse_worker_state`` (seconds).
HEALTH_EVERY_S = 1.0


@dataclass
class Pipeline:
    """Everything a worker's agents use, built once by :func:`create_app`."""

    settings: Settings
    app: faust.App
    metrics: Metrics
    output: Output
    inputs: Any
    events: Any
    profile_state: ProfileTable
    partition_clocks: ProfileTable  # b"clocks|<partition>" -> {"<topic>/<partition>": ms, "wall": ms}
    rules: RuleSet
    input_partitions: dict[str, int]
    due_index: DueOrder
    cooccurrence: Any
    identity_blocks: ProfileTable  # "b:<blocking key>" -> {profile key: person record} (fuzzy matching)
    product_neighbours: ProfileTable  # product -> {other product: count}
    counted_products: CountedProducts  # the products it holds, per partition, in the order they go
    product_recs: ProductRecs  # every product's published top neighbours (started by the worker)
    pairs: PairBuffer  # co-occurrence pairs of the profile agent's steps, sent at the next commit's cut
    delayed_clocks: DelayedClocks  # input clocks of the ingest's batches, sent once the profile hop applied them
    health: Health = field(default_factory=Health)  # what /healthz and /readyz answer
    untrimmed: int = 0  # values written out since free memory was last given back
    #: ``(stage, seconds)`` of each offset commit (``mailpulse_commit_seconds``)
    observe_commit: Callable[[str, float], None] = lambda stage, seconds: None
    #: The broker's end of each assigned partition the agents read, as last asked (:func:`_partition_ends`)
    broker_ends: dict[Any, int] = field(default_factory=dict)
    #: Partitions found read to that end though their committed offset is short of it (a transaction's
    #: marker last: :func:`_passed_to_end`), as last asked: their lag is 0
    read_to_end: dict[Any, int] = field(default_factory=dict)

    @property
    def tables(self) -> tuple[ProfileTable, ...]:
        return (self.profile_state, self.partition_clocks, self.identity_blocks,
                self.product_neighbours)

    def write_staged(self, commit: bool = True) -> None:
        """Writes every table's staged values (before each offset commit, and when many are staged:
        ``commit=False``, which keeps the input clocks waiting until they are due).

        Everything sent before is delivered first.  A state in the changelog survives a crash, while
        the events it took in are read again only if their offsets were not committed; re-read, they
        are duplicates to that state and cause nothing.  So the outputs and internal messages they
        caused (a snapshot, a trigger, the absorb carrying a profile to its root) must already be
        in their topics when the state is written, or a crash in between would lose them for good."""
        self.send_pairs()  # delivered by the flush that follows, before the offsets are committed
        if commit:
            self.send_clocks(every=True)  # the clocks of the events it covers, or a crash would lose them
        written = sum(table.staged_count + table.held_count for table in self.tables)
        if written:
            self.output.flush()
        for table in self.tables:
            table.write_staged()
        self._written(written)

    async def write_out_soon(self) -> None:
        """What a commit does before its offsets are committed (:meth:`write_staged`, the flush, the
        changelog offsets), without holding the event loop while the broker acknowledges: the
        background commit's (streams.consumer, fix 8).  Its cut: the values staged so far are held
        (and read back) while the outputs sent so far, those of the events they took in, are
        delivered; then they are written, and the changelog records and everything sent meanwhile
        are delivered.  The agents go on during both waits and between the chunks of the write; what
        they stage waits for the next commit."""
        started = time.perf_counter()
        self.send_pairs()  # delivered below, before the cut's offsets are committed
        clocks_cut = self.delayed_clocks.newest()  # the cut's clocks: sent below, once they are due
        held = sum(table.hold_staged() for table in self.tables)
        cut = time.perf_counter()
        await self.output.delivered()
        delivered = time.perf_counter()
        busy = 0.0
        for table in self.tables:
            busy += await table.write_held()
        written = time.perf_counter()
        if clocks_cut is not None:
            await self.send_clocks_soon(clocks_cut)
        await self.output.flush_soon()
        self.save_persisted_offsets()
        self.observe_commit("write_out", (cut - started) + busy)  # in chunks, the loop turning in between
        self.observe_commit("waited", (delivered - cut) + (time.perf_counter() - written))
        self._written(held)

    def send_pairs(self) -> None:
        """Sends the co-occurrence pairs summed since the last time (:mod:`streams.cooccurrence`)."""
        if self.pairs.held:
            topic = names.cooccurrence_topic(self.settings.app_id)
            for target, value in self.pairs.take():
                self.output.send(topic, None, value, target)

    def send_clocks(self, every: bool = False, upto: int | None = None) -> None:
        """Sends the input clocks that are due (``every``: all held, at a blocking commit; ``upto``:
        also those of every batch numbered up to it) to every profile partition
        (:class:`streams.routing.DelayedClocks`)."""
        clocks = self.delayed_clocks.due(_monotonic_ms(), every, upto)
        if clocks:
            topic = names.events_topic(self.settings.app_id)
            for partition, record in clock_records(clocks, self.settings.partitions):
                self.output.send(topic, None, record, partition)

    async def send_clocks_soon(self, cut: int) -> None:
        """Sends the clocks of the batches numbered up to ``cut`` once they are due (or the timer or a
        batch did), at the latest ``hold_ms`` from now: a background commit's cut, whose offsets cover
        those batches, waits for them instead of sending them early, which made the forwards of the
        batches just before each commit late.  Sends them at once when another commit waits for this
        one, or the worker rebalances or stops: the profile agent may not apply their records then."""
        delayed, app = self.delayed_clocks, self.app
        give_up = _monotonic_ms() + delayed.hold_ms
        while delayed.waiting(cut):
            commits_waiting: int = getattr(app, "commit_waiting", 0)
            if _monotonic_ms() >= give_up or commits_waiting or app.rebalancing or app.should_stop:
                self.send_clocks(upto=cut)
                break
            self.send_clocks()
            if delayed.waiting(cut):
                await asyncio.sleep(max(delayed.delay_ms // 4, 5) / 1000)

    def save_persisted_offsets(self) -> None:
        """After a flush: each table notes how far its changelog is in its local store."""
        for table in self.tables:
            table.save_persisted_offsets()

    def _written(self, written: int) -> None:
        self.untrimmed += written
        if self.untrimmed >= TRIM_AFTER or (not written and self.untrimmed):
            # The staged values just released, or (the first commit with nothing staged: the worker
            # went idle) what the last small write-outs left: back to the OS (streams.native_memory).
            # Without the latter, a worker at rest kept up to ~35 MiB more RSS, or not, depending on
            # the size of its last write-out.
            release_free_memory()
            self.untrimmed = 0

    @property
    def staged_count(self) -> int:
        return sum(table.staged_count for table in self.tables)


def _raw_topic(app: faust.App, *topic_names: str, **kwargs: Any) -> Any:
    return app.topic(*topic_names, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw", **kwargs)


def create_app(settings: Settings, metrics: Metrics | None = None, output: Output | None = None,
               config: PipelineConfig | None = None, input_partitions: dict[str, int] | None = None,
               models: ModelBundle | None = None) -> Pipeline:
    """Build the Faust app.  No broker is contacted until a worker starts it (the output producer
    connects lazily too).  ``input_partitions``: partitions per input topic (the watermark waits
    for each); default ``settings.partitions`` each.  ``models``: the bundle ``run`` loaded already
    (else loaded here)."""
    app = App(
        settings.app_id,
        monitor=FetchTimeMonitor(),
        broker=settings.faust_broker,
        store=f"{settings.table_store}://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 4),
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        web_port=settings.web_port or free_port(),  # Faust binds it even with web_enabled=False
        web_host="127.0.0.1",
        web_enabled=False,
        autodiscover=False,
        producer_linger_ms=5,
        cython_optimizations=True,  # the queue fast path of faust's Cython stream iterator
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.fetch_idle_wait_ms = settings.fetch_idle_wait_ms
    # the ingest and profile agents take fetched runs of records (streams.consumer, fix 3); the
    # profile agent's at most PROFILE_RUN_RECORDS at a time
    events_topic = names.events_topic(settings.app_id)
    app.batched_topics = frozenset(INPUT_TOPICS) | {events_topic}
    app.batch_records_max = {events_topic: PROFILE_RUN_RECORDS}
    metrics = metrics or Metrics()
    output = output or OutputProducer(settings.bootstrap_servers, **{"linger.ms": settings.producer_linger_ms})
    config = config if config is not None else load_config(settings.config)
    options = rocksdb_options(settings.rocksdb_write_buffer_mb)
    small = rocksdb_options(1)  # tables of small values: clocks, blocks, neighbours
    memory = RocksDBMemory.with_budget(settings.rocksdb_memory_mb)
    scorer = _load_scorer(settings, config, metrics, models)
    neighbours = profile_table(app, output, "product-neighbours", settings.partitions, small, memory)
    p = Pipeline(
        settings=settings,
        app=app,
        metrics=metrics,
        output=output,
        inputs=_raw_topic(app, *INPUT_TOPICS),
        events=_raw_topic(app, events_topic, partitions=settings.partitions,
                          internal=True),
        profile_state=profile_table(app, output, "profile-state", settings.partitions, options, memory),
        partition_clocks=profile_table(app, output, "partition-clocks", settings.partitions, small, memory),
        rules=RuleSet.build(config, settings.dedupe_retention_ms, scorer),
        input_partitions=input_partitions or {topic: settings.partitions for topic in INPUT_TOPICS},
        due_index=TieredDueIndex(settings.data_dir / f"{settings.app_id}-due-index", memory)
        if settings.table_store == "rocksdb" else DueIndex(),
        cooccurrence=_raw_topic(app, names.cooccurrence_topic(settings.app_id), partitions=settings.partitions,
                                internal=True),
        identity_blocks=profile_table(app, output, "identity-blocks", settings.partitions, small, memory),
        product_neighbours=neighbours,
        counted_products=CountedProducts(
            -(-settings.recs_products // settings.partitions),
            lambda partition: neighbours.partition_items(
                partition, lambda key: partition_for(key.decode("utf-8", "replace"), settings.partitions))),
        product_recs=ProductRecs(metrics.product_recs_read.inc,
                                 metrics.processing_errors.labels("product_recs", "record").inc,
                                 settings.recs_products, metrics.product_recs_evicted.inc),
        pairs=PairBuffer(settings.partitions),
        delayed_clocks=DelayedClocks(settings.clock_delay_ms),
    )
    metrics.rocksdb_memory.set_function(lambda: memory.used)  # read when /metrics is scraped
    commit_seconds = {stage: metrics.commit_seconds.labels(stage) for stage in COMMIT_STAGES}
    p.observe_commit = lambda stage, seconds: commit_seconds[stage].observe(seconds)
    app.sensors.add(FlushBeforeCommit(output, after_flush=p.save_persisted_offsets, before_flush=p.write_staged,
                                      observe=p.observe_commit))
    app.write_out_soon = p.write_out_soon  # the background commit's (streams.consumer, fix 8)
    app.on_partitions_assigned.connect(_on_assignment(p))
    app.on_partitions_revoked.connect(_on_revocation(p))
    app.on_rebalance_complete.connect(_on_recovered(p))
    app.agent(p.inputs, name="ingest")(_ingest_agent(p))
    app.agent(p.events, name="profiles")(_profile_agent(p))
    app.agent(p.cooccurrence, name="cooccurrence")(_cooccurrence_agent(p))
    if settings.clock == "wall":
        app.timer(interval=settings.wall_clock_interval_s)(_wall_clock(p))
    if settings.clock_delay_ms:
        app.timer(interval=max(settings.clock_delay_ms / 2000, 0.01))(_delayed_clocks(p))
    lag_shown: set[tuple[str, str]] = set()  # the lag's series, shared by the early reading and the timer
    app.timer(interval=LAG_EVERY_S)(_consumer_lag(p, lag_shown))
    app.timer(interval=ENDS_EVERY_S)(_partition_ends(p))
    app.timer(interval=HEALTH_EVERY_S)(_health(p))
    app.early_tasks = (_early_beat(p), _early_lag(p, lag_shown))
    return p


def _load_scorer(settings: Settings, config: PipelineConfig, metrics: Metrics,
                 loaded: ModelBundle | None = None) -> Predictor | None:
    """The models the ``score`` timer uses (``loaded``, when given: its load checks and parses the whole
    model file).  None: scoring switched off in the config, or a model directory that cannot be used;
    then the worker runs without scores (one error line, and ``mailpulse_models_unavailable`` 1), since
    profiles, segments and triggers do not need them."""
    if not config.scoring.enabled:
        return None
    try:
        bundle = loaded if loaded is not None else ModelBundle.load(settings.models_dir or SHIPPED_DIR)
    except ModelError as exc:
        log.error("MAILPULSE_MODELS_DIR %s: running without scores", exc)
        metrics.models_unavailable.set(1)
        return None
    for model in MODEL_NAMES:
        metrics.model_info.labels(model, bundle.version).set(1)
    return Predictor(bundle, metrics.scoring_seconds.observe)


def _on_assignment(p: Pipeline) -> Any:
    async def on_partitions_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        p.due_index.reset()  # rebuilt from profile-state before the profile agent's next record
        p.health.ready = False  # until table recovery is done
        per_topic = Counter(tp.topic for tp in assigned)
        events_topic = names.events_topic(sender.conf.id)
        for topic in _read_topics(p):
            p.metrics.assigned_partitions.labels(topic).set(per_topic.get(topic, 0))
        p.delayed_clocks.hold_for(tp.partition for tp in assigned if tp.topic == events_topic)

    return on_partitions_assigned


def _on_recovered(p: Pipeline) -> Any:
    """Table recovery is done (Faust sends this before it resumes the stream partitions): the due
    index is rebuilt from the recovered profile-state table at the next record, whatever was built
    before (a record handled while recovery still ran would have seen part of the table)."""

    async def on_rebalance_complete(sender: Any = None, **_: Any) -> None:
        p.due_index.reset()
        # this runs on the event loop: it has turned, so the state is "running" as soon as /readyz
        # says ready, not only after the first health beat (up to HEALTH_EVERY_S later)
        p.health.beat = time.monotonic()
        p.health.started = True
        p.health.ready = True

    return on_rebalance_complete


def _on_revocation(p: Pipeline) -> Any:
    """Staged (and held) writes of partitions this worker lost are dropped: Faust commits (and so
    writes them) while revoking, after a commit already running (streams.consumer, fix 8); what is
    left was staged after that and its events were not committed either, so the new owner processes
    them again.  Written later, they would land in the new owner's changelog partitions over its
    newer values."""
    events_topic = names.events_topic(p.settings.app_id)
    cooccurrence_topic = names.cooccurrence_topic(p.settings.app_id)

    async def on_partitions_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        p.health.ready = False
        def lost(topic: str) -> set[int]:
            return {tp.partition for tp in revoked if tp.topic == topic}

        p.due_index.reset()  # (a record's due profiles advanced in chunks stop here: advance_left)
        for table in p.tables:  # each table is written from the stream of one topic
            table.drop_staged(lost(cooccurrence_topic if table is p.product_neighbours else events_topic))
        p.pairs.drop(lost(events_topic))  # the new owner counts them again
        p.counted_products.drop(lost(cooccurrence_topic))
        p.delayed_clocks.forget(lost(events_topic))  # their markers may never be applied here

    return on_partitions_revoked


def _read_topics(p: Pipeline) -> set[str]:
    """The topics the agents read."""
    return {*INPUT_TOPICS, names.events_topic(p.settings.app_id), names.cooccurrence_topic(p.settings.app_id)}


def _end(consumer: Any, tp: Any, asked: int | None) -> int | None:
    """A partition's end: the further of the broker's answer (``asked``) and the end as of the last
    fetch (the embedded broker answers with the start of the partition's last batch, not its end)."""
    fetched: int | None
    try:
        fetched = consumer.highwater(tp)  # None until the partition was fetched once
    except Exception:  # (a partition revoked meanwhile)
        fetched = None
    if fetched is None:
        return asked
    return fetched if asked is None else max(fetched, asked)


async def _passed_to_end(consumer: Any, tp: Any, end: int, unacked: set[Any]) -> bool:
    """Whether the consumer's fetch position reached ``end`` with every message it delivered of the
    partition acked and committed (``unacked``: the partitions of messages delivered and not acked):
    the offsets left between the committed offset and the end are then none a record was delivered
    for (a transaction's commit or abort marker, which a producer writing in transactions leaves after
    its records), so nothing waits to be read."""
    if consumer._acked.get(tp) or tp in unacked:
        return False
    fetched = await asyncio.wait_for(consumer.position(tp), ENDS_EVERY_S)
    return fetched is not None and fetched >= end


def _partition_ends(p: Pipeline) -> Any:
    """Asks the broker for the end of every assigned partition the agents read, for the lag (the
    end as of the last fetch stays put when fetching stops) and for the check that each is read: a
    committed offset that does not move while the broker holds records past it fails /healthz (a
    fetch that stopped, a partition left paused, records fetched and never handed on or acked, a
    commit that the group no longer takes)."""
    topics = _read_topics(p)

    async def partition_ends() -> None:
        consumer: Any = p.app.consumer
        try:  # a check never stops the worker; a broker that does not answer is the broker probe's to tell
            tps = [tp for tp in consumer.assignment() if tp.topic in topics]
            ends = dict(await asyncio.wait_for(consumer.highwaters(*tps), ENDS_EVERY_S)) if tps else {}
            # the committed offset: every step from the fetch to the agents' acks and the commit made it;
            # else, or when retention deleted the records past it, the partition's start (where the fetch
            # goes on: with nothing there to read, no commit moves the committed offset)
            starts = dict(await asyncio.wait_for(consumer.earliest_offsets(*ends), ENDS_EVERY_S)) if ends else {}
            positions: dict[Any, int | None] = {}
            for tp in ends:
                committed, start = consumer._committed_offset.get(tp), starts.get(tp)
                positions[tp] = start if committed is None else committed if start is None else max(committed, start)
            watched = {tp: (position, _end(consumer, tp, ends[tp]) or 0)
                       for tp, position in positions.items() if position is not None}
            behind = [(tp, end) for tp, (position, end) in watched.items() if position < end]
            read_to_end: dict[Any, int] = {}
            if behind:  # (read once, not per partition, and only when one is behind its end)
                unacked = {message.tp for message in list(consumer._unacked_messages)}
                for tp, end in behind:
                    if await _passed_to_end(consumer, tp, end, unacked):
                        watched[tp] = (end, end)
                        read_to_end[tp] = end
        except Exception as exc:
            log.debug("partition ends not read: %s", type(exc).__name__)
            # watched afresh once the broker answers: a commit cannot move while it does not, and a
            # partition that waited out an outage is no partition the worker stopped reading
            p.health.watch_partitions({})
            return
        p.broker_ends, p.read_to_end = ends, read_to_end
        p.health.watch_partitions({f"{tp.topic}/{tp.partition}": watched[tp] for tp in watched})

    return partition_ends


def _consumer_lag(p: Pipeline, shown: set[tuple[str, str]]) -> Any:
    """``mailpulse_consumer_lag``: for each assigned partition of a topic the agents read, the messages
    between its committed offset and the partition's end, as of the last fetch or the broker's last
    answer (:func:`_partition_ends`), whichever is further (what a restart would read again).
    Partitions no longer assigned lose their series (``shown``: the series set, also by :func:`_early_lag`)."""
    gauge = p.metrics.consumer_lag
    topics = _read_topics(p)

    async def consumer_lag() -> None:
        consumer: Any = p.app.consumer  # a streams.consumer.Consumer (Faust's offset bookkeeping)
        lags: dict[tuple[str, str], int] = {}
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            end = _end(consumer, tp, p.broker_ends.get(tp))  # (a fetch that stopped leaves its end behind)
            if end is None:
                continue
            # From the committed offset, not the acked ones: what a restart would read again, so a
            # commit that is stuck (while events are still processed) shows as growing lag.
            done = consumer._committed_offset.get(tp) or 0
            if p.read_to_end.get(tp) == end:  # (a transaction's marker last: nothing left to read)
                done = end
            lags[tp.topic, str(tp.partition)] = max(0, end - done)
        _show_lags(gauge, shown, lags)

    return consumer_lag


def _show_lags(gauge: Any, shown: set[tuple[str, str]], lags: dict[tuple[str, str], int]) -> None:
    """``lags`` (topic, partition) -> messages on ``gauge``; the series of ``shown`` not among them removed."""
    for labels, lag in lags.items():
        gauge.labels(*labels).set(lag)
    for labels in shown - lags.keys():
        gauge.remove(*labels)
    shown.clear()
    shown.update(lags)


def _queued(app: Any, agent: Any) -> int:
    """Records the consumer handed to an agent that it has not taken yet: the queues of the channels
    its streams iterate (Faust's conductor, ``app.topics``, delivers each fetched record to them)."""
    try:
        names = set(agent.channel.topics)
        return sum(channel.queue.qsize() for channel in app.topics
                   if channel.is_iterator and names & set(channel.topics))
    except Exception:  # (none iterated yet, or not Faust's: nothing is known to wait)
        return 0


def _health(p: Pipeline) -> Any:
    """Each second: the event loop turned (so /healthz knows it is not stuck), whether an agent's
    actor crashed, whether the broker still acknowledges outputs (else /readyz fails), and
    ``mailpulse_worker_state``."""
    # read when scraped, in the HTTP thread: a stalled event loop cannot leave "running" behind
    def in_state(state: str) -> Callable[[], float]:
        return lambda: float(p.health.state() == state)

    for state in WORKER_STATES:
        p.metrics.worker_state.labels(state).set_function(in_state(state))

    progress = getattr(p.output, "progress", None)  # the real producer's (queued, acknowledged, lost)

    async def health() -> None:
        p.health.beat = time.monotonic()
        p.health.started = True
        if progress is not None:
            queued, acknowledged, lost = progress()
            p.metrics.output_queued.set(queued)
            told = p.health.output_progress(queued, acknowledged, lost)
            if told is not None:
                log.log(logging.INFO if p.health.outputs_waiting_since is None else logging.WARNING, "mailpulse: %s",
                        told)
        waiting: dict[str, int] = {}
        for name, agent in p.app.agents.items():
            actors = getattr(agent, "_actors", ())
            if any(actor._crashed.is_set() for actor in actors):
                p.health.crashed = name
            waiting[name] = _queued(p.app, agent)
        p.health.watch_agents(waiting)

    return health


def _early_beat(p: Pipeline) -> Callable[[], Awaitable[None]]:
    """The event loop's beat from the app's start until the health timer takes over: Faust starts
    its timers only once the first table recovery is done, and a recovery longer than
    :data:`streams.metrics.STALL_AFTER_S` (a large changelog, a state folder rebuilt) read as a stalled loop, so a
    liveness probe restarted the worker in the middle of it, again and again."""

    async def early_beat() -> None:
        while not p.health.started:
            p.health.beat = time.monotonic()
            await asyncio.sleep(HEALTH_EVERY_S)

    return early_beat


def _early_lag(p: Pipeline, shown: set[tuple[str, str]]) -> Callable[[], Awaitable[None]]:
    """``mailpulse_consumer_lag`` from the app's start until the lag timer takes over (Faust starts
    timers once the first table recovery is done): without it the lag had no series during that
    recovery, however long, and however far the input piled up meanwhile.  The committed offsets are
    asked of the group (Faust reads them only as the recovery ends) and the ends of the broker,
    every :data:`EARLY_LAG_EVERY_S`; the agents read nothing yet, so the lag is what waits for them."""
    gauge = p.metrics.consumer_lag
    topics = _read_topics(p)

    async def early_lag() -> None:
        while not p.health.started:
            try:  # a reading never stops the worker; a broker that does not answer is the broker probe's to tell
                consumer: Any = p.app.consumer
                tps = sorted(tp for tp in consumer.assignment() if tp.topic in topics)
                if tps:
                    # (awaited to the end, not given up: one call of this loop at a time in the consumer's
                    # thread, whose calls go on when their callers stop waiting)
                    ends = dict(await consumer.highwaters(*tps))
                    committed = await _committed_offsets(consumer, tps)
                    if not p.health.started:  # (the timer may have taken over while the broker answered)
                        lags = {(tp.topic, str(tp.partition)): max(0, end - (committed.get(tp) or 0))
                                for tp in tps if (end := _end(consumer, tp, ends.get(tp))) is not None}
                        _show_lags(gauge, shown, lags)
            except Exception as exc:
                log.debug("consumer lag not read: %s", type(exc).__name__)
            await asyncio.sleep(EARLY_LAG_EVERY_S)

    return early_lag


async def _committed_offsets(consumer: Any, tps: list[Any]) -> dict[Any, int]:
    """The group's committed offset of each of ``tps`` that has one, asked of the group coordinator
    in the consumer's thread (one request).  Given up there after :data:`EARLY_LAG_EVERY_S`: the
    coordinator's fetch retries until the broker answers, and the thread runs two calls at a time,
    so calls that waited out an outage held up Faust's own (seeks, commits) behind them."""
    client = consumer._thread._ensure_consumer()

    async def fetch() -> Any:
        return await asyncio.wait_for(client._coordinator.fetch_committed_offsets(list(tps)), EARLY_LAG_EVERY_S)

    answer = await consumer._thread.call_thread(fetch)
    return {tp: meta.offset for tp, meta in answer.items() if meta.offset >= 0}


def _delayed_clocks(p: Pipeline) -> Any:
    """Sends the input clocks that are due when no ingest batch came to carry them."""

    async def delayed_clocks() -> None:
        p.send_clocks()

    return delayed_clocks


def _wall_clock(p: Pipeline) -> Any:
    """``--clock wall``: the wall clock reaches every profile partition through the internal topic
    (table writes need a stream event), so time-based rules fire with no input traffic."""
    events_topic = names.events_topic(p.settings.app_id)

    async def wall_clock() -> None:
        record = orjson.dumps([[None, {"wall": _now_ms()}]])
        for partition in range(p.settings.partitions):
            p.output.send(events_topic, None, record, partition)

    return wall_clock


def _monotonic_ms() -> int:
    """Milliseconds of a clock that never steps back (input clocks' delays: DelayedClocks)."""
    return int(time.monotonic() * 1000)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ingest_agent(p: Pipeline) -> Any:
    """Decodes input events and forwards them in batches, one internal record per profile partition.

    Why batches: Faust's per-message stream machinery costs far more than our own work per event;
    one record of ~N/partitions events pays it once on the profile hop.  ``take_events`` acks the
    input events only after the batch's body has run (the sends are then flushed before any commit).
    """
    settings, metrics, send = p.settings, p.metrics, p.output.send
    events_topic = names.events_topic(settings.app_id)
    partitions = settings.partitions
    identity, guard = p.rules.config.identity, p.rules.config.time
    policy = IngestPolicy(settings.default_phone_region, identity.blocked(), int(guard.max_future_minutes * 60_000))

    dead: Counter[tuple[str, str]] = Counter()  # (topic, code) -> dead letters of the current batch

    def dead_letter(topic: str, code: str, key: bytes | None, letter: dict[str, Any]) -> None:
        dead[topic, code] += 1
        if code == "processing_error":
            metrics.processing_errors.labels("ingest", "decode").inc()
        value = orjson.dumps(letter)
        # the input's key is the letter's (contract), unless the two would pass the message limit
        send(names.DEAD_LETTER, key if key is None or len(key) + len(value) <= MAX_VALUE_BYTES else None, value)

    def forward(partition: int, record: bytes) -> None:
        send(events_topic, None, record, partition)

    record_seconds = metrics.record_seconds.labels("ingest")

    def handle(batch: list[Any]) -> None:
        blocked = route_batch(_delivered_records(batch), partitions, _now_ms(), policy, forward, dead_letter,
                              p.delayed_clocks, _monotonic_ms())
        sent = time.monotonic()
        waits: list[float] = []  # one per input record
        for event in batch:
            fetched = event.message.time_in
            if fetched is not None:
                records = len(event.value) if isinstance(event.value, list) else 1  # a RecordBatch: a run
                waits += [sent - fetched] * records
        observe_many(record_seconds, waits)
        for field_name, count in blocked.items():
            metrics.identifiers_blocked.labels(field_name).inc(count)
        for (topic, code), count in dead.items():
            metrics.event(topic, "dead_letter").inc(count)
            metrics.dead_letters.labels(code).inc(count)
        dead.clear()

    async def ingest(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            p.health.took("ingest")
            try:
                handle(batch)
            except Exception as exc:  # outside route_batch's per-input guard: take_events would ack the batch
                stop_at_once("ingest", exc)

    return ingest


def _delivered_records(events: list[Any]) -> list[InputRecord]:
    """(topic, partition, offset, key, value, timestamp ms) of each record the agent was given (the
    ingest agent's input records, the profile agent's internal ones): a delivered
    :class:`streams.consumer.RecordBatch` holds a run of aiokafka records, any other message is one."""
    out: list[InputRecord] = []
    for event in events:
        value = event.value
        if isinstance(value, list):
            out += [(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp) for r in value]
        else:
            msg = event.message
            out.append((msg.topic, msg.partition, msg.offset, msg.key, value,
                        int(msg.timestamp * 1000) if msg.timestamp else None))
    return out


def _profile_agent(p: Pipeline) -> Any:
    """Parks each profile's events until the watermark reaches them, then walks the profile forward
    (:func:`streams.domain.timeline.advance`): profile snapshots, segment changes and triggers.  A thin loop
    around :func:`streams.record_step.apply_run`: read, step, apply (stage, send, count)."""
    settings, metrics = p.settings, p.metrics
    table, index = p.profile_state, p.due_index
    partitions = settings.partitions
    ctx = StepContext(
        rules=p.rules, expected_clocks=expected_clocks(p.input_partitions),
        wall_delay_ms=int(settings.wall_clock_delay_s * 1000) if settings.clock == "wall" else None,
        partitions=partitions, events_topic=names.events_topic(settings.app_id),
        withdrawals_topic=names.withdrawals_topic(settings.app_id),
    )
    latency = {name: metrics.event_latency.labels(name) for name in (names.PROFILES, names.SEGMENT_CHANGES,
                                                                     names.TRIGGERS)}
    updated, applied = metrics.profiles_written.labels("updated"), metrics.events_applied
    record_seconds = metrics.record_seconds.labels("profiles")
    sink = _AgentSink(p)

    unreadable = metrics.processing_errors.labels("profiles", "stored_state")

    def due_entries() -> Any:
        skipped = 0
        first: tuple[str, bytes] | None = None  # (exception class, key) of the first that could not be read
        for key, value in table.items_with_staged():
            try:
                name = key.decode()
                due = stored_due(value)
            except Exception as exc:
                # A key, value or due time this version cannot read or index (written by another
                # program, or a newer version's after a rollback) must not end the worker at every
                # start: it gets no due entry, and a step that reads it fails in its isolation (its
                # entries are dead-lettered).
                skipped += 1
                first = first or (type(exc).__name__, key)
                continue
            if due is not None:
                yield partition_for(name, partitions), due, key
        if first is not None:
            unreadable.inc(skipped)
            log.warning("%d stored profile states cannot be read and keep no timer (the first: %s, profile %s)",
                        skipped, first[0], profile_id_for(first[1].decode(errors="replace")))

    def handle(delivered: Any) -> list[tuple[int, RecordResult, Source]]:
        """A fetched run of one partition's internal records (streams.consumer, fix 3), or one record:
        applied as one step (streams.record_step.decode_run says why), so the run is acked only once
        all of it is applied.  Returns what its steps left due past ``MOST_DUE_PER_STEP`` (partition,
        result, place), for :func:`advance_left` before the ack."""
        if not index.built:
            index.build(due_entries())
        fetched = delivered.message.time_in
        now = _now_ms()
        delivered_records = _delivered_records([delivered])
        run = decode_run((Source(topic, partition, offset, None, arrival_ms(timestamp_ms, now)), value)
                         for topic, partition, offset, _, value, timestamp_ms in delivered_records)
        for source, value, exc in run.undecodable:
            _internal_dead_letter(p, source, value, exc)
        left: list[tuple[int, RecordResult, Source]] = []
        if run.records:
            partition = run.places[0].partition  # a run is of one partition
            for result in apply_run(run, partial(_StepReader, p, partition, now), ctx, partition, sink,
                                    MOST_DUE_PER_STEP):
                _count(p, result, latency, updated, applied)
                if result.due_left:
                    left.append((partition, result, run.places[-1]))
            for entries in run.records:  # their events' forwards are sent: their clocks may go
                p.delayed_clocks.applied(partition, entries)
            if fetched is not None:
                waited = time.monotonic() - fetched
                for _ in run.records:
                    record_seconds.observe(waited)
            if p.staged_count > STAGED_LIMIT:
                p.write_staged(commit=False)
        return left

    async def advance_left(left: list[tuple[int, RecordResult, Source]]) -> None:
        """The due profiles a record's steps left, ``MOST_DUE_PER_STEP`` at a time, the event loop
        turning between them (the health beat, the broker's heartbeats, the other agents).  A
        rebalance meanwhile ends it: the partition may be another worker's now, and the due index,
        rebuilt from the profile states, holds what is left."""
        for partition, result, place in left:
            keys, at = result.due_left, result.due_at
            assert at is not None  # (set with due_left)
            for start in range(0, len(keys), MOST_DUE_PER_STEP):
                await asyncio.sleep(0)
                if not index.built:  # a rebalance reset it: nothing more of this record here
                    return
                p.health.took("profiles")  # (busy with one record, not wedged: /healthz's watch)
                reader = _StepReader(p, partition, _now_ms(), place.arrived_ms)
                more = apply_due(keys[start:start + MOST_DUE_PER_STEP], at, reader, ctx, place, partition, sink,
                                 partial(p.due_index.push, partition))
                _count(p, more, latency, updated, applied)
                if p.staged_count > STAGED_LIMIT:
                    p.write_staged(commit=False)

    async def profiles(stream: Any) -> None:
        # Only the agent acks a run, once it is applied (below).  A failure outside the step's isolation
        # ends the worker (``stop_at_once``); were the run acked or skipped instead, a later commit could pass
        # it (Faust's check for a hole at the head of the acked offsets misses a hole of one offset, and
        # every hole of a fresh group).
        stream.enable_acks = False
        async for delivered in stream.events():
            p.health.took("profiles")
            try:
                left = handle(delivered)
                if left:
                    await advance_left(left)
            except Exception as exc:  # outside the step's isolation: nothing of the run is acked
                stop_at_once("profiles", exc)
            # Acks the whole run through the consumer (streams.consumer fix 3).  Faust's compiled
            # stream iterator, had it acked, would have marked only the run's last offset (it does
            # not call the consumer's ack), and the commit could never move past the run.
            delivered.ack()

    return profiles


class _AgentSink:
    """A step's result into the worker's producer, staged table writes and due index."""

    def __init__(self, p: Pipeline) -> None:
        self._p = p
        self.send = p.output.send
        self.stage_state = p.profile_state.stage  # (bound here: a write per event pass)
        self.stage_block = p.identity_blocks.stage

    def stage_clocks(self, value: bytes, partition: int) -> None:
        self._p.partition_clocks.stage(b"clocks|%d" % partition, value, partition)

    def add_pairs(self, pairs: dict[str, list[list[Any]]], partition: int) -> None:
        if self._p.pairs.add(partition, pairs):
            self._p.send_pairs()  # full: sent now rather than held without bound

    def push_due(self, partition: int, due: int, key: bytes, previous: int | None) -> None:
        self._p.due_index.push(partition, due, key, _indexed(previous))

    def discard_due(self, partition: int, key: bytes, previous: int | None) -> None:
        self._p.due_index.discard(partition, key, _indexed(previous))


def _indexed(previous: Any) -> int | None:
    """A stored state's ``"due"`` as the index may hold it: one the rebuild could not index is None."""
    try:
        return indexable_due(previous)
    except ValueError:
        return None


class _StepReader:
    """The reads of one step (:class:`streams.record_step.StepReader`): fresh table readers for each
    attempt, and the due index popped once per watermark (a retry gets the same keys)."""

    def __init__(self, p: Pipeline, partition: int, now: int, arrived_ms: int) -> None:
        self._p, self._partition, self._now, self._arrived_ms = p, partition, now, arrived_ms
        self._due = DuePops(partial(p.due_index.pop_due, partition), partial(p.due_index.push, partition))
        self.give_back = self._due.give_back

    def make_io(self) -> StepIO:
        p, partition = self._p, self._partition
        clocks = stored_clocks(p.partition_clocks.read(b"clocks|%d" % partition, partition))
        return StepIO(partition, p.profile_state.json_reader(partition), p.identity_blocks.json_reader(partition),
                      clocks, self._due.pop_due, self._now, self._arrived_ms, p.product_recs.get)


def _count(p: Pipeline, result: RecordResult, latency: dict[str, Any], updated: Any, applied: Any) -> None:
    """The metrics of one record's step."""
    metrics = p.metrics
    for (topic, outcome), count in result.outcomes.items():
        metrics.event(topic, outcome).inc(count)
    for topic, count in result.late.items():
        metrics.late_events.labels(input_topic(topic)).inc(count)
    for topic, count in result.before_dedupe.items():
        metrics.before_dedupe.labels(input_topic(topic)).inc(count)
    for why, count in result.profiles_written.items():
        (updated if why == "updated" else metrics.profiles_written.labels(why)).inc(count)
    for kind in result.merges:
        metrics.profile_merges.labels(fixed_label(kind, MERGE_KINDS)).inc()
    for kind in result.limited:
        metrics.identity_limited.labels(kind).inc()
    if result.blocks_skipped:
        metrics.identity_blocks_skipped.inc(result.blocks_skipped)
    for collection, count in result.entries_dropped.items():
        metrics.entries_dropped.labels(collection).inc(count)
    if result.released_early:
        metrics.released_early.inc(result.released_early)
    if result.shrunk:
        metrics.states_shrunk.inc(result.shrunk)
    if result.unknown:
        metrics.internal_skipped.inc(len(result.unknown))
        first = result.unknown[0]  # named only when it looks like a type name: the text is a record's
        log.warning("skipped %d internal message(s) of a type this version does not know (a newer worker's?), "
                    "the first: %s", len(result.unknown),
                    first if _TYPE_NAME.fullmatch(first) else f"(not a type name, {len(first)} characters)")
    for output_topic, waited in result.waits.items():
        observe_many(latency[output_topic], waited)
    if result.released:
        applied.inc(result.released)
    for trigger_type, count in result.triggers.items():
        metrics.triggers.labels(trigger_type).inc(count)
    for trigger_type, reason in result.suppressed:
        metrics.triggers_suppressed.labels(trigger_type, reason).inc()
    for trigger_type, reason in result.deferred:
        metrics.triggers_deferred.labels(trigger_type, reason).inc()
    for (segment, change_kind), count in result.segment_changes.items():
        metrics.segment_changes.labels(segment, change_kind).inc(count)
    for stage, _ in result.failures:
        metrics.processing_errors.labels("profiles", stage).inc()
    if result.letters:
        metrics.dead_letters.labels("processing_error").inc(result.letters)


def _internal_dead_letter(p: Pipeline, source: Source, raw: bytes | None, exc: BaseException) -> None:
    """An internal record (or co-occurrence record) that cannot be handled at all: dead-lettered whole."""
    agent = "cooccurrence" if source.topic == names.cooccurrence_topic(p.settings.app_id) else "profiles"
    log.warning("processing_error in the %s agent: %s; the record is dead-lettered", agent, type(exc).__name__)
    letter = reject(source, raw, "processing_error", f"{agent}: {type(exc).__name__}", source.arrived_ms).record
    letter["stage"] = agent
    p.output.send(names.DEAD_LETTER, None, orjson.dumps(letter))
    p.metrics.processing_errors.labels(agent, "record").inc()
    p.metrics.dead_letters.labels("processing_error").inc()


#: The largest pair weight a co-occurrence entry may carry (the profile hop's sums until a commit
#: stay far below it): a weight past it comes from somewhere else, and counts must stay finite.
MAX_PAIR_WEIGHT = 2**31


def _cooccurrence_agent(p: Pipeline) -> Any:
    """Adds co-occurrence counts to each product's neighbours; publishes a product's top neighbours
    when they change (:mod:`streams.domain.rules.recommend`)."""
    table, send = p.product_neighbours, p.output.send
    recs_topic = names.product_recs_topic(p.settings.app_id)
    dropped = p.metrics.product_neighbours_dropped
    held_products, evicted = p.counted_products, p.metrics.product_neighbours_evicted

    def count(product: Any, counted: Any, partition: int) -> tuple[bytes, bytes | None]:
        """One entry's pairs added to the product's stored counts (staged): the product's key and its
        new top neighbours when they changed.  Raises on an entry that is not ``[product, [[other,
        weight], ...]]`` with a positive integer weight, before anything is staged."""
        pairs = [(other, weight) for other, weight in counted]
        if not isinstance(product, str) or not all(
                isinstance(other, str) and type(weight) is int and 0 < weight <= MAX_PAIR_WEIGHT
                for other, weight in pairs):
            raise TypeError("not a co-occurrence entry")
        key = product.encode()
        neighbours: dict[str, int] = table.read_json(key, partition) or {}
        before = top_neighbours(neighbours)
        named = len(neighbours.keys() | {other for other, _ in pairs})
        neighbours = count_pairs(neighbours, pairs)
        if len(neighbours) < named:  # past NEIGHBOURS_KEPT the weakest go
            dropped.inc(named - len(neighbours))
        top = top_neighbours(neighbours)
        table.stage(key, orjson.dumps(neighbours), partition)
        for gone in held_products.counted(partition, key):  # past the bound: the least recently counted go
            table.stage(gone, None, partition)
            send(recs_topic, gone, None)  # (the replicas drop it; compaction removes the key)
            evicted.inc()
        return key, orjson.dumps(top) if top != before else None

    def handle(record: Any) -> None:
        """Counts are a recommendation signal: an entry that cannot be counted is dead-lettered (the
        entries of the record that cannot, as one letter) and the others are counted.  A failure to
        send (the producer's, not the input's) is not caught here: it ends the worker."""
        message = record.message
        partition = message.partition
        marker = b"\xffapplied|%d" % partition
        try:
            applied = table.read_json(marker, partition)
        except ValueError:  # (not JSON: as if none, the record is counted)
            applied = None
        if type(applied) is int and message.offset <= applied:
            return  # read again (a rebalance, a restart): its counts are in the table already
        failed: list[Any] = []
        cause: BaseException | None = None
        try:
            entries = orjson.loads(record.value)
            if not isinstance(entries, list):
                raise TypeError("a co-occurrence record is a list of entries")
        except Exception as exc:  # nothing in it can be counted: the letter keeps the record
            entries, cause = [], exc
        for entry in entries:
            try:
                product, counted = entry
                key, recs = count(product, counted, partition)
            except Exception as exc:
                failed.append(entry)
                cause = exc
                continue
            if recs is not None:
                send(recs_topic, key, recs)
        # Counts are not idempotent: a record whose sums were written without its offset (the commit
        # of a revocation, which Faust makes after forgetting the revoked partitions' acks; one a
        # rebalance stopped) would be added again by whoever reads it next.  So the partition's table
        # keeps the offset of the last record counted, written after the sums it covers; the marker's
        # key is not UTF-8, so no product's.
        table.stage_last(marker, b"%d" % message.offset, partition)
        if cause is not None:
            try:
                raw = orjson.dumps(failed) if failed else record.value
            except Exception:  # a bad entry orjson reads but cannot write (nested past its depth limit)
                raw = record.value
            _internal_dead_letter(p, Source(message.topic, partition, message.offset, None, _now_ms()), raw, cause)

    async def cooccurrence(stream: Any) -> None:
        stream.enable_acks = False  # acked once handled (below), as the profile agent's runs
        async for record in stream.events():
            p.health.took("cooccurrence")
            try:
                handle(record)
            except Exception as exc:  # even the dead letter failed
                stop_at_once("cooccurrence", exc)
            record.ack()

    return cooccurrence
