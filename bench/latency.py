"""Latency at fixed input rates: from an input event's production to the output it causes.

Live traffic in which every event is a new person, stamped with the wall clock when it is produced:
``product_view`` and ``identify`` (with ``traits.email`` and ``consent.email = true``) alternate, each
for its own new ``user_id``.  A product view makes its profile enter ``recent_browsers`` (a message
on ``segment-changes``); an identify gives its profile an e-mail for the first time (a ``welcome``
message on ``triggers``; welcome is allowed once per profile, and quiet hours move only ``send_at``,
not the emission).  Both also publish a profile on ``profiles``.  Events go round-robin over all 32
input partitions (any input topic takes any event type), as a shop's traffic spread over its topics
would.

Events wait in the profile until the event-time watermark (the smallest clock over all 32 input
partitions) passes them; with traffic on every partition the events themselves move it.  As a live
system's upstream heartbeat would, every ``BENCH_TICK_MS`` (100) ms of wall time the bench also sends
``{"type": "tick", "timestamp": <now>}`` to every input partition, and keeps doing so after the last
event until its outputs are in.

A reader assigned (no consumer group) to ``segment-changes``, ``triggers`` and ``profiles`` notes
each message's arrival wall time.  Outputs are matched to inputs by ``user_id``: latency = arrival
of the first matching output (``recent_browsers`` entered, ``welcome``, first profile) - the
input's produce time.  Events produced in the first ``WARMUP_S`` seconds are left out.

Baseline in the same run: one broker hop (confluent-kafka producer -> topic -> consumer at the same
rate).  An event crosses three hops on its way to an output reader (input topic, the internal
profile-events topic, the output topic); 3 x the hop latency is a floor no worker can go below, and
the tick wait comes on top.

Next to the figures it prints the CPU the worker, the broker and the bench itself (producer, ticks,
reader) used while events were sent, in cores: on a small machine the three share it, and whichever
runs out first sets the latency.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from bench.common import (
    PARTITIONS,
    WorkerProcess,
    newcomer_event,
    process_cpu_seconds,
    start_broker,
    start_worker,
    wait_assigned,
)
from schemas.events import INPUT_TOPICS
from streams.metrics import COMMIT_STAGES, LATENCY_BUCKETS
from streams.tools.produce import make_producer, produce

WARMUP_S = 2.0
TICK_EVERY_S = float(os.environ.get("BENCH_TICK_MS", "100")) / 1000
STEP_S = 0.01  # events go out in 10 ms steps (finer steps mean more produce requests: the embedded
# broker's hop alone then grows from ~5 ms to ~35 ms p50 at 5k events/s)
DRAIN_S = 10.0  # longest wait, after the last event, for its outputs
SEGMENT_CHANGES, TRIGGERS, PROFILES = "segment-changes", "triggers", "profiles"
OUTPUTS = (SEGMENT_CHANGES, TRIGGERS, PROFILES)
LATENCY_METRIC = "mailpulse_event_latency_seconds"
RECORD_METRIC = "mailpulse_record_seconds"
RECORD_AGENTS = ("ingest", "profiles")
COMMIT_METRIC = "mailpulse_commit_seconds"


@dataclass
class Latency:
    rate: int
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    expected: int = 0  # inputs that should have caused one (0: not counted)


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _summary(rate: int, latencies: list[float], what: str = "anything", expected: int = 0) -> Latency:
    """Percentiles over ``expected`` inputs when given: those whose output never arrived count as
    infinitely late (so p50/p99 are ``inf`` rather than flattering figures of the survivors)."""
    values = sorted(latencies)
    if not values:
        raise RuntimeError(f"no {what} arrived at {rate} events/s")
    everything = values + [math.inf] * max(0, expected - len(values))
    return Latency(rate, len(values), _percentile(everything, 0.5), _percentile(everything, 0.99), values[-1],
                   expected)


def _ms(value: float) -> str:
    return f"{value:7.1f} ms" if math.isfinite(value) else "not arrived"


def _reader(bootstrap: str, topics: tuple[str, ...]) -> Consumer:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-latency-{time.time_ns()}",
                       "enable.auto.commit": False, "log_level": 0, "fetch.wait.max.ms": 5})
    reader.assign([TopicPartition(topic, p, OFFSET_END) for topic in topics for p in range(PARTITIONS)])
    reader.consume(1, timeout=1.0)
    return reader


class _Arrivals:
    """A thread that reads the assigned topics and hands each message, with its arrival wall time
    (ms), to ``note``.  ``poll`` returns as soon as a message is there; what the client has already
    fetched behind it is taken at once with ``consume(n, 0)`` and gets the same arrival time."""

    def __init__(self, reader: Consumer, note: Callable[[str, bytes, float], None]) -> None:
        self._reader, self._note = reader, note
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._reader.poll(0.05)
            if first is None:
                continue
            arrived = time.time() * 1000
            for msg in [first, *self._reader.consume(10_000, timeout=0)]:
                value = msg.value()
                if msg.error() is None and value:
                    self._note(msg.topic() or "", value, arrived)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._reader.close()


def heartbeat(producer: Producer) -> None:
    """An upstream heartbeat: a tick with the current time to every input partition."""
    value = orjson.dumps({"type": "tick", "timestamp": int(time.time() * 1000)})
    for topic in INPUT_TOPICS:
        for partition in range(PARTITIONS):
            produce(producer, topic, value, partition=partition)


def _paced(rate: int, seconds: float, send: Callable[[int], None], every: Callable[[], None] | None = None,
           producer: Producer | None = None) -> int:
    """Calls ``send(n)`` ``rate`` times a second for ``seconds``, in steps of ``STEP_S`` (catching up
    after a late wake-up), and ``every()`` each ``TICK_EVERY_S``, half a tick interval out of phase
    with the steps (so an event waits about half an interval for the next tick, as with events that
    arrive at random times).  Returns how many were sent."""
    started = time.perf_counter()
    next_step, next_every = started, started + TICK_EVERY_S / 2
    n = 0
    while True:
        now = time.perf_counter()
        if now - started >= seconds:
            break
        if now >= next_step:
            for _ in range(int(rate * (now - started)) + 1 - n):
                send(n)
                n += 1
            next_step = max(next_step + STEP_S, now)
        if every is not None and now >= next_every:
            every()
            next_every = max(next_every + TICK_EVERY_S, now)
        if producer is not None:
            producer.poll(0)
        wake = next_step if every is None else min(next_step, next_every)
        time.sleep(max(0.0, wake - time.perf_counter()))
    return n


def _drain(drained: Callable[[], bool], every: Callable[[], None], producer: Producer) -> None:
    """Keeps calling ``every()`` each ``TICK_EVERY_S`` until ``drained()`` or ``DRAIN_S``."""
    deadline = time.perf_counter() + DRAIN_S
    while not drained() and time.perf_counter() < deadline:
        every()
        producer.poll(0)
        time.sleep(TICK_EVERY_S)


def measure_hop_latency(rate: int, seconds: float = 6.0) -> Latency:
    """One produce -> consume hop through the broker, nothing else."""
    with start_broker() as broker:
        latencies: list[float] = []
        reader = _reader(broker.bootstrap, ("clicks",))
        started_ms = time.time() * 1000

        def note(topic: str, value: bytes, arrived: float) -> None:
            sent = float(value)
            if sent - started_ms >= WARMUP_S * 1000:
                latencies.append(arrived - sent)

        arrivals = _Arrivals(reader, note)
        producer = make_producer(broker.bootstrap, **{"linger.ms": 1})

        def send(n: int) -> None:
            produce(producer, "clicks", str(time.time() * 1000).encode(), partition=n % PARTITIONS)

        _paced(rate, seconds, send, producer=producer)
        producer.flush(10)
        time.sleep(1.0)
        arrivals.close()
        return _summary(rate, latencies, "message")


def _worker_means(worker: WorkerProcess) -> dict[str, tuple[float, float]]:
    """Per output, the worker's own latency histogram (input message's broker timestamp -> output
    sent), as (sum seconds, count)."""
    return {out: (worker.metric(f"{LATENCY_METRIC}_sum", output=out), worker.metric(f"{LATENCY_METRIC}_count",
                                                                                   output=out))
            for out in OUTPUTS}


def _buckets(worker: WorkerProcess, metric: str, **labels: str) -> list[float]:
    """A histogram's cumulative counts at each of :data:`LATENCY_BUCKETS`."""
    return [worker.metric(f"{metric}_bucket", **labels, le=str(bound)) for bound in LATENCY_BUCKETS]


