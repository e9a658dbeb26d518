"""Baseline for ``make bench``: a stock Faust agent that only counts the raw input events.

Run as a worker process by :func:`bench.common.bare_faust_rate`; it writes its events/s and the CPU
seconds it used to ``BENCH_RESULT`` and exits once ``BENCH_EVENTS`` events have arrived.  Stock
``faust.App`` on purpose (not :mod:`streams.consumer`): this is what a plain Faust agent achieves.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import faust
import orjson

from schemas.events import INPUT_TOPICS


def main() -> None:
    expected = int(os.environ["BENCH_EVENTS"])
    result = Path(os.environ["BENCH_RESULT"])
    app = faust.App(f"bench-bare-{time.time_ns()}", broker=os.environ["BENCH_BROKER"], store="memory://",
                    web_enabled=False, web_port=int(os.environ["BENCH_WEB_PORT"]), web_host="127.0.0.1",
                    autodiscover=False, consumer_auto_offset_reset="earliest",
                    broker_session_timeout=10, broker_heartbeat_interval=2.5,
                    datadir=os.environ["BENCH_DATA_DIR"])
    topic = app.topic(*INPUT_TOPICS, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    seen = 0
    started = cpu_started = 0.0

    async def passthrough(stream: Any) -> None:
        nonlocal seen, started, cpu_started
        async for _ in stream:
            if not seen:
                started, cpu_started = time.perf_counter(), time.process_time()
            seen += 1
            if seen >= expected:
                elapsed = time.perf_counter() - started
                result.write_bytes(orjson.dumps({"rate": seen / elapsed, "cpu": time.process_time() - cpu_started,
                                                 "seconds": elapsed}))
                os._exit(0)

    app.agent(topic, name="passthrough")(passthrough)
    sys.argv = ["bench-bare", "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
