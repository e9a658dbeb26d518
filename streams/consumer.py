"""The Faust consumer mailpulse runs on: stock Faust (``kafka://``, aiokafka) with two fixes.

1. Faust hard-codes aiokafka's ``fetch_max_wait_ms=1500``.  A broker that answers a fetch only when
   that wait is over rather than as soon as data arrives (the embedded one does) then adds up to
   1.5 s per hop: measured p50 0.56 s from event to profile at 1k events/s.  Here the wait comes
   from ``MAILPULSE_FETCH_MAX_WAIT_MS`` (:attr:`App.fetch_max_wait_ms`).
2. After a rebalance Faust seeks each partition back to its committed offset so that whatever the
   rebalance dropped from the stream buffers is read again; aiokafka skips that seek where no offset
   (or 0) is committed yet, so those messages were skipped.  Such partitions go back to the start.

Tried and not kept: delivering each message inline instead of through ``wait_first`` (a task pair
and an ``asyncio.wait`` per message) made a bare pass-through ~40% faster, but lost events when a
worker joined or left mid-stream (tests/integration/test_crash.py).  See the README's performance
section.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class ShortFetchWaitThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The aiokafka consumer thread, with the fetch wait of :attr:`App.fetch_max_wait_ms`."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = getattr(self.consumer.app, "fetch_max_wait_ms", 1500)
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ShortFetchWaitThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Any:
        """Fix 2 of the module doc: partitions without a committed offset start over (``earliest``)."""
        committed = await super().seek_to_committed()
        if self.app.conf.consumer_auto_offset_reset == "earliest":
            # (changelog partitions are read by table recovery from offsets of its own)
            uncommitted = [tp for tp, offset in committed.items()
                           if (not offset or offset <= 0) and not tp.topic.endswith("-changelog")]
            if uncommitted:
                await self._thread.seek_to_beginning(*uncommitted)
        return committed


class Transport(faust_aiokafka.Transport):
    """The ``kafka://`` transport with :class:`Consumer`."""

    Consumer = Consumer


class App(faust.App):
    """faust.App on :class:`Transport`; everything else is stock Faust."""

    #: Longest a fetch waits for data at the broker (aiokafka's ``fetch_max_wait_ms``).
    fetch_max_wait_ms: int = 1500

    def _new_transport(self) -> Any:
        url = self.conf.broker_consumer[0]
        if url.scheme != "kafka":
            return super()._new_transport()
        return Transport(self.conf.broker_consumer, self)