def _record_buckets(worker: WorkerProcess) -> dict[str, list[float]]:
    """Per agent, the cumulative counts of ``mailpulse_record_seconds`` at each bucket bound."""
    return {agent: _buckets(worker, RECORD_METRIC, agent=agent) for agent in RECORD_AGENTS}


def _commit_figures(worker: WorkerProcess) -> dict[str, list[float]]:
    """Per commit stage, [count, sum seconds, cumulative counts at each bucket bound...]."""
    return {stage: [worker.metric(f"{COMMIT_METRIC}_count", stage=stage),
                    worker.metric(f"{COMMIT_METRIC}_sum", stage=stage), *_buckets(worker, COMMIT_METRIC, stage=stage)]
            for stage in COMMIT_STAGES}


def _bucket_percentile(counts: list[float], q: float) -> float:
    """The ``q`` quantile in ms of a histogram's cumulative bucket counts, linear within a bucket."""
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in zip(LATENCY_BUCKETS, counts, strict=True):
        if cumulative >= rank:
            inside = cumulative - below
            return (lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)) * 1000
        lower, below = bound, cumulative
    return LATENCY_BUCKETS[-1] * 1000


@dataclass
class PipelineLatency:
    outputs: dict[str, Latency]
    worker_mean_ms: dict[str, float]  # the worker's own view, input's produce-time stamp -> output sent
    halves_p50_ms: dict[str, tuple[float, float]]  # p50 of events sent in the 1st / 2nd half of the window
    cpu_share: dict[str, float]  # "worker", "broker", "bench": cores used from the warm-up's end to the last event
    #: per agent, the worker-side time of a record (fetched -> outputs handed to the producer): p50, p99 in ms
    record_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: per commit stage while events were sent: commits, mean ms, p99 ms (the event loop waits for them)
    commit_ms: dict[str, tuple[float, float, float]] = field(default_factory=dict)


