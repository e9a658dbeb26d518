"""The Faust consumer mailpulse runs on: stock Faust (``kafka://``, aiokafka) with its fixes.

1. Faust hard-codes aiokafka's ``fetch_max_wait_ms=1500``.  A broker that answers a fetch only when
   that wait is over rather than as soon as data arrives (the embedded one does) then adds up to
   1.5 s per hop: measured p50 0.56 s from event to profile at 1k events/s.  Here the wait comes
   from ``MAILPULSE_FETCH_MAX_WAIT_MS`` (:attr:`App.fetch_max_wait_ms`).
2. After a rebalance Faust seeks each partition back to its committed offset so that whatever the
   rebalance dropped from the stream buffers is read again; aiokafka skips that seek where no offset
   (or 0) is committed yet, so those messages were skipped.  Such partitions go back to offset 0
   (:data:`streams.broker.FIRST_OFFSET`: the embedded broker's "earliest" can be a later offset).

3. Where Faust spends its time: per message, its fetch loop runs ``wait_first(callback(message),
   suspend_flow.wait())`` (two tasks and an ``asyncio.wait``), the conductor decodes and queues an
   event, the stream wakes up for it and acks it.  For the topics in :attr:`App.batched_topics`
   each fetched run of one partition is delivered as one message (:class:`RecordBatch`) instead:
   the machinery runs once per run, not per record, with its semantics unchanged (a batch is
   delivered, acked and committed as a whole; a rebalance drops or keeps it as a whole).  A topic
   in :attr:`App.batch_records_max` has its runs cut into batches of at most that many records.

4. At a revocation Faust forgets the acked offsets of the revoked partitions, lets the events in
   flight finish (``stream_wait_empty``; they ack again) and commits: that commit writes every
   staged table value first (:class:`streams.output.FlushBeforeCommit`).  When a commit was
   already running, Faust waited for it and skipped its own (since fix 8 :meth:`Consumer.commit`
   commits after waiting); the values staged since were then dropped at the end of the revocation
   (:mod:`streams.app`) while the acks of the events in flight stayed.
   A partition assigned again then had acks for work thrown away: it could commit past those
   events before it had processed them again since the seek back to its committed offset, and a
   crash or another rebalance in between lost them.  Here the acks of revoked partitions left after
   the revocation are forgotten too (logged: "Forgot N offsets acked while partitions were revoked").

5. aiokafka's consumer ``stop`` raises ``CancelledError`` when a fetch request was still pending
   (aiokafka issue 647: its fetcher cancels and awaits those tasks without catching it).  With the
   broker gone that is every stop: the consumer thread died before it told Faust it had stopped, and
   Faust waited out its 60 s shutdown timeout, longer than an orchestrator's grace period, so a stop
   during a broker outage became a kill and the next start rebuilt the state folder.  The thread now
   takes that error as the end of the consumer and closes its client.

6. Each message notes when the fetch that brought it returned (``time_in``, monotonic seconds), so
   the agents can report their side of the latency (``mailpulse_record_seconds``).  Faust's monitor
   stamps ``time_in`` again when a stream takes the message from its buffer; :class:`FetchTimeMonitor`
   keeps the earlier stamp, so the time a record waited in the buffers counts.

7. Faust's commit logs a failure and goes on (and marks the offsets as committed all the same), so a
   stop cannot tell from Faust whether its final commit reached the broker.  :attr:`Consumer.
   last_commit_ok` keeps the outcome of the last commit sent (``False`` while one is in flight), and
   the worker's last line says from it whether the offsets were committed.

8. Faust's periodic commit runs the commit sensor (:class:`streams.output.FlushBeforeCommit`), which
   holds the event loop while the broker acknowledges every output and changelog record sent since
   the last commit: measured 46 ms per commit at 1k events/s and 176 ms at 5k, every 2.8 s, time in
   which no record is processed (a worker-side p99 of 50 ms at 1k).  The periodic commit here
   (:meth:`Consumer.commit_in_background`) takes a cut instead (the offsets acked so far, and the
   values staged so far, which are held and read back), waits for the outputs sent before it while
   the agents go on, writes the held values, waits for their changelog records, then commits the
   cut's offsets (:meth:`streams.app.Pipeline.write_out_soon`); when a rebalance began meanwhile it
   leaves them to the rebalance's commit.  The other commits (a rebalance, a stop,
   ``broker_commit_every``) stay as they were, and wait for a background commit in flight first,
   then commit everything themselves (Faust's own skipped its commit then: see fix 4).

9. When a worker's table recovery ends, Faust resumes the stream partitions, seeks them to their
   committed offsets and then resumes the flow, whose resume clears every stream buffer.  But the
   flow is already running then (recovery resumed it to read the changelogs), so records fetched
   after the seek could be put in a buffer before that clear: the clear dropped them, and nothing
   read them again, since the seek was already done.  They were lost, and the partition's commit
   stayed behind them for good (its lag never went away).  Found with a fetch loop that delivers a
   fetch in one burst, which lost records this way after every restart in the ``kill -9`` test; the
   stock loop, slower, lost one now and then (the earlier "1 event lost now and then" of the crash
   tests fits it).  Here :meth:`Consumer.perform_seek` stops the flow before it seeks: whatever is
   fetched from then on is dropped by Faust's fetch loop and read again, and every caller (the end
   of recovery; the fetch loop itself, with the flow already stopped) resumes the flow, and so
   clears the buffers, right after a seek that finished.  A seek that did not finish restores the
   flow as Faust left it.

10. The fetch loop's ``wait_first(callback(message), suspend_flow.wait())`` (fix 3) costs ~23 µs per
   delivered message: four tasks and an ``asyncio.wait``, even though the callback (the conductor
   queuing the message for its streams) almost always finishes without waiting.  Here the callback
   is started at once; when it finishes in that first step, it was delivered exactly as
   ``wait_first`` would have delivered it (whose tasks also run it first, before the suspension's
   wait is looked at).  When it has to wait (a full stream buffer, flow control), the rest of it
   runs under ``wait_first`` as before, so a rebalance's flow suspension still interrupts it
   (:func:`resumed` continues the started coroutine as a task would).  The loop still turns once
   after each delivery (under ``wait_first`` it turned about three times), so the streams take
   what it delivers as before.  (A first version that delivered a fetch in one burst, 100 messages
   per turn, is what showed the loss fix 9 closes; this version needed fix 9 too: a fresh-clone CI
   run lost 6 records after a restart without it.)  Left as it is: a driver cancelled before its
   first step (only when the loop is torn down at a stop) leaves the started callback to be closed
   by the garbage collector instead of cancelled.

11. A seek back to the committed offsets resets Faust's read offsets, but its fetch loop goes on
   with the fetch it was delivering.  Once the flow ran again it delivered that fetch's remaining
   records, from before the seek, and set the read offsets to them, so that the same records read
   again after the seek were dropped as already read (and a gap computed from the new read offset
   marked the records between as done).  That needed a seek that finishes while a delivery waits,
   or during the loop's periodic commit: rare, but a loss.  Here the consumer notes which partitions
   a finished seek moved (:meth:`Consumer.seek_to_committed`: those with a committed offset, and
   those fix 2 sends to the beginning), and the loop neither delivers nor marks as read what a fetch
   from before holds for them: the seek reads it again.  A partition the seek did not move (a
   changelog read by a standby, say) is delivered as before, since nothing would read it again.

12. A worker with nothing to read still fetched every ``fetch_max_wait_ms`` (20 ms): on the embedded
   broker, which answers a fetch only when its wait is over, an idle worker took 0.078 of a core and
   the broker 0.155 answering it (each fetch names all of the worker's ~48 partitions).  After
   :data:`IDLE_AFTER_S` without a record the fetches wait :attr:`App.fetch_idle_wait_ms` instead,
   and a fetch that returns records brings the short wait back before aiokafka builds its next
   request (:meth:`ShortFetchWaitThread._fetch_records`).  The cost: the first event after a quiet second waits up to
   that much longer at its first hop; under traffic (or an upstream heartbeat) nothing changes.

Tried and not kept: delivering each message inline instead of through ``wait_first`` made a bare
pass-through ~40% faster, but lost events when a worker joined or left mid-stream
(tests/integration/test_crash.py): the flow suspension at a rebalance no longer interrupted it.
Fix 10 keeps that interruption: only a callback that never waits skips ``wait_first``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, cast

import faust
from faust.sensors import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import notify

from streams.broker import FIRST_OFFSET

#: A consumer that read nothing for this long fetches with the idle wait (fix 12).
IDLE_AFTER_S = 1.0


class RecordBatch:
    """A fetched run of one partition's records, delivered as one message: ``value`` is the list of
    aiokafka records, ``offset`` the last one's, so acking it acks the run (see :meth:`Consumer.ack`)."""

    __slots__ = (
        "checksum",
        "first_offset",
        "headers",
        "key",
        "offset",
        "partition",
        "serialized_key_size",
        "serialized_value_size",
        "timestamp",
        "timestamp_type",
        "topic",
        "value",
    )

    def __init__(self, records: list[Any]) -> None:
        last = records[-1]
        self.topic, self.partition, self.offset = last.topic, last.partition, last.offset
        self.first_offset: int = records[0].offset
        self.timestamp, self.timestamp_type = last.timestamp, last.timestamp_type
        self.headers: list[Any] = []
        self.key = None
        self.value = records
        self.checksum = None
        self.serialized_key_size = 0
        self.serialized_value_size = sum(r.serialized_value_size for r in records)


