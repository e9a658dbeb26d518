"""Triggers and segment changes end to end on the embedded broker, guardrails included.

One scenario, run in stages on one broker (a worker start costs ~10 s, so the stages share it):

1. ``first``: E's purchase is produced directly, then ticks at 08:10, then the history file is
   replayed with ``--until`` UNTIL (E's cart add, stamped 08:00, arrives late: after its purchase).
2. ``again``: the same file and the same ``--until`` once more.
3. ``restarted``: the worker is stopped (SIGTERM), a new one starts with an empty state folder (state
   comes back from the changelogs) and the file is replayed with a later ``--until`` (LATER).

Each stage runs once per module, on first use, after the stages before it; so any test runs alone too.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.events import INPUT_TOPICS
from streams.broker import EmbeddedBroker, ensure_topics, free_port, start_embedded_broker
from streams.config_file import load_config
from streams.topics import COMPACTED_TOPICS, CONTRACT_TOPICS

from .conftest import PARTITIONS, Worker, WorkerFactory, latest_by_key, mailpulse, read_topic
from .expected import Expected, changes_of, expected_run

pytestmark = pytest.mark.integration

UNTIL = "2026-03-02T00:00:00Z"
LATER = "2026-06-01T00:00:00Z"  # 90 days after the purchases of 1 March: the winbacks are due
EARLY_TICK = "2026-03-01T08:10:00Z"  # produced before the file: E's cart add (08:00) is then late

#: Produced directly, before the ticks at EARLY_TICK and before the file (so before E's cart add).
E_PURCHASE: dict[str, Any] = {
    "event_id": "o-e", "type": "purchase", "timestamp": "2026-03-01T08:20:00Z", "user_id": "u-e",
    "order_id": "o-e", "total": 15.0, "items": [{"product_id": "sku-5", "quantity": 1, "price": 15.0}]}

HISTORY: list[dict[str, Any]] = [
    # A: identified (first name, e-mail, consent), adds to the cart at 10:00 and never buys
    {"event_id": "i-a", "type": "identify", "timestamp": "2026-03-01T09:00:00Z", "user_id": "u-a",
     "traits": {"first_name": "Ana", "email": "ana@example.com"}, "consent": {"email": True}},
    {"event_id": "k-a", "type": "cart_add", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-a",
     "product_id": "sku-1", "category": "toys", "quantity": 2, "price": 10.0, "cart_id": "cart-a"},
    # B: adds at 10:00, buys 1 s before the cart would count as abandoned
    {"event_id": "k-b", "type": "cart_add", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-b",
     "product_id": "sku-2", "quantity": 1, "price": 30.0},
    {"event_id": "o-b", "type": "purchase", "timestamp": "2026-03-01T10:29:59Z", "user_id": "u-b",
     "order_id": "o-b", "total": 30.0, "items": [{"product_id": "sku-2", "quantity": 1, "price": 30.0}]},
    # C: e-mail consent false, abandons a cart
    {"event_id": "i-c", "type": "identify", "timestamp": "2026-03-01T09:00:00Z", "user_id": "u-c",
     "traits": {"first_name": "Cy", "email": "cy@example.com"}, "consent": {"email": False}},
    {"event_id": "k-c", "type": "cart_add", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-c",
     "product_id": "sku-3", "quantity": 1, "price": 5.0},
    # D: abandons a cart (10:30), buys it at 11:00, abandons a new one (12:30): within 24 h of the first
    {"event_id": "k-d1", "type": "cart_add", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-d",
     "product_id": "sku-4", "quantity": 1, "price": 12.5},
    {"event_id": "o-d", "type": "purchase", "timestamp": "2026-03-01T11:00:00Z", "user_id": "u-d",
     "order_id": "o-d", "total": 12.5, "items": [{"product_id": "sku-4", "quantity": 1, "price": 12.5}]},
    {"event_id": "k-d2", "type": "cart_add", "timestamp": "2026-03-01T12:00:00Z", "user_id": "u-d",
     "product_id": "sku-6", "quantity": 3, "price": 2.0},
    # E: the cart add that preceded the purchase produced above
    {"event_id": "k-e", "type": "cart_add", "timestamp": "2026-03-01T08:00:00Z", "user_id": "u-e",
     "product_id": "sku-5", "quantity": 1, "price": 15.0},
    # F: the same as E within the file: the purchase line before the cart add line
    {"event_id": "o-f", "type": "purchase", "timestamp": "2026-03-01T10:20:00Z", "user_id": "u-f",
     "order_id": "o-f", "total": 8.0, "items": [{"product_id": "sku-7", "quantity": 1, "price": 8.0}]},
    {"event_id": "k-f", "type": "cart_add", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-f",
     "product_id": "sku-7", "quantity": 1, "price": 8.0},
]
EVENTS: list[dict[str, Any]] = [E_PURCHASE, *HISTORY]

Messages = list[tuple[bytes | None, Any]]


def _ids(messages: Messages) -> list[str]:
    return [value["trigger_id"] for _, value in messages]


def _by_user(messages: Messages, user_id: str, trigger_type: str | None = None) -> list[dict[str, Any]]:
    return [v for _, v in messages if v["user_id"] == user_id and trigger_type in (None, v["type"])]


def _without_recommendations(trigger: dict[str, Any]) -> dict[str, Any]:
    """A trigger without its recommendations (the worker's come from the
    co-occurrence topic, which the pure functions do not see)."""
    return {**trigger, "payload": {k: v for k, v in trigger["payload"].items() if k != "recommendations"}}


@dataclass
class Stage:
    triggers: Messages
    changes: Messages
    metrics: dict[str, float] = field(default_factory=dict)


class Scenario:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stack = ExitStack()
        self.broker: EmbeddedBroker = self.stack.enter_context(start_embedded_broker(free_port()))
        ensure_topics(self.broker.bootstrap, PARTITIONS, COMPACTED_TOPICS, CONTRACT_TOPICS)
        self.workers = WorkerFactory(self.broker, tmp)
        self.history = tmp / "history.jsonl"
        self.history.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in HISTORY))
        # The scenario checks the event rules by hand: the model's churn_risk triggers (which would
        # also take their share of the caps) are off; the people are still scored and segmented.
        self.config_file = tmp / "config.yaml"
        self.config_file.write_text("triggers:\n  churn_risk: {enabled: false}\n")
        config = load_config(self.config_file)
        self.expected = expected_run(EVENTS, UNTIL, config=config)
        self.expected_later = expected_run(EVENTS, LATER, config=config)
        self._stages: dict[str, Stage] = {}
        self.worker: Worker | None = None

    def close(self) -> None:
        self.workers.stop_all()
        self.stack.close()

    def replay(self, until: str) -> None:
        done = mailpulse("replay", str(self.history), "--broker", self.broker.url, "--until", until)
        assert done.returncode == 0, done.stderr

    def snapshot(self, worker: Worker) -> dict[str, float]:
        m = worker.metric
        return {
            "processed": m("mailpulse_events_total", outcome="processed"),
            "duplicate": m("mailpulse_events_total", outcome="duplicate"),
            "late_carts": m("mailpulse_late_events_total", topic="carts"),
            "triggers": m("mailpulse_triggers_total"),
            "cart_abandoned": m("mailpulse_triggers_total", type="cart_abandoned"),
            "suppressed": m("mailpulse_triggers_suppressed_total"),
            "cart_consent_false": m("mailpulse_triggers_suppressed_total", type="cart_abandoned",
                                    reason="consent_false"),
            "welcome_consent_false": m("mailpulse_triggers_suppressed_total", type="welcome",
                                       reason="consent_false"),
            "cart_per_type_cap": m("mailpulse_triggers_suppressed_total", type="cart_abandoned",
                                   reason="per_type_cap"),
        }

    def outputs(self, expected: Expected) -> tuple[Messages, Messages]:
        """Waits for the expected trigger ids and as many segment changes as expected, then reads on
        until the topics stay quiet (so a surplus or a repeat would show)."""
        bootstrap, want = self.broker.bootstrap, set(expected.triggers)
        read_topic(bootstrap, "triggers", lambda m: set(_ids(m)) >= want, timeout=90)
        read_topic(bootstrap, "segment-changes", lambda m: len(m) >= len(expected.changes), timeout=90)
        return (read_topic(bootstrap, "triggers", quiet_s=2.5, timeout=30),
                read_topic(bootstrap, "segment-changes", quiet_s=2.5, timeout=30))

    def first(self) -> Stage:
        if "first" not in self._stages:
            worker = self.worker = self.workers(data_dir="first", MAILPULSE_CONFIG=str(self.config_file))
            producer = Producer({"bootstrap.servers": self.broker.bootstrap})
            for topic in INPUT_TOPICS:  # ticks before the purchase on its partition too
                for partition in range(PARTITIONS):
                    producer.produce(topic, orjson.dumps({"type": "tick", "timestamp": EARLY_TICK}),
                                     partition=partition)
            producer.produce("purchases", orjson.dumps(E_PURCHASE), key=b"u-e", partition=5)
            assert producer.flush(30) == 0
            # the purchase is read (it waits for the watermark); give the other ticks a moment
            worker.wait_metric("mailpulse_events_total", 1, outcome="processed")
            time.sleep(4)
            self.replay(UNTIL)
            worker.wait_metric("mailpulse_events_total", len(EVENTS), outcome="processed")
            triggers, changes = self.outputs(self.expected)
            worker.wait_metric("mailpulse_triggers_suppressed_total", 3)
            self._stages["first"] = Stage(triggers, changes, self.snapshot(worker))
        return self._stages["first"]

    def again(self) -> Stage:
        if "again" not in self._stages:
            self.first()
            assert self.worker is not None
            self.replay(UNTIL)
            self.worker.wait_metric("mailpulse_events_total", len(HISTORY), outcome="duplicate")
            time.sleep(2)  # the duplicates are counted as they are read: let a (wrong) output follow
            bootstrap = self.broker.bootstrap
            self._stages["again"] = Stage(read_topic(bootstrap, "triggers", quiet_s=2.5, timeout=30),
                                          read_topic(bootstrap, "segment-changes", quiet_s=2.5, timeout=30),
                                          self.snapshot(self.worker))
        return self._stages["again"]

    def restarted(self) -> Stage:
        if "restarted" not in self._stages:
            self.again()
            assert self.worker is not None
            assert self.worker.stop() == 0, self.worker.log.read_text()[-3000:]
            worker = self.worker = self.workers(data_dir="second", MAILPULSE_CONFIG=str(self.config_file))
            self.replay(LATER)
            # a fresh worker first joins the group and restores the tables from the changelogs: on a
            # busy machine (a CI run) that has taken most of the default 90 s
            worker.wait_metric("mailpulse_events_total", len(HISTORY), outcome="duplicate", timeout=180)
            triggers, changes = self.outputs(self.expected_later)
            self._stages["restarted"] = Stage(triggers, changes, self.snapshot(worker))
        return self._stages["restarted"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    running = Scenario(tmp_path_factory.mktemp("triggers"))
    try:
        yield running
    finally:
        running.close()


def test_cart_abandonment_consent_and_caps(scenario: Scenario) -> None:
    stage, expected = scenario.first(), scenario.expected
    triggers = stage.triggers

    # the whole output is what the pure functions say, and nothing comes twice
    assert sorted(_ids(triggers)) == sorted(expected.triggers)
    assert changes_of(stage.changes) == expected.changes
    for _, value in triggers:
        assert _without_recommendations(value) == _without_recommendations(expected.triggers[value["trigger_id"]])

    # A: exactly one cart_abandoned, 30 min after the cart add, with the cart and the first name
    (cart_a,) = _by_user(triggers, "u-a", "cart_abandoned")
    assert cart_a["at"] == "2026-03-01T10:30:00.000Z"
    assert cart_a["email"] == "ana@example.com"
    assert cart_a["payload"]["first_name"] == "Ana"
    cart = cart_a["payload"]["cart"]
    assert cart["cart_id"] == "cart-a" and cart["item_count"] == 2
    assert [(i["product_id"], i["quantity"], i["price"], i["line_total"]) for i in cart["items"]] == [
        ("sku-1", 2, 10.0, 20.0)]
    assert sorted(v["type"] for v in _by_user(triggers, "u-a")) == ["cart_abandoned", "welcome"]

    # B bought 1 s before the 30 minutes were up; C has e-mail consent false
    assert _by_user(triggers, "u-b") == []
    assert _by_user(triggers, "u-c") == []
    assert stage.metrics["cart_consent_false"] == 1
    assert stage.metrics["welcome_consent_false"] == 1

    # D: the first abandoned cart goes out (no first name: the fallback), the second is held back
    (cart_d,) = _by_user(triggers, "u-d")
    assert cart_d["type"] == "cart_abandoned" and cart_d["at"] == "2026-03-01T10:30:00.000Z"
    assert cart_d["payload"]["first_name"] == "there"
    assert [i["product_id"] for i in cart_d["payload"]["cart"]["items"]] == ["sku-4"]
    assert stage.metrics["cart_per_type_cap"] == 1

    assert stage.metrics["cart_abandoned"] == 2
    assert stage.metrics["triggers"] == len(triggers) == 3
    assert stage.metrics["suppressed"] == 3


def test_event_time_not_arrival_order(scenario: Scenario) -> None:
    stage = scenario.first()
    # E's cart add was read after its purchase and after the watermark had passed it (late)
    assert stage.metrics["late_carts"] == 1, "E's cart add was not read after the early ticks (timing)"
    assert _by_user(stage.triggers, "u-e") == []
    assert _by_user(stage.triggers, "u-f") == []
    profiles = latest_by_key(read_topic(scenario.broker.bootstrap, "profiles",
                                        lambda m: len(latest_by_key(m)) >= len(scenario.expected.profiles)))
    by_user = {v["user_id"]: v for v in profiles.values()}
    for user in ("u-e", "u-f"):
        assert by_user[user]["cart"] is None or not by_user[user]["cart"]["items"]
        assert by_user[user]["aggregates"]["event_counts"] == {"cart_add": 1, "purchase": 1}
        assert "recent_buyers" in by_user[user]["segments"]


def test_replaying_again_changes_no_output(scenario: Scenario) -> None:
    first, again = scenario.first(), scenario.again()
    assert Counter(_ids(again.triggers)) == Counter(_ids(first.triggers))
    assert changes_of(again.changes) == changes_of(first.changes)
    assert again.metrics["duplicate"] - first.metrics["duplicate"] >= len(HISTORY)
    assert again.metrics["processed"] == first.metrics["processed"] == len(EVENTS)
    assert again.metrics["triggers"] == first.metrics["triggers"]
    assert again.metrics["suppressed"] == first.metrics["suppressed"]


def test_restart_with_a_later_watermark_adds_only_the_new_triggers(scenario: Scenario) -> None:
    before, after = scenario.again(), scenario.restarted()
    expected, later = scenario.expected, scenario.expected_later
    assert set(expected.triggers) <= set(later.triggers)

    ids = _ids(after.triggers)
    assert len(ids) == len(set(ids)), "a trigger id was emitted twice"
    assert set(ids) == set(later.triggers)
    new = set(ids) - set(_ids(before.triggers))
    assert new == set(later.triggers) - set(expected.triggers)
    new_triggers = sorted((v["user_id"], v["type"], v["at"]) for _, v in after.triggers if v["trigger_id"] in new)
    assert new_triggers == [
        ("u-b", "post_purchase", "2026-03-04T10:29:59.000Z"),
        ("u-b", "winback", "2026-05-30T10:29:59.000Z"),
        ("u-d", "post_purchase", "2026-03-04T11:00:00.000Z"),
        ("u-d", "winback", "2026-05-30T11:00:00.000Z"),
        ("u-e", "post_purchase", "2026-03-04T08:20:00.000Z"),
        ("u-e", "winback", "2026-05-30T08:20:00.000Z"),
        ("u-f", "post_purchase", "2026-03-04T10:20:00.000Z"),
        ("u-f", "winback", "2026-05-30T10:20:00.000Z"),
    ]
    for _, value in after.triggers:
        assert _without_recommendations(value) == _without_recommendations(later.triggers[value["trigger_id"]])

    # segment changes: the earlier ones once each, plus those the later watermark brought
    assert changes_of(after.changes) == later.changes
    assert Counter(changes_of(after.changes)) - Counter(changes_of(before.changes)) == (
        Counter(later.changes) - Counter(expected.changes))

    # the new worker saw only duplicates, and sent just the new triggers
    assert after.metrics["processed"] == 0
    assert after.metrics["duplicate"] >= len(HISTORY)
    assert after.metrics["triggers"] == len(new)
