"""Every worker's read-only replica of the product recommendations topic.

Triggers for any profile may need the neighbours of any product, but those are counted in the
product's partition, maybe on another worker.  Each product's top neighbours are published on a
compacted topic; this reader assigns all its partitions (no consumer group, so it never takes part
in rebalances) and keeps the latest list per product in memory: the size of the catalogue times
:data:`streams.domain.rules.recommend.TOP_PUBLISHED` ids.  Like a Faust global table, but read-only and
outside the stream's offsets: payload recommendations are eventually consistent.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import orjson

from streams.domain.rules.recommend import TOP_PUBLISHED

log = logging.getLogger(__name__)


#: :class:`ProductRecs`'s default bound (``MAILPULSE_RECS_PRODUCTS``).
MOST_PRODUCTS = 200_000


class ProductRecs:
    """The replica.  It holds at most ``most`` products (~0.5-1 KB each): the product ids come from
    the input, so an upstream that sends a session id as ``product_id`` would otherwise grow every
    worker's memory without end.  Past it, the products written longest ago go (``on_evicted``)."""

    def __init__(self, on_read: Callable[[], object] = lambda: None,
                 on_damaged: Callable[[], object] = lambda: None, most: int = MOST_PRODUCTS,
                 on_evicted: Callable[[], object] = lambda: None) -> None:
        # (read by the profile agent while the reader thread writes: each OrderedDict operation is one
        # call into C, under the GIL)
        self._top: OrderedDict[str, list[str]] = OrderedDict()
        self._most = most
        self._on_read = on_read  # called for each record read (a metric)
        self._on_damaged = on_damaged  # called for each record that is not a list of product ids
        self._on_evicted = on_evicted  # called for each product dropped past the bound
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, product: str) -> Sequence[str] | None:
        return self._top.get(product)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        product = key.decode("utf-8", "replace")
        if value is None:
            self._top.pop(product, None)
            return
        try:
            top = orjson.loads(value)
            if not (isinstance(top, list) and len(top) <= TOP_PUBLISHED and all(type(o) is str for o in top)):
                raise ValueError("not a list of product ids")
        except ValueError as exc:  # (a JSONDecodeError too) every trigger naming the product would fail,
            # and the reader, raising here, would start again at this record for good
            self._top.pop(product, None)
            self._on_damaged()
            log.warning("a product-recs record is left out: %s", type(exc).__name__)
            return
        top_of = self._top
        top_of[product] = top
        top_of.move_to_end(product)
        while len(top_of) > self._most:
            top_of.popitem(last=False)
            self._on_evicted()

    def start(self, bootstrap: str, topic: str) -> None:
        self._thread = threading.Thread(target=self._run, args=(bootstrap, topic), name="product-recs",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self, bootstrap: str, topic: str) -> None:
        """Reads until stopped.  A failure (a metadata timeout on a busy broker, a lost connection)
        starts a new consumer from the beginning after a pause, instead of leaving the replica
        empty for the rest of the worker's life."""
        while not self._stop.is_set():
            try:
                self._read(bootstrap, topic)
            except Exception as exc:  # recommendations are optional: never take the worker down
                log.warning("product recommendations reader restarts after %s", type(exc).__name__)
                self._stop.wait(1.0)

    def _read(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from streams.broker import FIRST_OFFSET

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "mailpulse-product-recs-reader",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest", "log_level": 0})
        try:
            partitions: list[int] = []
            while not partitions and not self._stop.is_set():  # the topic may not be visible yet
                metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
                partitions = sorted(metadata.partitions) if metadata is not None and metadata.error is None else []
                if not partitions:
                    self._stop.wait(0.5)
            consumer.assign([TopicPartition(topic, n, FIRST_OFFSET) for n in partitions])
            while not self._stop.is_set():
                for message in consumer.consume(1000, timeout=0.5):
                    if message.error() is None:
                        self.apply(message.key(), message.value())
                        self._on_read()
        finally:
            consumer.close()
