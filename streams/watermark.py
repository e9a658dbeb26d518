"""Event-time clocks of the input partitions, the watermark, and which profiles are due.

Contract section 4: each input partition's clock is the largest timestamp (ticks included) seen on
it; the watermark is the smallest clock over every partition of the four input topics, and a
partition that has carried nothing holds it back.  With ``--clock wall`` the wall clock minus the
allowed delay also moves it.

How the clocks reach every profile partition: the ingest agent appends, to each internal record it
sends (one per profile partition per batch), the clocks of earlier batches whose records this
worker's profile agent has applied (and, where another worker holds a partition they went to,
``MAILPULSE_CLOCK_DELAY_MS`` or more before): ``[null, {"clocks": [[topic, partition, ts], ...]}]``
(a timer, or an offset commit's cut, sends them in records of their own when no batch comes; with a
delay of 0 each batch carries its own).  A clock is sent after the events it covers, so a profile
partition never sees it first; the wait lets an event forwarded from a redirect reach its root
first (:class:`streams.routing.DelayedClocks`).  Each profile partition keeps the
largest value per input partition in a table, so the watermark survives restarts and rebalances.

:class:`DueIndex` is the in-memory order of profiles by their next due time, per profile partition
(the worker with RocksDB tables keeps the same order in a local RocksDB database instead,
:class:`streams.tables.RocksDBDueIndex`: every profile has a timer, and a Python object per profile
was ~190 bytes each; only what is due within the next minute is kept in memory in front of it,
:class:`streams.tables.TieredDueIndex`).  Each stored profile state carries its due time (``"due"``, written first so
:func:`stored_due` reads it without decoding the state); the index is rebuilt from the
``profile-state`` table after every rebalance, and nothing is scanned while running.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson
from typing_extensions import TypeIs

from schemas.timeparse import MAX_EPOCH_MS


def clock_name(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def expected_clocks(input_partitions: Mapping[str, int]) -> tuple[str, ...]:
    """Every input partition whose clock the watermark waits for."""
    return tuple(clock_name(topic, n) for topic, count in sorted(input_partitions.items()) for n in range(count))


#: (topic, partition) -> :func:`clock_name`, for the input partitions seen (every internal record
#: with clocks names all of a batch's partitions); at most :data:`NAMES_KEPT` kept.
_names: dict[tuple[str, int], str] = {}
NAMES_KEPT = 4_096


def clock_time(ts: Any) -> int:
    """``ts`` as a clock's time: an integer from 0 to the latest accepted event time (a clock never goes
    back, so one far ahead would make every later event late, and one past 64 bits could not be
    stored); else :class:`ValueError`."""
    if not is_clock_time(ts):
        raise ValueError("a clock time is an integer from 0 to the latest accepted event time")
    return ts


def is_clock_time(ts: object) -> TypeIs[int]:
    """:func:`clock_time`'s rule, as a test."""
    return type(ts) is int and 0 <= ts <= MAX_EPOCH_MS


def stored_clocks(raw: bytes | None) -> dict[str, int]:
    """A profile partition's stored clocks (the ``partition-clocks`` table) as a step reads them: each
    named clock whose value is a clock's time (:func:`clock_time`); ``{}`` for no value, or one that is
    not a JSON object.  Why: a value this version cannot read (another program's, a newer version's
    after a rollback) failed every record of the partition, each left out whole and dead-lettered,
    and a clock that is no time failed every clock entry merged into it, so the watermark never moved
    again there.  What is left out is carried again by the next clocks of its input partition."""
    if raw is None:
        return {}
    try:
        value = orjson.loads(raw)
    except ValueError:
        return {}
    if type(value) is not dict:
        return {}
    times = value.values()
    if not times or ({*map(type, times)} == {int} and min(times) >= 0 and max(times) <= MAX_EPOCH_MS):
        return value  # (every record's, checked in C: a clock never holds anything else unless damaged)
    return {name: ts for name, ts in value.items() if is_clock_time(ts)}


def merge_clocks(clocks: dict[str, int], updates: Iterable[Sequence[Any]]) -> bool:
    """Raises each named clock to the update's value (clocks never go back).  True if one moved.
    :class:`ValueError` on a time that is not a clock's (:func:`clock_time`; the step that gets it
    reads its clocks afresh for its next attempt, so what moved before it is not kept)."""
    moved = False
    names = _names
    for topic, partition, ts in updates:
        if type(ts) is not int or not 0 <= ts <= MAX_EPOCH_MS:  # (clock_time, inline: every clock of every record)
            clock_time(ts)
        try:
            name = names[topic, partition]
        except (KeyError, TypeError):  # (a damaged entry's unhashable name is not kept)
            name = clock_name(topic, partition)
            if type(topic) is str and type(partition) is int and len(names) < NAMES_KEPT:
                names[topic, partition] = name
        if ts > clocks.get(name, -(2**62)):
            clocks[name] = ts
            moved = True
    return moved


def watermark(clocks: Mapping[str, int], expected: Sequence[str], wall_ms: int | None = None) -> int | None:
    """The smallest clock over ``expected`` (None while one has carried nothing), raised to
    ``wall_ms`` when the wall clock drives it too."""
    low: int | None
    try:
        low = min(map(clocks.__getitem__, expected)) if expected else None
    except (KeyError, TypeError):  # one has carried nothing (or a damaged value: none)
        low = None
    if wall_ms is not None and (low is None or wall_ms > low):
        return wall_ms
    return low


