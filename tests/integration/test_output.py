"""The output producer's delivery marks, against the embedded broker: what a background commit waits
for before it writes its held table values and commits its offsets (streams.consumer, fix 8)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from streams.output import DeliveryFailed, OutputProducer

pytestmark = pytest.mark.integration


def test_delivered_waits_for_what_was_sent_before_it_and_not_for_what_comes_after(broker) -> None:
    output = OutputProducer(broker.bootstrap)
    offsets: list[tuple[int, int]] = []
    for index in range(500):
        output.send("profiles", b"k%d" % index, b"{}", on_delivered=lambda t, p, o: offsets.append((p, o)))

    async def wait_while_sending() -> tuple[int, int, float]:
        stop = asyncio.Event()

        async def keep_sending() -> int:  # a busy agent: never a moment with nothing in flight
            sent = 0
            while not stop.is_set():
                output.send("triggers", None, b"{}")
                sent += 1
                await asyncio.sleep(0.0005)
            return sent

        sender = asyncio.create_task(keep_sending())
        started = time.monotonic()
        await output.delivered()
        took = time.monotonic() - started
        delivered_then = len(offsets)
        stop.set()
        return delivered_then, await sender, took

    delivered_then, sent_meanwhile, took = asyncio.run(wait_while_sending())
    assert delivered_then == 500 and len(set(offsets)) == 500  # each one acknowledged, at its own offset
    assert sent_meanwhile > 0 and took < 10
    output.flush(10)  # the rest, the blocking way
    assert output.acknowledged == 500 + sent_meanwhile and output.lost == 0
    output.close()


def test_delivered_gives_up_with_a_clear_error_when_the_broker_does_not_answer() -> None:
    output = OutputProducer("127.0.0.1:1")
    output.send("profiles", b"k", b"{}")
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match=r"1 outputs undelivered after 1\.0s"):
        asyncio.run(output.delivered(timeout=1.0))
    assert time.monotonic() - started < 5
    output._producer.purge()  # nothing goes on retrying (and logging) after the test
    output._producer.flush(1)
    del output


def test_librdkafka_lines_go_through_python_logging_not_stderr(caplog: pytest.LogCaptureFixture,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.WARNING, logger="kafka.librdkafka")
    output = OutputProducer("127.0.0.1:1")  # nothing listens: librdkafka reports the failed connects
    output.send("profiles", b"k", b"{}")
    deadline = time.monotonic() + 10
    while not any(r.name == "kafka.librdkafka" for r in caplog.records) and time.monotonic() < deadline:
        output._producer.poll(0.1)  # the lines are handed to Python when the client is polled
    output._producer.purge()
    output._producer.flush(1)
    del output
    lines = [r.getMessage() for r in caplog.records if r.name == "kafka.librdkafka"]
    assert lines and any("127.0.0.1:1" in line for line in lines), lines
    assert "|FAIL|" not in capfd.readouterr().err
