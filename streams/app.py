"""The app factory: one Faust app with its topics, tables and agents, built from :class:`Settings`.

Topology::

    clicks, carts, purchases, identities ──ingest──> <app>-profile-events (keyed by profile) ──profiles──> profiles
                     │                                  (ticks to every partition)            │
                     └──> dead-letter                                         profile-state table (RocksDB)

Agents stay thin: they decode, call the pure functions of :mod:`streams.ingest` and
:mod:`streams.profile`, write the table and send outputs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from schemas.events import INPUT_TOPICS
from streams import topics as names
from streams.broker import free_port
from streams.consumer import App
from streams.identity import profile_key
from streams.ingest import Accepted, Source, decode
from streams.metrics import Metrics
from streams.output import FlushBeforeCommit, Output, OutputProducer
from streams.profile import apply_event, snapshot
from streams.routing import PartitionBatches, partition_for
from streams.settings import Settings
from streams.tables import ProfileTable, profile_table, rocksdb_options

DAY_MS = 86_400_000


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


def _raw_topic(app: faust.App, *topic_names: str, **kwargs: Any) -> Any:
    return app.topic(*topic_names, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw", **kwargs)


def create_app(settings: Settings, metrics: Metrics | None = None, output: Output | None = None) -> Pipeline:
    """Build the Faust app.  No broker is contacted until a worker starts it (the output producer
    connects lazily too)."""
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
    metrics = metrics or Metrics()
    output = output or OutputProducer(settings.bootstrap_servers)
    p = Pipeline(
        settings=settings,
        app=app,
        metrics=metrics,
        output=output,
        inputs=_raw_topic(app, *INPUT_TOPICS),
        events=_raw_topic(app, names.events_topic(settings.app_id), partitions=settings.partitions,
                          internal=True),
        profile_state=profile_table(app, output, "profile-state", settings.partitions,
                                    rocksdb_options(settings.rocksdb_write_buffer_mb, settings.rocksdb_block_cache_mb)),
    )
    app.sensors.add(FlushBeforeCommit(output, after_flush=p.profile_state.save_persisted_offsets))
    app.on_partitions_assigned.connect(_count_assignment(metrics))
    app.agent(p.inputs, name="ingest")(_ingest_agent(p))
    app.agent(p.events, name="profiles")(_profile_agent(p))
    return p


def _count_assignment(metrics: Metrics) -> Any:
    async def on_partitions_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        per_topic = Counter(tp.topic for tp in assigned)
        for topic in (*INPUT_TOPICS, names.events_topic(sender.conf.id)):
            metrics.assigned_partitions.labels(topic).set(per_topic.get(topic, 0))

    return on_partitions_assigned


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

    async def ingest(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            records = PartitionBatches()
            now = _now_ms()
            for event in batch:
                msg = event.message
                arrived = int(msg.timestamp * 1000) if msg.timestamp else now
                source = Source(msg.topic, msg.partition, msg.offset, msg.key, arrived)
                result = decode(event.value, source, now, settings.default_phone_region)
                if isinstance(result, Accepted):
                    ev = result.event
                    size = len(event.value) + 256  # the normalized event with its key and source fields
                    if ev["type"] == "tick":
                        targets: Iterable[tuple[int, str | None]] = ((n, None) for n in range(partitions))
                    else:
                        key = profile_key(ev)
                        targets = ((partition_for(key, partitions), key),)
                    for partition, target_key in targets:
                        full = records.add(partition, target_key, ev, size)
                        if full is not None:
                            send(events_topic, None, full, partition)
                else:
                    metrics.event(msg.topic, "dead_letter").inc()
                    metrics.dead_letters.labels(result.code).inc()
                    send(names.DEAD_LETTER, msg.key, orjson.dumps(result.record))
            for partition, record in records.records():
                send(events_topic, None, record, partition)

    return ingest


def _profile_agent(p: Pipeline) -> Any:
    settings, metrics, table, send = p.settings, p.metrics, p.profile_state, p.output.send
    retention_ms = int(settings.dedupe_retention_days * DAY_MS)
    latency = metrics.event_latency.labels("profiles")
    updated, erased = metrics.profiles_written.labels("updated"), metrics.profiles_written.labels("erased")

    def apply_one(key: bytes, ev: dict[str, Any]) -> None:
        raw_state = table.get(key)
        state = orjson.loads(raw_state) if raw_state is not None else None
        applied = apply_event(state, key.decode(), ev, retention_ms)
        topic = ev["src"][0]
        if applied.duplicate:
            metrics.event(topic, "duplicate").inc()
            return
        metrics.event(topic, "processed").inc()
        if applied.erased:
            if state is not None:
                del table[key]
                send(names.PROFILES, state["profile"]["profile_id"].encode(), None)
                erased.inc()
            return
        assert applied.state is not None
        table[key] = orjson.dumps(applied.state)
        snap = snapshot(applied.state)
        send(names.PROFILES, snap["profile_id"].encode(), orjson.dumps(snap))
        updated.inc()
        latency.observe(max(0.0, (_now_ms() - ev["src"][3]) / 1000))

    async def profiles(stream: Any) -> None:
        async for record in stream.events():
            # One record = one partition's batch; the table writes land in this record's partition
            # because Faust takes it from the current event.
            for key, ev in orjson.loads(record.value):
                if ev["type"] != "tick":
                    apply_one(key.encode(), ev)

    return profiles
