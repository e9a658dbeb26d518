"""`mailpulse deliver` against real servers on loopback: an SMTP server (aiosmtpd) and an HTTP webhook,
with triggers on the embedded broker; kill -9 and replays; the one-click unsubscribe loop."""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from schemas.timeparse import parse_timestamp
from streams.broker import EmbeddedBroker, free_port
from tests.fakes import SmtpInbox, serving_smtp

from .conftest import MAILPULSE, PARTITIONS, WorkerFactory, latest_by_key, read_topic, wait_until
from .conftest import mailpulse as run_cli
from .conftest import metric_at as metric

pytestmark = pytest.mark.integration

PAST = "2026-03-01T10:30:00.000Z"


def trigger(n: int, kind: str = "cart_abandoned", send_at: str = PAST, email_address: str | None = None,
            **payload: Any) -> dict[str, Any]:
    base = {"first_name": f"Person{n}", "cart": {
        "items": [{"product_id": f"sku-{n}", "name": f"Mug {n}", "quantity": 2, "price": 12.5, "currency": "EUR",
                   "line_total": 25.0}], "item_count": 2, "value": 25.0, "currency": "EUR"},
        "recommendations": [{"product_id": f"sku-{n + 100}"}], "segments": ["cart_holders"]}
    return {"trigger_id": f"t-{n:03d}", "type": kind, "profile_id": f"p-{n:03d}", "user_id": f"u-{n}",
            "email": email_address or f"person{n}@example.com", "at": PAST, "send_at": send_at,
            "payload": {**base, **payload}, "predictions": None}


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpInbox, int]]:
    inbox = SmtpInbox()
    with serving_smtp(inbox) as port:
        yield inbox, port


def produce(bootstrap: str, values: list[bytes], topic: str = "triggers") -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for n, value in enumerate(values):
        producer.produce(topic, value, partition=n % PARTITIONS)
    assert producer.flush(30) == 0


def mailpulse_cli(*args: str) -> bool:
    """Runs a ``mailpulse`` command; True when it succeeded (its output is shown when it did not)."""
    done = run_cli(*args)
    if done.returncode != 0:
        print(done.stdout, done.stderr)
    return done.returncode == 0


