"""``mailpulse run --demo``: synthetic live shop traffic into the input topics, in a background thread."""

from __future__ import annotations

import logging
import threading
import time

import orjson

from streams.tools.generate import live_events
from streams.tools.produce import key_for, make_producer, produce, topic_for

log = logging.getLogger(__name__)


def _feed(bootstrap: str, stop: threading.Event, rate: float, seed: int) -> None:
    producer = make_producer(bootstrap, **{"linger.ms": 5})
    events = live_events(seed, lambda: int(time.time() * 1000))
    interval = 1.0 / rate
    try:
        while not stop.is_set():
            event = next(events)
            produce(producer, topic_for(event), orjson.dumps(event), key_for(event))
            producer.poll(0)
            stop.wait(interval)
    except Exception:  # the demo must never take the worker down
        log.exception("demo feed stopped")
    finally:
        producer.flush(5)


def start_demo_feed(bootstrap: str, stop: threading.Event, rate: float = 20.0, seed: int = 7) -> threading.Thread:
    thread = threading.Thread(target=_feed, args=(bootstrap, stop, rate, seed), name="demo-feed", daemon=True)
    thread.start()
    return thread
