"""Output producer: every message the agents send goes through one confluent-kafka producer.

Faust's own producer (aiokafka, pure Python) costs tens of microseconds per message; librdkafka
batches in C.  At-least-once is kept: :class:`FlushBeforeCommit` is a Faust sensor whose
``on_commit_initiated`` flushes this producer synchronously, before Faust computes and commits
the offsets of acknowledged events, so no offset is committed ahead of the outputs it caused.

The periodic commit does not hold the event loop while the broker acknowledges: it takes a cut (the
offsets acked so far, the table values staged so far), awaits :meth:`OutputProducer.delivered` for
the messages sent before the cut while the agents go on, then writes the cut's values and commits
its offsets (:meth:`streams.consumer.Consumer.commit_in_background`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from faust.sensors import Sensor

from streams.broker import kafka_error
from streams.logs import LIBRDKAFKA

log = logging.getLogger(__name__)


#: Called with (topic, partition, offset) once a message is acknowledged by the broker.
OnDelivered = Callable[[str, int, int], None]


#: How often :meth:`OutputProducer.delivered` serves delivery reports while it waits (seconds).
DELIVERY_POLL_S = 0.002

#: Key of the end marker: a tombstone of a key no table uses (see :meth:`OutputProducer.flush`).
END_MARKER_KEY = b"\x00mailpulse:end-marker"


class Output(Protocol):
    """What agents send through (a recording fake in agent tests)."""

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             on_delivered: OnDelivered | None = None) -> None: ...

    def send_changelog(self, topic: str, key: bytes, value: bytes | None, partition: int,
                       on_delivered: OnDelivered | None = None) -> None: ...

    def flush(self, timeout: float = ...) -> int: ...

    async def delivered(self, timeout: float = ...) -> None: ...

    async def flush_soon(self, timeout: float = ...) -> None: ...


class DeliveryFailed(RuntimeError):
    """A message could not be delivered: the worker must stop before it commits past it."""


class OutputProducer:
    def __init__(self, bootstrap: str, **extra: Any) -> None:
        self.failed: KafkaError | None = None
        self.acknowledged = 0  # messages the broker took
        self.lost = 0  # messages that failed for good (librdkafka gave up on them)
        self._unpolled = 0
        self._changelog_written: set[tuple[str, int]] = set()
        # Delivery marks (:meth:`delivered`).  Messages are counted by epoch: a mark ends the current
        # one.  Each message's callback is that of its epoch (one per epoch and ``on_delivered``, not
        # one per message: a callable per message cost ~1 us more per send, in allocation and GC).
        self._epoch = 0
        self._in_epoch = 0  # messages of the current epoch awaiting their report
        self._earlier: dict[int, int] = {}  # ended epoch -> its messages awaiting their report
        self._callbacks: dict[OnDelivered | None, Callable[[KafkaError | None, Message], None]] = {}
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 512 * 1024,
            "acks": "all",
            "enable.idempotence": True,
            "log_level": 3,
            "logger": LIBRDKAFKA,
            **extra,
        })

    def _callback(self, on_delivered: OnDelivered | None) -> Callable[[KafkaError | None, Message], None]:
        """The delivery callback of the current epoch for messages with ``on_delivered``."""
        epoch, earlier = self._epoch, self._earlier

        def callback(err: KafkaError | None, msg: Message) -> None:
            if epoch == self._epoch:
                self._in_epoch -= 1
            else:
                earlier[epoch] -= 1
            if err is not None:
                self._lose(msg.topic(), err, "lost")
                return
            self.acknowledged += 1
            if on_delivered is not None:
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if topic is not None and partition is not None and offset is not None:
                    on_delivered(topic, partition, offset)

        self._callbacks[on_delivered] = callback
        return callback

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             on_delivered: OnDelivered | None = None) -> None:
        callback = self._callbacks.get(on_delivered) or self._callback(on_delivered)
        produce = self._producer.produce
        part = -1 if partition is None else partition  # -1: the producer's partitioner picks
        while True:
            try:
                produce(topic, value, key, part, callback)
                break
            except BufferError:
                self._producer.poll(0.01)
            except KafkaException as refused:  # e.g. a message over ``message.max.bytes``
                self._lose(topic, kafka_error(refused) or KafkaError(KafkaError._FAIL), "refused")
                raise
        self._in_epoch += 1
        # Serve delivery callbacks now and then, not per message (flush serves the rest).
        self._unpolled += 1
        if self._unpolled >= 1024:
            self._unpolled = 0
            self._producer.poll(0)

    def _lose(self, topic: str | None, err: KafkaError, how: str) -> None:
        """A message lost for good (its delivery failed, or the producer refused it): every later
        flush or delivery wait raises, so no offset is committed, and no table value written, past
        what it carried."""
        log.error("output to %s %s: %s", topic, how, err)
        self.failed = err
        self.lost += 1

    def _left_before(self, epoch: int) -> int:
        """Messages of epochs up to ``epoch`` (ended) awaiting their report; forgets epochs done."""
        for done in [ended for ended, left in self._earlier.items() if left <= 0]:
            del self._earlier[done]
        return sum(left for ended, left in self._earlier.items() if ended <= epoch)

    async def delivered(self, timeout: float = 30.0) -> None:
        """Returns once every message sent before the call is acknowledged, serving delivery reports
        every :data:`DELIVERY_POLL_S` meanwhile: the event loop goes on (messages sent during the wait
        are not waited for).  Raises :class:`DeliveryFailed` as :meth:`flush` does."""
        mark = self._epoch  # ends the current epoch: what is sent from now on is not waited for
        self._earlier[mark] = self._in_epoch
        self._epoch, self._in_epoch, self._callbacks = mark + 1, 0, {}
        deadline = time.monotonic() + timeout
        while True:
            self._producer.poll(0)
            if self.failed is not None:
                raise DeliveryFailed(f"an output could not be delivered: {self.failed}")
            left = self._left_before(mark)
            if left <= 0:
                return
            if time.monotonic() > deadline:
                raise DeliveryFailed(f"{left} outputs undelivered after {timeout}s")
            await asyncio.sleep(DELIVERY_POLL_S)

    async def flush_soon(self, timeout: float = 30.0) -> None:
        """:meth:`flush` for what was sent before the call, without holding the event loop."""
        await self.delivered(timeout)
        if self._changelog_written:
            self._end_changelogs()
            await self.delivered(timeout)

    def send_changelog(self, topic: str, key: bytes, value: bytes | None, partition: int,
                       on_delivered: OnDelivered | None = None) -> None:
        """A table changelog record (remembered, so :meth:`flush` can close the partition's log)."""
        self.send(topic, key, value, partition, on_delivered)
        self._changelog_written.add((topic, partition))

    def progress(self) -> tuple[int, int, int]:
        """(messages queued, acknowledged so far, lost so far): the health loop's view of the producer.
        Serves the delivery reports first: the queue counts messages whose report waits to be served,
        and an idle worker serves none otherwise (it polls every 1,024 sends and flushes at commits)."""
        self._producer.poll(0)
        return len(self._producer), self.acknowledged, self.lost

    def close(self, timeout: float = 10.0) -> None:
        """Delivers what is queued and closes the client, so it does not go on reconnecting (and
        logging it) after the broker is gone."""
        self._flush(timeout)
        self._producer.close()

    def flush(self, timeout: float = 30.0) -> int:
        """Deliver everything queued, then end each changelog partition written since the last
        flush with a one-record batch: a tombstone of :data:`END_MARKER_KEY`.

        The marker is for brokers that report a partition's end offset as the base offset of its
        last record batch + 1 instead of its last offset + 1 (the embedded broker does).  Table
        recovery reads a changelog up to that end offset, and would otherwise skip the rest of the
        last batch.  On Apache Kafka it costs one tiny record per written partition per commit.
        """
        left = self._flush(timeout)
        if self._changelog_written:
            self._end_changelogs()
            left = self._flush(timeout)
        return left

    def _end_changelogs(self) -> None:
        for topic, partition in sorted(self._changelog_written):
            self.send(topic, END_MARKER_KEY, None, partition)
        self._changelog_written.clear()

    def _flush(self, timeout: float) -> int:
        left: int = self._producer.flush(timeout)
        if self.failed is not None or left:
            raise DeliveryFailed(f"{left} outputs undelivered after {timeout}s; last error: {self.failed}")
        return left


class FlushBeforeCommit(Sensor):
    """Flushes the output producer right before Faust commits offsets, and when the worker stops.
    ``before_flush`` runs first (tables write their staged values there), ``after_flush`` after it
    (tables record their delivered changelog offsets).  ``observe(stage, seconds)`` receives how long
    ``before_flush`` ("write_out") and the flush ("flush") held the worker: its event loop waits for
    both, so a slow broker shows here first."""

    def __init__(self, output: Output, after_flush: Callable[[], None] = lambda: None,
                 before_flush: Callable[[], None] = lambda: None,
                 observe: Callable[[str, float], None] = lambda stage, seconds: None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output = output
        self.after_flush = after_flush
        self.before_flush = before_flush
        self.observe = observe

    def _flush(self) -> None:
        started = time.perf_counter()
        self.before_flush()
        written = time.perf_counter()
        self.output.flush()
        self.observe("write_out", written - started)
        self.observe("flush", time.perf_counter() - written)
        self.after_flush()

    def on_commit_initiated(self, consumer: Any) -> Any:
        self._flush()
        return None

    async def on_stop(self) -> None:
        self._flush()
