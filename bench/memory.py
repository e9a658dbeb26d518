"""RSS per profile: one worker's resident memory before and after it holds N profiles.

Each event is an identify of a new person (e-mail, first name, consent), so N events make N
profiles of a realistic small size in the RocksDB-backed table.  The replay ends with a tick on every
input partition (as ``replay --until`` does) and the figure is taken once every event is folded into
its profile: without the tick the watermark never passes the events (no clicks, carts or purchases
partition has a clock), and the worker would hold N parked events and their due times instead.
BENCH_PROFILES lists the sizes (default ``100000``; ``100000,1000000`` for the full figure).

Beside RSS it prints the bytes the profile table stores: the newest value of each key in the table's
changelog, as live profiles (mean bytes of one) and all keys (their identifiers' redirects too) per
profile.
"""

from __future__ import annotations

import os
import time

import orjson
from confluent_kafka import Consumer, TopicPartition

from bench.common import (
    PARTITIONS,
    WorkerProcess,
    produce_all,
    start_broker,
    start_worker,
    wait_assigned,
    wait_processed,
)


def rss_bytes(worker: WorkerProcess) -> int:
    with open(f"/proc/{worker.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


T0 = 1_772_359_200_000


def profile_events(n: int) -> list[bytes]:
    return [orjson.dumps({"event_id": f"m-{i}", "type": "identify", "timestamp": T0 + i, "user_id": f"mem-{i}",
                          "traits": {"first_name": "Ana", "email": f"mem-{i}@example.com", "city": "Lyon"},
                          "consent": {"email": True}}) for i in range(n)]


#: After the last event RSS is sampled this often until it has stayed within STEADY_BYTES for
#: STEADY_S (the worker's next commits write out what is still staged and give the freed memory
#: back; RSS then stays put), or for at most SETTLE_MAX_S.
SAMPLE_EVERY_S, STEADY_S, STEADY_BYTES, SETTLE_MAX_S = 0.5, 4.0, 2**20, 40.0


def settled_rss(worker: WorkerProcess) -> int:
    """RSS once the worker is at rest.  A single reading 2 s after the last event landed before or
    after a commit's write-out by chance (1,455 and 2,646 bytes per profile in two runs of the same
    code); the last of 16 samples over 8 s still did, in one run of four (RSS fell 230 -> 197 MiB
    at 4-5 s, later in another run)."""
    samples: list[int] = []
    steady = int(STEADY_S / SAMPLE_EVERY_S)
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_EVERY_S)
        samples.append(rss_bytes(worker))
        last = samples[-steady:]
        if len(last) == steady and max(last) - min(last) <= STEADY_BYTES:
            break
    return samples[-1]


def newest_values(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """Each key's newest value in ``topic`` (a tombstone drops the key), read to the end of every partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-memory-{time.time_ns()}",
                         "enable.auto.commit": False, "log_level": 0})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        left = {p for p, end in ends.items() if end > 0}
        values: dict[bytes, bytes] = {}
        deadline = time.monotonic() + 600
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    continue
                key, value = msg.key() or b"", msg.value()
                if value is None:
                    values.pop(key, None)
                else:
                    values[key] = value
                partition, offset = msg.partition(), msg.offset()
                if partition is not None and offset is not None and offset + 1 >= ends[partition]:
                    left.discard(partition)
        return values
    finally:
        consumer.close()


def rss_per_profile(n: int) -> tuple[float, int, int, dict[bytes, bytes]]:
    """(bytes per profile, RSS before, RSS after, the profile table's stored values) for a worker that
    took in ``n`` profiles."""
    with start_broker() as broker:
        worker = start_worker(broker, "bench-memory")
        try:
            wait_assigned([worker], PARTITIONS)
            time.sleep(1.0)
            before = rss_bytes(worker)
            produce_all(broker.bootstrap, profile_events(n), until=T0 + n)
            wait_processed([worker], n, timeout=3600, applied=n)
            after = settled_rss(worker)
        finally:
            worker.stop()  # (its last write-out goes to the changelog as it stops)
        stored = newest_values(broker.bootstrap, "bench-memory-profile-state-changelog")
    return (after - before) / n, before, after, stored


def report() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_PROFILES", "100000").split(",")]
    print("\n  memory (RSS of one worker; profiles in the RocksDB table):")
    for n in sizes:
        per, before, after, stored = rss_per_profile(n)
        print(f"    {n:>9,} profiles  RSS {before / 2**20:6.1f} MiB -> {after / 2**20:6.1f} MiB  "
              f"= {per:6.0f} bytes per profile")
        live = [len(value) for value in stored.values() if b'"profile":' in value]
        every = sum(len(key) + len(value) for key, value in stored.items())
        print(f"    {n:>9,} profiles  stored: {len(live):,} live states of {sum(live) / max(len(live), 1):,.0f} "
              f"bytes (mean), {len(stored):,} keys, {every / n:,.0f} bytes per profile (keys and values)")


if __name__ == "__main__":
    report()
