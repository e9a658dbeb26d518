"""The app factory: one Faust app with its topics, tables and agents, built from :class:`Settings`.

Topology::

    clicks, carts, purchases, identities ──ingest──> <app>-profile-events ──profiles──> profiles
                     │                         (by profile; input clocks      ├──> segment-changes
                     └──> dead-letter           to every partition)           ├──> triggers
                                                                                     └──> scores
                                                       tables: profile-state, partition-clocks
                                                       (scores: the models of models/, at each
                                                        profile's score timer, streams.rules.score_timer)
    profiles ──> <app>-co-occurrence (by product) ──cooccurrence──> <app>-product-recs (compacted,
                                                   table product-neighbours        read back by every worker)

Agents stay thin: they decode, call the pure functions of :mod:`streams.ingest`,
:mod:`streams.timeline` and :mod:`streams.watermark`, write the tables and send outputs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from models.bundle import MODEL_NAMES, SHIPPED_DIR, ModelBundle
from models.scoring import Predictor
from schemas.events import INPUT_TOPICS
from streams import topics as names
from streams.broker import free_port
from streams.config import PipelineConfig, load_config
from streams.consumer import App
from streams.dispatch import dispatch
from streams.ingest import IngestPolicy
from streams.metrics import COMMIT_STAGES, Metrics, observe_many
from streams.native_memory import release_free_memory
from streams.output import FlushBeforeCommit, Output, OutputProducer
from streams.product_recs import ProductRecs
from streams.profile import State, snapshot
from streams.routing import InputRecord, PartitionBatches, partition_for, route_batch
from streams.rules.recommend import count_pairs, top_neighbours
from streams.settings import Settings
from streams.tables import ProfileTable, RocksDBDueIndex, RocksDBMemory, profile_table, rocksdb_options
from streams.timeline import RuleSet, advance, next_due
from streams.watermark import DueIndex, DueOrder, due_first, expected_clocks, merge_clocks, stored_due, watermark

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
#: Staged table writes after which the profile agent writes them out without waiting for a commit
#: (more: fewer repeated writes of a busy key; fewer: less memory).
STAGED_LIMIT = 20_000
#: A write-out of at least this many staged values gives the freed memory back to the OS after it.
TRIM_AFTER = 2_000
#: How often ``mailpulse_consumer_lag`` is updated (seconds).
LAG_EVERY_S = 1.0


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
    product_recs: ProductRecs  # every product's published top neighbours (started by the worker)
    untrimmed: int = 0  # values written out since free memory was last given back

    @property
    def tables(self) -> tuple[ProfileTable, ...]:
        return (self.profile_state, self.partition_clocks, self.identity_blocks,
                self.product_neighbours)

    def write_staged(self) -> None:
        """Writes every table's staged values (before each offset commit, and when many are staged).

        Everything sent before is delivered first.  A state in the changelog survives a crash, while
        the events it took in are read again only if their offsets were not committed; re-read, they
        are duplicates to that state and cause nothing.  So the outputs and internal messages they
        caused (a snapshot, a trigger, the absorb carrying a profile to its root) must already be
        in their topics when the state is written, or a crash in between would lose them for good."""
        written = self.staged_count
        if written:
            self.output.flush()
        for table in self.tables:
            table.write_staged()
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
               config: PipelineConfig | None = None, input_partitions: dict[str, int] | None = None) -> Pipeline:
    """Build the Faust app.  No broker is contacted until a worker starts it (the output producer
    connects lazily too).  ``input_partitions``: partitions per input topic (the watermark waits
    for each); default ``settings.partitions`` each."""
    app = App(
        settings.app_id,
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
    app.batched_topics = frozenset(INPUT_TOPICS)  # the ingest agent takes runs of records (streams.consumer)
    metrics = metrics or Metrics()
    output = output or OutputProducer(settings.bootstrap_servers)
    config = config if config is not None else load_config(settings.config)
    options = rocksdb_options(settings.rocksdb_write_buffer_mb)
    small = rocksdb_options(1)  # tables of small values: clocks, blocks, neighbours
    memory = RocksDBMemory.with_budget(settings.rocksdb_memory_mb)
    scorer = _load_scorer(settings, config, metrics)
    p = Pipeline(
        settings=settings,
        app=app,
        metrics=metrics,
        output=output,
        inputs=_raw_topic(app, *INPUT_TOPICS),
        events=_raw_topic(app, names.events_topic(settings.app_id), partitions=settings.partitions,
                          internal=True),
        profile_state=profile_table(app, output, "profile-state", settings.partitions, options, memory),
        partition_clocks=profile_table(app, output, "partition-clocks", settings.partitions, small, memory),
        rules=RuleSet.build(config, int(settings.dedupe_retention_days * DAY_MS), scorer),
        input_partitions=input_partitions or {topic: settings.partitions for topic in INPUT_TOPICS},
        due_index=RocksDBDueIndex(settings.data_dir / f"{settings.app_id}-due-index", memory)
        if settings.table_store == "rocksdb" else DueIndex(),
        cooccurrence=_raw_topic(app, names.cooccurrence_topic(settings.app_id), partitions=settings.partitions,
                                internal=True),
        identity_blocks=profile_table(app, output, "identity-blocks", settings.partitions, small, memory),
        product_neighbours=profile_table(app, output, "product-neighbours", settings.partitions, small, memory),
        product_recs=ProductRecs(),
    )
    metrics.rocksdb_memory.set_function(lambda: memory.used)  # read when /metrics is scraped
    def after_flush() -> None:
        for table in p.tables:
            table.save_persisted_offsets()

    commit_seconds = {stage: metrics.commit_seconds.labels(stage) for stage in COMMIT_STAGES}
    app.sensors.add(FlushBeforeCommit(output, after_flush=after_flush, before_flush=p.write_staged,
                                      observe=lambda stage, seconds: commit_seconds[stage].observe(seconds)))
    app.on_partitions_assigned.connect(_on_assignment(p))
    app.on_partitions_revoked.connect(_on_revocation(p))
    app.on_rebalance_complete.connect(_on_recovered(p))
    app.agent(p.inputs, name="ingest")(_ingest_agent(p))
    app.agent(p.events, name="profiles")(_profile_agent(p))
    app.agent(p.cooccurrence, name="cooccurrence")(_cooccurrence_agent(p))
    if settings.clock == "wall":
        app.timer(interval=settings.wall_clock_interval_s)(_wall_clock(p))
    app.timer(interval=LAG_EVERY_S)(_consumer_lag(p))
    return p


def _load_scorer(settings: Settings, config: PipelineConfig, metrics: Metrics) -> Predictor | None:
    """The models the ``score`` timer uses (None: scoring switched off in the config).  Raises
    :class:`models.bundle.ModelError` for a directory that cannot be used."""
    if not config.scoring.enabled:
        return None
    bundle = ModelBundle.load(settings.models_dir or SHIPPED_DIR)
    for model in MODEL_NAMES:
        metrics.model_info.labels(model, bundle.version).set(1)
    return Predictor(bundle, metrics.scoring_seconds.observe)


def _on_assignment(p: Pipeline) -> Any:
    async def on_partitions_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        p.due_index.reset()  # rebuilt from profile-state before the profile agent's next record
        per_topic = Counter(tp.topic for tp in assigned)
        for topic in (*INPUT_TOPICS, names.events_topic(sender.conf.id)):
            p.metrics.assigned_partitions.labels(topic).set(per_topic.get(topic, 0))

    return on_partitions_assigned


def _on_recovered(p: Pipeline) -> Any:
    """Table recovery is done (Faust sends this before it resumes the stream partitions): the due
    index is rebuilt from the recovered profile-state table at the next record, whatever was built
    before (a record handled while recovery still ran would have seen part of the table)."""

    async def on_rebalance_complete(sender: Any = None, **_: Any) -> None:
        p.due_index.reset()

    return on_rebalance_complete


def _on_revocation(p: Pipeline) -> Any:
    """Staged writes of partitions this worker lost are dropped: Faust commits (and so writes them)
    while revoking, unless a commit was already running; then their events were not committed
    either, and the new owner processes them again.  Written later, they would land in the new
    owner's changelog partitions over its newer values."""
    events_topic = names.events_topic(p.settings.app_id)
    cooccurrence_topic = names.cooccurrence_topic(p.settings.app_id)

    async def on_partitions_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        def lost(topic: str) -> set[int]:
            return {tp.partition for tp in revoked if tp.topic == topic}

        for table in p.tables:  # each table is written from the stream of one topic
            table.drop_staged(lost(cooccurrence_topic if table is p.product_neighbours else events_topic))

    return on_partitions_revoked


