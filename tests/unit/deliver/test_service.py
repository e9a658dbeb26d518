"""The deliver step with its I/O handed in: inputs that would make it raise end in delivery-failed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from schemas.outputs import DeliveryFailed
from schemas.timeparse import parse_timestamp
from streams.broker import free_port
from streams.deliver.ledger import Ledger
from streams.deliver.render import Renderer
from streams.deliver.service import Deliverer, start_uncommitted_at_first_offset
from streams.deliver.targets import DryRun, OutcomeUnknown, Sent
from streams.metrics import DeliverMetrics
from streams.settings import Settings
from streams.topics import DELIVERY_FAILED, TRIGGERS


class Recorder:
    """A producer that keeps what it was given (a delivery-failed report checked against its schema);
    ``poll`` and ``flush`` report each delivered (the broker's acknowledgement), or failed with
    ``error`` when it is set."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.reports: list[Callable[[KafkaError | None, None], None]] = []
        self.error: KafkaError | None = None

    def produce(self, topic: str, value: bytes, key: bytes | None = None,
                on_delivery: Callable[[KafkaError | None, None], None] | None = None) -> None:
        record = orjson.loads(value)
        if topic == DELIVERY_FAILED:  # every report of every test has the documented shape
            DeliveryFailed.model_validate(record)
        self.sent.append((topic, record))
        if on_delivery is not None:
            self.reports.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        reports, self.reports = self.reports, []
        for report in reports:
            report(self.error, None)
        return len(reports)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class Broken:
    name = "broken"

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        raise UnicodeEncodeError("ascii", "é", 0, 1, "a target that fails unclassified")


def deliverer(tmp: Path, target: Any) -> tuple[Deliverer, Recorder]:
    producer = Recorder()
    return Deliverer(target, Ledger(tmp / "state"), Renderer(), producer, DeliverMetrics(),  # type: ignore[arg-type]
                     Settings(deliver_attempts=3, deliver_backoff_s=0.001, deliver_grace_s=0), "http://u", b"k" * 32,
                     now_ms=lambda: 1_800_000_000_000, sleep=lambda s: None), producer


def gauge(step: Deliverer, name: str) -> float | None:
    """A gauge as a scrape reads it (some are read from the ledger then)."""
    return step.metrics.registry.get_sample_value(name)


def trigger(**fields: Any) -> bytes:
    return orjson.dumps({"trigger_id": "t-1", "type": "welcome", "profile_id": "p-1", "email": "ana@example.com",
                         "send_at": "2026-03-01T10:00:00.000Z", "payload": {"first_name": "Ana"}, **fields})


def test_an_address_an_e_mail_cannot_carry_goes_to_delivery_failed(tmp_path: Path) -> None:
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(trigger(email="ana@example.com\nBcc: all@example.com"))
    [(topic, letter)] = producer.sent
    assert topic == "delivery-failed" and letter["error"]["code"] == "bad_trigger"
    assert not list((tmp_path / "out").iterdir())


def test_a_trigger_of_a_person_without_a_known_address_is_reported_but_not_counted_as_failed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The pipeline's triggers for anonymous visitors carry ``"email": null``: nothing can be sent.  It
    goes to delivery-failed with its own code and counts as ``no_address``, not ``failed`` (as
    ``bad_trigger`` they were most of a shop's failures and set off MailpulseDeliveriesFailing), with
    no warning.  A trigger without the field at all is still malformed."""
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    with caplog.at_level(logging.INFO):
        step.handle(trigger(email=None))
        step.handle(trigger(trigger_id="t-2", type="cart_abandoned", email=None, send_at="2030-01-01T08:00:00.000Z"))
    assert caplog.records == []
    reported = {"code": "no_address", "message": "no e-mail address is known for this person"}
    assert [(topic, letter["trigger_id"], letter["attempts"], letter["error"]) for topic, letter in producer.sent] == [
        ("delivery-failed", trigger_id, 0, reported) for trigger_id in ("t-1", "t-2")]
    assert step.ledger.held == 0 and step.ledger.outcome("t-1") is None and not list((tmp_path / "out").iterdir())
    counted = {(sample.labels["type"], sample.labels["outcome"]): sample.value
               for sample in step.metrics.deliveries.collect()[0].samples
               if sample.name.endswith("_total") and sample.value}  # (sent and failed are exported at 0)
    assert counted == {("welcome", "no_address"): 1, ("cart_abandoned", "no_address"): 1}
    without = orjson.loads(trigger(trigger_id="t-3"))
    del without["email"]
    step.handle(orjson.dumps(without))
    assert producer.sent[-1] == ("delivery-failed", {
        "trigger_id": "t-3", "type": "welcome", "profile_id": "p-1", "attempts": 0,
        "error": {"code": "bad_trigger", "message": "missing or empty email"}, "at": producer.sent[-1][1]["at"]})
    step.handle(trigger(trigger_id="t-4"))  # with its address: sent
    assert [path.stem for path in (tmp_path / "out").iterdir()] == ["t-4"]


def test_a_target_that_fails_unclassified_is_not_retried_and_goes_to_delivery_failed(tmp_path: Path) -> None:
    step, producer = deliverer(tmp_path, Broken())
    step.handle(trigger())
    [(topic, letter)] = producer.sent
    assert topic == "delivery-failed" and letter["error"]["code"] == "rejected" and letter["attempts"] == 1
    assert "UnicodeEncodeError" in letter["error"]["message"]
    step.handle(trigger())  # read again: at most once
    assert len(producer.sent) == 1


def test_with_a_lateness_limit_a_trigger_due_too_long_ago_expires_and_a_recent_one_is_sent(tmp_path: Path) -> None:
    now = 1_800_000_000_000
    producer = Recorder()
    step = Deliverer(DryRun(tmp_path / "out"), Ledger(tmp_path / "state"), Renderer(), producer,  # type: ignore[arg-type]
                     DeliverMetrics(), Settings(deliver_max_late_hours=72, deliver_grace_s=0), "http://u", b"k" * 32,
                     now_ms=lambda: now, sleep=lambda s: None)
    from schemas.timeparse import format_ms

    step.handle(trigger(trigger_id="old", send_at=format_ms(now - 73 * 3_600_000)))
    step.handle(trigger(trigger_id="recent", send_at=format_ms(now - 71 * 3_600_000)))
    [(topic, letter)] = producer.sent
    assert topic == "delivery-failed" and letter["trigger_id"] == "old" and letter["error"]["code"] == "expired"
    assert [path.stem for path in (tmp_path / "out").iterdir()] == ["recent"]
    step.handle(trigger(trigger_id="old", send_at=format_ms(now - 73 * 3_600_000)))  # read again: once only
    assert len(producer.sent) == 1
    # without the limit (the default) the old one is sent
    default, _ = deliverer(tmp_path / "default", DryRun(tmp_path / "default-out"))
    default.handle(trigger(trigger_id="old", send_at=format_ms(now - 73 * 3_600_000)))
    assert [path.stem for path in (tmp_path / "default-out").iterdir()] == ["old"]


def test_an_address_the_e_mail_library_cannot_parse_goes_to_delivery_failed_now_or_when_held(tmp_path: Path) -> None:
    """``x@[1.2.3.4`` makes the e-mail library raise AttributeError while the ``To:`` header is set:
    raised past the deliverer, it stopped the connector at every start, and a held one stayed held."""
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(trigger(email="x@[1.2.3.4"))
    now = [1_800_000_000_000]
    step.now_ms = lambda: now[0]
    # held by an earlier version, which took any address with an "@" (this one refuses it at once)
    step.ledger.hold(1_900_000_000_000, "t-2", trigger(trigger_id="t-2", email="a@[b",
                                                        send_at="2030-01-01T08:00:00.000Z"), "p-1")
    assert step.ledger.held == 1
    now[0] = 1_900_000_000_000  # its send_at has come
    assert step.release_due() == 1 and step.ledger.held == 0
    assert [(letter["trigger_id"], letter["error"]["code"]) for _, letter in producer.sent] == \
        [("t-1", "bad_trigger"), ("t-2", "bad_trigger")]
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("send_at", ["tomorrow at eight", 1_800_000_000_000, "2301-01-01T00:00:00Z", ["x"]])
def test_a_send_at_that_is_there_but_not_a_timestamp_is_not_sent_at_once(tmp_path: Path, send_at: Any) -> None:
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(trigger(send_at=send_at))
    [(topic, letter)] = producer.sent
    assert topic == "delivery-failed" and letter["error"]["code"] == "bad_trigger"
    assert not list((tmp_path / "out").iterdir())
    step.handle(trigger(trigger_id="t-2", send_at=None))  # absent: sent at its ``at`` (here: none, so now)
    assert [path.stem for path in (tmp_path / "out").iterdir()] == ["t-2"]


class HandedOverThenLost:
    name = "lost"

    def __init__(self) -> None:
        self.calls = 0

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        self.calls += 1
        raise OutcomeUnknown("SMTP connection lost after the message was handed over (SMTPServerDisconnected)")


def test_an_e_mail_whose_outcome_is_unknown_is_not_sent_again_and_is_reported(tmp_path: Path) -> None:
    target = HandedOverThenLost()
    step, producer = deliverer(tmp_path, target)
    step.handle(trigger())
    step.handle(trigger())  # read again
    [(topic, letter)] = producer.sent
    assert topic == "delivery-failed" and letter["error"]["code"] == "outcome_unknown" and target.calls == 1
    assert step.ledger.outcome("t-1")["state"] == "failed"  # type: ignore[index]


def test_a_trigger_type_of_another_producer_is_counted_as_other(tmp_path: Path) -> None:
    """A label per type read from a message would grow without bound: built-in types, else ``other``."""
    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    for n in range(3):
        step.handle(trigger(trigger_id=f"t-{n}", type=f"made-up-{n}"))
    step.handle(trigger(trigger_id="t-9"))
    sent = {labels["type"]: sample.value for metric in step.metrics.registry.collect()
            if metric.name == "mailpulse_deliveries" for sample in metric.samples
            if sample.name.endswith("_total") and (labels := sample.labels)["outcome"] == "sent" and sample.value}
    assert sent == {"other": 3, "welcome": 1}


class Dies:
    """A target whose process dies mid-send (the exception stands for the process ending)."""

    name = "dies"

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        raise SystemExit("killed mid-send")


def test_a_trigger_left_sending_by_a_process_that_died_is_reported_with_its_type_and_profile(tmp_path: Path) -> None:
    step, _ = deliverer(tmp_path, Dies())
    with pytest.raises(SystemExit):
        step.handle(trigger())
    step.ledger.close()
    again, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))  # the next start, same state folder
    again.fail_interrupted()
    again.handle(trigger())  # read again: not sent (at most once)
    [(topic, letter)] = producer.sent
    assert topic == "delivery-failed" and letter["error"]["code"] == "interrupted"
    assert (letter["trigger_id"], letter["type"], letter["profile_id"]) == ("t-1", "welcome", "p-1")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("kind", [[], {"a": 1}, 7])
def test_a_trigger_whose_type_is_not_text_goes_to_delivery_failed(tmp_path: Path, kind: Any) -> None:
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(trigger(type=kind))  # a list as a metric label raised (unhashable): the connector stopped
    [(topic, letter)] = producer.sent
    assert topic == "delivery-failed" and letter["error"]["code"] == "bad_trigger"


def test_held_triggers_stay_held_when_the_connector_is_stopping(tmp_path: Path) -> None:
    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    now = [1_800_000_000_000]
    step.now_ms = lambda: now[0]
    for n in range(3):
        step.handle(trigger(trigger_id=f"t-{n}", send_at="2030-01-01T08:00:00.000Z"))
    now[0] = 1_900_000_000_000
    calls = iter([False, True])  # stopping after the first
    assert step.release_due(lambda: next(calls, True)) == 1 and step.ledger.held == 2


def test_a_sender_that_is_not_an_address_is_found_before_any_trigger() -> None:
    from streams.deliver.service import sender_problem

    assert sender_problem("Shop <shop@example.com>") is None
    assert sender_problem("Shop <shop@[1.2.3.4>") is not None and sender_problem("shop") is not None


@pytest.mark.parametrize("sender", ["shop@example.com, news@example.com", "Shop <shop@example.com>, x@example.com"])
def test_a_sender_of_several_addresses_is_found_before_any_trigger(sender: str) -> None:
    """Two addresses passed the check (the first has an "@"): every e-mail then had a From: of two
    mailboxes without the Sender: RFC 5322 asks for, and a webhook got them as its one "from"."""
    from streams.deliver.service import sender_problem

    assert sender_problem(sender) == "more than one address"
    assert sender_problem('"Shop, Inc." <shop@example.com>') is None  # (a comma inside quotes is a name's)


def withdrawal(profile_id: str, at: str, reason: str = "consent") -> bytes:
    return orjson.dumps({"profile_id": profile_id, "reason": reason, "at": at})


def test_a_withdrawal_cancels_the_profiles_held_triggers_made_before_it_and_those_read_after_it(
        tmp_path: Path) -> None:
    """Consent withdrawn (or an erase) upstream while deliver holds a person's triggers: those stamped
    at or before it are dropped with their addresses, as are such triggers read later (the topics are
    read apart); a trigger made after it, and other people's, are sent."""
    out = tmp_path / "out"
    step, producer = deliverer(tmp_path, DryRun(out))
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    later = "2026-03-02T08:00:00.000Z"  # quiet hours: held until then
    step.handle(trigger(trigger_id="pia-cart", profile_id="p-pia", at="2026-03-01T10:30:00.000Z", send_at=later))
    step.handle(trigger(trigger_id="pia-welcome", profile_id="p-pia", at="2026-03-01T09:00:00.000Z", send_at=later))
    step.handle(trigger(trigger_id="max-cart", profile_id="p-max", at="2026-03-01T10:30:00.000Z", send_at=later))
    assert step.ledger.held == 3
    step.withdrawal(withdrawal("p-pia", "2026-03-01T11:00:00.000Z"))
    assert step.ledger.held == 1 and [raw for _, raw in step.ledger.held_for("p-pia")] == []
    assert all(b"pia" not in value for _, value in step.ledger.db.items() if isinstance(value, bytes))  # her address
    # read after the withdrawal: one made before it (a replay, another partition) and one made after
    step.handle(trigger(trigger_id="pia-browse", profile_id="p-pia", at="2026-03-01T10:45:00.000Z"))
    step.handle(trigger(trigger_id="pia-new", profile_id="p-pia", at="2026-03-01T11:30:00.000Z", send_at=later))
    step.handle(trigger(trigger_id="pia-cart", profile_id="p-pia", at="2026-03-01T10:30:00.000Z", send_at=later))
    now[0] = parse_timestamp(later)
    assert step.release_due() == 2
    assert sorted(path.stem for path in out.iterdir()) == ["max-cart", "pia-new"] and not producer.sent
    cancelled = step.metrics.deliveries.labels("welcome", "cancelled")._value.get()
    assert cancelled == 3 and step.metrics.withdrawals.labels("consent")._value.get() == 1
    assert step.ledger.outcome("pia-cart") == {"state": "suppressed", "at": parse_timestamp("2026-03-01T12:00:00Z"),
                                               "code": "withdrawn"}


def test_a_trigger_stamped_at_the_withdrawal_itself_is_cancelled_and_one_a_millisecond_after_is_sent(
        tmp_path: Path) -> None:
    """At or before the withdrawal is cancelled: the boundary, held before it and read after it."""
    out = tmp_path / "out"
    step, _ = deliverer(tmp_path, DryRun(out))
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    later = "2026-03-02T08:00:00.000Z"
    step.handle(trigger(trigger_id="held-at", profile_id="p-pia", at="2026-03-01T11:00:00.000Z", send_at=later))
    step.withdrawal(withdrawal("p-pia", "2026-03-01T11:00:00.000Z"))
    step.handle(trigger(trigger_id="read-at", profile_id="p-pia", at="2026-03-01T11:00:00.000Z", send_at=later))
    step.handle(trigger(trigger_id="read-after", profile_id="p-pia", at="2026-03-01T11:00:00.001Z", send_at=later))
    now[0] = parse_timestamp(later)
    step.release_due()
    assert sorted(path.stem for path in out.iterdir()) == ["read-after"]
    assert step.ledger.outcome("read-at") is not None and step.ledger.outcome("read-at")["code"] == "withdrawn"


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"profile_id": 1, "at": "2026-03-01T11:00:00Z"}',
                                 b'{"profile_id": "p-1", "at": "yesterday"}', None])
