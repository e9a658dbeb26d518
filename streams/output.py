"""Output producer: every message the agents send goes through one confluent-kafka producer.

Faust's own producer (aiokafka, pure Python) costs tens of microseconds per message; librdkafka
batches in C.  At-least-once is kept: :class:`FlushBeforeCommit` is a Faust sensor whose
``on_commit_initiated`` flushes this producer synchronously, before Faust computes and commits
the offsets of acknowledged events, so no offset is committed ahead of the outputs it caused.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, Producer
from faust.sensors import Sensor

log = logging.getLogger(__name__)


class Output(Protocol):
    """What agents send through (a recording fake in agent tests)."""

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None: ...

    def flush(self, timeout: float = ...) -> int: ...


class DeliveryFailed(RuntimeError):
    """A message could not be delivered: the worker must stop before it commits past it."""


class OutputProducer:
    def __init__(self, bootstrap: str, **extra: Any) -> None:
        self.failed: KafkaError | None = None
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 512 * 1024,
            "acks": "all",
            "enable.idempotence": True,
            "log_level": 3,
            **extra,
        })

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            log.error("output to %s lost: %s", msg.topic(), err)
            self.failed = err

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.01)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        left: int = self._producer.flush(timeout)
        if self.failed is not None or left:
            raise DeliveryFailed(f"{left} outputs undelivered after {timeout}s; last error: {self.failed}")
        return left


class FlushBeforeCommit(Sensor):  # type: ignore[misc]
    """Flushes the output producer right before Faust commits offsets."""

    def __init__(self, output: Output, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output = output

    def on_commit_initiated(self, consumer: Any) -> Any:
        self.output.flush()
        return None
