"""Shared pieces of the benchmarks: a broker, synthetic input, a raw-consumer baseline, a worker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Consumer

from schemas.events import INPUT_TOPICS
from streams.broker import EmbeddedBroker, ensure_topics, free_port, start_embedded_broker
from streams.settings import bootstrap_servers
from streams.tools.produce import key_for, make_producer, produce, send_ticks, topic_for
from streams.topics import COMPACTED_TOPICS, CONTRACT_TOPICS

PARTITIONS = 8
MAILPULSE = str(Path(sys.executable).with_name("mailpulse"))


def start_broker() -> EmbeddedBroker:
    broker = start_embedded_broker(free_port())
    ensure_topics(broker.bootstrap, PARTITIONS, COMPACTED_TOPICS, CONTRACT_TOPICS)
    return broker


@dataclass(frozen=True)
class ExternalBroker:
    """A broker the bench did not start (``kafka://host:port[,host:port]``), addressed like
    :class:`EmbeddedBroker`."""

    url: str

    @property
    def bootstrap(self) -> str:
        return bootstrap_servers(self.url)


def synthetic_events(n: int, users: int = 20_000, bad_every: int = 0) -> list[bytes]:
    """Small realistic input events (clicks, carts, purchases, identifies); every ``bad_every``-th malformed."""
    out: list[bytes] = []
    t0 = 1_772_359_200_000
    for i in range(n):
        if bad_every and i % bad_every == 0:
            out.append(b'{"type": "page_view", "timestamp": "garbage"' if i % 2 else b"not json at all")
            continue
        user = f"u-{(i * 7919) % users}"
        ts = t0 + i * 50
        r = i % 20
        if r < 13:
            ev = {"event_id": f"c-{i}", "type": "product_view", "timestamp": ts, "user_id": user,
                  "product_id": f"sku-{i % 300}", "category": "books"}
        elif r < 17:
            ev = {"event_id": f"k-{i}", "type": "cart_add", "timestamp": ts, "user_id": user,
                  "product_id": f"sku-{i % 300}", "price": 12.5}
        elif r < 19:
            ev = {"event_id": f"o-{i}", "type": "purchase", "timestamp": ts, "user_id": user,
                  "order_id": f"o-{i}", "total": 25.0}
        else:
            ev = {"event_id": f"i-{i}", "type": "identify", "timestamp": ts, "user_id": user,
                  "traits": {"first_name": "Ana", "email": f"{user}@example.com"}, "consent": {"email": True}}
        out.append(orjson.dumps(ev))
    return out


#: BENCH_MIX: ``bench`` (the default above), ``people`` (the issue's shop traffic: a person every 4
#: events, 70% product views over 2,000 SKUs, 15% cart adds, 5% purchases, 10% identifies with an
#: e-mail that links a new key), ``views`` (``people`` with product views only) or ``identifies``
#: (``views`` with every tenth event an ``identify`` of that mix: an identify's cost is then
#: (cost of ``identifies`` - 0.9 x cost of ``views``) / 0.1 per event) or ``newcomers`` (the latency
#: bench's traffic, ``bench/latency.py``: every event a new person, a product view and an identify with
#: an e-mail and consent alternating).
MIXES = ("bench", "people", "views", "identifies", "newcomers")


def newcomer_event(n: int, ts: int) -> dict[str, object]:
    """The ``n``-th event of the latency bench's traffic (``newcomers``), of a new person ``lat-<n>``: a
    product view when ``n`` is even (its profile enters ``recent_browsers``), else an identify with an
    e-mail and consent (a ``welcome``)."""
    user = f"lat-{n}"
    if n % 2 == 0:
        return {"event_id": user, "type": "product_view", "timestamp": ts, "user_id": user,
                "product_id": f"sku-{n % 300}", "category": "books"}
    return {"event_id": user, "type": "identify", "timestamp": ts, "user_id": user,
            "traits": {"email": f"{user}@example.com"}, "consent": {"email": True}}


def mixed_events(n: int, mix: str | None = None) -> list[bytes]:
    """The events of ``mix`` (default: BENCH_MIX, else ``bench``)."""
    mix = mix or os.environ.get("BENCH_MIX", "bench")
    if mix == "bench":
        return synthetic_events(n)
    if mix not in MIXES:
        raise SystemExit(f"BENCH_MIX must be one of {', '.join(MIXES)}")
    people = max(n // 4, 1)
    out: list[bytes] = []
    t0 = 1_772_359_200_000
    if mix == "newcomers":
        return [orjson.dumps(newcomer_event(i, t0 + i * 50)) for i in range(n)]
    for i in range(n):
        user = f"p-{(i * 7919) % people}"
        ts = t0 + i * 50
        r = i % 20 if mix == "people" else 19 if mix == "identifies" and i % 10 == 9 else 0
        ev: dict[str, object]
        if r < 14:
            ev = {"event_id": f"c-{i}", "type": "product_view", "timestamp": ts, "user_id": user,
                  "product_id": f"sku-{(i * 31) % 2000}"}
        elif r < 17:
            ev = {"event_id": f"k-{i}", "type": "cart_add", "timestamp": ts, "user_id": user,
                  "product_id": f"sku-{(i * 31) % 2000}", "price": 12.5}
        elif r < 18:
            ev = {"event_id": f"o-{i}", "type": "purchase", "timestamp": ts, "user_id": user,
                  "order_id": f"o-{i}", "total": 25.0}
        else:
            ev = {"event_id": f"i-{i}", "type": "identify", "timestamp": ts, "user_id": user,
                  "email": f"{user}@example.com", "traits": {"first_name": "Ana"}, "consent": {"email": True}}
        out.append(orjson.dumps(ev))
    return out


def produce_all(bootstrap: str, events: list[bytes], until: int | None = None) -> None:
    """Produces ``events`` by type; with ``until``, then a tick at that time to every input partition
    (as ``replay --until`` does), so the watermark releases every event."""
    producer = make_producer(bootstrap)
    for raw in events:
        try:
            ev = orjson.loads(raw)
            topic, key = topic_for(ev), key_for(ev)
        except Exception:
            topic, key = "clicks", None
        produce(producer, topic, raw, key)
    if until is not None:
        send_ticks(producer, until)
    producer.flush(120)


def events_end(n: int) -> int:
    """A time after every event of :func:`synthetic_events` (n events)."""
    return 1_772_359_200_000 + n * 50 + 1


def raw_consume_rate(bootstrap: str, expected: int, topics: tuple[str, ...] = INPUT_TOPICS) -> float:
    """Events/s of a plain confluent-kafka group consumer + orjson parse (the ceiling baseline)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "log_level": 0})
    consumer.subscribe(list(topics))
    seen, started = 0, 0.0
    deadline = time.monotonic() + 300
    while seen < expected and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            if msg.error() is None:
                if not started:
                    started = time.perf_counter()
                with contextlib.suppress(orjson.JSONDecodeError):
                    orjson.loads(msg.value() or b"")
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    metrics_port: int
    data_dir: Path | None = None  # removed when the worker stops

    def metric(self, name: str, **labels: str) -> float:
        try:
            # only the named family (prometheus_client's ``name[]`` filter): a full render per poll
            # cost the polled worker ~5% of its CPU (py-spy), which bare Faust is not charged
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics?name[]={name}",
                                          timeout=2).read()
        except OSError:
            return 0.0
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        if self.data_dir is not None:  # each bench worker's tables: ~0.4 GiB after the 1M memory run
            shutil.rmtree(self.data_dir, ignore_errors=True)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_worker(broker: EmbeddedBroker | ExternalBroker, app_id: str, **env: str) -> WorkerProcess:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="mailpulse-bench-")
    full_env = {**os.environ, "MAILPULSE_BROKER": broker.url, "MAILPULSE_DATA_DIR": data_dir,
                "MAILPULSE_METRICS_PORT": str(port), "MAILPULSE_APP_ID": app_id,
                "MAILPULSE_PARTITIONS": str(PARTITIONS), **env}
    process = subprocess.Popen([MAILPULSE, "run"], env=full_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    return WorkerProcess(process, port, Path(data_dir))


@dataclass
class Measured:
    seconds: float  # from the first handled event to the last
    handled: float
    cpu: list[float]  # CPU seconds each worker process used in that window
    broker_cpu: float | None = None  # CPU seconds the embedded broker used in it (None: not ours to see)

    @property
    def rate(self) -> float:
        return self.handled / self.seconds


def wait_processed(workers: list[WorkerProcess], expected: int, timeout: float = 600.0,
                   applied: int | None = None, scored: int | None = None,
                   broker: EmbeddedBroker | ExternalBroker | None = None) -> Measured:
    """Poll the workers' ``mailpulse_events_total`` until ``expected`` events are handled and (when
    given) ``mailpulse_events_applied_total`` until ``applied`` events are folded into profiles,
    i.e. released by the watermark: the whole work, not only the parking of events; and (when given)
    until ``scored`` profiles were scored (``mailpulse_scoring_seconds_count``).  With an embedded
    ``broker``, also its CPU in the same window: the two share the machine's cores."""
    first = 0.0
    cpu_first: list[float] = []
    broker_pid = broker.process.pid if isinstance(broker, EmbeddedBroker) else None
    broker_first = 0.0
    deadline = time.monotonic() + timeout
    done = 0.0
    while time.monotonic() < deadline:
        done = sum(w.metric("mailpulse_events_total") for w in workers)
        if done and not first:
            first = time.perf_counter()
            cpu_first = [w.cpu_seconds() for w in workers]
            broker_first = process_cpu_seconds(broker_pid) if broker_pid is not None else 0.0
        if done >= expected and (applied is None or sum(w.metric("mailpulse_events_applied_total")
                                                         for w in workers) >= applied) \
                and (scored is None or sum(w.metric("mailpulse_scoring_seconds_count") for w in workers) >= scored):
            elapsed = time.perf_counter() - first
            broker_cpu = process_cpu_seconds(broker_pid) - broker_first if broker_pid is not None else None
            return Measured(elapsed, done, [w.cpu_seconds() - c for w, c in zip(workers, cpu_first, strict=True)],
                            broker_cpu)
        time.sleep(0.1)  # each poll renders every metric in the worker: keep it light
    raise RuntimeError(f"pipeline handled {done} of {expected} events within {timeout}s")


def wait_assigned(workers: list[WorkerProcess], partitions: int, timeout: float = 120.0) -> None:
    """Until the workers together own every input partition, each owns some, and that holds for 2 s."""
    total = partitions * len(INPUT_TOPICS)
    stable_since = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = [w.metric("mailpulse_assigned_partitions", topic=t) for w in workers for t in INPUT_TOPICS]
        per_worker = [sum(owned[i * len(INPUT_TOPICS):(i + 1) * len(INPUT_TOPICS)]) for i in range(len(workers))]
        if sum(per_worker) == total and all(per_worker):
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= 2.0:
                return
        else:
            stable_since = 0.0
        time.sleep(0.1)
    raise RuntimeError(f"workers did not share the {total} input partitions within {timeout}s")


def bare_faust_rate(broker: EmbeddedBroker, expected: int) -> dict[str, float]:
    """Events/s and CPU seconds of a stock Faust pass-through agent over the input topics."""
    with tempfile.TemporaryDirectory(prefix="mailpulse-bench-bare-") as tmp:
        result = Path(tmp) / "result.json"
        env = {**os.environ, "BENCH_EVENTS": str(expected), "BENCH_RESULT": str(result),
               "BENCH_BROKER": broker.url, "BENCH_WEB_PORT": str(free_port()), "BENCH_DATA_DIR": tmp}
        process = subprocess.run([sys.executable, "-m", "bench.bare_faust"], env=env, timeout=600,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if not result.exists():
            raise RuntimeError(f"bare Faust baseline exited {process.returncode} without a result")
        measured: dict[str, float] = orjson.loads(result.read_bytes())
        return measured