def test_a_withdrawal_that_cannot_be_read_is_counted_and_skipped(tmp_path: Path, raw: bytes | None) -> None:
    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.withdrawal(raw)
    assert step.metrics.withdrawals.labels("unreadable")._value.get() == 1
    assert step.ledger.withdrawn_at("p-1") is None


def test_withdrawals_are_forgotten_with_the_ledgers_retention_and_the_latest_one_counts(tmp_path: Path) -> None:
    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    step.withdrawal(withdrawal("p-1", "2026-03-01T11:00:00Z", "erased"))
    step.withdrawal(withdrawal("p-1", "2026-03-01T10:00:00Z"))  # older: the later one stays
    assert step.ledger.withdrawn_at("p-1") == parse_timestamp("2026-03-01T11:00:00Z")
    now[0] += int(step.settings.deliver_ledger_days * 86_400_000) - 1
    step.prune()
    assert step.ledger.withdrawn_at("p-1") is not None
    now[0] += 2
    step.prune()
    assert step.ledger.withdrawn_at("p-1") is None


class Flaky:
    """A target that is down (every attempt a Temporary failure) until told otherwise."""

    name = "flaky"

    def __init__(self) -> None:
        self.up, self.attempts, self.sent, self.probes = False, 0, [], 0
        self.during: list[Any] = []  # called at each attempt (what a scrape would see meanwhile)

    def probe(self, sender: str) -> None:
        from streams.deliver.targets import Temporary

        self.probes += 1
        if not self.up:
            raise Temporary("421 try again later")

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        from streams.deliver.targets import Temporary

        for look in self.during:
            look()
        self.attempts += 1
        if not self.up:
            raise Temporary("421 try again later")
        self.sent.append(trigger["trigger_id"])
        return Sent()