class DueOrder(Protocol):
    """Which profiles of a partition are due by when: :class:`DueIndex` (in memory),
    :class:`streams.tables.RocksDBDueIndex` (in a local RocksDB database, for large populations) or
    :class:`streams.tables.TieredDueIndex` (what is due soon in memory, the rest in RocksDB).
    ``previous`` is the due time the key was last pushed with (the state's ``"due"``), so a stored
    index can delete that entry without keeping a map of its own."""

    built: bool

    def reset(self) -> None: ...

    def build(self, entries: Iterable[tuple[int, int, bytes]]) -> None: ...

    def push(self, partition: int, due: int, key: bytes, previous: int | None = None) -> None: ...

    def discard(self, partition: int, key: bytes, previous: int | None = None) -> None: ...

    def pop_due(self, partition: int, upto: int) -> list[tuple[int, bytes]]: ...


#: Added to a due time before it is written as 8 unsigned big-endian bytes (so negative times sort too).
DUE_BIAS = 2**63


def due_bytes(due: int) -> bytes:
    """A due time as 8 bytes that sort as the times do."""
    return (due + DUE_BIAS).to_bytes(8, "big")


def _entry(due: int, key: bytes) -> bytes:
    """One heap entry: the due time and the key in one bytes object, which sorts as (due, key)."""
    return due_bytes(due) + key


_NO_KEYS: Mapping[bytes, bytes] = {}


class DueIndex:
    """Per profile partition, a heap of entries (:func:`_entry`) plus each key's current entry.

    A key's due time moves often (every event, every timer); the old heap entry is left behind and
    skipped when popped.  So that such entries cannot pile up (a win-back timer 90 days ahead is
    popped only 90 days later), the heap is rebuilt from the current entries whenever it holds
    half as many again as there are keys.

    Why one bytes object per entry: a ``(due, key)`` tuple, an int and a second key object per entry
    took ~300 bytes per key, ~190 this way (``tracemalloc``, 100k keys each moved five times).  The
    dict holds the key object; an entry carries a copy of its bytes."""

    def __init__(self) -> None:
        self._heaps: dict[int, list[bytes]] = {}
        self._current: dict[int, dict[bytes, bytes]] = {}
        self.built = False

    def reset(self) -> None:
        """After a rebalance: rebuilt from the table before the next use."""
        self._heaps.clear()
        self._current.clear()
        self.built = False

    def build(self, entries: Iterable[tuple[int, int, bytes]]) -> None:
        """From (partition, due, key) of every profile with something due."""
        self._heaps.clear()
        self._current.clear()
        for partition, due, key in entries:
            self._current.setdefault(partition, {})[key] = _entry(due, key)
        for partition, current in self._current.items():
            heap = list(current.values())
            heapq.heapify(heap)
            self._heaps[partition] = heap
        self.built = True

    def push(self, partition: int, due: int, key: bytes, previous: int | None = None) -> None:
        """``key`` is next due at ``due`` (``previous``: what it was pushed with before, if anything;
        unused here, the dict holds each key's current entry)."""
        current = self._current.setdefault(partition, {})
        entry = _entry(due, key)
        current[key] = entry
        heap = self._heaps.setdefault(partition, [])
        heapq.heappush(heap, entry)
        if len(heap) > len(current) * 3 // 2 + 1024:
            heap[:] = current.values()
            heapq.heapify(heap)

    def discard(self, partition: int, key: bytes, previous: int | None = None) -> None:
        """``key`` has nothing due any more (``previous``: as in :meth:`push`)."""
        self._current.get(partition, {}).pop(key, None)

    def keys(self, partition: int) -> Mapping[bytes, bytes]:
        """The keys of ``partition`` with something due (a view: key -> its current entry)."""
        return self._current.get(partition, _NO_KEYS)

    def pop_due(self, partition: int, upto: int) -> list[tuple[int, bytes]]:
        """The keys of ``partition`` due at or before ``upto`` (each once; stale entries skipped)."""
        heap = self._heaps.get(partition)
        current = self._current.get(partition, {})
        found: list[tuple[int, bytes]] = []
        beyond = _entry(upto + 1, b"")  # every entry due at or before upto sorts before it
        while heap and heap[0] < beyond:
            entry = heapq.heappop(heap)
            key = entry[8:]
            if current.get(key) == entry:
                del current[key]
                found.append((int.from_bytes(entry[:8], "big") - DUE_BIAS, key))
        return found

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())


DUE_FIRST = b'{"due":'


def due_first(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """``state`` with ``"due"`` as its first key, for storing (a state read back keeps that order,
    so this copies only a state that never had a due time stored)."""
    if next(iter(state), None) == "due":
        return state
    return {"due": state.get("due"), **state}


def stored_due(raw: bytes) -> int | None:
    """The due time of a stored profile state (None: nothing due, or not a profile).  Reads only the
    start of a state written with :func:`due_first`; decodes any other value whole."""
    if raw.startswith(DUE_FIRST):
        end = raw.find(b",", len(DUE_FIRST))
        token = raw[len(DUE_FIRST):end if end > 0 else -1]
        return None if token == b"null" else indexable_due(int(token))
    state = orjson.loads(raw)
    due = state.get("due") if isinstance(state, dict) else None
    return indexable_due(due)


def indexable_due(due: object) -> int | None:
    """``due`` if the due index can hold it (None, or an int that :func:`due_bytes` encodes), else raises."""
    if due is None:
        return None
    if type(due) is not int or not -DUE_BIAS <= due < DUE_BIAS:
        raise ValueError("not a due time")
    return due
