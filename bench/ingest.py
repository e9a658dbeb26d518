"""``make bench``: ingest + profile throughput against a raw consumer, measured in the same run.

Prints events/s of the full pipeline (one worker) and its ratio to a plain confluent-kafka group
consumer that parses the same events with orjson.  BENCH_EVENTS sets the event count (default 100k).
"""

from __future__ import annotations

import os
import time

from bench.common import produce_all, raw_consume_rate, start_broker, start_worker, synthetic_events, wait_processed


def main() -> None:
    n = int(os.environ.get("BENCH_EVENTS", "100000"))
    print(f"bench: {n} events, 4 input topics x 8 partitions, embedded broker, {os.cpu_count()} cores")
    with start_broker() as broker:
        events = synthetic_events(n)
        started = time.perf_counter()
        produce_all(broker.bootstrap, events)
        print(f"  produced in {time.perf_counter() - started:.1f}s")

        raw = raw_consume_rate(broker.bootstrap, n)
        print(f"  raw confluent-kafka consume + orjson parse : {raw:>10,.0f} events/s  (baseline)")

        worker = start_worker(broker, "bench-pipeline")
        try:
            cpu0 = 0.0
            elapsed, handled = wait_processed([worker], n)
            cpu = worker.cpu_seconds() - cpu0
        finally:
            worker.stop()
        rate = handled / elapsed
        print(f"  mailpulse pipeline, 1 worker              : {rate:>10,.0f} events/s  "
              f"= {rate / raw:.3f} x raw   (worker CPU {cpu:.1f}s incl. start-up)")


if __name__ == "__main__":
    main()