def test_a_target_that_is_down_for_an_hour_loses_no_trigger_and_is_not_tried_for_each(tmp_path: Path) -> None:
    """Three triggers fail their attempts: each is held for a later round, and the target counts as down,
    so the next due ones wait without an attempt.  When it is back, a round sends every one, once."""
    from streams.deliver.service import DOWN_AFTER, round_delay_ms

    target = Flaky()
    step, producer = deliverer(tmp_path, target)
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    for n in range(10):
        step.handle(trigger(trigger_id=f"t-{n}"))
    assert target.attempts == DOWN_AFTER * 3 and step.ledger.held == 10 and not producer.sent
    assert step.metrics.target_up._value.get() == 0
    assert step.metrics.deliveries.labels("welcome", "deferred")._value.get() == 10
    minutes = 0
    while minutes < 60:  # an hour down: rounds come, one trigger tries each time the target may be up
        now[0] += 60_000
        minutes += 1
        step.release_due()
    assert not producer.sent and not target.sent and step.ledger.held == 10
    assert target.attempts < DOWN_AFTER * 3 + 3 * 10  # far from every trigger's attempts at every round
    target.up = True
    now[0] += round_delay_ms(99)  # the longest wait
    step.release_due()
    assert sorted(target.sent) == sorted(f"t-{n}" for n in range(10)) and step.ledger.held == 0
    assert step.metrics.target_up._value.get() == 1
    assert all(step.ledger.outcome(f"t-{n}")["state"] == "sent" for n in range(10))  # type: ignore[index]
    assert not list(step.ledger._keys(b"r:")) and step.ledger.entries == 10
    step.handle(trigger(trigger_id="t-0"))  # read again
    assert target.sent.count("t-0") == 1


def _with_a_window_of_an_hour(tmp: Path, target: Any) -> tuple[Deliverer, Recorder, list[int]]:
    """A deliverer of 2 attempts per round and a retry window of 1 h, on a clock the test moves."""
    producer = Recorder()
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step = Deliverer(target, Ledger(tmp / "state"), Renderer(), producer,  # type: ignore[arg-type]
                     DeliverMetrics(),
                     Settings(deliver_attempts=2, deliver_backoff_s=0.001, deliver_retry_hours=1, deliver_grace_s=0),
                     "http://u", b"k" * 32, now_ms=lambda: now[0], sleep=lambda s: None)
    return step, producer, now


def test_a_trigger_whose_target_fails_past_the_retry_window_goes_to_delivery_failed(tmp_path: Path) -> None:
    target = Flaky()
    step, producer, now = _with_a_window_of_an_hour(tmp_path, target)
    step.handle(trigger())
    assert step.ledger.held == 1 and step.ledger.outcome("t-1") is None
    for _ in range(200):
        now[0] += 60_000
        step.release_due()
    [(topic, letter)] = producer.sent
    assert topic == "delivery-failed" and letter["error"]["code"] == "retries_exhausted"
    assert step.ledger.held == 0 and step.ledger.outcome("t-1")["code"] == "retries_exhausted"  # type: ignore[index]
    assert not list(step.ledger._keys(b"r:"))


def test_triggers_that_wait_for_a_down_target_past_the_retry_window_go_to_delivery_failed(tmp_path: Path) -> None:
    """Those that never had an attempt of their own too: an outage longer than the window does not
    leave them held until the target is back (a stale e-mail, days late)."""
    from streams.deliver.service import DOWN_AFTER

    target = Flaky()
    step, producer, now = _with_a_window_of_an_hour(tmp_path, target)
    for n in range(8):
        step.handle(trigger(trigger_id=f"t-{n}"))
    assert target.attempts == DOWN_AFTER * 2 and step.ledger.held == 8
    gauge: list[float] = []
    target.during.append(lambda: gauge.append(step.metrics.target_up._value.get()))
    for _ in range(50):  # within the window: all still held, the target down throughout
        now[0] += 60_000
        step.release_due()
        assert step.metrics.target_up._value.get() == 0
    assert gauge and set(gauge) == {0}  # while a probe runs too (an alert watches for 10 minutes of 0)
    assert not producer.sent and step.ledger.held == 8
    for _ in range(30):
        now[0] += 60_000
        step.release_due()
    assert sorted(letter["trigger_id"] for _, letter in producer.sent) == [f"t-{n}" for n in range(8)]
    assert {letter["error"]["code"] for _, letter in producer.sent} == {"retries_exhausted"}
    assert step.ledger.held == 0 and not list(step.ledger._keys(b"r:"))
    # no trigger left to try it: once a wait is over, deliver asks the target itself
    probes = target.probes
    now[0] += 3_600_000
    step.release_due()
    assert target.probes == probes + 1 and step.metrics.target_up._value.get() == 0  # still down
    target.up = True
    now[0] += 3_600_000
    step.release_due()
    assert target.probes == probes + 2 and step.metrics.target_up._value.get() == 1
    now[0] += 3_600_000
    step.release_due()
    assert target.probes == probes + 2  # up: not asked again
    # each reports the attempts it made (those that only waited: none), and together every attempt
    assert sum(letter["attempts"] for _, letter in producer.sent) == target.attempts
    assert sum(letter["attempts"] == 0 for _, letter in producer.sent) >= 8 - DOWN_AFTER
    assert not target.sent


def test_the_rounds_of_a_trigger_outlive_a_restart(tmp_path: Path) -> None:
    target = Flaky()
    step, _ = deliverer(tmp_path, target)
    now = parse_timestamp("2026-03-01T12:00:00Z")
    step.now_ms = lambda: now
    step.handle(trigger())
    step.ledger.close()
    again = Ledger(tmp_path / "state")
    assert again.held == 1 and again.rounds("t-1") == (1, now) and again.outcome("t-1") is None


class FailsThen:
    """Temporary failures, then the given exception."""

    name = "fails-then"

    def __init__(self, temporary: int, then: Exception) -> None:
        self.temporary, self.then, self.calls = temporary, then, 0

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        from streams.deliver.targets import Temporary

        self.calls += 1
        if self.calls <= self.temporary:
            raise Temporary("503")
        raise self.then


@pytest.mark.parametrize("then,code", [(OutcomeUnknown("connection lost after the hand-over"), "outcome_unknown"),
                                       (ValueError("unclassified"), "rejected")])
def test_a_failure_on_a_later_attempt_reports_that_attempt(tmp_path: Path, then: Exception, code: str) -> None:
    step, producer = deliverer(tmp_path, FailsThen(2, then))
    step.handle(trigger())
    [(_, letter)] = producer.sent
    assert letter["error"]["code"] == code and letter["attempts"] == 3


@pytest.mark.parametrize("then,code", [(OutcomeUnknown("connection lost after the hand-over"), "outcome_unknown"),
                                       (ValueError("unclassified"), "rejected")])
def test_a_failure_in_a_later_round_reports_the_attempts_of_every_round(tmp_path: Path, then: Exception,
                                                                        code: str) -> None:
    target = FailsThen(4, then)  # round 1: three temporary failures; round 2: one more, then ``then``
    letter = _given_up_in_the_second_round(tmp_path, target)
    assert letter["error"]["code"] == code and letter["attempts"] == target.calls == 5


def _given_up_in_the_second_round(tmp_path: Path, target: Any) -> Any:
    """The delivery-failed report of a trigger whose first round failed and whose second gave up."""
    step, producer = deliverer(tmp_path, target)
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    step.handle(trigger())
    assert not producer.sent and step.ledger.rounds("t-1") == (1, now[0])
    now[0] += 3_600_000
    step.release_due()
    [(_, letter)] = producer.sent
    return letter


def test_failures_of_one_message_do_not_make_the_target_count_as_down(tmp_path: Path) -> None:
    """Three full mailboxes (SMTP 452, a Temporary that is the message's) fail all their attempts: each
    waits for a later round, but the target stays up and the next trigger is sent at once."""
    from streams.deliver.targets import Temporary

    class FullMailboxes:
        name = "full-mailboxes"

        def __init__(self) -> None:
            self.sent: list[str] = []

        def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
            if trigger["trigger_id"].startswith("full"):
                raise Temporary("recipient refused: 452", target_down=False)
            self.sent.append(trigger["trigger_id"])
            return Sent()

    target = FullMailboxes()
    step, producer = deliverer(tmp_path, target)
    for n in range(3):
        step.handle(trigger(trigger_id=f"full-{n}", profile_id=f"p-{n}"))
    step.handle(trigger(trigger_id="fine", profile_id="p-9"))
    assert target.sent == ["fine"] and step.ledger.held == 3 and not producer.sent
    assert step.metrics.target_up._value.get() == 1


