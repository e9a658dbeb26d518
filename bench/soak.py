"""``make soak``: a steady input rate for a long time; RSS and open files of the worker must stay flat.

Events come from the demo generator's live stream (new sessions, returning people, duplicates are
not included); dedupe memory is bounded by its retention and the profile table lives in RocksDB, so
after the warm-up neither RSS nor the count of open files should keep growing.  SOAK_MINUTES (30),
SOAK_RATE (300 events/s), SOAK_RETENTION_MINUTES (10): the worker's dedupe retention, short so that
the event ids a person's profile remembers reach their bound within the run (with the default of 7
days every state would grow for the whole soak: that is retention, not a leak).  Prints a sample per
minute and the growth over the second half.
Every second it also sends a tick with the wall time to every input partition, as a live upstream's
heartbeat would, so the event-time watermark keeps moving.
Scoring runs on the same shortened scale (SOAK_SCORE_MINUTES, 2): a profile is scored that long
after its newest event, then again after 3 and 6 times as long away, so score timers fire,
re-arm and run out within the run (the built-in hour and 1-365 days would not fire in 30 minutes).
Until 2026-11-30 the default was 5: a person's last score timer then fell 30 minutes after their
activity, as long as the whole run, so no timer had run its full course before the end; with 2 the
full course (2, 6, 12 minutes) lies within the first half, before the growth that is reported.
SOAK_BROKER (``kafka://host:port``): run against that broker instead of an embedded one; it must be
an empty cluster, as the worker reads the input topics from their start.

The embedded broker keeps every record in memory and never drops any: each input event costs it
about 6 KiB across the input, internal, changelog and ``profiles`` topics (it reached 19.6 GiB and a
full core after 3M events at 2000/s, and the worker fell behind it).  Hence the modest default rate.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from bench.common import PARTITIONS, ExternalBroker, start_broker, start_worker, wait_assigned
from bench.memory import rss_bytes
from streams.broker import EmbeddedBroker, ensure_topics
from streams.tools.generate import live_events
from streams.tools.produce import key_for, make_producer, produce, send_ticks, topic_for
from streams.topics import COMPACTED_TOPICS, CONTRACT_TOPICS


@contextmanager
def soak_broker(url: str | None) -> Iterator[EmbeddedBroker | ExternalBroker]:
    """The broker at ``url`` (its topics created if missing, as :func:`start_broker` does), or
    (None) an embedded one for the length of the soak."""
    if url is None:
        with start_broker() as broker:
            yield broker
    else:
        external = ExternalBroker(url)
        ensure_topics(external.bootstrap, PARTITIONS, COMPACTED_TOPICS, CONTRACT_TOPICS)
        yield external


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> None:
    minutes = float(os.environ.get("SOAK_MINUTES", "30"))
    rate = int(os.environ.get("SOAK_RATE", "300"))
    retention_minutes = float(os.environ.get("SOAK_RETENTION_MINUTES", "10"))
    score_minutes = float(os.environ.get("SOAK_SCORE_MINUTES", "2"))
    external = os.environ.get("SOAK_BROKER")
    print(f"soak: {minutes:g} min at {rate} events/s, 1 worker, {external or 'embedded broker'}, "
          f"dedupe retention {retention_minutes:g} min, scored {score_minutes:g} min after activity")
    with tempfile.TemporaryDirectory() as config_dir, soak_broker(external) as broker:
        config = Path(config_dir) / "soak.yaml"
        idle_days = [3 * score_minutes / 1440, 6 * score_minutes / 1440]
        config.write_text(f"scoring: {{delay_minutes: {score_minutes}, idle_days: {idle_days}}}\n")
        worker = start_worker(broker, "soak", MAILPULSE_DEDUPE_RETENTION_DAYS=str(retention_minutes / 1440),
                              MAILPULSE_CONFIG=str(config))
        try:
            wait_assigned([worker], PARTITIONS)
            producer = make_producer(broker.bootstrap)
            events = live_events(seed=7, now_ms=lambda: int(time.time() * 1000), users=20_000)
            samples: list[tuple[float, int, int, float]] = []
            sent_at_sample = 0  # what had been sent when the last sample was taken
            started = time.monotonic()
            next_sample = started
            tick = 0.05
            next_tick = started
            sent = 0
            next_heartbeat = started
            last_commits = (0.0, 0.0)  # mailpulse_commit_seconds: sum of both stages, count of commits
            while time.monotonic() - started < minutes * 60:
                if time.monotonic() >= next_heartbeat:  # an upstream heartbeat: every input partition's clock
                    send_ticks(producer, int(time.time() * 1000))
                    next_heartbeat += 1.0
                for _ in range(int(rate * tick)):
                    event = next(events)
                    produce(producer, topic_for(event), orjson.dumps(event), key_for(event))
                    sent += 1
                producer.poll(0)
                if time.monotonic() >= next_sample:
                    pid = worker.process.pid
                    handled = worker.metric("mailpulse_events_applied_total")
                    samples.append((time.monotonic() - started, rss_bytes(worker), open_files(pid), handled))
                    t, rss, fds, done = samples[-1]
                    sent_at_sample = sent
                    scores = worker.metric("mailpulse_scoring_seconds_count")
                    rocksdb = worker.metric("mailpulse_rocksdb_memory_bytes")
                    # both stages of each commit (sums over stages; each commit counted once per stage)
                    commits = (worker.metric("mailpulse_commit_seconds_sum"),
                               worker.metric("mailpulse_commit_seconds_count", stage="flush"))
                    commit_ms = (commits[0] - last_commits[0]) / (commits[1] - last_commits[1]) * 1000 \
                        if commits[1] > last_commits[1] else 0.0
                    last_commits = commits
                    print(f"  {t / 60:5.1f} min  sent {sent:>10,}  applied {done:>12,.0f}  scores {scores:>9,.0f}  "
                          f"RSS {rss / 2**20:7.1f} MiB (RocksDB budget in use {rocksdb / 2**20:5.1f})  "
                          f"open files {fds}  not yet read {worker.metric('mailpulse_consumer_lag'):>7,.0f}  "
                          f"commit {commit_ms:5.0f} ms", flush=True)
                    next_sample += 60
                next_tick += tick
                time.sleep(max(0.0, next_tick - time.monotonic()))
        finally:
            worker.stop()
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    if len(half) >= 2:
        rss_growth = (half[-1][1] - half[0][1]) / 2**20
        fd_growth = half[-1][2] - half[0][2]
        lag = sent_at_sample - samples[-1][3]  # (``sent`` went on for up to a minute after it)
        slope = _slope([(t / 60, rss / 2**20) for t, rss, _, _ in half]) * 10
        low, high = min(s[1] for s in half) / 2**20, max(s[1] for s in half) / 2**20
        print(f"second half: RSS {rss_growth:+.1f} MiB (first to last sample; least-squares trend "
              f"{slope:+.1f} MiB per 10 min, range {low:.1f}-{high:.1f} MiB), open files {fd_growth:+d}; "
              f"unhandled at the last sample {lag:,.0f} events")


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x.  Why besides first-to-last: RSS moves +-10 MiB from minute
    to minute with the write-outs, so the difference of two single samples says little about a trend."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


if __name__ == "__main__":
    main()
