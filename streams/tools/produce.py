"""Producing input events: routing by ``type`` (contract section 3) and an advisory key."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from schemas.events import INPUT_TOPICS, TOPIC_OF_TYPE


class RoutingError(ValueError):
    """An event whose ``type`` does not name an input topic."""


def topic_for(event: dict[str, Any]) -> str:
    etype = event.get("type")
    if not isinstance(etype, str) or etype not in TOPIC_OF_TYPE:
        # shown only when it looks like a type name (a typo, say): free text may be personal data
        shown = f" {etype!r}" if isinstance(etype, str) and _TYPE_NAME.fullmatch(etype) else ""
        raise RoutingError(f"type{shown} is not an input event type")
    return TOPIC_OF_TYPE[etype]


_TYPE_NAME = re.compile(r"[a-z][a-z_]{0,39}")


def key_for(event: dict[str, Any]) -> bytes | None:
    for field in ("user_id", "anonymous_id", "email"):
        value = event.get(field)
        if isinstance(value, str) and value:
            return value.encode()
    return None


def make_producer(bootstrap: str, **extra: Any) -> Producer:
    conf = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "enable.idempotence": False,
        "log_level": 0,
        **extra,
    }
    return Producer(conf)


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None,
            partition: int | None = None, on_delivery: Callable[[Any, Any], None] | None = None) -> None:
    """Produce, waiting for room when the local queue is full."""
    kwargs: dict[str, Any] = {"key": key, "value": value}
    if partition is not None:
        kwargs["partition"] = partition
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def partition_counts(producer: Producer, topics: tuple[str, ...] = INPUT_TOPICS) -> dict[str, int]:
    meta = producer.list_topics(timeout=10)
    counts: dict[str, int] = {}
    for topic in topics:
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise RoutingError(f"topic {topic!r} does not exist on the broker (start `mailpulse run` first)")
        counts[topic] = len(meta.topics[topic].partitions)
    return counts


def send_ticks(producer: Producer, timestamp: int | str,
               on_delivery: Callable[[Any, Any], None] | None = None) -> int:
    """A ``tick`` at ``timestamp`` to every partition of every input topic; returns how many."""
    import orjson

    return produce_everywhere(producer, orjson.dumps({"type": "tick", "timestamp": timestamp}),
                              on_delivery=on_delivery)


def produce_everywhere(producer: Producer, value: bytes, counts: dict[str, int] | None = None,
                       on_delivery: Callable[[Any, Any], None] | None = None) -> int:
    """``value`` to every partition of every input topic (a tick: the watermark is the smallest
    clock of them all, so a tick on one partition alone would hardly move it); returns how many.
    ``counts``: the topics' partition counts (else asked of the broker)."""
    sent = 0
    for topic, count in (counts or partition_counts(producer)).items():
        for partition in range(count):
            produce(producer, topic, value, partition=partition, on_delivery=on_delivery)
            sent += 1
    return sent
