"""Routing accepted events to the profile hop: which partition, and how they are batched."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from streams.domain.identity import profile_key
from streams.ingest import Accepted, IngestPolicy, Source, decode, reject

#: (topic, partition, offset, key, value, timestamp ms) of one input record.
InputRecord = tuple[str, int, int, "bytes | None", "bytes | None", "int | None"]

#: Soft size limit of one internal batch record (brokers refuse records over 1 MB by default).
RECORD_BYTES = 256 * 1024
#: Events an ingest worker holds back at most (:class:`HeldEvents`); past it the oldest go at once.
MOST_HELD = 10_000


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


#: ``(profile partition, profile key, event, size)`` of an accepted event on its way to the profile hop.
Routed = tuple[int, str, dict[str, Any], int]


class HeldEvents:
    """Accepted events an ingest worker holds back until the input clocks it has seen pass them.

    Why: the profile hop parks an event until the watermark (the smallest input clock) reaches it.
    At live rates that is a few records later, so each event cost its profile two steps (read, park,
    write; then read, fold, write).  Held here instead, an event reaches its profile in the record
    whose clocks release it, and is parked and folded in one step.

    Why it is safe: a held event has a time past the clock of some input partition this worker
    reads, and only this worker sends that partition's clock.  A held event is sent before any
    later clock of this worker (in the same record, ahead of the clock entry), so the profile hop
    never sees the watermark pass it first.  (After a rebalance, a partition's earlier owner may
    have sent a larger clock than this worker has seen yet; an event held meanwhile can then arrive
    late: applied, and counted as late, as any late event.)  Events not yet released go with every
    offset commit's cut (:meth:`take_all`: no offset is committed before its events are sent), so
    an event is held for one commit interval at most, and at most :data:`MOST_HELD` at a time.

    ``wall_floor`` (``--clock wall``): the profile hop's watermark also follows the wall clock,
    moved by every worker's wall-clock records; an event that clock will pass soon is not held
    (the worker's own wall-clock tick sends the others first)."""

    def __init__(self, most: int = MOST_HELD) -> None:
        self.most = most
        self.clocks: dict[tuple[str, int], int] = {}  # input partition -> largest event time routed
        self._held: list[Routed] = []  # as they came

    def __len__(self) -> int:
        return len(self._held)

    def release(self, routed: list[Routed], moved: dict[tuple[str, int], int],
                wall_floor: int | None = None) -> list[Routed]:
        """The events to send now, of those held and of a batch's ``routed`` ones, after the batch
        moved the clocks ``moved``; the rest are held."""
        clocks = self.clocks
        for tp, ts in moved.items():
            if ts > clocks.get(tp, -(2**62)):
                clocks[tp] = ts
        low = min(clocks.values()) if clocks else None
        if wall_floor is not None and (low is None or wall_floor > low):
            low = wall_floor
        keep: list[Routed] = []
        send: list[Routed] = []
        for entry in self._held + routed:
            (send if low is not None and entry[2]["ts"] <= low else keep).append(entry)
        if len(keep) > self.most:  # the oldest go now, to be parked by the profile hop as before
            send += keep[: len(keep) - self.most]
            keep = keep[len(keep) - self.most:]
        self._held = keep
        return send

    def take_all(self) -> list[tuple[int, bytes]]:
        """Every held event, as internal records ``(partition, record)``: sent at an offset commit's
        cut, before the offsets that acked them are committed."""
        records = PartitionBatches()
        out: list[tuple[int, bytes]] = []
        for partition, key, event, size in self._held:
            full = records.add(partition, key, event, size)
            if full is not None:
                out.append((partition, full))
        self._held = []
        return out + list(records.records())

    def forget(self, lost: set[tuple[str, int]]) -> None:
        """Drops the clocks of input partitions this worker no longer reads (a rebalance): their new
        owner sends them now, and a stale low clock would only hold events back."""
        for tp in lost:
            self.clocks.pop(tp, None)


def route_batch(inputs: Iterable[InputRecord], partitions: int, now_ms: int, policy: IngestPolicy,
                send_record: Callable[[int, bytes], None],
                dead_letter: Callable[[str, str, bytes | None, dict[str, Any]], None],
                held: HeldEvents | None = None, wall_floor: int | None = None) -> Counter[str]:
    """One ingest batch: each input decoded; accepted events (not ticks) batched by profile
    partition into internal records, each followed by the input clocks the batch moved (a clock
    never overtakes its events); rejects passed to ``dead_letter(topic, code, key, record)``.
    ``send_record(partition, record)`` gets every internal record, full ones as they fill.  An input
    whose handling raises is dead-lettered (``processing_error``) and the rest go on.  With ``held``,
    events the clocks do not pass yet wait there (:class:`HeldEvents`).  Returns the identifier
    fields dropped as placeholders, counted."""
    records = PartitionBatches()
    clocks: dict[tuple[str, int], int] = {}
    blocked: Counter[str] = Counter()
    routed: list[Routed] = []
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
                    routed.append((partition, key, ev, size))
                tp = (topic, input_partition)
                if ev["ts"] > clocks.get(tp, -(2**62)):
                    clocks[tp] = ev["ts"]
                continue
        except Exception as exc:
            result = reject(source, value, "processing_error", f"ingest: {type(exc).__name__}", now_ms)
        dead_letter(topic, result.code, input_key, result.record)
    for partition, key, ev, size in (held.release(routed, clocks, wall_floor) if held is not None
                                     else routed):
        full = records.add(partition, key, ev, size)
        if full is not None:
            send_record(partition, full)
    if clocks:
        update = {"clocks": [[topic, n, ts] for (topic, n), ts in clocks.items()]}
        for partition in range(partitions):
            full = records.add(partition, None, update, 64)
            if full is not None:
                send_record(partition, full)
    for partition, record in records.records():
        send_record(partition, record)
    return blocked
