"""The batched input delivery: a fetched run of one partition as one message."""

import asyncio
import contextlib
import itertools
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import pytest
from faust.tables.recovery import RebalanceAgain, ServiceStopped
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from mode.utils.queues import FlowControlQueue

from streams.app import _delivered_records
from streams.consumer import IDLE_AFTER_S, App, Consumer, RecordBatch, offsets_committed, resumed
from streams.worker import stop_line


def record(offset: int, value: bytes, topic: str = "clicks", partition: int = 3) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=1_000 + offset,
                           timestamp_type=0, key=b"k", value=value, serialized_value_size=len(value))


def test_a_batch_is_addressed_by_its_last_record_and_knows_its_first() -> None:
    run = [record(7, b"a"), record(8, b"bb"), record(10, b"ccc")]  # 9: a gap inside the run
    batch = RecordBatch(run)
    assert (batch.topic, batch.partition, batch.offset, batch.first_offset) == ("clicks", 3, 10, 7)
    assert batch.value is run
    assert batch.timestamp == 1_010
    assert batch.serialized_value_size == 6


def test_delivered_records_unpack_batches_and_single_messages_alike() -> None:
    batch_event = SimpleNamespace(value=[record(1, b"x"), record(2, b"y")])
    single = SimpleNamespace(value=b"z", message=SimpleNamespace(topic="carts", partition=0, offset=5, key=None,
                                                                  timestamp=2.5))
    assert _delivered_records([batch_event, single]) == [
        ("clicks", 3, 1, b"k", b"x", 1_001),
        ("clicks", 3, 2, b"k", b"y", 1_002),
        ("carts", 0, 5, None, b"z", 2_500),
    ]


def test_internal_records_unpack_a_batch_into_its_records_in_order_and_a_message_into_one() -> None:
    batch = SimpleNamespace(value=[record(1, b"[1]", topic="mailpulse-profile-events"),
                                   record(2, b"[2]", topic="mailpulse-profile-events")])
    single = SimpleNamespace(value=b"[3]", message=SimpleNamespace(topic="mailpulse-profile-events", partition=0,
                                                                  offset=5, key=None, timestamp=2.5))
    assert _delivered_records([batch]) == [("mailpulse-profile-events", 3, 1, b"k", b"[1]", 1_001),
                                           ("mailpulse-profile-events", 3, 2, b"k", b"[2]", 1_002)]
    assert _delivered_records([single]) == [("mailpulse-profile-events", 0, 5, None, b"[3]", 2_500)]


# --- acking a batch: what the consumer would commit ---------------------------------------------------

TP_ = TP("clicks", 3)


def message(offset: int, value: Any) -> Message:
    return Message(topic=TP_.topic, partition=TP_.partition, offset=offset, timestamp=1.0, timestamp_type=0,
                   headers=[], key=None, value=value, checksum=None)


@pytest.fixture
def consumer(tmp_path: Any) -> Consumer:
    """The project's consumer, never started (no broker is contacted); ``clicks`` is acked."""
    app = App("test-ack", broker="kafka://127.0.0.1:1", autodiscover=False, datadir=str(tmp_path))
    app.topics._acking_topics.add(TP_.topic)  # what subscribing an agent to the topic does
    made: Consumer = app.consumer
    return made


def deliver(consumer: Consumer, previous_offset: int, batch: RecordBatch) -> None:
    """What the fetch loop does when a batch follows the message at ``previous_offset``."""
    consumer._batch_first_offsets.setdefault(TP_, {})[batch.offset] = batch.first_offset
    if batch.offset - previous_offset > 1:
        asyncio.run(consumer._add_gap(TP_, previous_offset + 1, batch.offset))


def test_a_batch_is_committed_only_once_it_is_acked_then_up_to_its_last_record(consumer: Consumer) -> None:
    assert consumer.ack(message(2, b"single"))
    batch = RecordBatch([record(5, b"a"), record(6, b"b"), record(8, b"c")])  # 3, 4, 7: not in the log
    deliver(consumer, 2, batch)
    # Only what lies before the batch counts as a gap (intervals exclude their end).
    assert [(i.begin, i.end) for i in consumer._gap[TP_]] == [(3, 5)]
    assert consumer._new_offset(TP_) == 3  # the batch is still being processed: nothing of it committed
    assert consumer.ack(message(8, batch.value))
    assert consumer._new_offset(TP_) == 9  # at once: offset 5 is not both in the gap and acked


