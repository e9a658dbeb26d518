"""Where Faust's per-message time goes, and the two fixes mailpulse applies.

Measured on a bare Faust pass-through (2 cores, embedded broker): the main thread is *busy*, not idle;
a stack sampler only sees it in ``select`` because that is where it drops the GIL.  cProfile shows
three event-loop turns, four new tasks and an ``asyncio.wait`` per message, all from one line of
``Consumer._drain_messages``::

    await self.wait_first(callback(message), self.suspend_flow.wait())

``wait_first`` wraps both awaitables in tasks so a rebalance (``suspend_flow``) can interrupt a
delivery blocked on a full stream buffer.  Nearly every delivery completes without blocking, so
:class:`FastDrainConsumer` first runs the delivery coroutine one step inline; only if it really
suspends does the rest of it go through ``wait_first`` exactly as before (:class:`_Resume` hands
the half-run coroutine to a task).  With the buffer now filling up to 100 messages per loop turn,
the Cython stream iterator's quick path (``cython_optimizations=True``, off by default in
faust-streaming) takes values straight from the queue instead of awaiting it.

Everything else (generation checks, gap tracking, commit-every, cancellation) is Faust's code,
kept line for line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from mode import Service


class _Resume:
    """Awaitable that continues a coroutine which has already run its first step and yielded
    ``pending`` (the future it waits on).  A task driving it sees exactly what it would have seen
    driving the coroutine from the start."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # cancellation and errors go into the coroutine
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class ShortFetchWaitThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust hard-codes ``fetch_max_wait_ms=1500``.  A broker that answers a fetch only when that
    wait is over, not as soon as data arrives (the embedded one does), then adds up to 1.5 s per hop;
    measured here: p50 0.56 s at 1k events/s.  The wait comes from :attr:`App.fetch_max_wait_ms`."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = getattr(self.consumer.app, "fetch_max_wait_ms", 1500)
        return consumer


class FastDrainConsumer(faust_aiokafka.Consumer):
    """aiokafka consumer whose drain loop delivers without a task per message (see module doc)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ShortFetchWaitThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs in workers
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        suspend_flow = self.suspend_flow

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
                ait: AsyncIterator[tuple[TP, Message]] = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            delivery = cast(Coroutine[Any, Any, Any], callback(message))
                            if suspend_flow.is_set():
                                await self.wait_first(delivery, suspend_flow.wait())
                            else:
                                try:
                                    pending = delivery.send(None)
                                except StopIteration:
                                    pass  # delivered without blocking: the common case
                                else:
                                    await self.wait_first(_Resume(delivery, pending), suspend_flow.wait())
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class FastTransport(faust_aiokafka.Transport):
    """The ``kafka://`` transport with :class:`FastDrainConsumer`."""

    Consumer = FastDrainConsumer


class App(faust.App):
    """faust.App on :class:`FastTransport`; everything else is stock Faust."""

    #: Longest a fetch waits for data at the broker (aiokafka's ``fetch_max_wait_ms``).
    fetch_max_wait_ms: int = 1500

    def _new_transport(self) -> Any:
        url = self.conf.broker_consumer[0]
        if url.scheme != "kafka":
            return super()._new_transport()
        return FastTransport(self.conf.broker_consumer, self)


__all__ = ["App", "FastDrainConsumer", "FastTransport"]
