"""Every worker's read-only replica of the product recommendations topic.

Triggers for any profile may need the neighbours of any product, but those are counted in the
product's partition, maybe on another worker.  Each product's top neighbours are published on a
compacted topic; this reader assigns all its partitions (no consumer group, so it never takes part
in rebalances) and keeps the latest list per product in memory: the size of the catalogue times
:data:`streams.rules.recommend.TOP_PUBLISHED` ids.  Like a Faust global table, but read-only and
outside the stream's offsets: payload recommendations are eventually consistent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import orjson

log = logging.getLogger(__name__)


class ProductRecs:
    def __init__(self) -> None:
        self._top: dict[str, list[str]] = {}
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
        else:
            self._top[product] = orjson.loads(value)

    def start(self, bootstrap: str, topic: str) -> None:
        self._thread = threading.Thread(target=self._run, args=(bootstrap, topic), name="product-recs",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "mailpulse-product-recs-reader",
                             "enable.auto.commit": False, "log_level": 0})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, n, OFFSET_BEGINNING) for n in partitions])
            while not self._stop.is_set():
                for message in consumer.consume(1000, timeout=0.5):
                    if message.error() is None:
                        self.apply(message.key(), message.value())
        except Exception:  # recommendations are optional: never take the worker down
            log.exception("product recommendations reader stopped")
        finally:
            consumer.close()