def start_deliver(broker: EmbeddedBroker, tmp: Path, port: int = 0, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = port or free_port()
    full = {**os.environ, "MAILPULSE_BROKER": broker.url, "MAILPULSE_DATA_DIR": str(tmp / "deliver-state"),
            "MAILPULSE_DELIVER_PORT": str(port), "MAILPULSE_DELIVER_BACKOFF_S": "0.05",
            "MAILPULSE_LOG_LEVEL": "info", **env}
    log = (tmp / f"deliver-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen([MAILPULSE, "deliver"], env=full, stdout=log, stderr=subprocess.STDOUT), port


def test_smtp_each_trigger_once_through_replays_and_kill_9_and_one_click_unsubscribe(
        broker: EmbeddedBroker, smtp: tuple[SmtpInbox, int], tmp_path: Path) -> None:
    inbox, smtp_port = smtp
    env = {"MAILPULSE_SMTP_HOST": "127.0.0.1", "MAILPULSE_SMTP_PORT": str(smtp_port)}
    first = [trigger(n) for n in range(20)]
    first[3]["payload"] = {"first_name": "there", "cart": "odd", "recommendations": None}  # sparse: fallbacks
    first[4] = trigger(4, "churn_risk")
    first[5] = trigger(5, "browse_abandoned", product_id="sku-5", segments=["high_value"])
    bad = [orjson.dumps({"trigger_id": "t-bad", "type": "welcome", "profile_id": "p-bad"}), b"not json"]
    second = [trigger(n) for n in range(20, 40)]

    process, port = start_deliver(broker, tmp_path, **env)
    produce(broker.bootstrap, [orjson.dumps(t) for t in first] + bad)
    wait_until(lambda: len(inbox.trigger_ids()) >= 20)
    # one held in the ledger at the kill: due soon after it, so never in flight then (a trigger that
    # was could land after ``before_kill`` is read, and is not sent again: at most once)
    soon = math.ceil(time.time()) + 8  # a whole second: send_at has no fraction to round away
    held = trigger(90, "welcome", send_at=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(soon)))
    produce(broker.bootstrap, [orjson.dumps(held)])
    wait_until(lambda: metric(port, "mailpulse_deliveries_held") >= 1)
    process.kill()  # SIGKILL: no clean close, offsets perhaps not committed
    process.wait(10)
    assert time.time() < soon, "the first triggers took until the held one was due: it may have been in flight"
    before_kill = len(inbox.trigger_ids())
    # everything again, and more
    produce(broker.bootstrap, [orjson.dumps(t) for t in first + second] + [orjson.dumps(held)])
    process, port = start_deliver(broker, tmp_path, port, **env)  # the same port: its links stay good
    try:
        wait_until(lambda: len(set(inbox.trigger_ids())) == 41)
        produce(broker.bootstrap, [orjson.dumps(t) for t in first + second])  # and once more
        wait_until(lambda: metric(port, "mailpulse_deliveries_total", outcome="duplicate") >= 40)
        ids = inbox.trigger_ids()
        assert sorted(ids) == sorted({t["trigger_id"] for t in first + second + [held]})  # each exactly once
        assert time.time() >= soon - 0.5  # the held one waited for its send_at

        by_id = {str(m["X-Mailpulse-Trigger"]).split()[1]: m for m in inbox.messages}
        cart = by_id["t-007"]
        assert cart["To"] == "person7@example.com" and cart["Subject"] == "Person7, your cart is waiting"
        text = cart.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = cart.get_body(("html",)).get_content()  # type: ignore[union-attr]
        for part in (text, html):
            assert "Hi Person7" in part and "Mug 7" in part and "25.00 EUR" in part and "sku-107" in part
        sparse = by_id["t-003"]
        assert sparse["Subject"] == "Your cart is waiting"
        assert "Hi there" in sparse.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "COMEBACK15" in by_id["t-004"].get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "COMEBACK15" not in html
        browse = by_id["t-005"].get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "still available" in browse and "shipping is on us" not in browse

        letters = read_topic(broker.bootstrap, "delivery-failed", lambda m: len(m) >= 2)
        codes = {(letter["trigger_id"], letter["error"]["code"]) for _, letter in letters}
        assert ("t-bad", "bad_trigger") in codes and (None, "bad_trigger") in codes

        # one click: the RFC 8058 POST to the List-Unsubscribe URL
        assert cart["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = str(cart["List-Unsubscribe"]).strip("<>")
        assert url.startswith(f"http://127.0.0.1:{port}/unsubscribe?")
        forged = url[:-4] + "0000"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(urllib.request.Request(forged, data=b"List-Unsubscribe=One-Click"), timeout=5)
        with urllib.request.urlopen(urllib.request.Request(url, data=b"List-Unsubscribe=One-Click"),
                                    timeout=5) as response:
            assert response.status == 200
        events = read_topic(broker.bootstrap, "identities", lambda m: len(m) >= 1)
        [(_, event)] = events
        assert event["type"] == "identify" and event["email"] == "person7@example.com"
        assert event["consent"] == {"email": False}
        # the person's next trigger is held back
        produce(broker.bootstrap, [orjson.dumps({**trigger(7), "trigger_id": "t-007-later"})])
        wait_until(lambda: metric(port, "mailpulse_deliveries_total", outcome="suppressed") >= 1)
        assert "t-007-later" not in inbox.trigger_ids()
        assert metric(port, "mailpulse_deliveries_total", outcome="sent") == 41 - before_kill  # this process's
    finally:
        process.terminate()
        process.wait(20)
    assert process.returncode == 0


class Hook(BaseHTTPRequestHandler):
    """A webhook target: ``t-flaky`` fails twice with 503, ``t-down`` always with 500, ``t-bounce``
    reports a bounce; every request is recorded with its Idempotency-Key."""

    seen: list[tuple[str, str, int]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        trigger_id = body["metadata"]["trigger_id"]
        earlier = sum(1 for t, _, _ in self.seen if t == trigger_id)
        status, reply = 200, {"id": f"msg-{trigger_id}"}
        if trigger_id == "t-flaky" and earlier < 2:
            status = 503
        elif trigger_id == "t-down":
            status = 500
        elif trigger_id == "t-bounce":
            reply = {"status": "bounced"}
        self.seen.append((trigger_id, self.headers["Idempotency-Key"], status))
        payload = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_retries_with_a_stable_idempotency_key_and_failures_end_in_delivery_failed(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    Hook.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    triggers = [{**trigger(1), "trigger_id": "t-flaky"}, {**trigger(2), "trigger_id": "t-down"},
                {**trigger(3), "trigger_id": "t-bounce"}, {**trigger(4), "trigger_id": "t-fine"}]
    process, port = start_deliver(broker, tmp_path, MAILPULSE_DELIVER_TARGET="webhook",
                                  MAILPULSE_WEBHOOK_URL=f"http://127.0.0.1:{server.server_port}/send",
                                  MAILPULSE_DELIVER_ATTEMPTS="4", MAILPULSE_DELIVER_RETRY_HOURS="0")
    try:
        produce(broker.bootstrap, [orjson.dumps(t) for t in triggers])
        letters = read_topic(broker.bootstrap, "delivery-failed", lambda m: len(m) >= 1)
        wait_until(lambda: metric(port, "mailpulse_deliveries_total", outcome="sent") >= 3)
        flaky = [(key, status) for t, key, status in Hook.seen if t == "t-flaky"]
        assert flaky == [("t-flaky", 503), ("t-flaky", 503), ("t-flaky", 200)]  # retried, delivered once
        assert [status for t, _, status in Hook.seen if t == "t-down"] == [500] * 4
        [(key, letter)] = letters
        assert key == b"p-002" and letter["trigger_id"] == "t-down" and letter["attempts"] == 4
        assert letter["error"]["code"] == "retries_exhausted" and letter["type"] == "cart_abandoned"
        assert metric(port, "mailpulse_delivery_retries_total", target="webhook") == 2 + 3
        # the bounce became the same event as an unsubscribe
        [(_, event)] = read_topic(broker.bootstrap, "identities", lambda m: len(m) >= 1)
        assert event["email"] == "person3@example.com" and event["consent"] == {"email": False}
        assert event["source"] == "bounce"
        # replayed: nothing is sent again
        produce(broker.bootstrap, [orjson.dumps(t) for t in triggers])
        wait_until(lambda: metric(port, "mailpulse_deliveries_total", outcome="duplicate") >= 4)
        assert sum(1 for t, _, status in Hook.seen if status == 200) == 3
    finally:
        process.terminate()
        process.wait(20)
        server.shutdown()


def test_a_one_click_unsubscribe_reaches_the_worker_and_holds_back_that_persons_next_trigger(
        broker: EmbeddedBroker, smtp: tuple[SmtpInbox, int], start_worker: WorkerFactory, tmp_path: Path) -> None:
    """The whole loop: a worker's cart_abandoned trigger becomes an e-mail, its one-click unsubscribe
    becomes an event the worker folds (stamped at the click), and the person's next abandoned cart,
    after it, gives no trigger: the worker holds it back for consent, not only deliver.  An anonymous
    visitor's abandoned cart gives a trigger without an address: reported as ``no_address``, not
    counted as a failed delivery."""
    inbox, smtp_port = smtp
    worker = start_worker()
    process, deliver_port = start_deliver(broker, tmp_path, MAILPULSE_SMTP_HOST="127.0.0.1",
                                          MAILPULSE_SMTP_PORT=str(smtp_port))
    person = {"user_id": "u-pia"}
    first = [
        {"event_id": "i-pia", "type": "identify", "timestamp": "2026-03-01T09:00:00Z", **person,
         "traits": {"first_name": "Pia", "email": "pia@example.com"}, "consent": {"email": True}},
        {"event_id": "k-pia-1", "type": "cart_add", "timestamp": "2026-03-01T10:00:00Z", **person,
         "product_id": "sku-1", "quantity": 1, "price": 10.0},
        {"event_id": "k-anon-1", "type": "cart_add", "timestamp": "2026-03-01T10:05:00Z", "anonymous_id": "a-anon",
         "product_id": "sku-3", "quantity": 1, "price": 5.0},
    ]
    try:
        history = tmp_path / "first.jsonl"
        history.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in first))
        assert mailpulse_cli("replay", str(history), "--broker", broker.url, "--until", "2026-03-01T12:00:00Z")
        worker.wait_metric("mailpulse_triggers_total", 2, timeout=120, type="cart_abandoned")
        # all the person's triggers so far (welcome; no churn_risk before a purchase), and the visitor's
        so_far = [t for _, t in read_topic(broker.bootstrap, "triggers", quiet_s=2.0)]
        first_ids = {t["trigger_id"] for t in so_far if t["email"] is not None}
        [anonymous] = [t for t in so_far if t["email"] is None]
        assert (anonymous["type"], anonymous["user_id"]) == ("cart_abandoned", None)
        wait_until(lambda: set(inbox.trigger_ids()) == first_ids, timeout=60)
        wait_until(lambda: metric(deliver_port, "mailpulse_deliveries_total", outcome="no_address") == 1)
        assert metric(deliver_port, "mailpulse_deliveries_total", outcome="failed") == 0
        [(_, letter)] = read_topic(broker.bootstrap, "delivery-failed", lambda m: len(m) >= 1)
        assert (letter["trigger_id"], letter["error"]["code"]) == (anonymous["trigger_id"], "no_address")
        [message] = [m for m in inbox.messages if "cart" in str(m["Subject"])]
        assert message["To"] == "pia@example.com"
        url = str(message["List-Unsubscribe"]).strip("<>")
        with urllib.request.urlopen(urllib.request.Request(url, data=b"List-Unsubscribe=One-Click"),
                                    timeout=5) as response:
            assert response.status == 200
        clicked = time.time()

        # she buys that cart after the click and leaves a new one a minute later; the watermark
        # passes the new one's 30-minute delay (a cart gives one cart_abandoned, until it is bought)
        def stamp(seconds: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clicked + seconds))

        later = tmp_path / "later.jsonl"
        later.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in [
            {"event_id": "o-pia", "type": "purchase", "timestamp": stamp(30), **person, "order_id": "o-pia",
             "total": 10.0, "items": [{"product_id": "sku-1", "quantity": 1, "price": 10.0}]},
            {"event_id": "k-pia-2", "type": "cart_add", "timestamp": stamp(60), **person, "product_id": "sku-2",
             "quantity": 1, "price": 20.0}]))
        assert mailpulse_cli("replay", str(later), "--broker", broker.url, "--until", stamp(3 * 3600))
        worker.wait_metric("mailpulse_triggers_suppressed_total", 1, timeout=120, type="cart_abandoned",
                           reason="consent_false")
        triggers = [t for _, t in read_topic(broker.bootstrap, "triggers", quiet_s=2.0) if t["email"] is not None]
        # the watermark's jump from March to now fired what was due in between, stamped before the
        # click, when she had consent; nothing after it
        assert all(parse_timestamp(t["at"]) < clicked * 1000 for t in triggers)
        assert sum(t["type"] == "cart_abandoned" for t in triggers) == 1 and first_ids <= {t["trigger_id"]
                                                                                            for t in triggers}
        profiles = latest_by_key(read_topic(broker.bootstrap, "profiles", quiet_s=2.0))
        [profile] = [p for p in profiles.values() if p is not None and p["user_id"] == "u-pia"]
        assert profile["consent"]["email"] is False and profile["cart"]["item_count"] == 1
        # deliver holds those back: the address is on its own list since the click, and the worker's
        # withdrawal of her consent (from the click's identify) cancels what it made before it
        extra = len(triggers) - len(first_ids)
        wait_until(lambda: sum(metric(deliver_port, "mailpulse_deliveries_total", outcome=outcome)
                               for outcome in ("suppressed", "cancelled")) >= extra)
        assert set(inbox.trigger_ids()) == first_ids
    finally:
        process.terminate()
        process.wait(20)


