"""Tables: Faust tables (RocksDB locally, rebuilt from changelog topics) whose changelog writes go
through the worker's output producer.

Why: Faust sends changelog records through its ProducerBuffer, whose flush gives up after 0.1 s
per message and which drops what is still queued when the worker stops; offsets committed before
that lose table updates for good (seen here: ~4% of a batch's updates gone after a clean SIGTERM).
Our output producer is flushed before every offset commit (:class:`streams.output.FlushBeforeCommit`)
and on shutdown, so a committed event's table write is durable.  It is also far cheaper per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import orjson
import rocksdict
from faust.stores import rocksdb as faust_rocksdb
from faust.types import TP

from streams.output import Output
from streams.watermark import DUE_BIAS, DueIndex, due_bytes

#: Values a background commit writes between two turns of the event loop (~2-5 ms of work).
WRITE_CHUNK = 256


@dataclass(frozen=True)
class RocksDBMemory:
    """One memory budget for every RocksDB database of a worker (all tables, all partitions).

    Why: Faust gives each partition's database its own memtables and block cache.  A worker holds
    tables x partitions of them (32 with the defaults), so its RSS grows towards the sum of their
    bounds (~220 MiB) as they fill, whatever the data.  Here one LRU cache serves every database's
    reads, and a write-buffer manager charges their memtables to that same cache: when memtables
    and cached blocks together reach ``megabytes``, cached blocks are evicted and the largest
    memtable is flushed to disk (no writer ever stalls)."""

    cache: rocksdict.Cache
    write_buffers: rocksdict.WriteBufferManager

    @classmethod
    def with_budget(cls, megabytes: int) -> RocksDBMemory:
        size = megabytes * 2**20
        cache = rocksdict.Cache(size)
        return cls(cache, rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(size, False, cache))

    @property
    def used(self) -> int:
        """Bytes in use: cached blocks and memtables (charged to the cache)."""
        return int(self.cache.get_usage())

    def table_factory(self) -> rocksdict.BlockBasedOptions:
        """Block-based tables whose blocks are cached in the shared cache."""
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        return table


class BudgetedRocksDBOptions(faust_rocksdb.RocksDBOptions):
    """Faust's rocksdict options with the shared cache and write-buffer manager of :class:`RocksDBMemory`."""

    def __init__(self, memory: RocksDBMemory, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memory = memory

    def as_options(self) -> Any:
        """Faust's options, with the shared write-buffer manager and a table factory on the shared cache."""
        options = super().as_options()
        options.set_write_buffer_manager(self.memory.write_buffers)
        table = self.memory.table_factory()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        options.set_block_based_table_factory(table)
        return options


class ProfileTable(faust.Table[bytes, bytes]):
    """A bytes -> bytes table; changelog records are produced by :class:`Output`."""

    def __init__(self, app: faust.App, *, output: Output, memory: RocksDBMemory | None = None,
                 **kwargs: Any) -> None:
        self._rocksdb_memory = memory  # before super().__init__, which may create the store
        super().__init__(app, key_type=bytes, value_type=bytes, **kwargs)
        self._output = output
        self._delivered: dict[TP, int] = {}
        self._staged: dict[bytes, tuple[int, bytes | None]] = {}  # key -> (partition, value; None: delete)
        # Staged values a background commit took (:meth:`hold_staged`): written once the outputs sent
        # before them are delivered (:meth:`write_held`); read back until then.
        self._held: dict[bytes, tuple[int, bytes | None]] = {}
        self._stamped: dict[int, float] = {}  # partition -> when its write time was last stamped

    def _new_store_by_url(self, url: Any) -> Any:
        """Faust's store; a RocksDB one opens its databases within the worker's :class:`RocksDBMemory`."""
        store = super()._new_store_by_url(url)
        if self._rocksdb_memory is not None and isinstance(store, faust_rocksdb.Store) and store.use_rocksdict:
            options = dict(store.options or {})
            store.rocksdb_options = BudgetedRocksDBOptions(self._rocksdb_memory, **options, use_rocksdict=True)
        return store

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                           generation_id: int = 0) -> None:
        """Faust's, and: a partition assigned to this worker whose local database was last written more
        than ``STATE_MAX_AGE_S`` ago (it was on another worker meanwhile) starts empty and is rebuilt
        from its changelog.  The database still holds what this worker wrote before; the changelog
        brings the changes made meanwhile, except deletions (an erasure, a profile absorbed, a block
        emptied) whose tombstones compaction dropped after ``delete.retention.ms``, which would come
        back to life here (an erased person's state among them), as in a whole state folder that old
        (:mod:`streams.worker`).  The time is that of the database's newest file, RocksDB's own log
        aside (written while a database is merely open)."""
        store: Any = self.data
        partition_path = getattr(store, "partition_path", None)
        if partition_path is not None:  # (the memory store keeps nothing between rebalances)
            from streams.worker import STATE_MAX_AGE_S  # (streams.worker imports this module)

            now = time.time()
            for tp in newly_assigned:
                path: Path = partition_path(tp.partition)
                if tp.topic in self.changelog_topic.topics and now - _last_written(path) > STATE_MAX_AGE_S:
                    store._dbs.pop(tp.partition, None)
                    shutil.rmtree(path, ignore_errors=True)
                    _stamp_path(path).unlink(missing_ok=True)
                    self._stamped.pop(tp.partition, None)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Faust's, and each active partition's write time stamped: its database now holds the
        changelog up to now (a recovery writes through Faust, not :meth:`save_persisted_offsets`, and
        a database recovered and then left idle looked as old as its stamp from before)."""
        await super().on_recovery_completed(active_tps, standby_tps)
        partition_path = getattr(self.data, "partition_path", None)
        if partition_path is None:
            return
        now = time.time()
        for tp in active_tps:
            if tp.topic in self.changelog_topic.topics:
                self._stamp_partition(partition_path, tp.partition, now)

    def _stamp_partition(self, partition_path: Callable[[int], Path], partition: int, now: float) -> None:
        """``partition``'s write time stamped beside its database, and noted (:data:`STAMP_EVERY_S`)."""
        _stamp(partition_path(partition), now)
        self._stamped[partition] = now

    # --- write-behind ------------------------------------------------------------------------------
    # An agent that writes a key several times between two offset commits (a profile parks an event,
    # then folds it when the watermark passes; its due time moves) pays Faust's per-write cost (table
    # bookkeeping, a RocksDB put, a changelog record) once instead of each time.  Staged values are
    # read back at once by :meth:`read`, and :meth:`write_staged` runs before every commit (see
    # :class:`streams.output.FlushBeforeCommit`), so no offset is committed before the table writes
    # of the events it covers are in the store and the changelog.

    # Values are staged as bytes: ``stage_json`` encodes at once.  Staging decoded objects instead
    # saved a decode when a key came back before the write-out, but between two write-outs tens of
    # thousands of them were alive at once: their many small objects filled Python's allocator,
    # which keeps a 1 MiB arena as long as one object in it lives, so the worker's RSS stayed at
    # that peak (measured: 1,688 -> 1,249-1,507 bytes per profile at 100k, events/s within the spread).

    def stage(self, key: bytes, value: bytes | None, partition: int) -> None:
        """Sets (or with ``None`` deletes) ``key`` in ``partition`` at the next :meth:`write_staged`."""
        self._staged[key] = (partition, value)

    def stage_last(self, key: bytes, value: bytes | None, partition: int) -> None:
        """As :meth:`stage`, and written after every value staged before it (in its partition's
        changelog too, whose records a new owner reads in order): a mark of what those values took in."""
        self._staged.pop(key, None)
        self._staged[key] = (partition, value)

    def stage_json(self, key: bytes, value: Any, partition: int) -> None:
        """Sets ``key`` to the JSON of ``value`` (``None``: deletes it) at the next :meth:`write_staged`.
        ``value`` is encoded now: changes made to it later are not staged."""
        self.stage(key, None if value is None else orjson.dumps(value), partition)

    def read(self, key: bytes, partition: int | None = None) -> bytes | None:
        """The staged value of ``key`` if any, else the held one, else the stored one (``partition``:
        where it lives)."""
        staged = self._staged.get(key)
        if staged is None:
            staged = self._held.get(key)
            if staged is None:
                return self._stored(key, partition)
        return staged[1]

    def read_json(self, key: bytes, partition: int | None = None) -> Any:
        """The decoded value of :meth:`read` (``None``: no value)."""
        raw = self.read(key, partition)
        return orjson.loads(raw) if raw is not None else None

    def json_reader(self, partition: int) -> Callable[[str], Any]:
        """``key -> read_json(key.encode(), partition)`` for the keys of one record, with the
        partition's database looked up once (the profile agent reads ~3 keys per event)."""
        store: Any = self.data
        if not hasattr(store, "_db_for_partition"):
            return lambda key: self.read_json(key.encode(), partition)
        db = store._db_for_partition(partition)
        loads = orjson.loads

        def read(key: str) -> Any:
            kb = key.encode()
            staged = self._staged.get(kb)
            if staged is None:
                staged = self._held.get(kb)
            raw = db.get(kb) if staged is None else staged[1]
            return loads(raw) if raw is not None else None

        return read

    def _stored(self, key: bytes, partition: int | None) -> bytes | None:
        store: Any = self.data
        if partition is not None and hasattr(store, "_db_for_partition"):
            # One RocksDB get; Faust's path costs a contains, a get and key-index bookkeeping.
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        raw: bytes | None = self.get(key)
        return raw

    @property
    def staged_count(self) -> int:
        """Values staged since the last write-out or background commit's cut."""
        return len(self._staged)

    @property
    def held_count(self) -> int:
        """Values a background commit holds (taken at its cut, not written yet)."""
        return len(self._held)

    def items_with_staged(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of this worker's partitions, staged and held values included.  Streamed:
        the profile-state table of a large population does not fit in memory twice."""
        unwritten = {**self._held, **self._staged}
        for key, value in self.items():
            if key not in unwritten:
                yield key, value
        for key, (_, value) in unwritten.items():
            if value is not None:
                yield key, value

    def partition_items(self, partition: int, partition_of: Callable[[bytes], int]) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of ``partition``, staged and held values included (``partition_of``: a
        key's partition, for a store that keeps all partitions in one place)."""
        unwritten = {key: value for key, (part, value) in {**self._held, **self._staged}.items() if part == partition}
        store: Any = self.data
        stored: Iterable[tuple[bytes, bytes]]
        if hasattr(store, "_db_for_partition"):  # (without Faust's own key, the changelog offset it holds)
            stored = store._visible_items(store._db_for_partition(partition))
        else:
            stored = ((key, value) for key, value in self.items() if partition_of(key) == partition)
        for key, value in stored:
            if key not in unwritten:
                yield key, value
        for key, last in unwritten.items():
            if last is not None:
                yield key, last

    def drop_staged(self, partitions: set[int]) -> None:
        """Forgets the staged and held values of ``partitions`` (lost in a rebalance, see streams.app)."""
        if partitions:
            self._staged = {key: staged for key, staged in self._staged.items() if staged[0] not in partitions}
            self._held = {key: held for key, held in self._held.items() if held[0] not in partitions}

    def hold_staged(self) -> int:
        """A background commit's cut: the values staged so far are held (still read back) until
        :meth:`write_held`; what is staged from now on waits for the next commit.  Returns how many
        values are held."""
        if self._staged:
            self._held = self._after_held() if self._held else self._staged
            self._staged = {}
        return len(self._held)

    def _after_held(self) -> dict[bytes, tuple[int, bytes | None]]:
        """The held values, then the staged ones, a value staged again in its new place (after the
        values held before it: :meth:`stage_last`'s order)."""
        values = dict(self._held)
        for key, staged in self._staged.items():
            values.pop(key, None)
            values[key] = staged
        return values

    async def write_held(self, chunk: int = WRITE_CHUNK) -> float:
        """Writes the held values (as :meth:`write_staged`), ``chunk`` at a time with the event loop
        turning in between; they are read back until all are written.  Stops when a write-out took
        them meanwhile (:meth:`write_staged` writes them before newer values; going on would write
        them after those) or a rebalance dropped some.  Returns the seconds it held the loop."""
        held = self._held
        values = list(held.items())
        busy = 0.0
        for start in range(0, len(values), chunk):
            if self._held is not held:
                return busy
            started = time.perf_counter()
            self._write(dict(values[start:start + chunk]))
            busy += time.perf_counter() - started
            await asyncio.sleep(0)
        if self._held is held:
            self._held = {}
        return busy

    def write_staged(self) -> None:
        """Writes the held values, then the staged ones (newer), to the local store (one RocksDB write
        batch per partition) and the changelog (the caller flushes it)."""
        self._write(self._after_held() if self._held else self._staged)
        self._held, self._staged = {}, {}

    def _write(self, values: dict[bytes, tuple[int, bytes | None]]) -> None:
        store: Any = self.data
        rocksdict_batches = getattr(store, "use_rocksdict", False) and hasattr(store, "_db_for_partition")
        batches: dict[int, Any] = {}
        for key, (partition, value) in values.items():
            if rocksdict_batches:
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            elif hasattr(store, "_db_for_partition"):
                db = store._db_for_partition(partition)
                if value is None:
                    db.delete(key)
                else:
                    db.put(key, value)
            elif value is None:
                store.data.pop(key, None)
            else:
                store.data[key] = value
            self.send_changelog(partition, key, value)
        for partition, batch in batches.items():
            store._db_for_partition(partition).write(batch)

    def send_changelog(  # type: ignore[override]  # no FutureMessage: the output producer reports back
        self, partition: int | None, key: Any, value: Any, key_serializer: Any = None, value_serializer: Any = None
    ) -> None:
        topic = self.changelog_topic.get_topic_name()
        assert partition is not None  # tables here are always written from a stream event
        self._output.send_changelog(topic, key, value, partition, on_delivered=self._persisted)

    # Faust's versions read the partition back from the FutureMessage its producer returns.
    def on_key_set(self, key: Any, value: Any) -> None:
        self.send_changelog(self.partition_for_key(key), key, value)
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        self.send_changelog(self.partition_for_key(key), key, None)
        self._sensor_on_del(self, key)

    def _persisted(self, topic: str, partition: int, offset: int) -> None:
        tp = TP(topic, partition)
        if offset > self._delivered.get(tp, -1):
            self._delivered[tp] = offset

    def save_persisted_offsets(self) -> None:
        """What Faust's own delivery callback does per record, once per flush: remember in the local
        store how far the changelog is already contained in it, so a restart reads only the rest.
        (Per record it was a RocksDB write per table write; writing less often only means a restart
        re-reads a little more of the changelog.)"""
        store: Any = self.data
        partition_path = getattr(store, "partition_path", None)
        now = time.time()
        for tp, offset in self._delivered.items():
            store.set_persisted_offset(tp, offset)
            if partition_path is not None and now - self._stamped.get(tp.partition, 0.0) > STAMP_EVERY_S:
                self._stamp_partition(partition_path, tp.partition, now)
        self._delivered.clear()


#: How often at most a partition's write time is stamped beside its database (seconds).
STAMP_EVERY_S = 60.0


def _stamp_path(partition_path: Path) -> Path:
    """Where a partition database's write time is stamped: beside it, as the text of a file, which a
    copy keeps (a copy without file times, ``cp -r``, made an old database look written just now)."""
    return partition_path.with_name(partition_path.name + ".written-at")


def stamp_text(now: float) -> str:
    """A time as a stamp file holds it (the state folder's clean-stop marker, a partition's stamp): a
    copy keeps it where it keeps no file times.  :func:`stamped_time` reads it back."""
    return f"{now:.3f}\n"


def stamped_time(text: str) -> float | None:
    """The time a stamp's text holds; None for none (an empty clean-stop marker of an older version)
    or one that is not a number."""
    try:
        stamped = float(text[:40])
    except ValueError:
        return None
    return stamped if stamped == stamped else None  # (NaN: not a time)


def _stamp(partition_path: Path, now: float) -> None:
    with contextlib.suppress(OSError):  # (a stamp is a safeguard: no write of it stops a commit)
        _stamp_path(partition_path).write_text(stamp_text(now))


def _last_written(partition_path: Path) -> float:
    """When the database at ``partition_path`` was last written: the older of its stamp (when there
    is one) and its newest file but RocksDB's info log; the infinite future when there is none."""
    try:
        times = [f.stat().st_mtime for f in partition_path.iterdir() if not f.name.startswith("LOG")]
    except OSError:
        times = []
    newest = max(times, default=float("inf"))
    try:
        stamped = stamped_time(_stamp_path(partition_path).read_text())
    except (OSError, ValueError):  # (none: a database no stamp was written for yet, or by an older version)
        stamped = None
    return newest if stamped is None else min(newest, stamped)


def rocksdb_options(write_buffer_mb: int) -> dict[str, int]:
    """Per partition DB: the memtable size at which it is flushed (Faust's default, 64 MiB x 3, lets
    one worker's RSS grow by the size of every profile it has touched).  The memory of all of them
    together is bounded by :class:`RocksDBMemory`."""
    return {"write_buffer_size": write_buffer_mb * 2**20, "max_write_buffer_number": 2}


def profile_table(app: faust.App, output: Output, name: str, partitions: int,
                  options: dict[str, int] | None = None, memory: RocksDBMemory | None = None) -> ProfileTable:
    table = ProfileTable(app, output=output, name=name, default=None, partitions=partitions,
                         beacon=app.tables.beacon, options=options, memory=memory)
    app.tables.add(table)
    return table


#: Due-index changes kept in one write batch, at most, while no pop needs them written.
PENDING_WRITES = 4096


class RocksDBDueIndex:
    """The due order of :class:`streams.watermark.DueIndex` kept in a local RocksDB database: one
    key ``partition (2 bytes) + due (8 bytes) + profile key`` per profile with something due, no
    value, no Python object per profile.

    Why: every profile has a score timer, so the in-memory index holds one entry per profile of the
    worker (~190 bytes each: ~190 MiB at 1M profiles).  Here it is a fixed cost: two memtables of
    4 MiB at most and blocks in the worker's shared cache.  (Not charged to the shared write-buffer
    manager: while the tables' memtables fill the budget, every write to this database made it
    switch memtables, which cost ~30 µs per event.)  The database is scratch: not a table, no
    changelog, no write-ahead log; it is emptied at every rebalance and rebuilt from
    ``profile-state`` (as the in-memory index is), and deleted when it is first opened.  It opens at
    the first :meth:`build`, in the worker's data directory.

    A pushed key's old entry is deleted with the due time it was pushed with (``previous``, the
    state's ``"due"``).  Pushes and discards are collected in one write batch, written before the
    next pop.  Popped entries are deleted; so that a pop does not step over the tombstones of every
    earlier pop, each partition remembers the lowest due time that can still be stored (``_low``)
    and its next pop starts there, and the pop's iterator is bounded above at ``upto``.
    """

    def __init__(self, path: Path, memory: RocksDBMemory | None = None) -> None:
        self.path = path
        self.memory = memory  # its cache serves this database's blocks; its write buffers do not
        self.built = False
        self._db: rocksdict.Rdict | None = None
        self._low: dict[int, int] = {}  # partition -> no entry is due earlier
        self._pending = rocksdict.WriteBatch(raw_mode=True)  # pushes and discards since the last pop

    def _open(self) -> rocksdict.Rdict:
        if self._db is None:
            shutil.rmtree(self.path, ignore_errors=True)  # scratch of an earlier run: rebuilt below
            self.path.parent.mkdir(parents=True, exist_ok=True)
            options = rocksdict.Options(raw_mode=True)
            options.create_if_missing(True)
            options.set_write_buffer_size(4 * 2**20)  # keys only: small memtables, flushed often
            options.set_max_write_buffer_number(2)
            if self.memory is not None:
                options.set_block_based_table_factory(self.memory.table_factory())
            db = rocksdict.Rdict(str(self.path), options=options)
            write_options = rocksdict.WriteOptions()
            write_options.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; the stubs say method
            db.set_write_options(write_options)
            self._db = db
        return self._db

    @staticmethod
    def _key(partition: int, due: int, key: bytes) -> bytes:
        return partition.to_bytes(2, "big") + due_bytes(due) + key

    def reset(self) -> None:
        """After a rebalance: emptied, and rebuilt from the table before the next use."""
        if self._db is not None:
            self._db.delete_range(b"", b"\xff\xff")
        self._pending = rocksdict.WriteBatch(raw_mode=True)
        self._low.clear()
        self.built = False

    def build(self, entries: Iterable[tuple[int, int, bytes]]) -> None:
        """From (partition, due, key) of every profile with something due."""
        db = self._open()
        self.reset()
        batch = rocksdict.WriteBatch(raw_mode=True)
        for count, (partition, due, key) in enumerate(entries, 1):
            batch.put(self._key(partition, due, key), b"")
            if count % 10_000 == 0:
                db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
        db.write(batch)
        self.built = True

    def push(self, partition: int, due: int, key: bytes, previous: int | None = None) -> None:
        pending = self._pending
        if previous is not None:
            pending.delete(self._key(partition, previous, key))
        pending.put(self._key(partition, due, key), b"")
        self._bound_pending()
        low = self._low.get(partition)
        if low is not None and due < low:
            self._low[partition] = due

    def discard(self, partition: int, key: bytes, previous: int | None = None) -> None:
        if previous is not None:
            self._pending.delete(self._key(partition, previous, key))
            self._bound_pending()

    def _bound_pending(self) -> None:
        """Writes the batch once it holds :data:`PENDING_WRITES` changes: a pop may not come for a
        while (the watermark unknown yet, or not past ``_low``)."""
        if len(self._pending) >= PENDING_WRITES:
            self._write_pending()

    def _write_pending(self) -> rocksdict.Rdict:
        db = self._open()
        if len(self._pending):
            db.write(self._pending)
            self._pending = rocksdict.WriteBatch(raw_mode=True)
        return db

    def may_hold(self, partition: int, upto: int) -> bool:
        """False when nothing due at or before ``upto`` can be stored for ``partition`` (a pop returns at once)."""
        low = self._low.get(partition)
        return low is None or low <= upto

    def pop_due(self, partition: int, upto: int, most: int | None = None) -> list[tuple[int, bytes]]:
        """The keys of ``partition`` due at or before ``upto``, in (due, key) order, each taken out
        (``most``: at most that many; the next pop starts at the first one left).

        Nothing below ``_low`` can be stored, so a pop that does not reach it returns at once,
        without writing the batch or seeking: most records of a partition pop at the watermark the
        record before them popped at (it moves with the upstream clocks, a few times a second).
        Pushes then wait in the batch (bounded by :meth:`_bound_pending`)."""
        if not self.may_hold(partition, upto):
            return []
        db = self._write_pending()
        prefix = partition.to_bytes(2, "big")
        end = prefix + due_bytes(upto + 1)
        found: list[tuple[int, bytes]] = []
        popped: list[bytes] = []
        start = prefix + due_bytes(self._low.get(partition, -DUE_BIAS))
        bounds = rocksdict.ReadOptions()
        bounds.set_iterate_lower_bound(start)
        bounds.set_iterate_upper_bound(end)  # else a seek steps over every tombstone beyond ``end``
        entries = db.iter(bounds)
        entries.seek(start)
        left: int | None = None  # the due time of the first entry ``most`` left
        while entries.valid():
            stored: bytes = entries.key()
            if stored >= end:
                break
            due = int.from_bytes(stored[2:10], "big") - DUE_BIAS
            if most is not None and len(found) >= most:
                left = due
                break
            popped.append(stored)
            found.append((due, stored[10:]))
            entries.next()
        del entries
        if popped:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for stored in popped:
                batch.delete(stored)
            db.write(batch)
        self._low[partition] = upto + 1 if left is None else left  # a pop starts at _low, so _low <= upto
        return found

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


#: How far past the watermark of a partition's pop :class:`TieredDueIndex` moves entries from RocksDB
#: into memory (event time, ms): a partition then reads RocksDB about once a minute of event time.
NEAR_MS = 60_000
#: The most keys :class:`TieredDueIndex` keeps in memory (all partitions; ~190 bytes each, so ~3 MiB);
#: past it, entries stay in RocksDB.
NEAR_KEYS = 16_384


class TieredDueIndex:
    """The due order with what is due within the next minute of event time in memory
    (:class:`streams.watermark.DueIndex`) and the rest in RocksDB (:class:`RocksDBDueIndex`).

    Why: at live rates the watermark moves at nearly every internal record, and with every entry in
    RocksDB each record's pop wrote the pending batch, seeked and deleted: nearly every event parks
    (due at its own time, a second or so ahead of the watermark), and in a steady flow some timer
    set an hour or a day before comes due every few records.  Here a pop that reaches RocksDB takes
    out everything due up to :data:`NEAR_MS` past its watermark and keeps what is not due yet in
    memory, so a partition reads RocksDB about once a minute of event time; a push due by then goes
    to memory, a later one to RocksDB.

    A key's current entry is in one tier: in memory if the in-memory index holds it (its dict says
    so), else in RocksDB under the due time the caller last pushed (``previous``).  Memory holds at
    most :data:`NEAR_KEYS` keys, whatever the population: past that, entries stay in RocksDB (a pop
    takes out no more than memory has room for), whose pops then seek as before.  After a rebalance
    the index is rebuilt into RocksDB."""

    def __init__(self, path: Path, memory: RocksDBMemory | None = None, near_ms: int = NEAR_MS,
                 near_keys: int = NEAR_KEYS) -> None:
        self.near = DueIndex()
        self.far = RocksDBDueIndex(path, memory)
        self.near_ms, self.near_keys = near_ms, near_keys
        self.near_count = 0  # keys held in memory, all partitions
        self._horizon: dict[int, int] = {}  # partition -> where its last read of RocksDB reached
        self.built = False

    def reset(self) -> None:
        self.near.reset()
        self.far.reset()
        self._horizon.clear()
        self.near_count = 0
        self.built = False

    def build(self, entries: Iterable[tuple[int, int, bytes]]) -> None:
        self.near.reset()
        self.far.build(entries)
        self._horizon.clear()
        self.near_count = 0
        self.built = True

    def push(self, partition: int, due: int, key: bytes, previous: int | None = None) -> None:
        in_near = key in self.near.keys(partition)
        if in_near:  # its current entry is in memory: RocksDB holds nothing for it
            previous = None
        horizon = self._horizon.get(partition)
        if horizon is not None and due <= horizon and (in_near or self.near_count < self.near_keys):
            if previous is not None:
                self.far.discard(partition, key, previous)
            self.near.push(partition, due, key)
            self.near_count += not in_near
        else:
            if in_near:
                self.near.discard(partition, key)
                self.near_count -= 1
            self.far.push(partition, due, key, previous)

    def discard(self, partition: int, key: bytes, previous: int | None = None) -> None:
        if key in self.near.keys(partition):
            self.near.discard(partition, key)
            self.near_count -= 1
        else:
            self.far.discard(partition, key, previous)

    def pop_due(self, partition: int, upto: int) -> list[tuple[int, bytes]]:
        found = self.near.pop_due(partition, upto)
        self.near_count -= len(found)
        if not self.far.may_hold(partition, upto):
            return found
        found += self.far.pop_due(partition, upto)
        room = self.near_keys - self.near_count
        if room > 0:  # what comes due within the horizon, as much as memory may hold
            horizon = upto + self.near_ms
            ahead = self.far.pop_due(partition, horizon, most=room)
            for due, key in ahead:
                self.near.push(partition, due, key)
            self.near_count += len(ahead)
            self._horizon[partition] = horizon
        found.sort()
        return found

    def close(self) -> None:
        self.far.close()
