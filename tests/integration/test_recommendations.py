"""Recommendations in trigger payloads come from the product-recs topic that every worker reads back
(streams/product_recs.py): co-viewed products are counted in the products' partitions, published, read
by the worker that holds the person, and put in the cart e-mail's payload."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.events import INPUT_TOPICS, TOPIC_OF_TYPE
from streams.topics import product_recs_topic
from tests.reference.model import MIN, iso, ms

from .conftest import PARTITIONS, read_topic

pytestmark = pytest.mark.integration

T0 = ms("2026-03-01T10:00:00Z")


def produce(bootstrap: str, events: list[dict[str, object]], tick: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for n, event in enumerate(events):
        producer.produce(TOPIC_OF_TYPE[str(event["type"])], orjson.dumps(event), partition=n % PARTITIONS)
    for topic in INPUT_TOPICS:
        for partition in range(PARTITIONS):
            producer.produce(topic, orjson.dumps({"type": "tick", "timestamp": tick}), partition=partition)
    assert producer.flush(30) == 0


def test_a_cart_e_mail_recommends_what_others_viewed_with_the_cart(broker, start_worker) -> None:
    worker = start_worker()
    # 30 people view the mug and then the teapot; 10 view the mug and then the spoon
    crowd = []
    for n in range(40):
        other = "sku-teapot" if n < 30 else "sku-spoon"
        for k, product in enumerate(("sku-mug", other)):
            crowd.append({"event_id": f"v-{n}-{k}", "type": "product_view", "timestamp": iso(T0 + n * MIN + k),
                          "user_id": f"crowd-{n}", "product_id": product})
    produce(broker.bootstrap, crowd, T0 + 60 * MIN)
    worker.wait_metric("mailpulse_events_total", len(crowd), outcome="processed")  # and the recs topic exists
    def mug_list(messages: list[tuple[bytes | None, Any]]) -> list[str]:
        return ([v for k, v in messages if k == b"sku-mug" and v] or [[]])[-1]

    # the top list is published again each time it changes (once per co-occurrence record, which
    # may hold only some of the pairs): wait until the mug's names both neighbours, then read what
    # follows until the topic is quiet
    read_topic(broker.bootstrap, product_recs_topic("mailpulse"),
               lambda m: {"sku-teapot", "sku-spoon"} <= set(mug_list(m)), timeout=90)
    recs = read_topic(broker.bootstrap, product_recs_topic("mailpulse"), quiet_s=3)
    mug = mug_list(recs)
    assert mug[:2] == ["sku-teapot", "sku-spoon"]  # the stronger neighbour first
    # the worker's replica of the topic is eventually consistent: wait until it has read as much
    worker.wait_metric("mailpulse_product_recs_read_total", len(recs))

    # later, Ana puts the mug in her cart and leaves
    ana = [{"event_id": "a-1", "type": "identify", "timestamp": iso(T0 + 61 * MIN), "user_id": "ana",
            "traits": {"first_name": "Ana", "email": "ana@example.com"}, "consent": {"email": True}},
           {"event_id": "a-2", "type": "cart_add", "timestamp": iso(T0 + 62 * MIN), "user_id": "ana",
            "product_id": "sku-mug", "price": 9.0}]
    produce(broker.bootstrap, ana, T0 + 120 * MIN)
    triggers = read_topic(broker.bootstrap, "triggers", lambda m: any(
        v["type"] == "cart_abandoned" and v["user_id"] == "ana" for _, v in m), timeout=90)
    [cart] = [v for _, v in triggers if v["type"] == "cart_abandoned" and v["user_id"] == "ana"]
    assert [rec["product_id"] for rec in cart["payload"]["recommendations"]][:2] == ["sku-teapot", "sku-spoon"]
    assert "sku-mug" not in [rec["product_id"] for rec in cart["payload"]["recommendations"]]  # not the cart
    worker.stop()
