"""The flush before each offset commit: order of the steps and their timing."""

import time
from typing import Any

from streams.output import FlushBeforeCommit, OnDelivered


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