def _consumer_lag(p: Pipeline) -> Any:
    """``mailpulse_consumer_lag``: for each assigned partition of a topic the agents read, the messages
    between the last one processed (acked, or committed) and the partition's end as of the last
    fetch.  Partitions no longer assigned lose their series."""
    gauge = p.metrics.consumer_lag
    topics = {*INPUT_TOPICS, names.events_topic(p.settings.app_id), names.cooccurrence_topic(p.settings.app_id)}
    shown: set[tuple[str, str]] = set()

    async def consumer_lag() -> None:
        consumer: Any = p.app.consumer  # a streams.consumer.Consumer (Faust's offset bookkeeping)
        current: set[tuple[str, str]] = set()
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            try:  # a metric never stops the worker: a partition revoked meanwhile is skipped
                end = consumer.highwater(tp)  # None until the partition was fetched once
            except Exception:
                continue
            if end is None:
                continue
            acked = consumer._acked.get(tp)  # processed, not committed yet
            committed = consumer._committed_offset.get(tp)
            done = max(max(acked) + 1 if acked else 0, committed or 0)
            labels = (tp.topic, str(tp.partition))
            gauge.labels(*labels).set(max(0, end - done))
            current.add(labels)
        for labels in shown - current:
            gauge.remove(*labels)
        shown.clear()
        shown.update(current)

    return consumer_lag


