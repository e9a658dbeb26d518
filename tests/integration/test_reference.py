"""The reference model (tests/reference/model.py) against a live worker on the embedded broker:
histories replayed in time order per partition, as `mailpulse replay` does, then a tick at the end;
every trigger and built-in segment change must equal the reference's.  No erasures here: an erase
acts when it is received, so in a live run what came before it may already be out (the unit test
compares them in batch)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.events import INPUT_TOPICS, TOPIC_OF_TYPE
from tests.reference import model
from tests.unit.test_reference import UNTIL, person_history

from .conftest import PARTITIONS, read_topic

pytestmark = pytest.mark.integration


def test_a_live_worker_agrees_with_the_reference_model(broker, start_worker, tmp_path) -> None:
    rng = random.Random(7)
    histories = {f"u-{n}": person_history(rng, n, erase=False) for n in range(60)}
    expected = {user: model.run(history, UNTIL) for user, history in histories.items()}
    want_triggers = sum(len(e.triggers) for e in expected.values())
    want_changes = sum(len(e.changes) for e in expected.values())
    assert want_triggers > 50 and want_changes > 100

    config = tmp_path / "config.yaml"
    config.write_text("scoring: {enabled: false}\n")  # the reference has no predictions
    worker = start_worker(MAILPULSE_CONFIG=str(config))
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    events = sorted((e for h in histories.values() for e in h), key=lambda e: model.ms(e["timestamp"]))
    for event in events:
        producer.produce(TOPIC_OF_TYPE[event["type"]], orjson.dumps(event), partition=rng.randrange(PARTITIONS))
    for topic in INPUT_TOPICS:
        for partition in range(PARTITIONS):
            producer.produce(topic, orjson.dumps({"type": "tick", "timestamp": UNTIL}), partition=partition)
    assert producer.flush(30) == 0

    triggers = read_topic(broker.bootstrap, "triggers", lambda m: len(m) >= want_triggers, timeout=120)
    changes = read_topic(broker.bootstrap, "segment-changes", lambda m: sum(
        1 for _, c in m if c["segment"] in model.SEGMENTS) >= want_changes, timeout=120)
    got_triggers: dict[str, list[Any]] = defaultdict(list)
    for _, t in triggers:
        got_triggers[t["user_id"]].append((t["type"], model.ms(t["at"]), model.ms(t["send_at"])))
    got_changes: dict[str, list[Any]] = defaultdict(list)
    for _, c in changes:
        if c["segment"] in model.SEGMENTS:
            got_changes[c["user_id"]].append((c["segment"], c["change"], model.ms(c["at"])))
    for user, history in histories.items():
        engaged = any(e["type"] in ("email_open", "email_click") for e in history)
        want = sorted((k, a, None if engaged else s) for k, a, s in expected[user].triggers)
        assert sorted((k, a, None if engaged else s) for k, a, s in got_triggers[user]) == want, user
        assert sorted(got_changes[user]) == sorted(expected[user].changes), user

    # the metrics move as the history says
    unique = {e["event_id"] for e in events}
    worker.wait_metric("mailpulse_events_total", len(unique), outcome="processed")
    # the other copy of an event may come on another input partition, a moment later
    worker.wait_metric("mailpulse_events_total", len(events) - len(unique), outcome="duplicate")
    assert worker.metric("mailpulse_events_total", outcome="processed") == len(unique)
    assert worker.metric("mailpulse_events_total", outcome="duplicate") == len(events) - len(unique)
    assert worker.metric("mailpulse_dead_letters_total") == 0
    assert worker.metric("mailpulse_profile_merges_total") == 0
    per_type = Counter(kind for e in expected.values() for kind, _, _ in e.triggers)
    for kind in ("cart_abandoned", "browse_abandoned", "post_purchase", "winback", "birthday", "welcome"):
        assert worker.metric("mailpulse_triggers_total", type=kind) == per_type[kind], kind
    held = Counter((kind, reason) for e in expected.values() for kind, _, reason in e.suppressed)
    assert held and sum(held.values()) == worker.metric("mailpulse_triggers_suppressed_total")
    for (kind, reason), n in held.items():
        assert worker.metric("mailpulse_triggers_suppressed_total", type=kind, reason=reason) == n, (kind, reason)
    moves = Counter((segment, change) for e in expected.values() for segment, change, _ in e.changes)
    for (segment, change), n in moves.items():
        assert worker.metric("mailpulse_segment_changes_total", segment=segment, change=change) == n
    deferred = sum(1 for _, t in triggers if t["send_at"] != t["at"])
    assert deferred > 0 and worker.metric("mailpulse_triggers_deferred_total") == deferred
    assert worker.metric("mailpulse_profiles_written_total") >= len(histories)
    worker.stop()
