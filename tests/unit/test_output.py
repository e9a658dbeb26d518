"""The flush before each offset commit: order of the steps and their timing; a message the producer
refuses fails the output for good (no broker needed)."""

import asyncio
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.output import DeliveryFailed, FlushBeforeCommit, OnDelivered, OutputProducer


class SlowOutput:
    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             on_delivered: OnDelivered | None = None) -> None:
        raise AssertionError("not sent here")

    def send_changelog(self, topic: str, key: bytes, value: bytes | None, partition: int,
                       on_delivered: OnDelivered | None = None) -> None:
        raise AssertionError("not sent here")

    def flush(self, timeout: float = 30.0) -> int:
        self.steps.append("flush")
        time.sleep(0.02)
        return 0


def test_commit_writes_out_then_flushes_then_records_offsets_and_times_both_stages() -> None:
    steps: list[str] = []
    observed: list[tuple[str, float]] = []

    def write_out() -> None:
        steps.append("write_out")

    sensor = FlushBeforeCommit(SlowOutput(steps), after_flush=lambda: steps.append("offsets"),
                               before_flush=write_out, observe=lambda stage, s: observed.append((stage, s)))
    consumer: Any = None
    sensor.on_commit_initiated(consumer)

    assert steps == ["write_out", "flush", "offsets"]
    assert [stage for stage, _ in observed] == ["write_out", "flush"]
    seconds = dict(observed)
    assert seconds["flush"] >= 0.02 > seconds["write_out"] >= 0


def test_a_refused_message_fails_every_later_flush_so_nothing_is_committed_past_it() -> None:
    output = OutputProducer("127.0.0.1:1", **{"message.max.bytes": 10_000})
    try:
        with pytest.raises(KafkaException):
            output.send("co-occurrence", None, b"x" * 20_000, 0)  # over the limit: refused at once
        assert output.lost == 1
        assert output.failed is not None and output.failed.code() == KafkaError.MSG_SIZE_TOO_LARGE
        with pytest.raises(DeliveryFailed, match="MSG_SIZE_TOO_LARGE"):
            output.flush(1.0)  # the commit path's flush (FlushBeforeCommit, Pipeline.write_staged),
            # though nothing is queued
        with pytest.raises(DeliveryFailed, match="MSG_SIZE_TOO_LARGE"):
            asyncio.run(output.delivered(timeout=1.0))  # the background commit's wait
    finally:
        output._producer.purge()
        output._producer.flush(1)