def measure_pipeline_latency(rate: int, seconds: float = 10.0) -> PipelineLatency:
    """Through one worker: new people's product views and identifies -> ``segment-changes``
    (``recent_browsers`` entered), ``triggers`` (``welcome``) and ``profiles``."""
    sent_ms: dict[str, float] = {}  # user_id -> produce wall time (ms)
    first: dict[str, dict[str, float]] = {out: {} for out in OUTPUTS}  # output -> user_id -> arrival (ms)
    measured: dict[str, list[str]] = {out: [] for out in OUTPUTS}  # users sent after the warm-up, per output
    counted = set[str]()  # users sent after the warm-up
    matched = dict.fromkeys(OUTPUTS, 0)  # of them, how many each output has seen

    def note(topic: str, value: bytes, arrived: float) -> None:
        msg = orjson.loads(value)
        if topic == SEGMENT_CHANGES and (msg.get("segment"), msg.get("change")) != ("recent_browsers", "entered"):
            return
        if topic == TRIGGERS and msg.get("type") != "welcome":
            return
        seen = first[topic]
        user = msg.get("user_id")
        if isinstance(user, str) and user not in seen:
            seen[user] = arrived
            if user in counted:
                matched[topic] += 1

    with start_broker() as broker:
        worker = start_worker(broker, "bench-latency")
        try:
            wait_assigned([worker], PARTITIONS)
            arrivals = _Arrivals(_reader(broker.bootstrap, OUTPUTS), note)
            producer = make_producer(broker.bootstrap, **{"linger.ms": 1})
            warm_at = time.time() * 1000 + WARMUP_S * 1000
            worker_before: dict[str, tuple[float, float]] = {}
            records_before: dict[str, list[float]] = {}
            commits_before: dict[str, list[float]] = {}
            pids = {"worker": worker.process.pid, "broker": broker.process.pid, "bench": os.getpid()}
            cpu_before: dict[str, float] = {}

            def send(n: int) -> None:
                if not worker_before and time.time() * 1000 >= warm_at:
                    worker_before.update(_worker_means(worker))
                    records_before.update(_record_buckets(worker))
                    commits_before.update(_commit_figures(worker))
                    cpu_before.update({name: process_cpu_seconds(pid) for name, pid in pids.items()},
                                      at=time.perf_counter())
                user = f"lat-{n}"
                now = time.time() * 1000
                event = newcomer_event(n, int(now))
                output = SEGMENT_CHANGES if n % 2 == 0 else TRIGGERS
                sent_ms[user] = now
                if now >= warm_at:
                    counted.add(user)
                    measured[output].append(user)
                    measured[PROFILES].append(user)
                topic = INPUT_TOPICS[n % len(INPUT_TOPICS)]
                produce(producer, topic, orjson.dumps(event), user.encode(),
                        partition=(n // len(INPUT_TOPICS)) % PARTITIONS)

            def tick() -> None:
                heartbeat(producer)

            def drained() -> bool:
                return all(matched[out] >= len(measured[out]) for out in OUTPUTS)

            _paced(rate, seconds, send, every=tick, producer=producer)
            cpu_share = {name: (process_cpu_seconds(pid) - cpu_before[name]) / (time.perf_counter() - cpu_before["at"])
                         for name, pid in pids.items()}
            _drain(drained, tick, producer)
            worker_after = _worker_means(worker)
            records_after = _record_buckets(worker)
            commits_after = _commit_figures(worker)
            producer.flush(10)
            arrivals.close()
        finally:
            worker.stop()

    def latencies(output: str, users: list[str]) -> list[float]:
        seen = first[output]
        return [seen[u] - sent_ms[u] for u in users if u in seen]

    what = {SEGMENT_CHANGES: "recent_browsers change", TRIGGERS: "welcome trigger", PROFILES: "profile"}
    outputs = {out: _summary(rate, latencies(out, measured[out]), what[out], len(measured[out])) for out in OUTPUTS}
    halves: dict[str, tuple[float, float]] = {}
    for out in OUTPUTS:
        users = measured[out]
        parts = [sorted(latencies(out, users[: len(users) // 2])), sorted(latencies(out, users[len(users) // 2:]))]
        halves[out] = (_percentile(parts[0], 0.5) if parts[0] else float("nan"),
                       _percentile(parts[1], 0.5) if parts[1] else float("nan"))
    worker_mean = {}
    for out in OUTPUTS:
        (s0, c0), (s1, c1) = worker_before.get(out, (0.0, 0.0)), worker_after[out]
        worker_mean[out] = (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else float("nan")
    record_ms = {}
    for agent in RECORD_AGENTS:
        before = records_before.get(agent, [0.0] * len(LATENCY_BUCKETS))
        counts = [a - b for a, b in zip(records_after[agent], before, strict=True)]
        record_ms[agent] = (_bucket_percentile(counts, 0.5), _bucket_percentile(counts, 0.99))
    commit_ms = {}
    for stage in COMMIT_STAGES:
        before = commits_before.get(stage, [0.0] * (len(LATENCY_BUCKETS) + 2))
        count, total, *counts = [a - b for a, b in zip(commits_after[stage], before, strict=True)]
        commit_ms[stage] = (count, total / count * 1000 if count else float("nan"), _bucket_percentile(counts, 0.99))
    return PipelineLatency(outputs, worker_mean, halves, cpu_share, record_ms, commit_ms)


def report(rates: tuple[int, ...] = (1000, 5000), seconds: float = 10.0) -> dict[int, dict[str, Latency]]:
    """Prints the latency table; returns, per rate, the hop baseline (``"hop"``) and each output's figures."""
    print(f"\n  latency, input event produced -> the output it causes arrives at a reader (1 worker, "
          f"{seconds:.0f} s per rate, first {WARMUP_S:.0f} s left out; every event a new person, "
          f"product_view and identify alternating;\n"
          f"  upstream heartbeat: a tick with the current time to each of the {len(INPUT_TOPICS) * PARTITIONS} input "
          f"partitions every {TICK_EVERY_S * 1000:.0f} ms = {len(INPUT_TOPICS) * PARTITIONS / TICK_EVERY_S:,.0f} "
          f"ticks/s on top of the events; BENCH_TICK_MS sets it):")
    labels = {SEGMENT_CHANGES: "-> segment-changes (recent_browsers)", TRIGGERS: "-> triggers (welcome)",
              PROFILES: "-> profiles"}
    results: dict[int, dict[str, Latency]] = {}
    for rate in rates:
        hop = measure_hop_latency(rate)
        pipe = measure_pipeline_latency(rate, seconds)
        results[rate] = {"hop": hop, **pipe.outputs}
        print(f"    {rate:>5} events/s  {'broker hop (baseline)':<38}p50 {_ms(hop.p50_ms)}  p99 {_ms(hop.p99_ms)}")
        for out, lat in pipe.outputs.items():
            print(f"    {'':>16}{labels[out]:<38}p50 {_ms(lat.p50_ms)}  p99 {_ms(lat.p99_ms)}  "
                  f"max {_ms(lat.max_ms)}  ({lat.samples:,} of {lat.expected:,} matched; "
                  f"p50 = {lat.p50_ms / hop.p50_ms:.1f} x hop)")
        print(f"    {'':>16}in the worker (input's produce stamp -> output sent), mean: "
              + ", ".join(f"{out} {pipe.worker_mean_ms[out]:.1f} ms" for out in OUTPUTS))
        print(f"    {'':>16}worker-side per record (fetched -> outputs handed to the producer; the rest is broker "
              f"hops and the watermark wait): "
              + ", ".join(f"{agent} p50 {p50:.1f} / p99 {p99:.1f} ms" for agent, (p50, p99) in pipe.record_ms.items()))
        print(f"    {'':>16}offset commits (write_out and flush hold the event loop, waited does not): "
              + ", ".join(f"{stage} {count:.0f} x mean {mean:.1f} / p99 {p99:.1f} ms"
                          for stage, (count, mean, p99) in pipe.commit_ms.items()))
        print(f"    {'':>16}CPU while events were sent (cores; this machine has {os.cpu_count()}): "
              + ", ".join(f"{name} {share:.2f}" for name, share in pipe.cpu_share.items())
              + " (bench: the producer, the ticks and the reader)")
        first_half, second_half = pipe.halves_p50_ms[PROFILES]
        missing = {out: lat.expected - lat.samples for out, lat in pipe.outputs.items() if lat.samples < lat.expected}
        if missing or (second_half > 2 * first_half and second_half - first_half > 50):
            print(f"    {'':>16}NOT KEEPING UP: p50 to profiles {first_half:.0f} ms for events of the window's first "
                  f"half, {second_half:.0f} ms for the second (queueing grows with the run's length)"
                  + (f"; not arrived {DRAIN_S:.0f} s after the last event: "
                     + ", ".join(f"{n:,} {out}" for out, n in missing.items()) if missing else ""))
    return results


if __name__ == "__main__":
    report()