def test_a_trigger_due_now_waits_its_grace_so_a_withdrawal_read_just_after_it_still_cancels_it(
        tmp_path: Path) -> None:
    """The hop publishes a withdrawal with the trigger it made before it (a watermark that jumped over a
    cart's timer and a CRM's consent withdrawal): deliver reads the two topics apart, the trigger
    first here.  It waits MAILPULSE_DELIVER_GRACE_S, the withdrawal comes, and nothing is sent; a trigger
    of someone else is sent once its grace is over, and one read again meanwhile is held once."""
    out = tmp_path / "out"
    producer = Recorder()
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step = Deliverer(DryRun(out), Ledger(tmp_path / "state"), Renderer(), producer,  # type: ignore[arg-type]
                     DeliverMetrics(), Settings(), "http://u", b"k" * 32, now_ms=lambda: now[0], sleep=lambda s: None)
    assert step.settings.deliver_grace_s == 3
    step.handle(trigger(trigger_id="pia-cart", profile_id="p-pia", at="2026-03-01T10:31:00.000Z"))
    step.handle(trigger(trigger_id="max-cart", profile_id="p-max", at="2026-03-01T10:31:00.000Z"))
    now[0] += 1000
    step.handle(trigger(trigger_id="max-cart", profile_id="p-max", at="2026-03-01T10:31:00.000Z"))  # read again
    assert step.release_due() == 0 and step.ledger.held == 2
    step.withdrawal(withdrawal("p-pia", "2026-03-01T10:40:00.000Z"))
    now[0] += 2000
    assert step.release_due() == 1 and [path.stem for path in out.iterdir()] == ["max-cart"]
    assert step.ledger.held == 0 and step.ledger.outcome("pia-cart")["code"] == "withdrawn"  # type: ignore[index]


def test_withdrawals_read_during_a_pass_over_due_triggers_cancel_the_rest_of_it(tmp_path: Path) -> None:
    """A pass of slow sends can take minutes: a withdrawal read between two deliveries still stops the
    later one."""
    out = tmp_path / "out"
    step, _ = deliverer(tmp_path, DryRun(out))
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    later = "2026-03-02T08:00:00.000Z"
    for n in range(3):
        step.handle(trigger(trigger_id=f"t-{n}", profile_id=f"p-{n}", at="2026-03-01T10:00:00.000Z", send_at=later))
    now[0] = parse_timestamp(later)
    calls = iter([[], [withdrawal("p-1", "2026-03-01T11:00:00.000Z")], []])

    def read_withdrawals() -> None:
        for raw in next(calls, []):
            step.withdrawal(raw)

    assert step.release_due(read_withdrawals=read_withdrawals) == 2
    assert sorted(path.stem for path in out.iterdir()) == ["t-0", "t-2"] and step.ledger.held == 0


def test_a_burst_of_withdrawals_is_read_whole_before_the_next_trigger(tmp_path: Path) -> None:
    from streams.deliver.service import POLL_MOST, _Withdrawals

    class Message:
        def __init__(self, n: int) -> None:
            self.n = n

        def error(self) -> None:
            return None

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return self.n

        def value(self) -> bytes:
            return withdrawal(f"p-{self.n}", "2026-03-01T11:00:00Z")

    class Consumer:  # what librdkafka hands over: at most ``num_messages`` at a time
        def __init__(self, total: int) -> None:
            self.left = [Message(n) for n in range(total)]

        def consume(self, num_messages: int, timeout: float) -> list[Message]:
            taken, self.left = self.left[:num_messages], self.left[num_messages:]
            return taken

    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    total = 2 * POLL_MOST + 7
    _Withdrawals(Consumer(total), "w", step.ledger, step).drain()  # type: ignore[arg-type]
    assert step.metrics.withdrawals.labels("consent")._value.get() == total
    assert step.ledger.read_up_to(0) == total


def test_with_no_grace_a_trigger_read_again_while_in_a_round_is_not_started_again(tmp_path: Path) -> None:
    target = Flaky()
    step, _ = deliverer(tmp_path, target)  # (no grace)
    step.handle(trigger())
    attempts = target.attempts
    step.handle(trigger())  # read again: it waits for its round
    assert target.attempts == attempts and step.ledger.held == 1 and step.ledger.rounds("t-1") == (1, step.now_ms())


class AssignsAt:
    """A consumer's ``committed`` and ``assign``, as the triggers subscription's ``on_assign`` uses them."""

    def __init__(self, committed: dict[int, int], fails: bool = False, assign_fails: int = 0) -> None:
        self.offsets, self.fails, self.assigned = committed, fails, None
        self.assign_fails = assign_fails

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.fails:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return [TopicPartition(tp.topic, tp.partition, self.offsets.get(tp.partition, OFFSET_INVALID))
                for tp in partitions]

    def assign(self, partitions: list[TopicPartition]) -> None:
        if self.assign_fails:
            self.assign_fails -= 1
            raise KafkaException(KafkaError(KafkaError._STATE))
        self.assigned = {tp.partition: tp.offset for tp in partitions}


def test_a_triggers_partition_without_a_committed_offset_starts_at_offset_0_not_the_brokers_beginning() -> None:
    consumer = AssignsAt({0: 17})
    start_uncommitted_at_first_offset(consumer, [TopicPartition(TRIGGERS, n) for n in range(3)])  # type: ignore[arg-type]
    assert consumer.assigned == {0: 17, 1: 0, 2: 0}


def test_without_the_committed_offsets_the_assignment_is_left_to_the_client() -> None:
    consumer = AssignsAt({}, fails=True)
    start_uncommitted_at_first_offset(consumer, [TopicPartition(TRIGGERS, 0)])  # type: ignore[arg-type]
    assert consumer.assigned is None


class AnswersProbesOnly(Flaky):
    """A webhook whose router answers HEAD while every POST gets a 503."""

    def probe(self, sender: str) -> None:
        self.probes += 1


def _counted_down_with_nothing_held(tmp: Path, target: Flaky) -> tuple[Deliverer, list[int]]:
    from streams.deliver.service import DOWN_AFTER

    step, _, now = _with_a_window_of_an_hour(tmp, target)
    for n in range(DOWN_AFTER):
        step.handle(trigger(trigger_id=f"t-{n}"))
    for key, _ in step.ledger.held_for("p-1"):  # (withdrawn, say): nothing left to try the target
        step.ledger.release(key, "p-1")
    assert step.outage.counted_down and step.outage.waits == 1 and step.ledger.held == 0
    return step, now


def test_a_target_that_answers_probes_but_fails_every_send_counts_as_down_again_and_its_waits_go_on_doubling(
        tmp_path: Path) -> None:
    from streams.deliver.service import round_delay_ms

    target = AnswersProbesOnly()
    step, now = _counted_down_with_nothing_held(tmp_path, target)
    for cycle in range(2, 6):
        now[0] = step.outage.until_ms
        step.release_due()  # the wait is over, no trigger is due: deliver asks the target, which answers
        assert step.metrics.target_up._value.get() == 1 and not step.outage.counted_down
        attempts = target.attempts
        step.handle(trigger(trigger_id=f"new-{cycle}"))  # and the next trigger fails all its attempts
        assert target.attempts - attempts == step.settings.deliver_attempts  # one trigger's, not three
        assert step.metrics.target_up._value.get() == 0 and step.outage.waits == cycle
        assert step.outage.until_ms - now[0] == round_delay_ms(cycle)  # each wait twice the last
        for key, _ in step.ledger.held_for("p-1"):
            step.ledger.release(key, "p-1")
    assert target.probes == 4


class ProbeRaises(Flaky):
    def probe(self, sender: str) -> None:
        self.probes += 1
        "Bücher <news@bücher.de>".encode("ascii")  # what smtplib raised without SMTPUTF8


def test_a_probe_that_raises_what_no_target_classified_counts_as_unanswered_and_deliver_goes_on(
        tmp_path: Path) -> None:
    target = ProbeRaises()
    step, now = _counted_down_with_nothing_held(tmp_path, target)
    for _ in range(30):
        now[0] += 60_000
        step.release_due()
    assert target.probes >= 3 and step.metrics.target_up._value.get() == 0
    assert step.metrics.probes.labels("flaky", "unanswered")._value.get() == target.probes


class DiesInRoundTwo(FailsThen):
    def __init__(self) -> None:
        super().__init__(3, SystemExit())  # (as a process killed mid-send)


def test_a_trigger_interrupted_in_a_later_round_reports_the_attempts_of_every_round(tmp_path: Path) -> None:
    step, _ = deliverer(tmp_path, DiesInRoundTwo())
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    step.handle(trigger())  # round 1: three temporary failures
    now[0] += 3_600_000
    with pytest.raises(SystemExit):
        step.release_due()  # round 2: the process dies while sending
    step.ledger.close()
    again, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    again.fail_interrupted()
    [(_, letter)] = producer.sent
    assert letter["error"]["code"] == "interrupted" and letter["attempts"] == 3 + 1



def test_when_the_assignment_at_offset_0_fails_the_partitions_go_as_given_or_the_error_ends_the_loop() -> None:
    consumer = AssignsAt({}, assign_fails=1)
    start_uncommitted_at_first_offset(consumer, [TopicPartition(TRIGGERS, 0)])  # type: ignore[arg-type]
    assert consumer.assigned == {0: OFFSET_INVALID}  # librdkafka's own choice: committed, else the reset
    consumer = AssignsAt({}, assign_fails=2)
    with pytest.raises(KafkaException):  # rather than staying in the group with nothing to read
        start_uncommitted_at_first_offset(consumer, [TopicPartition(TRIGGERS, 0)])  # type: ignore[arg-type]


