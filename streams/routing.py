"""Routing accepted events to the profile hop: which partition, and how they are batched."""

from __future__ import annotations

import secrets
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from streams.domain.identity import profile_key
from streams.ingest import Accepted, IngestPolicy, Source, arrival_ms, decode, reject

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

    def partitions(self) -> list[int]:
        """The partitions pairs were added to (also those whose records were all sent)."""
        return list(self._entries)

    def records(self) -> Iterator[tuple[int, bytes]]:
        """The remaining records, one per partition that has pairs."""
        for partition, entries in self._entries.items():
            if entries:
                yield partition, orjson.dumps(entries)


#: An input partition's clock: (topic, partition) -> the largest event time seen.
Clocks = dict[tuple[str, int], int]


#: The longest a batch's clocks wait for this worker's profile hop to apply the batch (a multiple
#: of the delay, and at least ``MIN_HOLD_MS``): past it they go anyway, so a partition that does not
#: answer cannot hold them for long.
HOLD_DELAYS = 20
MIN_HOLD_MS = 2_000


class DelayedClocks:
    """Input clocks on their way to the profile partitions, each sent once this worker's profile hop
    has applied the batch that moved it, and ``delay_ms`` after it where another worker's is involved.

    Why: an event whose key is a redirect (an anonymous id or e-mail of an identified person) is
    forwarded by its key's partition to its root's.  When the clocks that let the watermark pass the
    event come with the event's own batch (an upstream heartbeat tick does that), the root's
    partition takes them before the forwarded event arrives, and the event is late there.  So a
    batch's clocks wait until the profile agent of every partition the batch sent events to has
    applied its record there (each batch's last record to a partition ends with a marker entry
    ``[null, {"batch": [token, seq]}]``, :meth:`applied`): its forwards are then sent, and the same
    producer sends the clocks after them.  This worker cannot see the profile hop of a partition it
    does not hold (another worker's, or one it lost: :meth:`forget`; :meth:`hold_for` names those it
    holds), so a batch that sent events to one waits ``delay_ms`` as a margin.  (The delay alone, for
    every batch, was not enough: after a fetch stall the clocks went out before the profile hop had
    read the events.)  No batch waits longer than ``HOLD_DELAYS`` delays (``MIN_HOLD_MS`` at
    least).  A clock sent later never overtakes its events.

    Times are a monotonic clock's milliseconds (the callers' ``time.monotonic()``), so that a wall
    clock stepping back cannot hold the clocks; a batch is named by its number."""

    def __init__(self, delay_ms: int) -> None:
        self.delay_ms = delay_ms
        self.hold_ms = max(HOLD_DELAYS * delay_ms, MIN_HOLD_MS) if delay_ms else 0  # a small delay: no short hold
        self.token = secrets.token_hex(4)  # this worker's markers, told apart from another's
        self._seq = 0  # the newest batch's number
        self._applied: dict[int, int] = {}  # profile partition -> newest marker of ours its agent applied
        #: (monotonic ms the batch was read at, its number, the partitions it sent events to, the clocks it moved)
        self._pending: deque[tuple[int, int, tuple[int, ...], Clocks]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def newest(self) -> int | None:
        """The number of the newest pending batch (None: nothing pending)."""
        return self._pending[-1][1] if self._pending else None

    def waiting(self, seq: int) -> bool:
        """Whether the clocks of batch ``seq`` or an earlier one are still pending."""
        return bool(self._pending) and self._pending[0][1] <= seq

    def next_batch(self) -> int:
        """The number of the next batch."""
        self._seq += 1
        return self._seq

    def marker(self, seq: int) -> dict[str, Any]:
        """The message of batch ``seq``'s marker entry."""
        return {"batch": [self.token, seq]}

    def applied(self, partition: int, entries: list[Any]) -> None:
        """The profile agent applied an internal record of ``partition``: its marker, if it ends with
        one of ours, counts that batch as applied there."""
        last = entries[-1] if entries else None
        if type(last) is list and len(last) == 2 and last[0] is None and type(last[1]) is dict:
            batch = last[1].get("batch")
            if (type(batch) is list and len(batch) == 2 and batch[0] == self.token and type(batch[1]) is int
                    and batch[1] > self._applied.get(partition, 0)):
                self._applied[partition] = batch[1]

    def hold_for(self, partitions: Iterable[int]) -> None:
        """This worker's profile agent now holds ``partitions`` (an assignment): their batches wait for
        its markers from the start, also while it catches up on what an earlier owner left."""
        for partition in partitions:
            self._applied.setdefault(partition, 0)

    def forget(self, partitions: Iterable[int]) -> None:
        """This worker's profile agent no longer holds ``partitions`` (a revocation): they are waited
        for by the delay alone, not the hold."""
        for partition in partitions:
            self._applied.pop(partition, None)

    def add(self, moved: Clocks, now_ms: int, seq: int = 0, partitions: Iterable[int] = ()) -> None:
        """The clocks batch ``seq`` moved, read at ``now_ms``; its marker went to ``partitions``."""
        if moved:
            self._pending.append((now_ms, seq, tuple(partitions), moved))

    def due(self, now_ms: int, every: bool = False, upto: int | None = None) -> Clocks:
        """The clocks of the batches that are due at ``now_ms`` (read ``delay_ms`` before and applied,
        or read ``hold_ms`` before; ``every``: all of them; ``upto``: also every batch numbered up to
        it), in order, merged, and taken out."""
        merged: Clocks = {}
        pending, applied = self._pending, self._applied
        while pending:
            read_ms, seq, partitions, moved = pending[0]
            if not (every or (upto is not None and seq <= upto) or read_ms <= now_ms - self.hold_ms
                    or (all(applied.get(n, seq) >= seq for n in partitions)
                        and (read_ms <= now_ms - self.delay_ms or all(n in applied for n in partitions)))):
                break
            pending.popleft()
            for tp, ts in moved.items():
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
                delayed: DelayedClocks | None = None, clock_ms: int | None = None) -> Counter[str]:
    """One ingest batch: each input decoded; accepted events (not ticks) batched by profile
    partition into internal records, each followed by the input clocks the batch moved (a clock
    never overtakes its events) or, with ``delayed``, the clocks of earlier batches that are due;
    rejects passed to ``dead_letter(topic, code, key, record)``.  ``send_record(partition, record)``
    gets every internal record, full ones as they fill.  An input whose handling raises is
    dead-lettered (``processing_error``) and the rest go on.  Returns the identifier fields
    dropped as placeholders, counted.  ``clock_ms``: ``delayed``'s time (a monotonic clock's ms;
    default ``now_ms``)."""
    records = PartitionBatches()
    clocks: Clocks = {}
    blocked: Counter[str] = Counter()
    for topic, input_partition, offset, input_key, value, timestamp_ms in inputs:
        source = Source(topic, input_partition, offset, input_key, arrival_ms(timestamp_ms, now_ms))
        try:
            result = decode(value, source, now_ms, policy)
            if isinstance(result, Accepted):
                ev = result.event
                blocked.update(result.blocked)
                if ev["type"] != "tick":
                    key = profile_key(ev)
                    partition = partition_for(key, partitions)
                    # encoded here, so it fails on its own input rather than with a whole record; its
                    # size as the record holds it (``[key,event],``): an estimate let records pass the
                    # producer's limit
                    size = len(orjson.dumps(ev)) + len(orjson.dumps(key)) + 4
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
    moved, touched = clocks, records.partitions()
    delayed = delayed if delayed is not None and delayed.delay_ms else None  # a delay of 0: no queue
    clock_now = now_ms if clock_ms is None else clock_ms
    if delayed is not None:
        clocks = delayed.due(clock_now)
    if clocks:
        update = clock_entry(clocks)
        for partition in range(partitions):
            full = records.add(partition, None, update, 64)
            if full is not None:
                send_record(partition, full)
    seq = 0
    if delayed is not None:
        seq = delayed.next_batch()
        marker = delayed.marker(seq)
        for partition in touched:  # each one's last record ends with the marker
            full = records.add(partition, None, marker, 64)
            if full is not None:
                send_record(partition, full)
    for partition, record in records.records():
        send_record(partition, record)
    if delayed is not None:
        delayed.add(moved, clock_now, seq, touched)  # once its events are sent: a clock never overtakes them
    return blocked