def test_a_run_longer_than_the_topics_most_comes_as_several_batches_committed_in_order(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``batch_records_max``: a fetched run of 10 records of a topic capped at 4 is delivered as
    batches of 4, 4 and 2; none of them opens a gap, and the commit moves past a batch only once it
    and every batch before it are acked."""
    run = [record(offset, b"v") for offset in range(5, 15)]
    other = TP("views", 0)

    async def fetched(self: Any, timeout: float) -> Any:
        return {TP_: run, other: [record(1, b"w", topic="views", partition=0)]}, None

    monkeypatch.setattr(faust_aiokafka.Consumer, "_wait_next_records", fetched)
    consumer.app.batched_topics = frozenset({"clicks", "views"})
    consumer.app.batch_records_max = {"clicks": 4}
    records, _ = asyncio.run(consumer._wait_next_records(1.0))
    batches = records[TP_]
    assert [[r.offset for r in batch.value] for batch in batches] == [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14]]
    assert [batch.offset for batch in batches] == [8, 12, 14]
    assert len(records[other]) == 1 and len(records[other][0].value) == 1  # not capped: one batch
    assert consumer.ack(message(4, b"before"))
    previous = 4
    for batch in batches:  # what the fetch loop does for each, in order
        if batch.offset - previous > 1:
            asyncio.run(consumer._add_gap(TP_, previous + 1, batch.offset))
        previous = batch.offset
    assert not consumer._gap[TP_]
    assert consumer.ack(message(8, batches[0].value))
    assert consumer.ack(message(14, batches[2].value))
    assert consumer._new_offset(TP_) == 9  # the second batch is not done yet
    assert consumer.ack(message(12, batches[1].value))
    assert consumer._new_offset(TP_) == 15
    # the next fetch forgets the first offsets of this one's batches (all drained by then)
    run[:] = [record(15, b"v")]
    asyncio.run(consumer._wait_next_records(1.0))
    assert consumer._batch_first_offsets[TP_] == {15: 15}


def test_a_batch_right_after_the_previous_message_leaves_no_gap(consumer: Consumer) -> None:
    deliver(consumer, 4, RecordBatch([record(5, b"a"), record(6, b"b")]))
    assert not consumer._gap[TP_]


def test_acking_a_batch_marks_every_offset_of_its_run(consumer: Consumer) -> None:
    batch = RecordBatch([record(10, b"a"), record(11, b"b"), record(12, b"c")])
    consumer._batch_first_offsets[TP_] = {batch.offset: batch.first_offset}
    assert consumer.ack(message(12, batch.value))
    assert sorted(consumer._acked[TP_]) == [10, 11, 12]
    assert not consumer.ack(message(12, batch.value))  # acked once
    assert sorted(consumer._acked[TP_]) == [10, 11, 12]


def test_a_batch_partly_committed_already_acks_only_the_rest(consumer: Consumer) -> None:
    consumer._committed_offset[TP_] = 11  # e.g. read again after a rebalance
    batch = RecordBatch([record(10, b"a"), record(11, b"b"), record(12, b"c")])
    assert consumer.ack(message(12, batch.value))
    assert sorted(consumer._acked[TP_]) == [11, 12]


def test_a_single_message_acks_only_its_own_offset(consumer: Consumer) -> None:
    assert consumer.ack(message(4, b"one"))
    assert sorted(consumer._acked[TP_]) == [4]


def test_acks_of_events_finished_during_a_revocation_are_forgotten_with_their_staged_state(
    consumer: Consumer,
) -> None:
    """Faust forgets the acks of revoked partitions first, then waits for the events in flight,
    which ack again, and commits; when a commit was already running it skips its own, and the staged
    writes of those events are dropped at the end of the revocation.  Kept, their acks let the
    partition, assigned again and read from its committed offset 10, commit 12 before 10 and 11 were
    processed again (Faust's hole check lets one offset through)."""
    assert consumer.ack(message(10, b"done before"))

    async def app_revocation(revoked: set[TP]) -> None:  # Faust's app handler, its commit skipped
        assert TP_ not in consumer._acked  # Faust forgot the acks first
        consumer.ack(message(11, b"in flight"))

    consumer._on_partitions_revoked = app_revocation  # type: ignore[assignment]
    asyncio.run(consumer.on_partitions_revoked({TP_}))
    consumer._committed_offset[TP_] = 10  # assigned again: the seek back to the committed offset

    assert consumer._new_offset(TP_) is None  # nothing processed since the seek
    assert consumer.ack(message(10, b"again"))
    assert consumer._new_offset(TP_) == 11  # and 11 waits for its own second run


# --- whether the last commit reached the broker (fix 7) --------------------------------------------------


def test_the_last_commit_outcome_is_kept_for_the_stop_line(consumer: Consumer) -> None:
    """Faust logs a failed commit and goes on; the worker's last line needs to know it."""
    app = consumer.app
    assert offsets_committed(app)  # nothing was ever committed: nothing to commit

    async def broker_says(ok: bool) -> bool:
        return ok

    def commit_answering(ok: bool | None) -> bool:
        async def commit(offsets: Any) -> bool:
            if ok is None:
                raise asyncio.CancelledError  # the stop cancelled it on its way
            return await broker_says(ok)

        consumer._thread.commit = commit  # type: ignore[method-assign]
        try:
            return asyncio.run(consumer._commit({TP_: 11}))
        except asyncio.CancelledError:
            return False

    assert commit_answering(True) and offsets_committed(app)
    assert not commit_answering(False) and not offsets_committed(app)
    assert commit_answering(True) and offsets_committed(app)  # a later commit took the offsets on
    commit_answering(None)
    assert not offsets_committed(app)


def test_the_stop_line_claims_a_commit_only_when_there_was_one() -> None:
    assert stop_line(True, False) == "stopped: offsets committed, outputs delivered, tables closed"
    assert "offsets committed before it went away" in stop_line(True, True)
    for silent, why in ((True, "while the broker was unreachable"), (False, "after the last offset commit failed")):
        line = stop_line(False, silent)
        assert line.startswith(f"stopped {why}: ") and "not committed" in line
        assert "offsets committed" not in line


# --- the background commit (fix 8) ---------------------------------------------------------------------


def _background_commit(consumer: Consumer, write_out: Any) -> tuple[bool, list[dict[TP, int]], list[str]]:
    """Runs one background commit whose write-out is ``write_out(steps)``; returns its result, the
    offsets it committed and the steps in order."""
    steps: list[str] = []
    committed: list[dict[TP, int]] = []

    async def commit_offsets(offsets: dict[TP, int], start_new_transaction: bool = True) -> bool:
        steps.append("commit")
        committed.append(dict(offsets))
        return True

    async def write_out_soon() -> None:
        steps.append("write_out")
        await asyncio.sleep(0)
        consumer.ack(message(12, b"acked during the write-out"))  # after the cut: the next commit's
        write_out(steps)

    consumer._commit_offsets = commit_offsets  # type: ignore[method-assign]
    consumer.assignment = lambda: {TP_}  # type: ignore[method-assign]
    consumer.app.write_out_soon = write_out_soon
    ok = asyncio.run(consumer.commit_in_background())
    return ok, committed, steps


def test_the_background_commit_commits_its_cut_after_the_write_out(consumer: Consumer) -> None:
    for offset in (10, 11):
        consumer.ack(message(offset, b"done"))
    ok, committed, steps = _background_commit(consumer, lambda steps: None)
    assert ok and steps == ["write_out", "commit"]
    assert committed == [{TP_: 12}]  # the cut: 10 and 11, not 12 acked meanwhile
    assert consumer._commit_fut is None


def test_a_rebalance_during_the_background_commit_leaves_the_cut_to_the_rebalances_commit(
        consumer: Consumer) -> None:
    for offset in (10, 11):
        consumer.ack(message(offset, b"done"))

    def rebalance_begins(steps: list[str]) -> None:
        consumer.app.rebalancing_count += 1

    ok, committed, steps = _background_commit(consumer, rebalance_begins)
    assert not ok and committed == [] and steps == ["write_out"]
    # its acks were taken: marked done, so the next commit is not stuck at a gap before 12
    assert consumer._committed_offset[TP_] == 12
    assert consumer._new_offset(TP_) == 13


# --- the seek at the end of recovery (fix 9) ----------------------------------------------------------

def _end_recovery(consumer: Consumer, seek_to_committed: Any, gives_up: bool = False) -> FlowControlQueue[str]:
    """Runs Faust's own end of a table recovery (``Recovery.on_recovery_completed``) with the flow
    running, as recovery left it after reading the changelogs, and ``seek_to_committed`` standing for
    the consumer thread's seek; returns a stream buffer that held one record before the seek."""
    app = consumer.app
    buffer: FlowControlQueue[str] = FlowControlQueue(maxsize=10, flow_control=app.flow_control,
                                                      clear_on_resume=True)
    consumer.resume_flow()
    app.flow_control.resume()
    buffer.put_nowait("fetched before the seek")
    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
    consumer.assignment = lambda: {TP_}  # type: ignore[method-assign]
    consumer.resume_partitions = lambda tps: None  # type: ignore[method-assign]
    app._fetcher = SimpleNamespace(maybe_start=lambda: asyncio.sleep(0))
    ending = app.tables.recovery.on_recovery_completed(app.consumer_generation_id)
    if gives_up:  # the seek timed out, or a rebalance cut it short: Faust's recovery loop ends or starts over
        with pytest.raises((ServiceStopped, RebalanceAgain)):
            app.loop.run_until_complete(ending)
    else:
        app.loop.run_until_complete(ending)
    return buffer


def test_the_flow_is_stopped_while_recovery_seeks_back_and_resumed_after(consumer: Consumer) -> None:
    during: list[tuple[bool, bool]] = []

    async def seek_to_committed() -> dict[TP, int]:
        # whether a record fetched now could reach a stream buffer: Faust's getmany yields records
        # only while the flow is active, the conductor queues them only while flow control is
        during.append((consumer.flow_active, consumer.app.flow_control.is_active()))
        return {TP_: 5}

    buffer = _end_recovery(consumer, seek_to_committed)
    assert during == [(False, False)]  # Faust's own order: (True, True), and its resume then cleared what came in
    assert consumer.flow_active and consumer.app.flow_control.is_active()
    assert buffer.empty()  # what was fetched before the seek is read again ...
    assert consumer._read_offset[TP_] == 5  # ... from the committed offset


def test_a_seek_that_does_not_finish_leaves_the_flow_running_as_faust_left_it(consumer: Consumer) -> None:
    consumer.app.conf.broker_request_timeout = 0.05

    async def seek_to_committed() -> dict[TP, int]:
        await asyncio.sleep(10)  # the broker does not answer
        return {}

    buffer = _end_recovery(consumer, seek_to_committed, gives_up=True)
    assert consumer.flow_active and consumer.app.flow_control.is_active()  # not a worker that reads nothing
    assert list(buffer._queue) == ["fetched before the seek"]  # type: ignore[attr-defined]  # nor cleared


def test_a_seek_cut_short_by_a_rebalance_leaves_the_flow_to_the_rebalance(consumer: Consumer) -> None:
    consumer.app.conf.broker_request_timeout = 0.05

    async def seek_to_committed() -> dict[TP, int]:
        consumer.app.consumer_generation_id += 1  # a rebalance began: it stops the flow itself
        await asyncio.sleep(10)
        return {}

    _end_recovery(consumer, seek_to_committed, gives_up=True)
    assert not consumer.flow_active and not consumer.app.flow_control.is_active()


# --- the fetch loop (fix 10) ----------------------------------------------------------------------------

def _drain(consumer: Consumer, values: list[Any], on_message: Any) -> tuple[list[Any], int]:
    """Runs the fetch loop over one fetch of ``values`` (offsets 0, 1, ...) with ``on_message`` as the
    conductor's callback; returns what was delivered and how often ``wait_first`` was used."""
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    delivered: list[Any] = []
    waited = [0]
    plain_wait_first = consumer.wait_first

    async def counting_wait_first(*coros: Any, **kwargs: Any) -> Any:
        waited[0] += 1
        return await plain_wait_first(*coros, **kwargs)

    async def fetch(self: Any, timeout: float) -> Any:  # the consumer thread's fetch, done
        return {TP_: list(values)}, {TP_}

    async def getmany(timeout: float) -> Any:  # Faust's, short of its checks
        with patch.object(faust_aiokafka.Consumer, "_wait_next_records", fetch):
            fetched, _ = await consumer._wait_next_records(timeout)  # the project's: it notes the fetch
        for tp, run in fetched.items():
            for offset, value in enumerate(run):
                yield tp, message(offset, value)
        fetcher._stopped.set()  # one fetch, then the loop ends

    async def callback(msg: Message) -> None:
        await on_message(msg, consumer)
        delivered.append(msg.value)

    consumer.getmany = getmany  # type: ignore[method-assign]
    consumer.callback = callback
    consumer.wait_first = counting_wait_first  # type: ignore[method-assign]
    # on the consumer's loop, where wait_first runs; a delivery left hanging fails the test
    consumer.loop.run_until_complete(asyncio.wait_for(consumer._drain_messages(fetcher), 5))
    return delivered, waited[0]


def test_the_fetch_loop_delivers_a_callback_that_never_waits_without_wait_first(consumer: Consumer) -> None:
    async def queue_it(msg: Message, consumer: Consumer) -> None:
        return None

    delivered, waited = _drain(consumer, [b"a", b"b", b"c"], queue_it)
    assert delivered == [b"a", b"b", b"c"]
    assert waited == 0
    assert consumer._read_offset[TP_] == 2


def test_the_fetch_loop_finishes_a_callback_that_waits_under_wait_first(consumer: Consumer) -> None:
    async def wait_for_room(msg: Message, consumer: Consumer) -> None:
        if msg.value == b"b":  # a full buffer: room comes a moment later
            room = consumer.loop.create_future()
            consumer.loop.call_later(0.01, room.set_result, None)
            await room
            await asyncio.sleep(0)  # and a bare yield

    delivered, waited = _drain(consumer, [b"a", b"b", b"c"], wait_for_room)
    assert delivered == [b"a", b"b", b"c"]
    assert waited == 1


def test_a_flow_suspension_still_interrupts_a_callback_that_waits(consumer: Consumer) -> None:
    """As with Faust's loop: the message whose delivery waits when a rebalance suspends the flow is
    dropped (the rebalance seeks back to the committed offset), and the loop goes on."""
    stopped: list[bytes] = []

    async def wait_forever(msg: Message, consumer: Consumer) -> None:
        if msg.value == b"b":
            consumer.loop.call_later(0.01, consumer.suspend_flow.set)
            try:
                await consumer.loop.create_future()  # never resolved
            except asyncio.CancelledError:  # thrown in by the driver, not a later close by the collector
                stopped.append(msg.value)
                raise

    delivered, waited = _drain(consumer, [b"a", b"b", b"c"], wait_forever)
    assert delivered == [b"a", b"c"]
    assert stopped == [b"b"]  # cancelled, not left hanging
    assert waited == 1


def test_resumed_throws_what_the_awaited_future_raised_into_the_coroutine() -> None:
    async def main() -> str:
        failing = asyncio.get_running_loop().create_future()

        async def body() -> str:
            try:
                await failing
            except KeyError:
                return "caught"
            return "not raised"

        coro = body()
        waiting_on = coro.send(None)
        assert waiting_on is failing
        task = asyncio.ensure_future(resumed(coro, waiting_on))
        failing.set_exception(KeyError("x"))
        return await task

    assert asyncio.run(main()) == "caught"


def test_the_fetch_loop_lets_the_loop_turn_between_two_deliveries(consumer: Consumer) -> None:
    """Delivering a whole fetch in one burst starved the streams: after a kill -9 and restart the
    worker's watermark stayed behind (tests/integration/test_crash.py).  So each delivery is still
    followed by a turn of the loop, as under wait_first."""
    order: list[str] = []

    async def note(msg: Message, consumer: Consumer) -> None:
        order.append(f"delivered {msg.value!r}")

    async def other_task() -> None:
        while True:
            order.append("turn")
            await asyncio.sleep(0)

    ticking = consumer.loop.create_task(other_task())
    _drain(consumer, [b"a", b"b", b"c"], note)
    ticking.cancel()
    deliveries = [i for i, what in enumerate(order) if what.startswith("delivered")]
    assert len(deliveries) == 3
    assert all(later - earlier > 1 for earlier, later in itertools.pairwise(deliveries))


def _thread_seeks_to(consumer: Consumer, committed: dict[TP, int | None]) -> list[TP]:
    """Makes the consumer thread's seek return ``committed`` (``None``: no committed offset), as
    aiokafka does after seeking; returns the list of partitions then sent to offset 0 (not to the
    broker's "beginning", which the embedded broker can answer with a later offset)."""
    to_beginning: list[TP] = []

    async def seek_to_committed() -> dict[TP, int | None]:
        return committed

    async def seek_wait(offsets: dict[TP, int]) -> None:  # (on the consumer thread)
        assert set(offsets.values()) == {0}, offsets
        to_beginning.extend(offsets)

    async def seek_to_beginning(*tps: TP) -> None:
        raise AssertionError("seek_to_beginning asks the broker for its earliest offset")

    def seek(tp: TP, offset: int) -> None:
        raise AssertionError("a seek from the main loop: the aiokafka consumer belongs to its thread's loop")

    consumer._thread = SimpleNamespace(seek_to_committed=seek_to_committed,  # type: ignore[assignment]
                                       seek_wait=seek_wait, seek=seek,
                                       seek_to_beginning=seek_to_beginning)
    return to_beginning


async def _seek_back(consumer: Consumer) -> None:
    """A seek back to the committed offsets, and the resume that follows it."""
    await consumer.perform_seek()
    consumer.app.flow_control.resume()
    consumer.resume_flow()


def test_the_fetch_loop_drops_what_it_still_holds_from_before_a_seek(consumer: Consumer) -> None:
    """Fix 11: a seek back to the committed offset (1) finishes while ``c`` (2) is delivered, and the
    flow is resumed; the rest of that fetch is not delivered, nor marked read, so that the records
    read again from offset 1 are not dropped as read already."""
    _thread_seeks_to(consumer, {TP_: 1})

    async def seek_meanwhile(msg: Message, consumer: Consumer) -> None:
        if msg.value == b"c":
            await _seek_back(consumer)

    delivered, _ = _drain(consumer, [b"a", b"b", b"c", b"d", b"e"], seek_meanwhile)
    assert delivered == [b"a", b"b", b"c"]  # d and e come again after the seek
    assert consumer._read_offset[TP_] == 1  # the seek's: not 2 (c, delivered during it), nor 4


def test_the_fetch_loop_drops_what_it_holds_from_before_a_seek_during_a_delivery_that_waits(
        consumer: Consumer) -> None:
    """Fix 11 under ``wait_first``: ``c``'s delivery waits (a full buffer), and the seek finishes
    while it does."""
    _thread_seeks_to(consumer, {TP_: 1})

    async def wait_then_seek(msg: Message, consumer: Consumer) -> None:
        if msg.value == b"c":
            room = consumer.loop.create_future()
            consumer.loop.call_later(0.01, room.set_result, None)
            await room
            await _seek_back(consumer)

    delivered, waited = _drain(consumer, [b"a", b"b", b"c", b"d", b"e"], wait_then_seek)
    assert waited == 1
    assert delivered == [b"a", b"b", b"c"]
    assert consumer._read_offset[TP_] == 1


def test_a_seek_from_recovery_while_a_delivery_waits_drops_that_delivery_and_the_rest(
        consumer: Consumer) -> None:
    """The case of production: the seek runs in another task (recovery's) while ``c``'s delivery
    waits.  Stopping the flow suspends it, so ``c`` is dropped as with a rebalance, and nothing
    after it is delivered or marked read."""
    _thread_seeks_to(consumer, {TP_: 1})
    cancelled: list[bytes] = []

    async def wait_while_recovery_seeks(msg: Message, consumer: Consumer) -> None:
        if msg.value == b"c":
            consumer.loop.call_later(0.01, lambda: consumer.loop.create_task(_seek_back(consumer)))
            try:
                await consumer.loop.create_future()  # room never comes before the seek
            except asyncio.CancelledError:
                cancelled.append(msg.value)
                raise

    delivered, waited = _drain(consumer, [b"a", b"b", b"c", b"d", b"e"], wait_while_recovery_seeks)
    assert waited == 1 and cancelled == [b"c"]
    assert delivered == [b"a", b"b"]
    assert consumer._read_offset[TP_] == 1


def test_the_fetch_loop_drops_what_it_holds_from_before_a_seek_during_its_periodic_commit(
        consumer: Consumer) -> None:
    _thread_seeks_to(consumer, {TP_: 1})

    async def commit(*args: Any, **kwargs: Any) -> bool:
        await _seek_back(consumer)
        return True

    async def ack_c(msg: Message, consumer: Consumer) -> None:
        if msg.value == b"c":
            consumer._n_acked = 1  # the commit is due before the next delivery

    consumer._commit_every = 1
    consumer.commit = commit  # type: ignore[method-assign]
    delivered, _ = _drain(consumer, [b"a", b"b", b"c", b"d", b"e"], ack_c)
    assert delivered == [b"a", b"b", b"c"]
    assert consumer._read_offset[TP_] == 1


def test_a_partition_the_seek_did_not_move_is_delivered_on(consumer: Consumer) -> None:
    """Fix 11 drops only what the seek reads again: a partition without a committed offset that is
    not sent to the beginning (a changelog, or another reset policy) stays where it was."""
    _thread_seeks_to(consumer, {TP_: None})
    consumer.app.conf.consumer_auto_offset_reset = "latest"

    async def seek_meanwhile(msg: Message, consumer: Consumer) -> None:
        if msg.value == b"c":
            await _seek_back(consumer)

    delivered, _ = _drain(consumer, [b"a", b"b", b"c", b"d", b"e"], seek_meanwhile)
    assert delivered == [b"a", b"b", b"c", b"d", b"e"]  # nothing would read d and e again
    assert consumer._read_offset[TP_] == 4


def test_the_seek_notes_the_partitions_it_moves_and_the_next_fetch_forgets_them(consumer: Consumer) -> None:
    other, changelog, fresh = TP("carts", 0), TP("app-profiles-changelog", 0), TP("clicks", 4)
    to_beginning = _thread_seeks_to(consumer, {TP_: 7, other: None, changelog: None, fresh: 0})
    consumer.loop.run_until_complete(consumer.perform_seek())
    assert sorted(to_beginning) == [other, fresh]  # fix 2: no committed offset, ``earliest``
    assert consumer._sought == {TP_, other, fresh}  # not the changelog: recovery reads it from its own offsets

    async def fetch(self: Any, timeout: float) -> Any:
        return {}, set()

    with patch.object(faust_aiokafka.Consumer, "_wait_next_records", fetch):
        consumer.loop.run_until_complete(consumer._wait_next_records(1.0))
    assert consumer._sought == set()


def test_the_fetch_wait_grows_after_a_quiet_second_and_the_first_records_bring_the_short_one_back(
        consumer: Consumer) -> None:
    consumer.app.fetch_max_wait_ms, consumer.app.fetch_idle_wait_ms = 20, 200
    fetched: list[Any] = []

    class Fetcher:
        _closed = False
        _fetch_max_wait_ms = 999
        _subscriptions = SimpleNamespace(fetch_context=contextlib.nullcontext)

        async def fetched_records(self, partitions: Any, timeout: Any = None, max_records: Any = None) -> Any:
            return fetched.pop(0) if fetched else {}

    fetcher = Fetcher()
    aiokafka_consumer = SimpleNamespace(_closed=False, _fetcher=fetcher)

    def fetch_at(now: float) -> None:
        with patch("streams.consumer.time.monotonic", lambda: now):
            asyncio.run(consumer._thread._fetch_records(aiokafka_consumer, {TP_}, timeout=1.0))

    fetch_at(100.0)  # the first fetch: quiet from here on
    assert fetcher._fetch_max_wait_ms == 20
    fetch_at(100.5)
    assert fetcher._fetch_max_wait_ms == 20  # quiet for less than IDLE_AFTER_S
    fetch_at(100.0 + IDLE_AFTER_S)
    assert fetcher._fetch_max_wait_ms == 200
    fetched.append({TP_: [message(1, b"x")]})
    fetch_at(103.0)
    assert fetcher._fetch_max_wait_ms == 20  # records: the short wait at once
    consumer.app.fetch_idle_wait_ms = 0  # off
    fetch_at(110.0)
    assert fetcher._fetch_max_wait_ms == 20


def test_the_request_built_right_after_the_first_records_has_the_short_wait(consumer: Consumer) -> None:
    """Handing records out wakes aiokafka's request loop; it must build its next request with the
    short wait, not the idle one (else the next hop's records wait the idle wait)."""
    consumer.app.fetch_max_wait_ms = 20
    seen: list[int] = []

    class Fetcher:
        _closed = False
        _fetch_max_wait_ms = 200  # idle
        _subscriptions = SimpleNamespace(fetch_context=contextlib.nullcontext)

        async def fetched_records(self, partitions: Any, timeout: Any = None, max_records: Any = None) -> Any:
            asyncio.get_running_loop().call_soon(lambda: seen.append(self._fetch_max_wait_ms))  # the request loop
            return {TP_: [message(1, b"x")]}

    aiokafka_consumer = SimpleNamespace(_closed=False, _fetcher=Fetcher())

    async def fetch_then_let_the_loop_turn() -> None:
        await consumer._thread._fetch_records(aiokafka_consumer, {TP_}, timeout=1.0)
        await asyncio.sleep(0)

    asyncio.run(fetch_then_let_the_loop_turn())
    assert seen == [20]