def test_a_restart_during_an_outage_goes_on_with_it(tmp_path: Path) -> None:
    target = Flaky()
    step, _ = _counted_down_with_nothing_held(tmp_path, target)
    until = step.outage.until_ms
    again = _restarted(step, target, tmp_path)
    assert again.metrics.target_up._value.get() == 0 and again.outage.until_ms == until
    attempts = target.attempts
    again.handle(trigger(trigger_id="after-restart"))  # waits for the probe, without an attempt
    assert target.attempts == attempts and again.ledger.held == 1
    target.up = True
    again.now_ms = lambda: until + 2000
    again.release_due()
    assert target.sent == ["after-restart"] and again.metrics.target_up._value.get() == 1
    assert again.ledger.outage() == {}


def test_a_probe_answered_long_ago_does_not_make_the_next_failure_count_the_target_down(tmp_path: Path) -> None:
    target = AnswersProbesOnly()
    step, now = _counted_down_with_nothing_held(tmp_path, target)
    now[0] = step.outage.until_ms
    step.release_due()  # answered
    assert not step.outage.counted_down
    now[0] += 3 * 3_600_000  # hours later, one trigger fails on a blip
    step.handle(trigger(trigger_id="later"))
    assert not step.outage.counted_down and step.metrics.target_up._value.get() == 1


def test_no_probe_goes_ahead_of_a_trigger_due_a_second_after_the_wait(tmp_path: Path) -> None:
    from streams.deliver.service import DOWN_AFTER

    target = Flaky()
    step, _, now = _with_a_window_of_an_hour(tmp_path, target)
    for n in range(DOWN_AFTER):
        step.handle(trigger(trigger_id=f"t-{n}"))
    for key, _ in step.ledger.held_for("p-1")[:-1]:  # the last one left, held a second past the wait
        step.ledger.release(key, "p-1")
    now[0] = step.outage.until_ms
    attempts = target.attempts
    step.release_due()
    assert target.probes == 0 and target.attempts == attempts  # the trigger is due in a second: it tries
    now[0] += 1000
    step.release_due()
    assert target.probes == 0 and target.attempts == attempts + step.settings.deliver_attempts



def _restarted(step: Deliverer, target: Any, tmp: Path) -> Deliverer:
    step.ledger.close()
    return Deliverer(target, Ledger(tmp / "state"), Renderer(), Recorder(),  # type: ignore[arg-type]
                     DeliverMetrics(), step.settings, "http://u", b"k" * 32, now_ms=step.now_ms,
                     sleep=lambda s: None)


def test_an_outage_kept_for_another_target_or_unreadable_or_too_far_ahead_is_not_taken_over(tmp_path: Path) -> None:
    from streams.deliver.service import LONGEST_ROUND_MS, Outage

    target = Flaky()
    step, now = _counted_down_with_nothing_held(tmp_path, target)
    other = AnswersProbesOnly()
    other.name = "other-target"
    again = _restarted(step, other, tmp_path)
    assert not again.outage.counted_down and again.metrics.target_up._value.get() == 1
    assert Outage({"in_a_row": "3", "until_ms": None, "waits": True}, now[0]).state() == {}
    ahead = Outage({"in_a_row": 3, "until_ms": now[0] + 365 * 86_400_000, "waits": 5}, now[0])
    assert ahead.counted_down and ahead.until_ms == now[0] + LONGEST_ROUND_MS  # (a clock set back)


@pytest.mark.parametrize("later_min,counted_down", [(30, True), (61, False), (180, False)])
def test_an_answered_probe_holds_the_count_for_the_longest_wait_and_through_a_restart(
        tmp_path: Path, later_min: int, counted_down: bool) -> None:
    from streams.deliver.service import DOWN_AFTER

    target = AnswersProbesOnly()
    step, now = _counted_down_with_nothing_held(tmp_path, target)
    now[0] = step.outage.until_ms
    step.release_due()  # answered
    waits = step.outage.waits
    step = _restarted(step, target, tmp_path)
    now[0] += later_min * 60_000
    step.handle(trigger(trigger_id="later"))  # fails all its attempts
    assert step.outage.counted_down is counted_down
    if counted_down:
        assert step.outage.waits == waits + 1
    else:
        assert (step.outage.in_a_row, step.outage.waits) == (1, 0) and DOWN_AFTER > 1


def test_a_report_the_broker_did_not_take_is_kept_and_produced_again_until_it_does(tmp_path: Path) -> None:
    """A delivery-failed report (here ``no_address``, whose trigger's offset moves on at once) stays in
    the ledger until the broker acknowledges it: a failed delivery report counts an error, and the
    record is produced again by ``produce_kept``, also by a restarted deliver."""
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    producer.error = KafkaError(KafkaError._MSG_TIMED_OUT)
    step.handle(trigger(email=None))
    assert step.produce_kept() == 0  # on its way: not produced twice
    producer.poll()
    assert step.ledger.unacknowledged == 1 and gauge(step, "mailpulse_delivery_records_unacknowledged") == 1
    assert step.metrics.record_errors.labels("delivery-failed")._value.get() == 1
    assert step.produce_kept() == 1 and len(producer.sent) == 2  # not taken: produced again
    assert step.produce_kept() == 0
    step.now_ms = lambda: 1_800_000_090_000  # type: ignore[method-assign]
    assert gauge(step, "mailpulse_delivery_oldest_record_age_seconds") == 90
    step.ledger.close()
    assert gauge(step, "mailpulse_delivery_oldest_record_age_seconds") == 0  # (a scrape after the close)

    again, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))  # a restart
    assert gauge(again, "mailpulse_delivery_records_unacknowledged") == 1
    assert again.produce_kept() == 1
    [(topic, letter)] = producer.sent
    assert (topic, letter["trigger_id"], letter["error"]["code"]) == ("delivery-failed", "t-1", "no_address")
    producer.poll()  # acknowledged
    assert again.ledger.unacknowledged == 0 and again.ledger.kept_records() == []
    assert gauge(again, "mailpulse_delivery_records_unacknowledged") == 0 and again.produce_kept() == 0
    assert gauge(again, "mailpulse_delivery_oldest_record_age_seconds") == 0


