"""Table stores: every RocksDB database of a worker stays within one memory budget."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import faust

from streams.tables import BudgetedRocksDBOptions, RocksDBMemory, profile_table, rocksdb_options
from tests.fakes import RecordingOutput

MIB = 2**20


def _tables(tmp_path: Path, memory: RocksDBMemory | None, count: int = 2) -> list:
    app = faust.App(f"test-tables-{os.getpid()}", store="rocksdb://", datadir=str(tmp_path), web_enabled=False,
                    autodiscover=False)
    output = RecordingOutput()
    return [profile_table(app, output, f"t{i}", 2, rocksdb_options(write_buffer_mb=4), memory) for i in range(count)]


def _fill(table: object, partition: int, megabytes: float) -> None:
    db = table.data._db_for_partition(partition)  # type: ignore[attr-defined]
    value = os.urandom(1024)
    for i in range(int(megabytes * 1024)):
        db.put(b"key-%08d" % i, value)


def test_every_database_of_the_worker_shares_one_budget(tmp_path: Path) -> None:
    memory = RocksDBMemory.with_budget(6)
    tables = _tables(tmp_path, memory)
    assert all(isinstance(t.data.rocksdb_options, BudgetedRocksDBOptions) for t in tables)
    assert memory.used == 0
    _fill(tables[0], 0, 2)
    after_one = memory.used
    assert after_one >= 2 * MIB  # the memtable is charged to the shared cache
    _fill(tables[1], 1, 2)
    assert memory.used >= after_one + MIB  # another table's partition: same budget


def test_memtables_are_flushed_when_the_budget_is_reached(tmp_path: Path) -> None:
    memory = RocksDBMemory.with_budget(4)
    tables = _tables(tmp_path, memory)
    for table in tables:
        for partition in (0, 1):
            _fill(table, partition, 3)  # below each database's own 4 MiB memtable: none flushes on its own
    # Unflushed, the four memtables would hold 12 MiB.  RocksDB's bound is soft: a flush the budget
    # triggers empties only the memtables of the database being written, so the others' stay, and
    # memtables still being flushed count until they are done.  Measured with four busy processes
    # beside the test: up to 7.25 MiB, settled; without the budget's flushes: 14.25 MiB.
    deadline = time.monotonic() + 20
    while memory.used > 10 * MIB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert memory.used <= 10 * MIB
    stored = tables[0].data._db_for_partition(0).get(b"key-%08d" % 0)
    assert stored is not None and len(stored) == 1024  # flushed, not lost


def test_without_a_budget_faust_options_are_kept(tmp_path: Path) -> None:
    (table,) = _tables(tmp_path, None, count=1)
    assert not isinstance(table.data.rocksdb_options, BudgetedRocksDBOptions)


def test_a_staged_value_is_its_json_at_staging_time_until_written(tmp_path: Path) -> None:
    [table] = _tables(tmp_path, RocksDBMemory.with_budget(4), count=1)
    state = {"version": 1}
    table.stage_json(b"k", state, 1)
    state["version"] = 2  # a later change of the caller's object is not staged
    assert table.read_json(b"k", 1) == {"version": 1} and table.read(b"k", 1) == b'{"version":1}'
    assert table.data._db_for_partition(1).get(b"k") is None  # staged only
    table.write_staged()
    assert table.staged_count == 0
    assert table.data._db_for_partition(1).get(b"k") == b'{"version":1}'
    assert table.read_json(b"k", 1) == {"version": 1}
    assert table.json_reader(1)("k") == {"version": 1}  # stored
    table.stage_json(b"k", {"version": 3}, 1)
    assert table.json_reader(1)("k") == {"version": 3}  # staged before stored
    table.stage_json(b"k", None, 1)  # None deletes
    assert table.read_json(b"k", 1) is None and table.json_reader(1)("k") is None
    table.write_staged()
    assert table.data._db_for_partition(1).get(b"k") is None


# --- the background commit's cut: held values (streams.consumer, fix 8) ------------------------------


def _stored(table: object, partition: int, key: bytes) -> bytes | None:
    value: bytes | None = table.data._db_for_partition(partition).get(key)  # type: ignore[attr-defined]
    return value


def test_held_values_are_read_back_until_written_and_newer_staged_ones_win(tmp_path: Path) -> None:
    [table] = _tables(tmp_path, RocksDBMemory.with_budget(4), count=1)
    output = table._output
    table.stage(b"a", b"1", 0)
    table.stage(b"b", b"1", 1)
    assert table.hold_staged() == 2  # the cut
    table.stage(b"a", b"2", 0)  # staged after the cut: the next commit's
    assert table.read(b"a", 0) == b"2" and table.read(b"b", 1) == b"1"  # staged, then held
    assert table.json_reader(1)("b") == 1 and _stored(table, 1, b"b") is None
    assert (table.staged_count, table.held_count) == (1, 2)
    assert sorted(table.items_with_staged()) == [(b"a", b"2"), (b"b", b"1")]
    asyncio.run(table.write_held(chunk=1))
    assert (_stored(table, 0, b"a"), _stored(table, 1, b"b")) == (b"1", b"1")  # the cut's values
    assert table.read(b"a", 0) == b"2" and (table.staged_count, table.held_count) == (1, 0)
    assert [key for key, _, _ in output.sent[table.changelog_topic.get_topic_name()]] == [b"a", b"b"]


def test_a_write_out_during_a_held_write_writes_the_newer_value_last_and_the_held_write_stops(
        tmp_path: Path) -> None:
    """A write-out of everything (a rebalance, a stop, too many staged values) while a background
    commit writes its held values in chunks: the newer value must end up stored, not the held one."""
    [table] = _tables(tmp_path, RocksDBMemory.with_budget(4), count=1)
    for index in range(4):
        table.stage(b"k%d" % index, b"old", 0)
    table.hold_staged()
    table.stage(b"k3", b"new", 0)

    async def commit_meanwhile() -> None:
        writing = asyncio.create_task(table.write_held(chunk=1))
        await asyncio.sleep(0)  # the first chunk (k0) is written, then the loop turns
        table.write_staged()  # held values, then the newer staged ones
        await writing

    asyncio.run(commit_meanwhile())
    assert _stored(table, 0, b"k3") == b"new" and _stored(table, 0, b"k2") == b"old"
    sent = [key for key, _, _ in table._output.sent[table.changelog_topic.get_topic_name()]]
    assert sent == [b"k0", b"k0", b"k1", b"k2", b"k3"]  # the held write stopped after its first chunk


def test_a_value_staged_last_is_written_after_every_value_staged_or_held_before_it(tmp_path: Path) -> None:
    """A mark of what the values before it took in (the co-occurrence agent's last counted offset)
    must follow them in the changelog, which a new owner reads in order, also when a background
    commit held an older one (a value staged again used to keep the held one's place)."""
    [table] = _tables(tmp_path, RocksDBMemory.with_budget(4), count=1)
    table.stage_last(b"mark", b"1", 0)
    table.stage(b"a", b"1", 0)
    table.stage_last(b"mark", b"2", 0)
    table.hold_staged()
    table.stage(b"b", b"1", 0)
    table.stage_last(b"mark", b"3", 0)
    table.write_staged()
    assert [key for key, _, _ in table._output.sent[table.changelog_topic.get_topic_name()]] == [b"a", b"b", b"mark"]
    assert _stored(table, 0, b"mark") == b"3"
    # a second cut while values are still held (none today: one background commit at a time)
    table.stage_last(b"mark", b"4", 0)
    table.stage(b"c", b"1", 0)
    table.hold_staged()
    table.stage(b"d", b"1", 0)
    table.stage_last(b"mark", b"5", 0)
    table.hold_staged()
    asyncio.run(table.write_held(chunk=1))
    sent = [key for key, _, _ in table._output.sent[table.changelog_topic.get_topic_name()]]
    assert sent[3:] == [b"c", b"d", b"mark"]


def test_a_rebalance_drops_the_held_values_of_lost_partitions(tmp_path: Path) -> None:
    [table] = _tables(tmp_path, RocksDBMemory.with_budget(4), count=1)
    table.stage(b"a", b"1", 0)
    table.stage(b"b", b"1", 1)
    table.hold_staged()
    table.drop_staged({1})
    assert table.read(b"b", 1) is None and table.read(b"a", 0) == b"1"
    table.write_staged()
    assert _stored(table, 0, b"a") == b"1" and _stored(table, 1, b"b") is None


def test_a_partitions_items_leave_out_the_changelog_offset_the_store_keeps(tmp_path: Path) -> None:
    """The product-neighbours bound is built from a partition's items: with the store's own offset key
    among them (a value of no counts, so the first to go), the first product past the bound deleted
    that key (a tombstone on the recommendations topic and the changelog, one eviction counted, and
    a restart reading the changelog from its start) instead of a product."""
    from faust.types import TP

    from streams.cooccurrence import CountedProducts

    [table] = _tables(tmp_path, RocksDBMemory.with_budget(4), count=1)
    table.stage(b"p-1", b'{"p-2":3}', 0)
    table.write_staged()
    table.data.set_persisted_offset(TP(table.changelog_topic.get_topic_name(), 0), 42)
    table.stage(b"p-3", b'{"p-1":1}', 0)
    assert sorted(table.partition_items(0, lambda key: 0)) == [(b"p-1", b'{"p-2":3}'), (b"p-3", b'{"p-1":1}')]
    held = CountedProducts(1, lambda partition: table.partition_items(partition, lambda key: 0))
    assert held.counted(0, b"p-3") == [b"p-1"]


def test_a_partitions_write_time_leaves_out_rocksdbs_info_log(tmp_path: Path) -> None:
    """RocksDB writes its info log (``LOG``, ``LOG.old.*``) each time it opens a database: an old
    database opened just now is still as old as its newest other file (or its stamp)."""
    from streams.tables import _last_written, _stamp

    path = tmp_path / "profile-state-1.db"
    path.mkdir()
    written, opened = 1_700_000_000.0, 1_700_050_000.0
    for name, at in (("000012.sst", written - 60), ("MANIFEST-000005", written), ("LOG", opened),
                     ("LOG.old.1700049000", opened)):
        (path / name).write_text("x")
        os.utime(path / name, (at, at))
    assert _last_written(path) == written
    _stamp(path, written - 3600)  # the older of the stamp and the files
    assert _last_written(path) == written - 3600
