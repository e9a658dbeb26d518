"""Late events of a live shop where people log in mid-session.

Each person views two products under an anonymous id, identifies (user id, the anonymous id and an
e-mail: the anonymous profile merges into the user's), then views, adds to the cart and views
again under the anonymous id alone. Those last three events reach a redirect and are forwarded to
the person's root profile, one more hop. Events are stamped with the wall clock and paced; an
upstream heartbeat ticks every input partition every ``BENCH_TICK_MS`` (100) ms, as in
``bench/latency.py``. Prints how many events the worker counted late
(``mailpulse_late_events_total``): a late event is applied out of its time order.

``python -m bench.forwarded [rate] [seconds]`` (1000, 15). BENCH_WINDOW (100): people whose events
interleave, so a person's events are that many events apart. BENCH_REPLACE_AT (unset): that many
seconds into the run the worker is stopped and a new one started (with an empty data directory: it
recovers the tables from their changelogs), which then catches up on what came meanwhile; the late
events of both are summed (the first one's read just before it stops). The worker takes
``MAILPULSE_*`` from the environment, e.g. ``MAILPULSE_CLOCK_DELAY_MS=0``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import orjson

from bench.common import PARTITIONS, start_broker, start_worker, wait_assigned, wait_processed
from bench.latency import _paced, heartbeat
from schemas.events import INPUT_TOPICS
from streams.tools.produce import key_for, make_producer, produce, topic_for


def login_events(n: int, window: int) -> list[dict[str, Any]]:
    """At least ``n`` events (unstamped) of people logging in mid-session, ``window`` people at a time."""
    people: list[list[dict[str, Any]]] = []
    k = 0
    while len(people) * 6 < n:
        anonymous, user = f"anon-{k}", f"user-{k}"
        people.append([
            {"event_id": f"v1-{k}", "type": "product_view", "anonymous_id": anonymous, "product_id": f"sku-{k % 300}"},
            {"event_id": f"v2-{k}", "type": "product_view", "anonymous_id": anonymous, "product_id": f"sku-{k % 301}"},
            {"event_id": f"i-{k}", "type": "identify", "user_id": user, "anonymous_id": anonymous,
             "traits": {"first_name": "Ana", "email": f"{user}@example.com"}, "consent": {"email": True}},
            {"event_id": f"v3-{k}", "type": "product_view", "anonymous_id": anonymous, "product_id": f"sku-{k % 302}"},
            {"event_id": f"k-{k}", "type": "cart_add", "anonymous_id": anonymous, "product_id": f"sku-{k % 303}",
             "price": 5.0},
            {"event_id": f"v4-{k}", "type": "product_view", "anonymous_id": anonymous, "product_id": f"sku-{k % 304}"},
        ])
        k += 1
    events: list[dict[str, Any]] = []
    for start in range(0, len(people), window):
        block = people[start:start + window]
        for step in range(6):
            events += [person[step] for person in block]
    return events


def main() -> None:
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 15.0
    events = login_events(int(rate * seconds) + 10, int(os.environ.get("BENCH_WINDOW", "100")))
    replace_at = float(os.environ.get("BENCH_REPLACE_AT", "0"))
    with start_broker() as broker:
        workers = [start_worker(broker, "bench-forwarded")]
        stopped_late: dict[str, float] = dict.fromkeys(INPUT_TOPICS, 0.0)

        def replace() -> None:
            time.sleep(replace_at)
            old = workers[0]
            for topic in INPUT_TOPICS:
                stopped_late[topic] += old.metric("mailpulse_late_events_total", topic=topic)
            old.stop()
            workers[0] = start_worker(broker, "bench-forwarded")

        try:
            wait_assigned(workers, PARTITIONS)
            producer = make_producer(broker.bootstrap, **{"linger.ms": 1})

            def send(n: int) -> None:
                event = dict(events[n], timestamp=int(time.time() * 1000))
                produce(producer, topic_for(event), orjson.dumps(event), key_for(event))

            replacing = threading.Thread(target=replace, daemon=True)
            if replace_at:
                replacing.start()
            sent = _paced(rate, seconds, send, every=lambda: heartbeat(producer), producer=producer)
            producer.flush(10)
            if replace_at:
                replacing.join()
            worker = workers[0]
            time.sleep(5)
            if replace_at:  # until the new worker has caught up
                wait_processed([worker], int(sent * 0.5), timeout=120)
                time.sleep(5)
            late = {topic: worker.metric("mailpulse_late_events_total", topic=topic) + stopped_late[topic]
                    for topic in INPUT_TOPICS}
            print(f"{sent:,} events at {rate:,}/s: {worker.metric('mailpulse_events_total', outcome='processed'):,.0f} "
                  f"processed{' by the last worker' if replace_at else ''}, {sum(late.values()):,.0f} late ("
                  + ", ".join(f"{topic} {count:,.0f}" for topic, count in late.items())
                  + f"), {worker.metric('mailpulse_profile_merges_total'):,.0f} merges")
        finally:
            workers[0].stop()


if __name__ == "__main__":
    main()
