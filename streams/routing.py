"""Routing accepted events to the profile hop: which partition, and how they are batched."""

from __future__ import annotations

import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from streams.domain.identity import profile_key
from streams.ingest import Accepted, IngestPolicy, Source, decode, reject

#: (topic, partition, offset, key, value, timestamp ms) of one input record.
InputRecord = tuple[str, int, int, "bytes | None", "bytes | None", "int | None"]

#: Soft size limit of one internal batch record (brokers refuse records over 1 MB by default).
RECORD_BYTES = 256 * 1024


def partition_for(key: str, partitions: int) -> int:
    """The internal-topic (and so profile-table) partition of a profile key: stable across
    processes and versions, so a key's state always lives in one partition."""
    return zlib.crc32(key.encode()) % partitions


class PartitionBatches:
    """``[profile key, event]`` pairs per partition, cut into records of about ``limit`` bytes at most
    (each record an orjson list, in the order the pairs were added)."""

    def __init__(self, limit: int = RECORD_BYTES) -> None:
        self.limit = limit
        self._entries: dict[int, list[tuple[str | None, dict[str, Any]]]] = {}
        self._sizes: dict[int, int] = {}

    def add(self, partition: int, key: str | None, event: dict[str, Any], size: int) -> bytes | None:
        """Adds a pair of about ``size`` bytes; returns a full record of the partition to send first."""
        entries = self._entries.setdefault(partition, [])
        full = None
        if entries and self._sizes[partition] + size > self.limit:
            full = orjson.dumps(entries)
            entries.clear()
            self._sizes[partition] = 0
        entries.append((key, event))
        self._sizes[partition] = self._sizes.get(partition, 0) + size
        return full

    def records(self) -> Iterator[tuple[int, bytes]]:
        """The remaining records, one per partition that has pairs."""
        for partition, entries in self._entries.items():
            if entries:
                yield partition, orjson.dumps(entries)


#: An input partition's clock: (topic, partition) -> the largest event time seen.
Clocks = dict[tuple[str, int], int]


class DelayedClocks:
    """Input clocks on their way to the profile partitions, each sent ``delay_ms`` (wall time) after
    the batch that moved it.

    Why: an event whose key is a redirect (an anonymous id or e-mail of an identified person) is
    forwarded by its key's partition to its root's.  When the clocks that let the watermark pass the
    event come with the event's own batch (an upstream heartbeat tick does that), the root's
    partition takes them before the forwarded event arrives, and the event is late there.  Sent
    ``delay_ms`` later, the clocks give the forward that long.  A clock sent later is always safe:
    it never overtakes its events.  Not a guarantee: a forward that takes longer (a profile hop
    behind by more than the delay, as when it catches up after a restart) is still late."""

    def __init__(self, delay_ms: int) -> None:
        self.delay_ms = delay_ms
        self._pending: deque[tuple[int, Clocks]] = deque()  # (wall ms of the batch, the clocks it moved)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, moved: Clocks, now_ms: int) -> None:
        """The clocks one batch moved, read at ``now_ms``."""
        if moved:
            self._pending.append((now_ms, moved))

    def due(self, now_ms: int, every: bool = False) -> Clocks:
        """The clocks of the batches read ``delay_ms`` or more before ``now_ms`` (``every``: all of
        them), merged, and taken out."""
        merged: Clocks = {}
        pending = self._pending
        while pending and (every or pending[0][0] <= now_ms - self.delay_ms):
            for tp, ts in pending.popleft()[1].items():
                if ts > merged.get(tp, -(2**62)):
                    merged[tp] = ts
        return merged


def clock_entry(clocks: Clocks) -> dict[str, Any]:
    """The message of an internal record's clock entry (``[null, <it>]``)."""
    return {"clocks": [[topic, n, ts] for (topic, n), ts in clocks.items()]}


def clock_records(clocks: Clocks, partitions: int) -> list[tuple[int, bytes]]:
    """One internal record per profile partition carrying ``clocks`` alone."""
    record = orjson.dumps([[None, clock_entry(clocks)]])
    return [(partition, record) for partition in range(partitions)]


def route_batch(inputs: Iterable[InputRecord], partitions: int, now_ms: int, policy: IngestPolicy,
                send_record: Callable[[int, bytes], None],
                dead_letter: Callable[[str, str, bytes | None, dict[str, Any]], None],
                delayed: DelayedClocks | None = None) -> Counter[str]:
    """One ingest batch: each input decoded; accepted events (not ticks) batched by profile
    partition into internal records, each followed by the input clocks the batch moved (a clock
    never overtakes its events) or, with ``delayed``, the clocks of earlier batches that are due;
    rejects passed to ``dead_letter(topic, code, key, record)``.  ``send_record(partition, record)``
    gets every internal record, full ones as they fill.  An input whose handling raises is
    dead-lettered (``processing_error``) and the rest go on.  Returns the identifier fields
    dropped as placeholders, counted."""
    records = PartitionBatches()
    clocks: Clocks = {}
    blocked: Counter[str] = Counter()
    for topic, input_partition, offset, input_key, value, timestamp_ms in inputs:
        source = Source(topic, input_partition, offset, input_key, timestamp_ms or now_ms)
        try:
            result = decode(value, source, now_ms, policy)
            if isinstance(result, Accepted):
                ev = result.event
                blocked.update(result.blocked)
                if ev["type"] != "tick":
                    key = profile_key(ev)
                    partition = partition_for(key, partitions)
                    size = len(value or b"") + 256  # the normalized event with its key and source fields
                    orjson.dumps(ev)  # fails here, on its own input, rather than with a whole record
                    full = records.add(partition, key, ev, size)
                    if full is not None:
                        send_record(partition, full)
                tp = (topic, input_partition)
                if ev["ts"] > clocks.get(tp, -(2**62)):
                    clocks[tp] = ev["ts"]
                continue
        except Exception as exc:
            result = reject(source, value, "processing_error", f"ingest: {type(exc).__name__}", now_ms)
        dead_letter(topic, result.code, input_key, result.record)
    moved = clocks
    if delayed is not None and delayed.delay_ms:
        clocks = delayed.due(now_ms)
    if clocks:
        update = clock_entry(clocks)
        for partition in range(partitions):
            full = records.add(partition, None, update, 64)
            if full is not None:
                send_record(partition, full)
    for partition, record in records.records():
        send_record(partition, record)
    if delayed is not None and delayed.delay_ms:
        delayed.add(moved, now_ms)  # once its events are sent: a clock never overtakes them
    return blocked
