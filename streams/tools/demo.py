"""``mailpulse run --demo``: synthetic live shop traffic into the input topics, in a background thread.

The demo shop runs on its own clock, :data:`DEMO_SPEED` times faster than the wall clock, so a
newcomer sees time-based outcomes within a minute: a cart left alone is ``cart_abandoned`` after 30
shop minutes = 30 s.  Once a second it also sends a ``tick`` with the shop time to every input
partition, as a live upstream's heartbeat would: the event-time watermark then moves even on
partitions that carried nothing (contract section 4).
"""

from __future__ import annotations

import logging
import threading
import time

import orjson

from streams.tools.generate import live_events
from streams.tools.produce import key_for, make_producer, produce, send_ticks, topic_for

log = logging.getLogger(__name__)

#: Shop seconds per wall-clock second.
DEMO_SPEED = 60
#: How far behind the wall clock the shop clock starts.  The worker dead-letters events more than
#: ``time.max_future_minutes`` (default 24 h) ahead of its wall clock (``future_timestamp``); at 60x
#: the shop clock gains 59 h per hour, so starting 30 days back keeps the demo valid for ~12.6 hours.
DEMO_HEAD_START_MS = 30 * 86_400_000


def shop_time(started_ms: int, now_ms: int, speed: float = DEMO_SPEED) -> int:
    """The shop clock at wall time ``now_ms`` of a demo started at ``started_ms``."""
    return started_ms - DEMO_HEAD_START_MS + int((now_ms - started_ms) * speed)


def _feed(bootstrap: str, stop: threading.Event, rate: float, seed: int, speed: float) -> None:
    producer = make_producer(bootstrap, **{"linger.ms": 5})
    started = int(time.time() * 1000)

    def shop_now() -> int:
        return shop_time(started, int(time.time() * 1000), speed)

    events = live_events(seed, shop_now)
    interval = 1.0 / rate
    next_tick = time.monotonic()
    try:
        while not stop.is_set():
            event = next(events)
            produce(producer, topic_for(event), orjson.dumps(event), key_for(event))
            if time.monotonic() >= next_tick:
                send_ticks(producer, shop_now())
                next_tick += 1.0
            producer.poll(0)
            stop.wait(interval)
    except Exception:  # the demo must never take the worker down
        log.exception("demo feed stopped")
    finally:
        producer.flush(5)


def start_demo_feed(bootstrap: str, stop: threading.Event, rate: float = 20.0, seed: int = 7,
                    speed: float = DEMO_SPEED) -> threading.Thread:
    thread = threading.Thread(target=_feed, args=(bootstrap, stop, rate, seed, speed), name="demo-feed",
                              daemon=True)
    thread.start()
    return thread