def _wall_clock(p: Pipeline) -> Any:
    """``--clock wall``: the wall clock reaches every profile partition through the internal topic
    (table writes need a stream event), so time-based rules fire with no input traffic."""
    events_topic = names.events_topic(p.settings.app_id)

    async def wall_clock() -> None:
        record = orjson.dumps([[None, {"wall": _now_ms()}]])
        for partition in range(p.settings.partitions):
            p.output.send(events_topic, None, record, partition)

    return wall_clock


_NOT_READ: Any = object()


class StateCache(dict[str, Any]):
    """The states one record touches, read through from a table once (``None``: no entry)."""

    def __init__(self, load: Any) -> None:
        super().__init__()
        self._load = load

    def get(self, key: str, default: Any = None) -> Any:
        value = dict.get(self, key, _NOT_READ)
        if value is _NOT_READ:
            value = self[key] = self._load(key)
        return value


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
        send(names.DEAD_LETTER, key, orjson.dumps(letter))

    def forward(partition: int, record: bytes) -> None:
        send(events_topic, None, record, partition)

    async def ingest(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            route_batch(_input_records(batch), partitions, _now_ms(), policy, forward, dead_letter)
            for (topic, code), count in dead.items():
                metrics.event(topic, "dead_letter").inc(count)
                metrics.dead_letters.labels(code).inc(count)
            dead.clear()

    return ingest


def _input_records(events: list[Any]) -> list[InputRecord]:
    """(topic, partition, offset, key, value, timestamp ms) of each input record: a delivered
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
    (:func:`streams.timeline.advance`): profile snapshots, segment changes and triggers."""
    settings, metrics, send = p.settings, p.metrics, p.output.send
    table, clock_table, index, rules = p.profile_state, p.partition_clocks, p.due_index, p.rules
    expected = expected_clocks(p.input_partitions)
    wall_delay = int(settings.wall_clock_delay_s * 1000) if settings.clock == "wall" else None
    partitions = settings.partitions
    latency = {name: metrics.event_latency.labels(name) for name in (names.PROFILES, names.SEGMENT_CHANGES,
                                                                     names.TRIGGERS)}
    updated, applied = metrics.profiles_written.labels("updated"), metrics.events_applied
    events_topic, block_table = names.events_topic(settings.app_id), p.identity_blocks
    cooccurrence_topic, neighbours_of = names.cooccurrence_topic(settings.app_id), p.product_recs.get

    def due_entries() -> Any:
        for key, value in table.items_with_staged():
            due = stored_due(value)
            if due is not None:
                yield partition_for(key.decode(), partitions), due, key

    def write(key: bytes, state: State, partition: int) -> None:
        due = next_due(state) if "profile" in state else None
        previous = state.get("due")  # what the index holds for this key
        if due != previous:
            if due is None:
                index.discard(partition, key, previous)
            else:
                index.push(partition, due, key, previous)
            state["due"] = due
        if "profile" not in state:
            state.pop("due", None)  # a redirect or erasure marker keeps nothing but its key's fate
            table.stage_json(key, state, partition)
        else:
            table.stage_json(key, due_first(state), partition)

    async def profiles(stream: Any) -> None:
        async for record in stream.events():
            # One record = one partition's batch; table writes land in this record's partition
            # because Faust takes it from the current event.
            partition = record.message.partition
            if not index.built:
                index.build(due_entries())
            clocks_key = b"clocks|%d" % partition
            clocks: dict[str, int] = clock_table.read_json(clocks_key, partition) or {}
            wall = clocks.get("wall")
            before = watermark(clocks, expected, None if wall_delay is None or wall is None else wall - wall_delay)
            states = StateCache(table.json_reader(partition))
            blocks = StateCache(block_table.json_reader(partition))
            changed: set[str] = set()
            republish: set[str] = set()
            outbox: list[tuple[str, dict[str, Any]]] = []
            outcomes: Counter[tuple[str, str]] = Counter()  # (topic, outcome) -> events, counted once per record
            late: Counter[str] = Counter()  # topic -> late events
            moved = False
            for key, message in orjson.loads(record.value):
                if key is None:  # clocks of input partitions, or the wall clock
                    if "clocks" in message:
                        moved |= merge_clocks(clocks, message["clocks"])
                    elif message.get("wall", 0) > clocks.get("wall", 0):
                        clocks["wall"] = message["wall"]
                        moved = True
                    continue
                effects = dispatch(states, blocks, key, message, before, rules)
                if effects.outcome is not None:
                    topic = message["src"][0]
                    outcomes[topic, "duplicate" if effects.outcome == "duplicate" else "processed"] += 1
                    if effects.late:
                        late[topic] += 1
                if effects.changed:
                    changed.add(key)
                if effects.republish:
                    republish.add(key)
                outbox += effects.send
                for profile_id, why in effects.tombstones:
                    send(names.PROFILES, profile_id.encode(), None)
                    metrics.profiles_written.labels(why).inc()
                for kind in effects.merges:
                    metrics.profile_merges.labels(kind).inc()
                if effects.blocks_skipped:
                    metrics.identity_blocks_skipped.inc(effects.blocks_skipped)
                if effects.unknown is not None:
                    log.warning("skipped an internal message of unknown type %r for %s (a newer worker's?)",
                                effects.unknown, key)
            for (topic, outcome), count in outcomes.items():
                metrics.event(topic, outcome).inc(count)
            for topic, count in late.items():
                metrics.late_events.labels(topic).inc(count)
            if moved:
                clock_table.stage_json(clocks_key, clocks, partition)
            wall = clocks.get("wall")
            now_wm = watermark(clocks, expected, None if wall_delay is None or wall is None else wall - wall_delay)
            due_now: set[str] = set()
            if now_wm is not None:
                due_now = {kb.decode() for _, kb in index.pop_due(partition, now_wm)}
            now = _now_ms()
            record_arrival = int(record.message.timestamp * 1000) if record.message.timestamp else now
            pairs: dict[str, list[list[Any]]] = {}
            published = released = 0
            waits: dict[str, list[float]] = {names.PROFILES: [], names.SEGMENT_CHANGES: [], names.TRIGGERS: []}
            profile_waits, segment_waits = waits[names.PROFILES], waits[names.SEGMENT_CHANGES]
            segment_counts: Counter[tuple[str, str]] = Counter()
            for key in sorted(changed | due_now):
                if key.startswith("b:"):
                    members = blocks.get(key)
                    block_table.stage_json(key.encode(), members or None, partition)
                    continue
                state = states.get(key)
                if state is None:
                    continue
                kb = key.encode()
                if "profile" not in state:  # a redirect or an erasure marker
                    if key in changed:
                        write(kb, state, partition)
                    continue
                out = advance(state, now_wm, rules, now, neighbours_of)
                if not (out.steps or key in changed):
                    continue  # a stale index entry: nothing was due
                publish = out.changed or key in republish
                if publish:
                    state["published"] = True  # a later merge or erase then tombstones it
                write(kb, state, partition)
                released += len(out.released)
                for product, other, weight in out.pairs:
                    pairs.setdefault(product, []).append([other, weight])
                arrived = max((ev["src"][3] for ev in out.released), default=record_arrival)
                pid = state["profile"]["profile_id"].encode()
                waited = max(0.0, (now - arrived) / 1000)
                if publish:
                    send(names.PROFILES, pid, orjson.dumps(snapshot(state, out.cart)))
                    published += 1
                    profile_waits.append(waited)
                for change in out.segment_changes:
                    send(names.SEGMENT_CHANGES, pid, orjson.dumps(change))
                    segment_counts[change["segment"], change["change"]] += 1
                    segment_waits.append(waited)
                for score in out.scores:
                    send(names.SCORES, pid, orjson.dumps(score))
                for trigger in out.triggers:
                    send(names.TRIGGERS, pid, orjson.dumps(trigger))
                    metrics.triggers.labels(trigger["type"]).inc()
                    waits[names.TRIGGERS].append(waited)
                for trigger_type, reason in out.suppressed:
                    metrics.triggers_suppressed.labels(trigger_type, reason).inc()
                for trigger_type, reason in out.deferred:
                    metrics.triggers_deferred.labels(trigger_type, reason).inc()
            for output_topic, waited_list in waits.items():
                observe_many(latency[output_topic], waited_list)
            if released:
                applied.inc(released)
            if published:
                updated.inc(published)
            for (segment, change_kind), count in segment_counts.items():
                metrics.segment_changes.labels(segment, change_kind).inc(count)
            if pairs:
                by_partition: dict[int, list[Any]] = {}
                for product, counted in pairs.items():
                    by_partition.setdefault(partition_for(product, partitions), []).append([product, counted])
                for target, entries in by_partition.items():
                    send(cooccurrence_topic, None, orjson.dumps(entries), target)
            if outbox:
                routed = PartitionBatches()
                for target_key, message in outbox:
                    target = partition_for(target_key, partitions)
                    full = routed.add(target, target_key, message, 512 + (4096 if "state" in message else 0))
                    if full is not None:
                        send(events_topic, None, full, target)
                for target, batch in routed.records():
                    send(events_topic, None, batch, target)
            # After the outbox: a key that gave its profile away is written as a redirect only once
            # the absorb carrying that profile is sent (write_staged delivers it first).
            if p.staged_count > STAGED_LIMIT:
                p.write_staged()

    return profiles


def _cooccurrence_agent(p: Pipeline) -> Any:
    """Adds co-occurrence counts to each product's neighbours; publishes a product's top neighbours
    when they change (:mod:`streams.rules.recommend`)."""
    table, send = p.product_neighbours, p.output.send
    recs_topic = names.product_recs_topic(p.settings.app_id)

    async def cooccurrence(stream: Any) -> None:
        async for record in stream.events():
            partition = record.message.partition
            for product, counted in orjson.loads(record.value):
                key = product.encode()
                neighbours: dict[str, int] = table.read_json(key, partition) or {}
                before = top_neighbours(neighbours)
                neighbours = count_pairs(neighbours, ((other, weight) for other, weight in counted))
                table.stage_json(key, neighbours, partition)
                top = top_neighbours(neighbours)
                if top != before:
                    send(recs_topic, key, orjson.dumps(top))

    return cooccurrence
