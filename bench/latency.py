"""Latency at fixed input rates: from an event's production to its profile landing in ``profiles``.

Each event is a person's newest (its timestamp is the wall clock when it is produced), so the
profile it causes carries that time as ``updated_at``; a reader assigned to ``profiles`` notes when
it arrives.  The first ``WARMUP_S`` seconds are left out.

Baseline in the same run: one broker hop (confluent-kafka producer -> topic -> consumer at the same
rate).  An event crosses three hops on its way to a reader of ``profiles`` (input topic, the internal
profile-events topic, ``profiles``), so 3 x the hop latency is the floor no worker can go below.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from bench.common import PARTITIONS, start_broker, start_worker, wait_assigned
from schemas.timeparse import parse_timestamp
from streams.tools.produce import make_producer, produce

WARMUP_S = 2.0


@dataclass
class Latency:
    rate: int
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _summary(rate: int, latencies: list[float]) -> Latency:
    values = sorted(latencies)
    if not values:
        raise RuntimeError(f"nothing arrived at {rate} events/s")
    return Latency(rate, len(values), _percentile(values, 0.5), _percentile(values, 0.99), values[-1])


def _reader(bootstrap: str, topic: str) -> Consumer:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-latency-{topic}",
                       "enable.auto.commit": False, "log_level": 0, "fetch.wait.max.ms": 5})
    reader.assign([TopicPartition(topic, p, OFFSET_END) for p in range(PARTITIONS)])
    reader.consume(1, timeout=1.0)
    return reader


def _timed_run(bootstrap: str, topic: str, rate: int, seconds: float, send: Callable[[Producer, int], None],
               sent_ms: Callable[[bytes], float]) -> Latency:
    """Produce ``rate`` events/s for ``seconds`` with ``send`` while a thread reads ``topic`` and takes
    arrival time - ``sent_ms(value)`` of each message.  ``poll`` returns a message as soon as it is
    there (``consume(n, timeout)`` would hold it until n arrive or the timeout passes)."""
    reader = _reader(bootstrap, topic)
    latencies: list[float] = []
    stop = threading.Event()
    started = time.time()

    def read() -> None:
        while not stop.is_set():
            msg = reader.poll(0.05)
            if msg is None or msg.error() is not None or not msg.value():
                continue
            arrived = time.time() * 1000
            sent = sent_ms(msg.value() or b"")
            if sent / 1000 - started >= WARMUP_S:
                latencies.append(arrived - sent)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    producer = make_producer(bootstrap, **{"linger.ms": 1})
    tick = 0.01
    next_tick = time.perf_counter()
    n = 0
    while time.time() - started < seconds:
        for _ in range(max(1, int(rate * tick))):
            send(producer, n)
            n += 1
        producer.poll(0)
        next_tick += tick
        time.sleep(max(0.0, next_tick - time.perf_counter()))
    producer.flush(10)
    time.sleep(2.0)
    stop.set()
    thread.join(5)
    reader.close()
    return _summary(rate, latencies)


def measure_hop_latency(rate: int, seconds: float = 6.0) -> Latency:
    """One produce -> consume hop through the broker, nothing else."""
    def send(producer: Producer, n: int) -> None:
        produce(producer, "clicks", str(time.time() * 1000).encode(), partition=n % PARTITIONS)

    with start_broker() as broker:
        return _timed_run(broker.bootstrap, "clicks", rate, seconds, send, float)


def measure_latency(rate: int, seconds: float = 10.0) -> Latency:
    """Through one worker: input topic -> ingest -> profile-events -> profiles -> reader."""
    def send(producer: Producer, n: int) -> None:
        user = f"lat-{n % 50_000}"
        event = {"event_id": f"lat-{n}", "type": "page_view", "timestamp": int(time.time() * 1000),
                 "user_id": user, "url": "/"}
        produce(producer, "clicks", orjson.dumps(event), user.encode())

    def sent_ms(value: bytes) -> float:
        return float(parse_timestamp(orjson.loads(value)["updated_at"]))

    with start_broker() as broker:
        worker = start_worker(broker, "bench-latency")
        try:
            wait_assigned([worker], PARTITIONS)
            return _timed_run(broker.bootstrap, "profiles", rate, seconds, send, sent_ms)
        finally:
            worker.stop()


def report(rates: tuple[int, ...] = (1000, 5000)) -> None:
    print("\n  latency, event produced -> profile in `profiles` (1 worker):")
    for rate in rates:
        hop = measure_hop_latency(rate)
        pipe = measure_latency(rate)
        print(f"    {rate:>5} events/s  broker hop p50 {hop.p50_ms:5.1f} ms  p99 {hop.p99_ms:5.1f} ms   |   "
              f"pipeline p50 {pipe.p50_ms:6.1f} ms  p99 {pipe.p99_ms:6.1f} ms  max {pipe.max_ms:6.1f} ms  "
              f"({pipe.samples:,} profiles; p50 = {pipe.p50_ms / hop.p50_ms:.1f} x hop)")


if __name__ == "__main__":
    report()
