"""The hostile messages of a bad upstream deploy, among good traffic, through one real worker: the
worker keeps going, each hostile message is dead-lettered with a code, every good event is processed
once, and people who share a placeholder identifier stay apart."""

from __future__ import annotations

import random
import urllib.request
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.events import INPUT_TOPICS, TOPIC_OF_TYPE
from streams.domain.identity import profile_id_for

from .conftest import PARTITIONS, latest_by_key, read_topic
from .expected import UNTIL, expected_run
from .test_pipeline import _many_events

pytestmark = pytest.mark.integration


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"x": value}
    return value


def hostile() -> list[tuple[str, dict[str, Any], str]]:
    """(topic, message, expected dead-letter code) of each hostile message."""
    identify = {"type": "identify", "timestamp": 1772359300000, "user_id": "h-9", "email": "h9@example.com"}
    future = [("clicks" if n % 4 == 0 else INPUT_TOPICS[n % 4],
               {"event_id": f"f-{n}", "type": "page_view", "timestamp": "2100-01-01T00:00:00Z", "user_id": "h-2"},
               "future_timestamp") for n in range(4 * PARTITIONS)]
    return [
        ("clicks", {"event_id": "t1", "type": [], "timestamp": 1767225600000, "user_id": "h1"}, "unknown_type"),
        ("clicks", {"event_id": "t2", "type": {"a": 1}, "timestamp": 1767225600000, "user_id": "h1"}, "unknown_type"),
        ("identities", {**identify, "event_id": "n-300", "traits": {}}, "schema"),  # produced nested 300 deep
        ("identities", {**identify, "event_id": "n-1100", "traits": {}}, "not_json"),  # past orjson's depth 1024
        ("identities", {**identify, "event_id": "n-252", "traits": _nested(252)}, "schema"),
        ("identities", {**identify, "event_id": "n-40", "traits": {"first_name": "H", "deep": _nested(40)}}, "schema"),
        ("purchases", {"event_id": "big-1", "type": "purchase", "timestamp": 1772359300000, "user_id": "h-3",
                       "order_id": "o-big-1", "total": 1e308}, "schema"),
        ("purchases", {"event_id": "big-2", "type": "purchase", "timestamp": 1772359300001, "user_id": "h-3",
                       "order_id": "o-big-2", "total": 1e308}, "schema"),
        *future,
    ]


def test_hostile_messages_among_good_traffic_stop_nothing(broker, start_worker) -> None:
    rng = random.Random(20)
    good = _many_events(2000, 100)
    # 400 people, each with their own user id and e-mail, all with a tag manager's "undefined"
    people = [{"event_id": f"p-{n}", "type": "identify", "timestamp": 1772359200000 + n * 1000,
               "user_id": f"person-{n}", "email": f"person{n}@example.org", "anonymous_id": "undefined",
               "traits": {"first_name": f"P{n}"}} for n in range(400)]
    expected = expected_run(good + people)
    bad = hostile()
    worker = start_worker()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 2_000_000})
    for topic, message, _ in bad:  # first, as after a bad upstream deploy; nested ones may not even encode
        raw = orjson.dumps(message)
        if message["event_id"] in ("n-300", "n-1100"):  # deeper than orjson encodes: written by hand
            depth = int(message["event_id"][2:])
            raw = raw.replace(b'"traits":{}', b'"traits":' + b'{"x":' * depth + b"1" + b"}" * depth)
        producer.produce(topic, raw, partition=rng.randrange(PARTITIONS) if not message["event_id"].startswith("f-")
                         else int(message["event_id"][2:]) % PARTITIONS)
    for event in good + people:
        producer.produce(TOPIC_OF_TYPE[event["type"]], orjson.dumps(event), partition=rng.randrange(PARTITIONS))
    for topic in INPUT_TOPICS:
        for partition in range(PARTITIONS):
            producer.produce(topic, orjson.dumps({"type": "tick", "timestamp": UNTIL}), partition=partition)
    assert producer.flush(30) == 0

    worker.wait_metric("mailpulse_events_total", len(good) + len(people), outcome="processed")
    letters = read_topic(broker.bootstrap, "dead-letter", lambda m: len(m) >= len(bad))
    got = {}
    for _, letter in letters:
        raw = letter["raw"]
        event_id = raw.split('"event_id":"', 1)[1].split('"', 1)[0]
        got[event_id] = letter["error"]["code"]
    assert got == {message["event_id"]: code for _, message, code in bad}
    # every good event processed once; the 400 people are 400 profiles; the far-future events moved no clock
    profiles = latest_by_key(read_topic(broker.bootstrap, "profiles",
                                        lambda m: latest_by_key(m) == expected.profiles, timeout=120))
    assert profiles == expected.profiles
    people_profiles = [profiles[profile_id_for(f"u:person-{n}").encode()] for n in range(400)]
    assert all(p["identifiers"]["anonymous_ids"] == [] and len(p["identifiers"]["emails"]) == 1
               for p in people_profiles)
    assert worker.metric("mailpulse_events_total", outcome="processed") == len(good) + len(people)
    assert worker.metric("mailpulse_identifiers_blocked_total") == 400
    # and it says so: alive, ready, running
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}{path}", timeout=5) as response:
            assert response.status == 200
    assert worker.metric("mailpulse_worker_state", state="running") == 1


def test_a_profile_grown_past_the_broker_message_limit_stops_nothing(broker, start_worker) -> None:
    """Each message is under the input limit, but together one person's traits would grow past the
    broker's 1 MB message limit: the worker keeps going, every good event after them is processed,
    and the profile is published within the limit."""
    big = [{"event_id": f"big-{n}", "type": "identify", "timestamp": 1772359200000 + n * 1000, "user_id": "big",
            "email": "big@example.com", "traits": {f"k{n}": ["x" * 4000] * 14}} for n in range(40)]
    good = _many_events(300, 30)
    worker = start_worker()
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for event in big + good:
        producer.produce(TOPIC_OF_TYPE[event["type"]], orjson.dumps(event), partition=0)
    for topic in INPUT_TOPICS:
        for partition in range(PARTITIONS):
            producer.produce(topic, orjson.dumps({"type": "tick", "timestamp": UNTIL}), partition=partition)
    assert producer.flush(30) == 0
    worker.wait_metric("mailpulse_events_total", len(big) + len(good), outcome="processed", timeout=120)
    key = profile_id_for("u:big").encode()
    profiles = latest_by_key(read_topic(broker.bootstrap, "profiles", lambda m: key in latest_by_key(m)))
    assert len(orjson.dumps(profiles[key])) < 1_000_000
    assert worker.metric("mailpulse_profile_entries_dropped_total", collection="traits") > 0
    assert worker.process.poll() is None
