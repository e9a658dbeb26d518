"""Broker integration tier: a fresh embedded broker per test, real `mailpulse run` worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.broker import FIRST_OFFSET, EmbeddedBroker, ensure_topics, free_port, start_embedded_broker
from streams.topics import COMPACTED_TOPICS, CONTRACT_TOPICS

PARTITIONS = 8
MAILPULSE = str(Path(sys.executable).with_name("mailpulse"))


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with start_embedded_broker(free_port()) as running:
        ensure_topics(running.bootstrap, PARTITIONS, COMPACTED_TOPICS, CONTRACT_TOPICS)
        yield running


def metric_at(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` on ``port`` whose labels include ``labels`` (0 when absent
    or when nothing answers)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def consumer_lags(port: int) -> dict[tuple[str, str], float]:
    """``mailpulse_consumer_lag`` on ``port``: (topic, partition) -> lag, one entry per series shown."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    lags = {}
    for line in text.splitlines():
        if line.startswith("mailpulse_consumer_lag{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            lags[labels["topic"].strip('"'), labels["partition"].strip('"')] = float(line.rsplit(" ", 1)[1])
    return lags


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)


def wait_until_shared(workers: list[Any], timeout: float = 120.0) -> None:
    """Until every worker holds some input partitions and none holds them all: a history replayed
    before a late starter joins would be taken in by one worker alone (and a join mid-stream reads
    the uncommitted part again), which is not what a test of several workers means to look at."""
    def shared() -> bool:
        return all(0 < w.metric("mailpulse_assigned_partitions", topic="clicks") < PARTITIONS for w in workers)

    wait_until(shared, timeout)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
        return metric_at(self.metrics_port, name, **labels)

    def wait_metric(self, name: str, expected: float, timeout: float = 90.0, **labels: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if self.metric(name, **labels) >= expected:
                return
            time.sleep(0.2)
        done = {kind: self.metric("mailpulse_events_total", outcome=kind) for kind in ("processed", "duplicate")}
        raise AssertionError(f"{name}{labels} = {self.metric(name, **labels)}, expected {expected} within {timeout} s; "
                             f"events {done}, dead letters {self.metric('mailpulse_dead_letters_total')}, "
                             f"lag {self.metric('mailpulse_consumer_lag')}; the worker's log ends:\n"
                             f"{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@dataclass
class WorkerFactory:
    broker: EmbeddedBroker
    tmp: Path
    started: list[Worker] = field(default_factory=list)

    def __call__(self, data_dir: str = "state", command: list[str] | None = None, **env: str) -> Worker:
        port = free_port()
        log = self.tmp / f"worker-{len(self.started)}.log"
        full_env = {
            **os.environ,
            "MAILPULSE_BROKER": self.broker.url,
            "MAILPULSE_DATA_DIR": str(self.tmp / data_dir),
            "MAILPULSE_METRICS_PORT": str(port),
            "MAILPULSE_PARTITIONS": str(PARTITIONS),
            "MAILPULSE_LOG_LEVEL": "info",
            # the shortest allowed: a fresh group's first join waits half of it, and a killed
            # worker's partitions move once it has passed (10 s by default)
            "MAILPULSE_SESSION_TIMEOUT_S": "6",
            **env,
        }
        process = subprocess.Popen(command or [MAILPULSE, "run"], env=full_env, stdout=log.open("wb"),
                                   stderr=subprocess.STDOUT)
        worker = Worker(process, port, log)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def start_worker(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(broker, tmp_path)
    yield factory
    factory.stop_all()


def read_topic(bootstrap: str, topic: str, done: Callable[[list[tuple[bytes | None, Any]]], bool] | None = None,
               timeout: float = 60.0, quiet_s: float = 1.5) -> list[tuple[bytes | None, Any]]:
    """All (key, decoded value) of ``topic`` from the beginning.  Stops when ``done`` says so, or
    (``done`` None) after ``quiet_s`` without a new message once every partition has been read up to
    where it ended when the read began (a slow start must not end the read early)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "log_level": 0})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, FIRST_OFFSET) for p in meta.partitions])
        # the offset each partition's last record had at the start (the embedded broker's end offset
        # is its last batch's base + 1: that batch's first record, read with the whole batch)
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high - 1
        got: list[tuple[bytes | None, Any]] = []
        read: dict[int, tuple[int, int]] = {}  # partition -> (messages read, last offset)
        holes: list[tuple[int, int, int]] = []  # (partition, after offset, next offset read)
        errors: list[str] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.consume(500, timeout=0.2)
            for msg in batch:
                if msg.error() is None:
                    value = msg.value()
                    got.append((msg.key(), None if value is None else orjson.loads(value)))
                    count, previous = read.get(msg.partition(), (0, -1))
                    if msg.offset() != previous + 1 and len(holes) < 10:
                        holes.append((msg.partition(), previous, msg.offset()))
                    read[msg.partition()] = (count + 1, msg.offset())
                elif len(errors) < 5:
                    errors.append(str(msg.error()))
            if batch:
                last = time.monotonic()
            if done is not None and done(got):
                return got
            if done is None and time.monotonic() - last > quiet_s and \
                    all(read.get(p, (0, -1))[1] >= end for p, end in ends.items()):
                return got
        if done is not None:
            report = _partition_report(consumer, topic, meta.partitions, read)
            raise AssertionError(f"{topic}: condition not met within {timeout}s ({len(got)} messages); {report}; "
                                 f"offsets skipped: {holes}; errors: {errors}")
        return got
    finally:
        consumer.close()


def _partition_report(consumer: Consumer, topic: str, partitions: Any, read: dict[int, tuple[int, int]]) -> str:
    """Per partition: what was read (count, last offset) beside the broker's [low, high) offsets, so a
    failure tells records the broker holds but the reader missed from records that never landed."""
    parts = []
    for p in sorted(partitions):
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
        except Exception as exc:  # the report must not hide the failure it explains
            low = high = f"? ({type(exc).__name__})"
        count, last = read.get(p, (0, -1))
        parts.append(f"p{p}: read {count} up to {last}, broker [{low}, {high})")
    return ", ".join(parts)


def latest_by_key(messages: list[tuple[bytes | None, Any]]) -> dict[bytes | None, Any]:
    """The compacted view of a topic: the last value per key (tombstones remove the key)."""
    view: dict[bytes | None, Any] = {}
    for key, value in messages:
        if value is None:
            view.pop(key, None)
        else:
            view[key] = value
    return view


def mailpulse(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAILPULSE, *args], capture_output=True, text=True, timeout=timeout)