def test_a_consent_withdrawal_or_an_erasure_upstream_cancels_what_deliver_holds_for_that_person(
        broker: EmbeddedBroker, smtp: tuple[SmtpInbox, int], start_worker: WorkerFactory, tmp_path: Path) -> None:
    """Quiet hours around now hold every trigger in deliver.  Then a CRM withdraws Pia's consent and Eve
    is erased: their held triggers are dropped (with the addresses deliver kept), Max's stay held, and
    nothing is sent."""
    inbox, smtp_port = smtp
    hour = time.gmtime().tm_hour
    config = tmp_path / "config.yaml"
    config.write_text(f"guardrails:\n  quiet_hours: {{start_hour: {(hour - 3) % 24}, end_hour: {(hour + 3) % 24}}}\n")
    worker = start_worker(MAILPULSE_CONFIG=str(config))
    process, deliver_port = start_deliver(broker, tmp_path, MAILPULSE_SMTP_HOST="127.0.0.1",
                                          MAILPULSE_SMTP_PORT=str(smtp_port))
    began = time.time()

    def stamp(seconds: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began + seconds))

    def replay(name: str, events: list[dict[str, Any]], until: str) -> None:
        history = tmp_path / name
        history.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
        assert mailpulse_cli("replay", str(history), "--broker", broker.url, "--until", until)

    people = ("pia", "eve", "max")
    try:
        replay("first.jsonl", [event for who in people for event in (
            {"event_id": f"i-{who}", "type": "identify", "timestamp": stamp(-3600), "user_id": who,
             "traits": {"first_name": who.title(), "email": f"{who}@example.com"}, "consent": {"email": True}},
            {"event_id": f"k-{who}", "type": "cart_add", "timestamp": stamp(-3500), "user_id": who,
             "product_id": "sku-1", "quantity": 1, "price": 10.0})], stamp(-120))
        worker.wait_metric("mailpulse_triggers_total", 3, timeout=120, type="cart_abandoned")
        triggers = [t for _, t in read_topic(broker.bootstrap, "triggers", quiet_s=2.0)]
        owner = {profile["profile_id"]: profile["user_id"] for profile in latest_by_key(
            read_topic(broker.bootstrap, "profiles", quiet_s=1.0)).values() if profile is not None}
        made = {who: sum(owner[t["profile_id"]] == who for t in triggers) for who in people}
        assert all(count >= 2 for count in made.values()), made  # welcome and cart_abandoned at least
        assert all(parse_timestamp(t["send_at"]) > time.time() * 1000 for t in triggers)  # all held
        wait_until(lambda: metric(deliver_port, "mailpulse_deliveries_held") == len(triggers), timeout=60)

        replay("later.jsonl", [
            {"event_id": "i-pia-2", "type": "identify", "timestamp": stamp(-60), "user_id": "pia",
             "consent": {"email": False}},
            {"event_id": "e-eve", "type": "erase", "timestamp": stamp(-60), "user_id": "eve"}], stamp(-30))
        wait_until(lambda: metric(deliver_port, "mailpulse_deliveries_held") == made["max"], timeout=90)
        assert metric(deliver_port, "mailpulse_deliveries_total", outcome="cancelled") == made["pia"] + made["eve"]
        # each under her user profile's id and her e-mail's (a profile her triggers could have carried)
        assert metric(deliver_port, "mailpulse_delivery_withdrawals_total", reason="consent") == 2
        assert metric(deliver_port, "mailpulse_delivery_withdrawals_total", reason="erased") == 2
        assert inbox.trigger_ids() == []
    finally:
        process.terminate()
        process.wait(20)


def test_the_connectors_producer_logs_through_python_logging_while_it_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """librdkafka hands its log lines over only when its client is polled: the connector's producer,
    which sends only now and then, is polled every turn of the loop, so a broker it cannot reach is
    in the log while the connector runs, not only at its stop."""
    import logging

    from streams.deliver.service import run_deliver
    from streams.settings import Settings

    caplog.set_level(logging.WARNING, logger="kafka.librdkafka")
    settings = Settings(broker=f"kafka://127.0.0.1:{free_port()}", data_dir=tmp_path, deliver_port=0)
    stop = threading.Event()
    thread = threading.Thread(target=run_deliver, args=(settings, tmp_path / "out", stop), daemon=True)
    thread.start()
    try:
        wait_until(lambda: any("#producer-" in r.getMessage() for r in caplog.records
                               if r.name == "kafka.librdkafka"), timeout=15)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
