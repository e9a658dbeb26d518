"""RSS per profile: one worker's resident memory before and after it holds N profiles.

Each event is an identify of a new person (e-mail, first name, consent), so N events make N
profiles of a realistic small size in the RocksDB-backed table.  The replay ends with a tick on every
input partition (as ``replay --until`` does) and the figure is taken once every event is folded into
its profile: without the tick the watermark never passes the events (no clicks, carts or purchases
partition has a clock), and the worker would hold N parked events and their due times instead.
BENCH_PROFILES lists the sizes (default ``100000``; ``100000,1000000`` for the full figure).
"""

from __future__ import annotations

import os
import time

import orjson

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


def rss_per_profile(n: int) -> tuple[float, int, int]:
    """(bytes per profile, RSS before, RSS after) for a worker that took in ``n`` profiles."""
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
            worker.stop()
    return (after - before) / n, before, after


def report() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_PROFILES", "100000").split(",")]
    print("\n  memory (RSS of one worker; profiles in the RocksDB table):")
    for n in sizes:
        per, before, after = rss_per_profile(n)
        print(f"    {n:>9,} profiles  RSS {before / 2**20:6.1f} MiB -> {after / 2**20:6.1f} MiB  "
              f"= {per:6.0f} bytes per profile")


if __name__ == "__main__":
    report()
