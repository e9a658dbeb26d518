"""The profile hop alone: the bench's events, decoded and routed as the ingest agent does, fed to the
real profile agent through Faust's ``test_context`` (no broker; outputs counted, not sent).

Prints microseconds of the profile agent per event, next to decode + route of the same events as
the baseline of the same run.  What the worker's own Python costs per event, without the spread
the broker and the other processes of a 2-core machine add to ``make bench``.

``python -m bench.profile_hop``.  BENCH_EVENTS (100000); BENCH_STORE (``memory`` or ``rocksdb``:
the table store, and with it the due index); BENCH_AFTER_MS (a closing clock that far after the last
event, so the timers due by then fire: 7200000 scores every bench person once); BENCH_BATCH (500:
input events per ingest batch; at low input rates batches are small, e.g. 40 gives ~5 events per
internal record, and each event is then usually parked by one record and released by a later one);
BENCH_RUN (1: records
delivered one at a time; k: in runs of up to k records of a partition, as a worker's fetch delivers
them); BENCH_PROFILE=1 (cProfile of the hop, top BENCH_ROWS=30 by BENCH_SORT=tottime); BENCH_LOOP (1: the
internal records the hop sends itself -- link asks and answers, absorbs, forwarded events -- are put
back into the hop, as the broker would deliver them; 0: only counted, which hides what an
``identify`` sets off).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from bench.common import events_end, mixed_events
from schemas.events import INPUT_TOPICS
from streams import topics as names
from streams.app import create_app
from streams.consumer import RecordBatch
from streams.gc_tuning import tune_garbage_collector
from streams.ingest import IngestPolicy
from streams.output import OnDelivered
from streams.routing import InputRecord, route_batch
from streams.settings import Settings
from streams.tools.produce import topic_for

PARTITIONS = 8
BATCH = 500  # input events per ingest batch (BENCH_BATCH)


class CountingOutput:
    """Counts what the agents send; keeps only the hop's own internal records (``loop``), which the
    bench delivers back to the hop as the broker would: the link protocol's asks, answers and
    absorbs then cost what they cost in a worker (the hop's own cost is measured, not a producer's)."""

    def __init__(self, events_topic: str, loop: bool) -> None:
        self.sent = 0
        self.events_topic = events_topic
        self.loop = loop
        self.internal: list[tuple[int, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             on_delivered: OnDelivered | None = None) -> None:
        self.sent += 1
        if self.loop and topic == self.events_topic and value is not None and partition is not None:
            self.internal.append((partition, value))

    def send_changelog(self, topic: str, key: bytes, value: bytes | None, partition: int,
                       on_delivered: OnDelivered | None = None) -> None:
        self.sent += 1

    def flush(self, timeout: float = 30.0) -> int:
        return 0

    async def delivered(self, timeout: float = 30.0) -> None:
        return None

    async def flush_soon(self, timeout: float = 30.0) -> None:
        return None


def internal_records(events: list[bytes], batch: int = BATCH) -> tuple[list[tuple[int, bytes]], float]:
    """(profile partition, internal record) as the ingest agent sends them (the same
    :func:`streams.routing.route_batch`), and the seconds decode + route took."""
    records: list[tuple[int, bytes]] = []
    per_topic: dict[str, int] = {}
    inputs: list[InputRecord] = []
    for offset, value in enumerate(events):  # each event on its topic, round-robin over partitions
        topic = topic_for(orjson.loads(value))
        per_topic[topic] = per_topic.get(topic, 0) + 1
        inputs.append((topic, per_topic[topic] % PARTITIONS, offset, None, value, None))
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for start in range(0, len(inputs), batch):
        route_batch(inputs[start:start + batch], PARTITIONS, now, IngestPolicy(),
                    lambda partition, record: records.append((partition, record)), lambda *_: None)
    return records, time.perf_counter() - started


def runs_of(records: list[tuple[int, bytes]], run: int) -> Iterator[tuple[int, list[bytes]]]:
    """(partition, values): each window of ``run`` x partitions records, grouped by partition in the
    window, as a fetch returns what each partition got since the last one."""
    window = run * PARTITIONS
    for start in range(0, len(records), window):
        grouped: dict[int, list[bytes]] = {}
        for partition, value in records[start:start + window]:
            grouped.setdefault(partition, []).append(value)
        for partition, values in grouped.items():
            for at in range(0, len(values), run):
                yield partition, values[at:at + run]


def fetched_run(partition: int, values: list[bytes]) -> list[Any]:
    """A run as the consumer delivers it (:class:`streams.consumer.RecordBatch`'s value)."""
    topic = names.events_topic("mailpulse")
    return RecordBatch([SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=None,
                                        timestamp_type=0, key=None, value=value, serialized_value_size=len(value))
                        for offset, value in enumerate(values)]).value