async def resumed(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    """Runs a coroutine that was started by hand (``coro.send(None)``) and is now ``waiting_on`` what
    it yielded, to its end, as an asyncio task would have: a future's outcome is sent or thrown in, a
    bare yield gives the loop one turn, and a cancellation reaches the future it waits on and then
    the coroutine (fix 10)."""
    while True:
        try:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                waiting_on._asyncio_future_blocking = False  # as Task.__step does before it waits
                await waiting_on  # its result is read again inside the coroutine, as after a task's wake-up
        except BaseException as exc:  # whatever the future raised goes into the coroutine
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            waiting_on = coro.send(None)
        except StopIteration as stop:
            return stop.value


class ShortFetchWaitThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The aiokafka consumer thread, with the fetch wait of :attr:`App.fetch_max_wait_ms`."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = getattr(self.consumer.app, "fetch_max_wait_ms", 1500)
        return consumer

    #: When a fetch last returned records (monotonic seconds; fix 12).
    _records_at: float = 0.0

    async def _fetch_records(self, consumer: Any, active_partitions: Any, timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        """Faust's fetch (Faust asks with a 1 s timeout), then fix 12: the wait of the request aiokafka
        builds next, :attr:`App.fetch_idle_wait_ms` once no record came for :data:`IDLE_AFTER_S`,
        else the short one.  Set here, in the step that hands records out: their hand-out woke the
        request loop, which runs only after this step (set from the main loop, the short wait reached
        the request after that one, and the next hop's records waited the idle wait too)."""
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)
        app, now = self.consumer.app, time.monotonic()
        if records or not self._records_at:
            self._records_at = now
        short: int = getattr(app, "fetch_max_wait_ms", 1500)
        idle: int = getattr(app, "fetch_idle_wait_ms", 0)
        quiet = idle > short and now - self._records_at >= IDLE_AFTER_S
        consumer._fetcher._fetch_max_wait_ms = idle if quiet else short  # read by each request it builds
        return records

    async def on_thread_stop(self) -> None:
        """Fix 5 of the module doc."""
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this stop itself was cancelled
            logging.getLogger(__name__).warning("the consumer stopped with a fetch request still pending")
            client = getattr(self._consumer, "_client", None)
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()


class Consumer(faust_aiokafka.Consumer):
    #: The outcome of the last offset commit sent to the broker (fix 7): ``None`` before the first,
    #: ``False`` while one is in flight, after one failed, or when one was cancelled.
    last_commit_ok: bool | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per partition, the first offset of each batch of the last fetch, by its last offset (fix 3).
        self._batch_first_offsets: dict[TP, dict[int, int]] = {}
        #: Partitions a finished seek moved since the fetch being delivered returned (fix 11).
        self._sought: set[TP] = set()
        self._fetched_at = time.monotonic()  # when the last fetch returned records (fix 6)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ShortFetchWaitThread(self, loop=self.loop, beacon=self.beacon)

    @Service.task
    async def _commit_handler(self) -> None:
        """Fix 8 of the module doc: Faust's periodic commit, in the background."""
        interval = self.commit_interval
        await self.sleep(interval)
        async for _ in self.itertimer(interval, name="commit"):
            await self.commit_in_background()

    async def commit_in_background(self) -> bool:
        """Fix 8 of the module doc.  Falls back to Faust's commit while the app rebalances or has no
        :attr:`App.write_out_soon`."""
        app = self.app
        write_out_soon = getattr(app, "write_out_soon", None)
        if write_out_soon is None or app.client_only or app.rebalancing:
            return await self.commit()
        if self._commit_fut is not None:  # another commit is running: it takes these acks too
            return False
        self._commit_fut = asyncio.Future(loop=self.loop)
        try:
            rebalances = app.rebalancing_count
            offsets = self._filter_committable_offsets(self._filter_tps_with_pending_acks())  # the cut...
            await write_out_soon()  # ... with the staged values (taken before its first wait)
            if not offsets:
                return False
            if app.rebalancing or app.rebalancing_count != rebalances:
                # A rebalance began meanwhile and may have dropped held values (those of lost
                # partitions, and with them the write of the rest stopped): the cut's offsets are not
                # committed.  Its acks were taken, so they are marked done here as Faust marks a
                # failed commit's; the rebalance's commit, or the next one, commits past them once
                # the values still held are written.
                assigned = self.assignment()
                self._committed_offset.update({tp: offset for tp, offset in offsets.items() if tp in assigned})
                return False
            await self._handle_attached(offsets)
            return bool(await self._commit_offsets(offsets))
        finally:
            fut, self._commit_fut = self._commit_fut, None
            notify(fut)

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Faust's commit, after a background commit in flight (fix 8) has finished: Faust would skip
        its own then, and leave what was acked since uncommitted at a stop."""
        app = cast("App", self.app)
        app.commit_waiting = getattr(app, "commit_waiting", 0) + 1  # a background commit sends its clocks now
        try:
            while (running := self._commit_fut) is not None:
                await asyncio.wait((running,))  # without raising its errors here; a cancel of ours does raise
        finally:
            app.commit_waiting -= 1
        return bool(await super().commit(topics, start_new_transaction))

    async def _commit(self, offsets: Any) -> bool:
        """Fix 7 of the module doc."""
        self.last_commit_ok = False
        ok = bool(await super()._commit(offsets))
        self.last_commit_ok = ok
        return ok

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Fix 4 of the module doc: after the revocation (in-flight events included), the acks of the
        revoked partitions are forgotten, as their staged state was; they are read again."""
        await super().on_partitions_revoked(revoked)
        with ack_lock:
            forgotten = sum(len(self._acked.get(tp) or ()) for tp in revoked)
            if forgotten:
                self.log.info("Forgot %d offsets acked while partitions were revoked: read again", forgotten)
            for tp in revoked:
                self._acked.pop(tp, None)
                self._acked_index.pop(tp, None)
                self._gap.pop(tp, None)
                self._read_offset.pop(tp, None)
                self._batch_first_offsets.pop(tp, None)

    async def perform_seek(self) -> None:
        """Fix 9 of the module doc: the flow is stopped before the seek (the caller resumes it, and
        so clears the stream buffers), so that nothing fetched after the seek is put in a buffer
        that the resume then clears.  A seek that does not finish (it timed out: the broker did not
        answer) leaves the flow running again, as Faust left it, unless a rebalance began meanwhile
        (it stopped the flow itself) or the worker stops: Faust's recovery then gives up without
        resuming it, and a stopped flow would be a worker that looks alive and reads nothing."""
        app = self.app
        stopped_here = self.flow_active
        generation = app.consumer_generation_id
        if stopped_here:
            self.stop_flow()
            app.flow_control.suspend()
        try:
            await super().perform_seek()
        except BaseException:
            if stopped_here and not (app.rebalancing or app.consumer_generation_id != generation
                                     or app.should_stop or self.should_stop):
                self.log.error("The seek to the committed offsets did not finish; reading goes on from where it is")
                self.resume_flow()
                flow_control = app.flow_control
                flow_control._suspend.clear()  # what resume() does, without clearing the stream buffers
                flow_control._resume.set()
            raise

    async def seek_to_committed(self) -> Any:
        """Fix 2 of the module doc: partitions without a committed offset start over (``earliest``).
        Notes the partitions the seek moved, for fix 11.  The note is reset by the next fetch, which
        is sound because Faust seeks here only from :meth:`perform_seek`, with the flow stopped (fix
        9): a fetch begun before the seek and answered after it is dropped, by ``getmany`` while the
        flow is stopped or the generation changed, or by aiokafka's fetcher once its position moved
        (``fetcher.py``, the position check on each fetched partition), so it cannot reset the note
        and have its records delivered."""
        committed = await super().seek_to_committed()
        moved = {tp for tp, offset in committed.items() if offset and offset > 0}  # as aiokafka seeks
        if self.app.conf.consumer_auto_offset_reset == "earliest":
            # (changelog partitions are read by table recovery from offsets of its own)
            uncommitted = [tp for tp, offset in committed.items()
                           if (not offset or offset <= 0) and not tp.topic.endswith("-changelog")]
            if uncommitted:  # offset 0, not the broker's "beginning": see FIRST_OFFSET (Faust's
                # seek_wait seeks on the consumer thread, whose event loop the aiokafka consumer uses)
                await self.seek_wait({tp: FIRST_OFFSET for tp in uncommitted})
                moved.update(uncommitted)
        self._sought.update(moved)  # what the fetch loop still holds for these is read again (fix 11)
        return committed

    # --- batched delivery (fix 3) -------------------------------------------------------------------

    def _to_message(self, tp: TP, record: Any) -> Any:
        message = super()._to_message(tp, record)
        message.time_in = self._fetched_at  # fix 6
        return message

    async def _wait_next_records(self, timeout: float) -> Any:
        records, active_partitions = await super()._wait_next_records(timeout)
        self._sought = set()  # fix 11: this fetch is from after every seek so far
        if records:
            self._fetched_at = time.monotonic()
        batched: frozenset[str] = getattr(self.app, "batched_topics", frozenset())
        if records and batched:
            # the batches of the previous fetch were all drained (or dropped) before this one
            self._batch_first_offsets.clear()
            most_of: Mapping[str, int] = getattr(self.app, "batch_records_max", {})
            runs: dict[TP, list[Any]] = dict(records)
            for tp, run in runs.items():
                if run and tp.topic in batched:
                    most = most_of.get(tp.topic) or len(run)
                    batches = [RecordBatch(run[start:start + most]) for start in range(0, len(run), most)]
                    runs[tp] = batches
                    self._batch_first_offsets[tp] = {batch.offset: batch.first_offset for batch in batches}
            records = runs
        return records, active_partitions

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust sees a gap from the previous message's offset to this one's (both ends included); for
        a batch only what lies before its first record is one (the rest is the batch, acked with it).
        A gap that took in the first record too would put its offset twice in the acked list, and
        the commit would then stop short of the batch until the next one."""
        first = self._batch_first_offsets.get(tp, {}).get(offset_to)
        if first is not None:
            offset_to = min(offset_to, first - 1)
        if offset_from <= offset_to:
            await super()._add_gap(tp, offset_from, offset_to)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - run by Faust's Fetcher
        """Faust's fetch loop (faust.transport.consumer.Consumer._drain_messages, faust-streaming
        0.15) with two changes: fix 10, a callback that finishes in its first step skips
        ``wait_first``; fix 11, nothing a seek since the fetch moved back is delivered or marked read."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                # Sleeping because sometimes getmany is called in a loop never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        sought = self._sought  # (a new set per fetch)
                        if tp in sought:
                            continue  # fetched before a seek that moved the partition back (fix 11)
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):  # a gap in the offsets
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                                if tp in sought:
                                    continue
                            delivering: Any = callback(message)  # the conductor's on_message: a coroutine
                            try:
                                waiting_on = delivering.send(None)
                            except StopIteration:  # delivered in its first step, as wait_first's task would have
                                await sleep(0)  # a turn of the loop per message: the streams keep up
                            else:
                                await self.wait_first(resumed(delivering, waiting_on), self.suspend_flow.wait())
                            if tp not in sought:
                                set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:  # already stopping
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:  # the exception's class only: its text may quote a key (an e-mail) or a value
            self.log.error("Drain messages raised %s", type(exc).__name__)
            self.log.debug("Drain messages raised", exc_info=exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    def ack(self, message: Any) -> bool:
        """Acks a batch's whole run of offsets: the commit then moves exactly as with one message per
        record (Faust's ack marks only the message's own offset)."""
        value = message.value
        first = value[0].offset if isinstance(value, list) and value else None
        with ack_lock:
            acked = super().ack(message)
            if acked and first is not None and first < message.offset:
                tp = message.tp
                committed = self._committed_offset[tp]
                start = first if committed is None else max(first, committed)
                index, acked_for_tp = self._acked_index[tp], self._acked[tp]
                for offset in range(start, message.offset):
                    if offset not in index:
                        index.add(offset)
                        acked_for_tp.append(offset)
            return acked


def offsets_committed(app: faust.App) -> bool:
    """Whether the last offset commit of ``app``'s consumer reached the broker (fix 7); ``True``
    when it never had anything to commit."""
    consumer = getattr(app, "_consumer", None)  # not created: nothing was read
    return getattr(consumer, "last_commit_ok", None) is not False


class FetchTimeMonitor(Monitor):
    """Faust's monitor, keeping the fetch time :class:`Consumer` stamped on a message (fix 6)."""

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        fetched = message.time_in
        super().on_message_in(tp, offset, message)
        if fetched is not None:
            message.time_in = fetched


class Transport(faust_aiokafka.Transport):
    """The ``kafka://`` transport with :class:`Consumer`."""

    Consumer = Consumer


class App(faust.App):
    """faust.App on :class:`Transport`; everything else is stock Faust."""

    #: Longest a fetch waits for data at the broker (aiokafka's ``fetch_max_wait_ms``).
    fetch_max_wait_ms: int = 1500
    #: The fetch wait once nothing was read for :data:`IDLE_AFTER_S` (fix 12; not above
    #: ``fetch_max_wait_ms``: off).
    fetch_idle_wait_ms: int = 0
    #: Topics whose fetched runs are delivered as one :class:`RecordBatch` each (fix 3).
    batched_topics: frozenset[str] = frozenset()
    #: The most records one batch of a topic holds; a longer run is delivered in several (fix 3).
    batch_records_max: Mapping[str, int] = {}
    #: What a background commit does before its offsets are committed (fix 8; None: Faust's commit).
    write_out_soon: Callable[[], Awaitable[None]] | None = None
    #: Commits waiting for a background commit in flight to finish (:meth:`Consumer.commit`).
    commit_waiting: int = 0
    #: Tasks started with the app, before its first table recovery (Faust starts its timers and
    #: tasks only once that is done, which can take minutes).
    early_tasks: tuple[Callable[[], Awaitable[None]], ...] = ()

    async def on_start(self) -> None:
        await super().on_start()
        for task in self.early_tasks:
            self.add_future(task())

    def _new_transport(self) -> Any:
        url = self.conf.broker_consumer[0]
        if url.scheme != "kafka":
            return super()._new_transport()
        return Transport(self.conf.broker_consumer, self)