def test_a_report_a_real_producer_cannot_deliver_stays_kept(tmp_path: Path) -> None:
    """librdkafka itself: no broker on the port, the record times out, the ledger keeps it."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": 300,
                         "log_level": 0})
    step = Deliverer(DryRun(tmp_path / "out"), Ledger(tmp_path / "state"), Renderer(), producer, DeliverMetrics(),
                     Settings(deliver_grace_s=0), "http://u", b"k" * 32, now_ms=lambda: 1_800_000_000_000)
    step.handle(trigger(email=None))
    assert producer.flush(5) == 0
    assert step.ledger.unacknowledged == 1 and step.metrics.record_errors.labels("delivery-failed")._value.get() == 1
    [(_, topic, key, value)] = step.ledger.kept_records()
    assert (topic, key, orjson.loads(value)["error"]["code"]) == ("delivery-failed", b"p-1", "no_address")


def test_a_full_queue_keeps_the_records_and_a_fatal_producer_error_is_raised_to_the_loop(tmp_path: Path) -> None:
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))

    def full(*args: Any, **kwargs: Any) -> None:
        raise BufferError("Local: Queue full")

    refusing = producer.produce
    producer.produce = full  # type: ignore[method-assign]
    for n in range(3):
        step.handle(trigger(trigger_id=f"t-{n}", email=None))
    assert step.ledger.unacknowledged == 3 and step.metrics.record_errors.labels("delivery-failed")._value.get() == 3
    assert step.produce_kept() == 0  # stops at the first refusal, none left marked on its way
    assert step.metrics.record_errors.labels("delivery-failed")._value.get() == 4
    producer.produce = refusing  # type: ignore[method-assign]
    assert step.produce_kept() == 3 and step.fatal is None
    # librdkafka reports a fatal error by its code (its delivery reports' errors never say fatal())
    producer.error = KafkaError(KafkaError._FATAL, "idempotence broken")
    producer.poll()
    assert step.fatal is not None and step.ledger.unacknowledged == 3


def test_a_fatal_error_the_producer_raises_from_poll_or_reports_through_its_callback_is_kept(
        tmp_path: Path) -> None:
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))

    def fatal(timeout: float = 0) -> int:
        raise KafkaException(KafkaError(KafkaError._FATAL, "fenced"))

    producer.poll = fatal  # type: ignore[method-assign]
    step.poll_producer()
    assert step.fatal is not None and "fenced" in step.fatal
    again, _ = deliverer(tmp_path / "again", DryRun(tmp_path / "out"))
    again.producer_error(KafkaError(KafkaError._TRANSPORT, "broker away"))
    assert again.fatal is None
    again.producer_error(KafkaError(KafkaError._FATAL, "fenced"))
    assert again.fatal is not None


def test_a_record_the_producer_refuses_for_itself_does_not_hold_back_the_others(tmp_path: Path) -> None:
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    taken = producer.produce

    def too_large_first(topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None) -> None:
        if orjson.loads(value)["trigger_id"] == "t-0":
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"))
        taken(topic, value, key, on_delivery)

    producer.produce = too_large_first  # type: ignore[method-assign]
    for n in range(3):
        step.handle(trigger(trigger_id=f"t-{n}", email=None))
    producer.poll()
    assert [letter["trigger_id"] for _, letter in producer.sent] == ["t-1", "t-2"]
    assert step.ledger.unacknowledged == 1
    assert step.produce_kept() == 1 and step.ledger.unacknowledged == 1  # refused again, still kept


def test_a_malformed_triggers_long_fields_are_cut_in_its_report(tmp_path: Path) -> None:
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(orjson.dumps({"trigger_id": "t" * 5000, "type": ["x" * 100] * 100, "profile_id": "p" * 5000,
                              "email": "ana@example.com", "send_at": "2026-03-01T10:00:00.000Z"}))
    [(_, letter)] = producer.sent
    assert letter["error"]["code"] == "bad_trigger"
    assert len(letter["trigger_id"]) == len(letter["type"]) == len(letter["profile_id"]) == 1000
    assert letter["type"].startswith('["xxx')
    # nested deeper than orjson writes (it reads up to 1024 levels): passed on as a note, not raised
    step.handle(b'{"trigger_id":"t-2","type":"welcome","email":null,"profile_id":' + b"[" * 300 + b"]" * 300 + b"}")
    assert producer.sent[-1][1]["profile_id"] == "<list nested too deeply to pass on>"


def test_a_servers_reply_that_quotes_the_address_stays_out_of_info_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SMTP replies often quote the recipient ("450 4.2.2 <ana@example.com>: mailbox full"): the info
    line of a trigger tried again later names the kind of failure only, the reply at debug level."""
    from streams.deliver.targets import Temporary

    class QuotesTheAddress:
        name = "quotes"

        def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
            raise Temporary(f"SMTP 450: 4.2.2 <{trigger['email']}>: mailbox full", target_down=False)

    step, _ = deliverer(tmp_path, QuotesTheAddress())
    caplog.set_level(logging.DEBUG, logger="streams.deliver.service")
    step.handle(trigger())
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("tried again in round 2 (SMTP 450)" in line for line in info), info
    assert not any("ana@example.com" in line for line in info)
    assert any("ana@example.com" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


@pytest.mark.parametrize("profile_id", [None, "", 17, ["p-1"], b"[" * 300 + b"]" * 300])
def test_a_trigger_without_a_profile_id_or_nested_past_the_encoder_goes_to_delivery_failed(
        tmp_path: Path, profile_id: Any) -> None:
    """A ``profile_id`` nested 300 deep stopped ``deliver`` at every start: the ledger could not
    encode its mark.  Without a profile id, held triggers and opt-outs shared one ledger key."""
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    raw = trigger(profile_id="@") if isinstance(profile_id, bytes) else trigger(profile_id=profile_id)
    if isinstance(profile_id, bytes):
        raw = raw.replace(b'"profile_id":"@"', b'"profile_id":' + profile_id)
    step.handle(raw)
    deep = trigger(trigger_id="t-2", payload="@").replace(b'"payload":"@"', b'"payload":' + b'{"a":' * 300 + b"1"
                                                          + b"}" * 300)
    step.handle(deep)
    assert [(letter["trigger_id"], letter["error"]["code"]) for _, letter in producer.sent] == \
        [("t-1", "bad_trigger"), ("t-2", "bad_trigger")]
    assert step.ledger.held == 0 and not list((tmp_path / "out").iterdir())
    step.handle(trigger(trigger_id="t-3"))  # the next one goes on
    assert [path.stem for path in (tmp_path / "out").iterdir()] == ["t-3"]


def test_a_trigger_id_is_logged_on_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    with caplog.at_level("WARNING"):
        step.handle(trigger(trigger_id="t-1\nWARNING forged line" + "x" * 5_000, email=None, type=""))
    [line] = [record.getMessage() for record in caplog.records]
    assert "\n" not in line and len(line) < 300


@pytest.mark.parametrize("address", ["Ana <ana@example.com>", "ana@example.com, eve@example.org",
                                     "ana@example.com eve@example.org", "ana@@example.com"])
def test_an_email_that_is_not_one_bare_address_goes_to_delivery_failed(tmp_path: Path, address: str) -> None:
    """After ``ana@example.com`` unsubscribed, such forms were sent: to her, or to more recipients
    than the unsubscribe and bounce paths know of."""
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.withdraw("p-0", "ana@example.com", "unsubscribe")
    step.handle(trigger(email=address))
    [letter] = [letter for topic, letter in producer.sent if topic == "delivery-failed"]
    assert letter["error"] == {"code": "bad_trigger", "message": "email is not an address"}
    assert not list((tmp_path / "out").iterdir())


def test_an_unsubscribe_link_used_again_writes_and_sends_nothing_more(tmp_path: Path) -> None:
    """Each use wrote the ledger (synced) and sent another ``identify``: anyone holding one link could
    flood both."""
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    for _ in range(5):
        step.withdraw("p-0", "ana@example.com", "unsubscribe")
    assert [letter["consent"] for topic, letter in producer.sent if topic == "identities"] == [{"email": False}]
    step.withdraw("p-1", "ana@example.com", "unsubscribe")  # another profile of the address: its own word
    assert len([topic for topic, _ in producer.sent if topic == "identities"]) == 2
    assert step.ledger.unsubscribed("p-1", "bea@example.com")


@pytest.mark.parametrize("address", [" ana@example.com", "Ana@Example.COM", "ana@example.com "])
def test_an_unsubscribed_address_written_otherwise_is_suppressed(tmp_path: Path, address: str) -> None:
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.withdraw("p-0", "ana@example.com", "unsubscribe")
    step.handle(trigger(email=address))
    assert not list((tmp_path / "out").iterdir()) and not [t for t, _ in producer.sent if t == "delivery-failed"]
    assert step.ledger.outcome("t-1")["state"] == "suppressed"  # type: ignore[index]


def test_an_international_address_is_written_as_it_is_in_a_dry_run(tmp_path: Path) -> None:
    """The e-mail library wrote ``To: =?utf-8?q?jos=C3=A9?=@example.com``: no address at all."""
    import email

    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(trigger(email="josé@example.com"))
    [path] = (tmp_path / "out").iterdir()
    written = email.message_from_bytes(path.read_bytes(), policy=email.policy.SMTPUTF8)
    assert written["To"] == "josé@example.com" and b"=?utf-8?" not in path.read_bytes().split(b"\n\n")[0].split(
        b"To:")[1].split(b"\n")[0]


@pytest.mark.parametrize("sender", ["Bücher <news@bücher.de>", "news@bücher.de"])
def test_an_international_sender_is_written_as_it_is_in_a_dry_run(tmp_path: Path, sender: str) -> None:
    """``MAILPULSE_MAIL_FROM`` with an international domain (a To: in ASCII): the dry run wrote
    ``From: <news@=?utf-8?q?b=C3=BCcher?=.de>``, an encoded word in an address, which names no mailbox."""
    import email

    step = Deliverer(DryRun(tmp_path / "out"), Ledger(tmp_path / "state"), Renderer(), Recorder(),  # type: ignore[arg-type]
                     DeliverMetrics(), Settings(deliver_grace_s=0, mail_from=sender), "http://u", b"k" * 32,
                     now_ms=lambda: 1_800_000_000_000)
    step.handle(trigger())
    raw = (tmp_path / "out" / "t-1.eml").read_bytes()
    assert b"=?utf-8?" not in raw.split(b"\r\n\r\n")[0]
    written = email.message_from_string(raw.decode(), policy=email.policy.SMTPUTF8)
    assert [a.addr_spec for a in written["From"].addresses] == ["news@bücher.de"] and not written["From"].defects
    assert written["To"] == "ana@example.com"


def test_to_is_the_triggers_email_as_given_and_its_opt_out_link_names_the_address_normalized(tmp_path: Path) -> None:
    """Contract 1: ``To:`` the trigger's ``email``.  Only the opt-out comparisons use the normalized
    address, so an unsubscribe from this e-mail covers the address however it was written."""
    import email

    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(trigger(email="Ana@Example.com"))
    [path] = (tmp_path / "out").iterdir()
    written = email.message_from_bytes(path.read_bytes(), policy=email.policy.SMTP)
    assert written["To"] == "Ana@Example.com"
    step.withdraw("p-1", "ana@example.com", "unsubscribe")
    step.handle(trigger(trigger_id="t-2", email="Ana@Example.com"))
    assert step.ledger.outcome("t-2")["state"] == "suppressed"  # type: ignore[index]


def test_the_unsubscribe_pages_button_posts_to_the_link_also_under_a_path_of_a_public_address(
        tmp_path: Path) -> None:
    """Behind a proxy, ``MAILPULSE_UNSUBSCRIBE_URL=https://shop.example.com/mail`` makes links
    ``.../mail/unsubscribe?...``: the button of the page a GET shows posts to that same link."""
    import re
    import urllib.parse

    from streams.deliver import unsubscribe
    from streams.deliver.service import unsubscribe_app

    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    link = unsubscribe.link("https://shop.example.com/mail", step.secret, "p-1", "ana@example.com")
    query = urllib.parse.urlsplit(link).query
    answered: list[str] = []
    environ = {"PATH_INFO": "/unsubscribe", "REQUEST_METHOD": "GET", "QUERY_STRING": query}
    page = b"".join(unsubscribe_app(step, None)(environ, lambda status, headers: answered.append(status)))
    assert answered == ["200 OK"]
    [action] = re.findall(r'action="([^"]*)"', page.decode())
    assert urllib.parse.urljoin(link, action.replace("&amp;", "&")) == link
    assert not producer.sent  # (a GET unsubscribes nobody)


def test_a_subject_with_a_long_non_ascii_name_is_encoded_words_of_at_most_75_characters(tmp_path: Path) -> None:
    """RFC 2047: an encoded word is at most 75 characters (a header line at most 78 where it folds);
    the unsubscribe URL stays one line, however long."""
    import email
    import email.policy
    import re

    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    product = "有機栽培の緑茶ティーバッグ 50個入り 京都宇治産"
    step.handle(trigger(type="browse_abandoned", payload={"first_name": "さくら", "product_name": product}))
    raw = (tmp_path / "out" / "t-1.eml").read_bytes()
    head = raw.split(b"\r\n\r\n")[0].decode("ascii")
    words = re.findall(r"=\?[^?]+\?[bqBQ]\?[^?]*\?=", head)
    assert words and max(len(word) for word in words) <= 75
    [unfolded] = [line for line in head.split("\r\n") if line.startswith("List-Unsubscribe: ")]
    assert unfolded.endswith(">") and "=?" not in unfolded
    got = email.message_from_bytes(raw, policy=email.policy.default)
    assert got["Subject"] == f"Still thinking about {product}, さくら?"


@pytest.mark.parametrize("name", ["A\x00na", "A\x1bna", "A\x7fna", "A\x08na"])
def test_a_name_with_control_characters_leaves_them_out_of_the_subject(tmp_path: Path, name: str) -> None:
    """A first name from a form with a NUL, an ESC or a DEL went into the Subject header as it was:
    no RFC 5322 header may carry them, and mail servers refuse or mangle such messages."""
    import email
    import email.policy

    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(trigger(payload={"first_name": name}))
    raw = (tmp_path / "out" / "t-1.eml").read_bytes()
    head = raw.split(b"\r\n\r\n")[0]
    assert not [byte for byte in head if (byte < 32 and byte not in (9, 10, 13)) or byte == 127]
    assert email.message_from_bytes(raw, policy=email.policy.default)["Subject"] == "Welcome to Our shop, Ana"


def test_a_trigger_refused_before_the_target_is_asked_does_not_make_a_down_target_count_as_up(
        tmp_path: Path) -> None:
    """A webhook that answers 503: three triggers make it count as down.  The first trigger due after
    the wait has an id no HTTP header can carry, refused before any request: it made the target count
    as up (``mailpulse_delivery_target_up`` 1, the outage forgotten), and the next triggers each spent
    their attempts on it again."""
    from http.server import BaseHTTPRequestHandler

    from streams.deliver.service import DOWN_AFTER
    from streams.deliver.targets import Webhook
    from tests.unit.deliver.test_targets import serving

    class Down(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Down) as url:
        step, producer = deliverer(tmp_path, Webhook(url, None, 2))
        now = [parse_timestamp("2026-03-01T12:00:00Z")]
        step.now_ms = lambda: now[0]
        for n in range(DOWN_AFTER):
            step.handle(trigger(trigger_id=f"x-{n}"))
        step.handle(trigger(trigger_id="t-€"))  # waits for the target
        assert step.metrics.target_up._value.get() == 0 and step.ledger.held == DOWN_AFTER + 1
        now[0] = step.outage.until_ms  # its wait is over: it is the first due, then x-0 and x-1 (x-2 after)
        assert step.release_due() == 3
        [(_, letter)] = producer.sent
        assert (letter["trigger_id"], letter["error"]["code"]) == ("t-€", "rejected")
        assert step.metrics.target_up._value.get() == 0 and step.outage.counted_down


def test_a_webhook_that_asks_to_wait_holds_every_trigger_until_then(tmp_path: Path) -> None:
    """A 429 with ``Retry-After: 600``: the trigger was tried again after a minute, and the triggers
    after it each spent their attempts on the target meanwhile (three in a row to count it as down)."""
    from streams.deliver.targets import Webhook
    from tests.unit.deliver.test_targets import serving_http

    posts: list[str] = []
    with serving_http(lambda key: posts.append(key) or 429, headers={"Retry-After": "600"}) as url:
        step, producer = deliverer(tmp_path, Webhook(url, None, 2))
        now = [parse_timestamp("2026-03-01T12:00:00Z")]
        step.now_ms = lambda: now[0]
        step.handle(trigger(trigger_id="a"))
        step.handle(trigger(trigger_id="b"))
        assert posts == ["a"] and step.outage.counted_down and step.outage.until_ms == now[0] + 600_000
        assert step.metrics.target_up._value.get() == 0 and step.ledger.held == 2 and not producer.sent
        now[0] += 599_000
        assert step.release_due() == 0 and posts == ["a"]
        now[0] += 2_000
        step.release_due()
        assert posts[:2] == ["a", "b"]  # the first due probes it, no sooner than it asked


class WaitThen:
    """A target that answers a 429 asking to wait ten minutes, then fails with ``then``."""

    name = "webhook"

    def __init__(self, then: Exception) -> None:
        self.calls, self.then = 0, then

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        from streams.deliver.targets import Temporary

        self.calls += 1
        if self.calls == 1:
            raise Temporary("HTTP 429", retry_after_s=600)
        raise self.then


def test_a_round_a_retry_after_stopped_counts_the_attempts_it_made(tmp_path: Path) -> None:
    """A ``Retry-After`` past the longest backoff stops a round after one attempt: a later give-up
    reported the attempts as if each earlier round had made all of its own (3 + 1, not 1 + 1)."""
    target = WaitThen(OutcomeUnknown("connection lost after the hand-over"))
    letter = _given_up_in_the_second_round(tmp_path, target)
    assert letter["error"]["code"] == "outcome_unknown" and letter["attempts"] == target.calls == 2


class AlwaysBusy:
    """A target that answers every message with a 503 saying to try again at once."""

    name = "webhook"

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        from streams.deliver.targets import Temporary

        raise Temporary("HTTP 503", retry_after_s=0.0)


def test_a_retry_after_within_the_backoff_does_not_count_the_target_down_at_once(tmp_path: Path) -> None:
    """A ``Retry-After`` a round's backoff already waits for is one failure of the target, as a 503
    without it: one trigger whose attempts got ``Retry-After: 0`` made the target count as down
    (``mailpulse_delivery_target_up`` 0, every trigger waiting for a probe)."""
    step, producer = deliverer(tmp_path, AlwaysBusy())
    step.handle(trigger())
    assert step.ledger.held == 1 and not producer.sent
    assert not step.outage.counted_down and step.outage.in_a_row == 1
    assert step.metrics.target_up._value.get() == 1


class BusyFor:
    """A target that answers every message with a 503 saying to try again in ``seconds``."""

    name = "webhook"

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        from streams.deliver.targets import Temporary

        self.calls += 1
        raise Temporary("HTTP 503", retry_after_s=self.seconds)


def test_a_retry_after_on_a_rounds_last_attempt_holds_its_next_round(tmp_path: Path) -> None:
    """A ``Retry-After`` within the longest backoff (here 2 min) that came with a round's last attempt:
    the next round, a minute later, does not come before it."""
    target = BusyFor(100)
    producer = Recorder()
    step = Deliverer(target, Ledger(tmp_path / "state"), Renderer(), producer, DeliverMetrics(),  # type: ignore[arg-type]
                     Settings(deliver_attempts=3, deliver_backoff_s=60, deliver_grace_s=0), "http://u", b"k" * 32,
                     now_ms=lambda: 0, sleep=lambda s: None)
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    step.handle(trigger())
    assert target.calls == 3 and step.ledger.held == 1 and not step.outage.counted_down
    now[0] += 61_000
    step.release_due()
    assert target.calls == 3
    now[0] += 40_000
    step.release_due()
    assert target.calls == 6


def test_a_retry_after_past_the_longest_wait_of_a_round_stops_the_round(tmp_path: Path) -> None:
    """A round of 3 attempts 60 s apart, doubling, waits at most 2 min (after its second attempt).  A
    ``Retry-After`` of 200 s was taken as within it (the longest counted as 4 min): the round slept
    those 200 s between its attempts.  Now the attempts stop at the first, and the target counts as
    down until then."""
    target = BusyFor(200)
    slept: list[float] = []
    step = Deliverer(target, Ledger(tmp_path / "state"), Renderer(), Recorder(), DeliverMetrics(),  # type: ignore[arg-type]
                     Settings(deliver_attempts=3, deliver_backoff_s=60, deliver_grace_s=0), "http://u", b"k" * 32,
                     now_ms=lambda: parse_timestamp("2026-03-01T12:00:00Z"), sleep=slept.append)
    step.handle(trigger())
    assert target.calls == 1 and not slept and step.ledger.held == 1 and step.outage.counted_down


#: A line break as an RFC 2047 encoded word: the e-mail library decodes it when the header is set, and
#: Python before 3.11.10 (CVE-2024-6923) wrote it out decoded, a header of its own.
ENCODED_BREAK = "=?utf-8?q?x=0D=0ABcc:_all@example.net?="


@pytest.mark.parametrize("fields", [
    {"payload": {"first_name": ENCODED_BREAK}},
    {"payload": {"first_name": "=?utf-8?q?x=0D=0A=0D=0A<p>Your account is locked</p>?="}},  # (the body's start)
    {"payload": {"first_name": "=?utf-8?q?x=0DBcc:_all@example.net?="}},  # (a lone CR)
    {"type": "browse_abandoned", "payload": {"first_name": "Ana", "product_name": ENCODED_BREAK, "product_id": "p"}},
    {"type": f"welcome {ENCODED_BREAK}"},  # (X-Mailpulse-Trigger)
], ids=["first_name", "first_name-blank-line", "first_name-cr", "product_name", "type"])
def test_text_that_would_put_a_line_break_in_a_header_is_refused_not_written(
        tmp_path: Path, fields: dict[str, Any]) -> None:
    """A name typed as an encoded line break became a ``Bcc:`` header in the e-mail (or, with a blank
    line, cut the headers short and wrote its own body).  The trigger goes to delivery-failed instead,
    with nothing written."""
    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(trigger(**fields))
    assert [(topic, letter["error"]["code"]) for topic, letter in producer.sent] == [("delivery-failed", "bad_trigger")]
    assert "header" in producer.sent[0][1]["error"]["message"]
    assert not list((tmp_path / "out").iterdir())


def test_an_encoded_line_break_sent_by_smtp_adds_no_header_and_no_recipient(tmp_path: Path) -> None:
    """What the SMTP server is handed: a trigger id (anyone may produce to ``triggers``) and a name with
    an encoded ``Bcc:`` are refused; the same person with a plain name gets the one e-mail, to her alone."""
    from streams.deliver.targets import Smtp
    from tests.fakes import SmtpInbox, serving_smtp

    inbox = SmtpInbox()
    with serving_smtp(inbox) as port:
        step, producer = deliverer(tmp_path, Smtp("127.0.0.1", port, "none", None, None, timeout_s=5))
        step.handle(trigger(trigger_id=ENCODED_BREAK))
        step.handle(trigger(trigger_id="t-1\n"))  # (X-Mailpulse-Trigger: welcome t-1\n: the headers' end)
        step.handle(trigger(trigger_id="t-2", payload={"first_name": ENCODED_BREAK}))
        step.handle(trigger(trigger_id="t-3", payload={"first_name": "=?utf-8?q?Jos=C3=A9?="}))
    assert [letter["error"]["code"] for _, letter in producer.sent] == ["bad_trigger"] * 3
    [(_, recipients, got)] = inbox.received
    assert recipients == ["ana@example.com"] and "Bcc" not in got and got["Subject"] == "Welcome to Our shop, José"


@pytest.mark.parametrize("address", ["ana@example.com\n", "ana@example.com\r\n", "ana@example.com\u2028",
                                     "ana@example.com\x85", "\x0bana@example.com"])
def test_an_address_padded_with_a_line_break_goes_to_delivery_failed(tmp_path: Path, address: str) -> None:
    """The address is read as the ingest reads it, padding stripped, but ``To:`` is written as given:
    ``To: ana@example.com\\n`` ended the headers there (the subject, the unsubscribe headers and the
    MIME structure became body), ``\\u2028`` made an encoded word of the domain."""
    import email

    step, producer = deliverer(tmp_path, DryRun(tmp_path / "out"))
    step.handle(trigger(email=address))
    assert [(topic, letter["error"]) for topic, letter in producer.sent] == [
        ("delivery-failed", {"code": "bad_trigger", "message": "email is not an address"})]
    assert not list((tmp_path / "out").iterdir())
    step.handle(trigger(trigger_id="t-2", email=" ana@example.com "))  # (spaces: To: carries them harmlessly)
    [path] = (tmp_path / "out").iterdir()
    written = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert path.name == "t-2.eml" and [a.addr_spec for a in written["To"].addresses] == ["ana@example.com"]
    assert written["Subject"] == "Welcome to Our shop, Ana" and written["List-Unsubscribe"]


def test_a_retry_after_shorter_than_the_outage_already_counted_does_not_shorten_it() -> None:
    """``told_to_wait``: the target counts as down until the later of its ``Retry-After`` and the wait
    its failures in a row already set."""
    from streams.deliver.service import Outage

    now = parse_timestamp("2026-03-01T12:00:00Z")
    outage = Outage({"in_a_row": 3, "until_ms": now + 3_600_000, "waits": 4}, now)
    outage.told_to_wait(now + 60_000)
    assert outage.counted_down and outage.until_ms == now + 3_600_000
    outage.told_to_wait(now + 7_200_000)
    assert outage.until_ms == now + 7_200_000


def test_a_webhooks_to_is_the_bare_address_the_e_mail_goes_to(tmp_path: Path) -> None:
    """An address padded with spaces is taken (``To:`` carries them harmlessly), but the webhook's ``to``
    passed them on: ``{"email": " ana@example.com "}``, which an e-mail API refuses as no address (an
    HTTP 400: delivery-failed, ``rejected``).  It gets the address ``To:`` names."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from streams.deliver.targets import Webhook

    bodies: list[dict[str, Any]] = []

    class Api(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200 if "@" in bodies[-1]["to"][0]["email"].strip() == bodies[-1]["to"][0]["email"]
                               else 400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        step, producer = deliverer(tmp_path, Webhook(f"http://127.0.0.1:{server.server_port}/send", None, 5))
        step.handle(trigger(email=" Ana@example.com  "))
    finally:
        server.shutdown()
    assert [body["to"] for body in bodies] == [[{"email": "Ana@example.com"}]]
    assert not producer.sent and step.ledger.outcome("t-1")["state"] == "sent"  # type: ignore[index]


def test_a_person_who_unsubscribed_and_gave_consent_again_gets_e_mails_again(tmp_path: Path) -> None:
    """An unsubscribe by the link was kept for good: once the pipeline had read it (its withdrawal, at
    or after the click) and the person then gave consent again, every trigger the pipeline made for
    them was suppressed, for ever.  Now a trigger stamped after that withdrawal is sent (as one made
    after any withdrawal is), and the link works again; what was on its way at the click is not sent."""
    out = tmp_path / "out"
    step, producer = deliverer(tmp_path, DryRun(out))
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    step.withdraw("p-1", "ana@example.com", "unsubscribe")
    # on its way at the click, stamped a minute ahead (a shop's clock): held back before and after the
    # pipeline's withdrawal comes
    step.handle(trigger(trigger_id="on-its-way", at="2026-03-01T12:01:00.000Z"))
    assert step.ledger.outcome("on-its-way")["state"] == "suppressed"  # type: ignore[index]
    step.withdrawal(withdrawal("p-1", "2026-03-01T12:02:00.000Z"))  # (the profile's clock, past the click)
    now[0] = parse_timestamp("2026-03-05T12:00:00Z")
    step.handle(trigger(trigger_id="old", at="2026-03-01T12:01:30.000Z"))
    step.handle(trigger(trigger_id="again", at="2026-03-05T11:00:00.000Z"))  # consent given again on the 4th
    assert sorted(path.stem for path in out.iterdir()) == ["again"]
    step.withdraw("p-1", "ana@example.com", "unsubscribe")  # the link, used again: a second identify
    assert [topic for topic, _ in producer.sent] == ["identities", "identities"]
    step.handle(trigger(trigger_id="after-second", at="2026-03-05T11:30:00.000Z"))
    assert sorted(path.stem for path in out.iterdir()) == ["again"]


def test_a_target_that_goes_down_and_comes_back_is_said_once_each_at_the_default_log_level(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A target counted as down (a login or sender refused, a redirect, a relay away) was said only at
    info, which the default level (warn) does not show: e-mails stopped for up to the retry window, a
    day, without a line in the log.  Its start and its end are now warnings, once each, naming the kind
    of failure (no address)."""
    target = Flaky()
    step, _ = deliverer(tmp_path, target)
    now = [parse_timestamp("2026-03-01T12:00:00Z")]
    step.now_ms = lambda: now[0]
    with caplog.at_level(logging.WARNING, logger="streams.deliver.service"):
        for n in range(6):
            step.handle(trigger(trigger_id=f"t-{n}"))
        for _ in range(30):
            now[0] += 60_000
            step.release_due()
        down = [r.getMessage() for r in caplog.records]
        target.up = True
        now[0] += 3_600_000
        step.release_due()
    said = [r.getMessage() for r in caplog.records]
    assert len(down) == 1 and "down" in down[0] and "421" in down[0] and "ana@" not in down[0]
    assert len(said) == 2 and "again" in said[1] and sorted(target.sent) == [f"t-{n}" for n in range(6)]