async def run_hop(records: list[tuple[int, bytes]], closing_ms: int | None, store: str,
                  profile: cProfile.Profile | None, loop: bool = True, run: int = 1) -> tuple[float, float, int, int]:
    """(seconds in the profile agent, events applied, messages sent, internal records looped back)."""
    output = CountingOutput(names.events_topic("mailpulse"), loop)
    looped = 0
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(broker="kafka://127.0.0.1:1", table_store=store, data_dir=Path(data_dir),
                            partitions=PARTITIONS)
        pipeline = create_app(settings, output=output, input_partitions={t: PARTITIONS for t in INPUT_TOPICS})
        agent: Any = pipeline.app.agents["profiles"]
        async with agent.test_context() as hop:
            started = time.perf_counter()
            if profile is not None:
                profile.enable()
            for partition, values in runs_of(records, run):
                await hop.put(values[0] if run == 1 else fetched_run(partition, values), partition=partition)
                while output.internal:  # what the hop sent itself, as the broker would deliver it
                    internal, output.internal = output.internal, []
                    looped += len(internal)
                    for again in internal:
                        await hop.put(again[1], partition=again[0])
            if closing_ms is not None:
                clocks = [[topic, n, closing_ms] for topic in INPUT_TOPICS for n in range(PARTITIONS)]
                closing = orjson.dumps([[None, {"clocks": clocks}]])
                for partition in range(PARTITIONS):
                    await hop.put(closing, partition=partition)
            pipeline.write_staged()
            if profile is not None:
                profile.disable()
            seconds = time.perf_counter() - started
        applied = float(pipeline.metrics.events_applied._value.get())
    return seconds, applied, output.sent, looped


def main() -> None:
    n = int(os.environ.get("BENCH_EVENTS", "100000"))
    store = os.environ.get("BENCH_STORE", "memory")
    after = os.environ.get("BENCH_AFTER_MS")
    profile = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
    tune_garbage_collector()
    events = mixed_events(n)
    records, routing = internal_records(events, int(os.environ.get("BENCH_BATCH", BATCH)))
    closing = events_end(n) + int(after) if after else None
    loop = os.environ.get("BENCH_LOOP", "1") != "0"
    run = int(os.environ.get("BENCH_RUN", "1"))
    seconds, applied, sent, looped = asyncio.run(run_hop(records, closing, store, profile, loop, run))
    print(f"profile hop: {n:,} events, {PARTITIONS} partitions, {store} tables, "
          f"{len(records):,} internal records of {names.events_topic('mailpulse')}"
          + (f", delivered in runs of up to {run} per partition" if run > 1 else ""))
    print(f"  decode + route (baseline)  {routing / n * 1e6:7.1f} us per event")
    print(f"  profile agent              {seconds / n * 1e6:7.1f} us per event = "
          f"{seconds / routing:.1f} x decode + route  ({applied:,.0f} applied, {sent:,} messages sent, "
          f"{looped:,} internal records looped back)")
    if profile is not None:
        rows = int(os.environ.get("BENCH_ROWS", "30"))
        pstats.Stats(profile).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(rows)


if __name__ == "__main__":
    main()
