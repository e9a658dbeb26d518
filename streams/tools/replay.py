"""``mailpulse replay``: a JSON-lines file of input events to the input topics, routed by ``type``.
A ``tick`` line (contract section 3: any input topic) goes to every partition of every input topic,
after the lines before it, as ``--until``'s closing tick does: time has passed for the whole stream."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, KafkaException
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from streams.broker import kafka_error
from streams.ingest import UTF8_BOM, parse_json
from streams.tools.history import not_text_hint
from streams.tools.produce import (
    RoutingError,
    key_for,
    make_producer,
    partition_counts,
    produce,
    produce_everywhere,
    send_ticks,
    topic_for,
)


class ReplayError(ValueError):
    """A line of the input file cannot be replayed."""


class _Deliveries:
    """Counts the events the broker did not take (librdkafka reports them after ``produce`` returned)."""

    def __init__(self) -> None:
        self.failed = 0
        self.first = ""

    def __call__(self, error: KafkaError | None, message: object) -> None:
        if error is not None:
            self.failed += 1
            self.first = self.first or error.str()

    def check(self, path: Path, what: str, left: int, waited_s: int) -> None:
        """:class:`ReplayError` when any of ``what`` was not delivered: refused, or among the ``left`` the
        broker had not acknowledged after ``waited_s``."""
        if left or self.failed:
            raise ReplayError(f"{path}: {self.failed + left} {what} not delivered"
                              + (f" (the first: {self.first})" if self.first else
                                 f" ({left} not acknowledged by the broker within {waited_s} s)"))


def _reason(exc: KafkaException) -> str:
    error = kafka_error(exc)
    return error.str() if error is not None else type(exc).__name__


def _unacknowledged(messages: int) -> str:
    """What a stop's line adds about the messages sent before it that the broker did not acknowledge."""
    return f"; {messages} of their messages were not acknowledged by the broker" if messages else ""


class ReplayStopped(Exception):
    """Stopped (Ctrl-C) after ``sent`` events were handed to the producer and flushed; ``unconfirmed``
    of the messages they made (a tick line makes one per input partition) the broker did not
    acknowledge: refused, or still queued when the brief flush ended (dropped at exit)."""

    def __init__(self, sent: int, unconfirmed: int = 0) -> None:
        super().__init__(f"stopped after {sent} events were sent")
        self.sent = sent
        self.unconfirmed = unconfirmed


def replay_file(path: Path, bootstrap: str, rate: float | None = None, until: int | str | None = None,
                show_progress: bool = True) -> int:
    """Produce every line of ``path``; returns the number of events sent.  :class:`ReplayStopped` on
    Ctrl-C, once what was sent is flushed (briefly)."""
    try:  # (a file without read permission: an OSError's traceback otherwise)
        with path.open("rb") as counted:
            total = sum(1 for line in counted if line.removeprefix(UTF8_BOM).strip())
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from None
    producer = make_producer(bootstrap)
    delivery = _Deliveries()
    ticks = _Deliveries()  # the tick messages (one per input partition for each tick line, and --until's)
    sent = 0
    counts: dict[str, int] | None = None  # the input topics' partitions, asked at the first tick
    started = time.monotonic()
    progress = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                        TimeRemainingColumn(), disable=not show_progress, transient=False)
    try:
        with progress, path.open("rb") as lines:
            task = progress.add_task("replay", total=total, rate="")
            for number, marked in enumerate(lines, start=1):
                line = marked.removeprefix(UTF8_BOM)  # (a Windows tool's "UTF-8 with BOM"; sent without it)
                if not line.strip():
                    continue
                try:
                    event = parse_json(line)  # (as the worker reads it)
                    if not isinstance(event, dict):
                        raise RoutingError("not a JSON object")
                    topic = None if event.get("type") == "tick" else topic_for(event)
                except (orjson.JSONDecodeError, RoutingError) as exc:
                    lost = _unacknowledged(producer.flush(30) + delivery.failed + ticks.failed)
                    hint = not_text_hint(line) if isinstance(exc, orjson.JSONDecodeError) else ""
                    raise ReplayError(f"{path}:{number}: {exc}{hint} ({sent} events were sent before it{lost})"
                                      ) from None
                try:
                    if topic is None:
                        counts = counts or partition_counts(producer)
                        produce_everywhere(producer, line.rstrip(b"\r\n"), counts, on_delivery=ticks)
                    else:
                        produce(producer, topic, line.rstrip(b"\r\n"), key_for(event), on_delivery=delivery)
                except KafkaException as exc:  # (a line over the producer's message size, say)
                    lost = _unacknowledged(producer.flush(30) + delivery.failed + ticks.failed)
                    raise ReplayError(f"{path}:{number}: the broker client refused it: {_reason(exc)} "
                                      f"({sent} events were sent before it{lost})") from None
                except RoutingError as exc:  # a tick line, and an input topic the broker does not have
                    lost = _unacknowledged(producer.flush(30) + delivery.failed + ticks.failed)
                    raise ReplayError(f"{path}:{number}: a tick line: {exc} "
                                      f"({sent} events were sent before it{lost})") from None
                sent += 1
                if rate:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                if sent % 1000 == 0:
                    producer.poll(0)
                    elapsed = max(time.monotonic() - started, 1e-6)
                    progress.update(task, completed=sent, rate=f"{sent / elapsed:,.0f} ev/s")
            progress.update(task, completed=sent)
            delivery.check(path, f"of {sent} events were", producer.flush(60), 60)
            # a tick lost leaves the watermark short of its time (and exit 0 said nothing)
            if until is not None:
                try:
                    send_ticks(producer, until, on_delivery=ticks)
                except RoutingError as exc:
                    raise ReplayError(f"{path}: its {sent} events were sent, but not --until's tick: {exc}") from None
            ticks.check(path, "tick messages (one per input partition) were", producer.flush(30), 30)
    except KeyboardInterrupt:
        left = producer.flush(5)
        raise ReplayStopped(sent, left + delivery.failed + ticks.failed) from None
    return sent
