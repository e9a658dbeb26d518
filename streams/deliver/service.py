"""The deliver loop: ``triggers`` in (its own consumer group), e-mails out, each ``trigger_id`` at most
once ever (contract v1.1).

Per trigger: it goes into the ledger's hold until its ``send_at``, and at least
``MAILPULSE_DELIVER_GRACE_S`` after it was read (so no partition waits behind it, and a withdrawal the
pipeline published with it comes first), and the offset moves on.  When it is due, the ledger is asked
first (delivered before: skipped), the pipeline's withdrawals and the person's unsubscribe checked, the
e-mail rendered, the id marked ``sending``, the target called with retries, and the outcome written.
Offsets are committed only after that.  A process stopped between ``sending`` and the outcome does not
send again: at start such ids go to ``delivery-failed`` with code ``interrupted``, so nothing is dropped
silently and nothing is sent twice.  A target that fails temporarily gets the trigger again in later
rounds (:class:`Outage` tells when it is down).  Failures after the rounds, templates that fail,
malformed triggers and (with ``MAILPULSE_DELIVER_MAX_LATE_HOURS``) triggers due too long ago go to
``delivery-failed`` too.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import html
import logging
import math
import threading
import time
import unicodedata
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import orjson
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from prometheus_client import make_wsgi_app

from schemas.identifiers import normalize_email
from schemas.timeparse import format_ms, parse_timestamp
from streams.broker import FIRST_OFFSET, BrokerError, ensure_topics, kafka_error
from streams.deliver import unsubscribe
from streams.deliver.ledger import FAILED, SENDING, SENT, SUPPRESSED, Ledger
from streams.deliver.render import Renderer, TemplateProblem
from streams.deliver.targets import POLICY as POLICY  # (CRLF; headers folded, the unsubscribe URL's unfolded)
from streams.deliver.targets import (
    DryRun,
    OutcomeUnknown,
    Permanent,
    Sent,
    Smtp,
    Target,
    Temporary,
    Webhook,
    longest_backoff_s,
    with_retries,
)
from streams.domain.config import Triggers
from streams.logs import LIBRDKAFKA
from streams.metrics import STALL_AFTER_S, DeliverMetrics, serve_wsgi
from streams.settings import Settings
from streams.topics import DELIVERY_FAILED, TRIGGERS, withdrawals_topic

log = logging.getLogger(__name__)

IDENTITIES = "identities"


def _now_ms() -> int:
    return int(time.time() * 1000)


#: How long a synchronous offset commit may wait for an unreachable broker (librdkafka's request
#: timeout, ``socket.timeout.ms``): /healthz allows it.
COMMIT_WAIT_S = 60.0


class Heartbeat:
    """Whether deliver's loop still turns, for its /healthz: stalled once it has not beaten for
    :data:`~streams.metrics.STALL_AFTER_S` (as the worker's event loop) past the longest wait it said
    its next step may take (a send's attempt, which its timeout bounds whole, or a retry's backoff).
    Beaten by the loop thread, read by the HTTP thread: plain values, no lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.beat()

    def beat(self, waiting_s: float = 0.0) -> None:
        """The loop turned; its next beat may take ``waiting_s`` longer than a turn."""
        self.last = self.clock()
        self.stalls_at = self.last + waiting_s + STALL_AFTER_S

    def stalled_s(self) -> float:
        """How long the loop has not beaten, when it counts as stalled (else 0)."""
        now = self.clock()
        return now - self.last if now > self.stalls_at else 0.0


class Deliverer:
    """One trigger at a time; its I/O (target, ledger, renderer, producer, clock) comes in."""

    def __init__(self, target: Target, ledger: Ledger, renderer: Renderer, producer: Producer,
                 metrics: DeliverMetrics, settings: Settings, unsubscribe_base: str, secret: bytes,
                 now_ms: Callable[[], int] = _now_ms, sleep: Callable[[float], None] = time.sleep) -> None:
        self.target, self.ledger, self.renderer, self.producer = target, ledger, renderer, producer
        self.metrics, self.settings, self.now_ms, self.sleep = metrics, settings, now_ms, sleep
        self.unsubscribe_base, self.secret = unsubscribe_base, secret
        # a restart during an outage goes on with it, when the target is still the same one
        kept, self._target_id = ledger.outage(), _target_id(target)
        self._outage_kept = kept if kept.get("target") == self._target_id else {}
        self.outage = Outage(self._outage_kept, now_ms())
        self._said_down = False  # (a restart during an outage says it again)
        metrics.target_up.set(0 if self.outage.counted_down else 1)
        # the kept records produced and not acknowledged yet; the unsubscribe server's thread produces too
        self._in_flight: set[bytes] = set()
        self._records_lock = threading.Lock()
        # read at each scrape, so they are current also while slow sends hold the loop
        metrics.ledger_entries.set_function(lambda: ledger.entries)
        metrics.held.set_function(lambda: ledger.held)
        metrics.records_unacknowledged.set_function(lambda: ledger.unacknowledged)
        metrics.oldest_record_age.set_function(self.oldest_record_age)
        self._not_taken, self._last_error = 0, ""  # since the last warning (one a minute at most)
        #: the producer's fatal error (its idempotence broken, say): no record can be produced any more
        self.fatal: str | None = None
        self.heartbeat = Heartbeat()  # (what /healthz tells)
        ledger.progress = self._beat  # (its long scans and prunes: no stall)

    def _beat(self) -> None:
        self.heartbeat.beat()

    # --- records for Kafka, kept in the ledger until the broker has them ---
    def produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        """Produces a record that must not be lost (a ``delivery-failed`` report, a consent withdrawal):
        kept in the ledger first, forgotten when the broker acknowledges it, produced again by
        :meth:`produce_kept` when it does not (at-least-once: a record may come out twice).  Without
        this a record the broker did not take (away longer than librdkafka's 5 minutes) was gone while
        the offsets of its trigger moved on."""
        with self._records_lock:
            entry = self.ledger.keep_record(topic, key, value, self.now_ms())
            self._in_flight.add(entry)  # (before the lock is let go: produce_kept must not take it too)
        self._produce_kept(entry, topic, key, value)

    def produce_kept(self) -> int:
        """Produces again the kept records not acknowledged and not on their way now (at start, and
        every minute: a record waits for librdkafka to give up on it first, 5 minutes by default);
        how many.  Says once what the broker did not take since the last time."""
        with self._records_lock:
            again = [record for record in self.ledger.kept_records() if record[0] not in self._in_flight]
            self._in_flight.update(entry for entry, *_ in again)
            not_taken, last_error, self._not_taken = self._not_taken, self._last_error, 0
        if not_taken:
            log.warning("deliver: %d attempts to produce kept records were not taken (last: %s); kept, produced "
                        "again", not_taken, last_error)
        done = 0
        try:
            for entry, topic, key, value in again:
                if not self._produce_kept(entry, topic, key, value):  # its queue full: so for the rest too
                    break
                done += 1
        finally:  # (also if something raised) the rest are not on their way
            with self._records_lock:
                self._in_flight.difference_update(entry for entry, *_ in again[done:])
        return done

    def _produce_kept(self, entry: bytes, topic: str, key: bytes | None, value: bytes) -> bool:
        """Produces a kept record marked in flight; False when the producer's queue is full.  A record
        the producer refuses for itself (too large, say) stays kept, and the next ones go on."""
        try:
            self.producer.produce(topic, value, key=key,
                                  on_delivery=lambda error, _message: self._acknowledged(entry, topic, error))
        except BufferError:
            self._acknowledged(entry, topic, KafkaError(KafkaError._QUEUE_FULL, "the producer's queue is full"))
            return False
        except KafkaException as exc:
            self._acknowledged(entry, topic, kafka_error(exc) or KafkaError(KafkaError._FAIL, str(exc)))
        return True

    def poll_producer(self) -> None:
        """Serves the producer's delivery reports (and librdkafka's log lines); a fatal error of the
        producer (raised there, or reported through ``error_cb`` by :meth:`producer_error`) is kept in
        :attr:`fatal`."""
        try:
            self.producer.poll(0)
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is None or _is_fatal(error):
                self.fatal = str(exc)
            else:
                log.warning("deliver: the producer reported %s", error.name())

    def oldest_record_age(self) -> float:
        """How long the oldest kept record has waited, in seconds (0: none waits), for the scrape.
        (``run_deliver`` closes the ledger only once its HTTP server has answered its last request.)"""
        with self._records_lock:
            oldest = None if self.ledger.closed else self.ledger.oldest_kept_ms()
        return 0.0 if oldest is None else max(0, self.now_ms() - oldest) / 1000

    def producer_error(self, error: KafkaError) -> None:
        """The producer's ``error_cb``: librdkafka's own errors, mostly passing (a broker away); a
        fatal one ends ``deliver`` (see :attr:`fatal`)."""
        if _is_fatal(error):
            self.fatal = error.str()
        else:  # (with an error_cb, librdkafka logs these no more; through its logger, repeats are held back)
            LIBRDKAFKA.warning("deliver's producer: %s", error.str())

    def _acknowledged(self, entry: bytes, topic: str, error: KafkaError | None) -> None:
        """The producer's delivery report of a kept record (served by ``poll`` or ``flush``, on the
        thread that called them), or its refusal to take it."""
        with self._records_lock:
            self._in_flight.discard(entry)
            if error is None:
                self.ledger.acknowledged(entry)
            else:
                self._not_taken, self._last_error = self._not_taken + 1, error.name()
                if _is_fatal(error):
                    self.fatal = error.str()
        if error is not None:
            self.metrics.record_errors.labels(topic).inc()

    # --- in ---
    def handle(self, raw: bytes | None) -> None:
        """A record of ``triggers``: held until its ``send_at``, and at least ``MAILPULSE_DELIVER_GRACE_S``
        (a withdrawal published with it may still be on its way), then delivered."""
        if raw is None:
            return
        try:
            trigger = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._failed({}, 0, "bad_trigger", "not JSON")
            return
        problem = _malformed(trigger)
        if problem is not None:
            self._failed(trigger if isinstance(trigger, dict) else {}, 0, "bad_trigger", problem)
            return
        if self.ledger.outcome(trigger["trigger_id"]) is not None:
            self.metrics.deliveries.labels(_type_label(trigger["type"]), "duplicate").inc()
            return
        if self._withdrawn(trigger):
            return
        if trigger["email"] is None:
            self._no_address(trigger)
            return
        now, send_at = self.now_ms(), _send_at_ms(trigger)
        if self.ledger.is_held(trigger["trigger_id"], str(trigger.get("profile_id"))):
            return  # read again while held (a grace's or a round's end differs from read to read)
        until = max(send_at, now + int(self.settings.deliver_grace_s * 1000))
        if until <= now:
            self.deliver(trigger)
            return
        self.ledger.hold(until, trigger["trigger_id"], raw, str(trigger.get("profile_id")))
        if send_at > now:
            self.metrics.deliveries.labels(_type_label(trigger["type"]), "held").inc()

    def release_due(self, stopping: Callable[[], bool] = lambda: False,
                    read_withdrawals: Callable[[], None] = lambda: None) -> int:
        """Delivers the held triggers whose send_at has come (until ``stopping`` says so), reading what
        was withdrawn before each (a pass of slow sends can take minutes); how many."""
        released, now = 0, self.now_ms()
        due = self.ledger.due(now)
        # no trigger to try the target with (a failed one is held a second past the wait): ask it
        if not due and self.outage.counted_down and not self.outage.down(now) and not self.ledger.due(now + 1000):
            self._probe()
        self._show_target()
        for key in due:
            if stopping():  # the rest stay held, for the next start
                break
            self.heartbeat.beat()  # (between sends: a slow target that answers is no stall)
            read_withdrawals()
            raw = self.ledger.held_trigger(key)
            if raw is None:
                continue  # withdrawn just now, or during an earlier delivery of this pass
            trigger = orjson.loads(raw)
            self.deliver(trigger)
            self.ledger.release(key, str(trigger.get("profile_id")))
            released += 1
        return released

    def withdrawal(self, raw: bytes | None) -> None:
        """A record of the pipeline's withdrawals topic: the profile's triggers stamped at or before its
        ``at`` are not sent, those held now and those read later (the two topics are read apart)."""
        try:
            message = orjson.loads(raw or b"")
            profile_id, at = message["profile_id"], _timestamp_ms(message["at"])
            if not isinstance(profile_id, str) or at is None:
                raise ValueError(message)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            self.metrics.withdrawals.labels("unreadable").inc()
            log.warning("deliver: a withdrawal that cannot be read was skipped")
            return
        self.metrics.withdrawals.labels(message.get("reason") if message.get("reason") in WITHDRAWAL_REASONS
                                        else "other").inc()
        self.ledger.note_withdrawal(profile_id, at, self.now_ms())
        for key, held in self.ledger.held_for(profile_id):
            trigger = orjson.loads(held)
            if self._withdrawn(trigger):
                self.ledger.release(key, profile_id)  # (and with it the address it held)

    def _withdrawn(self, trigger: Mapping[str, Any]) -> bool:
        """Whether the pipeline withdrew this trigger's profile at or after the trigger's time; if so
        the trigger is marked, counted (``cancelled``) and not sent, now or when read again."""
        withdrawn = self.ledger.withdrawn_at(str(trigger.get("profile_id")))
        if withdrawn is None:
            return False
        at = _timestamp_ms(trigger.get("at"))  # (without one it may be older: it goes)
        if at is not None and at > withdrawn:
            return False  # made after it (consent given again, or a new profile of the same key)
        if self.ledger.outcome(trigger["trigger_id"]) is None:
            self.ledger.mark(trigger["trigger_id"], SUPPRESSED, self.now_ms(), code="withdrawn")
            self.metrics.deliveries.labels(_type_label(trigger["type"]), "cancelled").inc()
        return True

    def _subscribed_again(self, trigger: Mapping[str, Any], unsubscribed_ms: int) -> bool:
        """Whether a trigger of a person who unsubscribed at ``unsubscribed_ms`` was made after they gave
        consent again: the pipeline has read the unsubscribe (its withdrawal of the profile, stamped with
        the click's time or its later clock, is at or after it) and the trigger, not withdrawn by it
        (:meth:`_withdrawn`, asked first), was stamped after that.  Until the withdrawal comes, what is
        on its way stays held back, however its time reads."""
        withdrawn = self.ledger.withdrawn_at(str(trigger.get("profile_id")))
        at = _timestamp_ms(trigger.get("at"))
        return withdrawn is not None and withdrawn >= unsubscribed_ms and at is not None and at > withdrawn

    def prune(self) -> int:
        """Forgets trigger ids older than the ledger's retention; how many."""
        cut = self.now_ms() - int(self.settings.deliver_ledger_days * 86_400_000)
        self.ledger.prune_withdrawals(cut)
        pruned = self.ledger.prune(cut)
        if pruned:
            self.metrics.ledger_pruned.inc(pruned)
        return pruned

    def fail_interrupted(self) -> None:
        """Ids left ``sending`` by a process that stopped mid-send: at most once, so not sent again.
        (Found by a read of the whole ledger, which beats the heartbeat: /healthz says no stall.)"""
        for trigger_id, mark in self.ledger.interrupted():
            self._give_up({"trigger_id": trigger_id, "type": mark.get("type"), "profile_id": mark.get("profile_id")},
                          "interrupted", self._earlier_attempts(trigger_id) + 1,
                          "the connector stopped while sending it; not sent again (at most once)")

    # --- one trigger ---
    def deliver(self, trigger: dict[str, Any]) -> None:
        trigger_id, kind = trigger["trigger_id"], _type_label(trigger["type"])
        if self.ledger.outcome(trigger_id) is not None:
            self.metrics.deliveries.labels(kind, "duplicate").inc()
            return
        now = self.now_ms()
        late_ms = now - _send_at_ms(trigger)
        if self.settings.deliver_max_late_hours and late_ms > self.settings.deliver_max_late_hours * 3_600_000:
            self._give_up(trigger, "expired", self._earlier_attempts(trigger_id),
                          f"send_at was {late_ms / 3_600_000:.1f} h ago, past "
                          f"MAILPULSE_DELIVER_MAX_LATE_HOURS={self.settings.deliver_max_late_hours:g}; not sent")
            return
        if self._withdrawn(trigger):
            return
        unsubscribed = self.ledger.unsubscribed_at(str(trigger.get("profile_id")), _opt_out_address(trigger["email"]))
        if unsubscribed is not None and not self._subscribed_again(trigger, unsubscribed):
            self.ledger.mark(trigger_id, SUPPRESSED, now)
            self.metrics.deliveries.labels(kind, "suppressed").inc()
            return
        try:
            message = self.message(trigger)
        except TemplateProblem as exc:
            self._give_up(trigger, "template_error", self._earlier_attempts(trigger_id), str(exc))
            return
        except Exception as exc:  # e.g. an address or subject with a line break, or one the e-mail
            # library cannot parse (it raises AttributeError on "x@[1.2.3.4"): the trigger's fault, and
            # raised past here it would stop the connector at every start
            self._give_up(trigger, "bad_trigger", self._earlier_attempts(trigger_id),
                          f"cannot be an e-mail: {type(exc).__name__}: {exc}")
            return
        if self.outage.down(now):  # it waits for the probe, without an attempt and without using a round
            waited = self.ledger.rounds(trigger_id)
            if waited is None:  # its retry window starts now, as a failure's would
                self.ledger.note_round(trigger_id, 0, now)
            elif now - waited[1] >= self.settings.deliver_retry_hours * 3_600_000:
                # (the attempts of the rounds it failed before the target counted as down, if any)
                self._give_up(trigger, "retries_exhausted", self._earlier_attempts(trigger_id),
                              f"the target was down for the rest of the retry window "
                              f"(MAILPULSE_DELIVER_RETRY_HOURS={self.settings.deliver_retry_hours:g}); not sent")
                return
            self.ledger.hold(self.outage.until_ms, trigger_id, orjson.dumps(trigger), str(trigger.get("profile_id")))
            self.metrics.deliveries.labels(kind, "deferred").inc()
            return
        self.ledger.mark(trigger_id, SENDING, now, type=trigger["type"], profile_id=trigger.get("profile_id"))
        self.ledger.sync()  # on disk before the send: after a power loss it is "interrupted", not sent again
        retries = self.metrics.retries.labels(self.target.name)

        def attempt() -> Sent:
            self.heartbeat.beat(self.settings.deliver_timeout_s)  # (the send's timeout bounds it whole)
            return self.target.send(message, trigger)

        def backoff(seconds: float) -> None:
            self.heartbeat.beat(seconds)
            self.sleep(seconds)

        try:
            sent, attempts = with_retries(attempt, self.settings.deliver_attempts, self.settings.deliver_backoff_s,
                                          retries.inc, backoff)
        except OutcomeUnknown as exc:
            self._give_up(trigger, "outcome_unknown", self._earlier_attempts(trigger_id) + exc.attempts,
                          f"{exc}; not sent again (at most once)")
            return
        except Temporary as exc:
            if exc.target_down:
                self.outage.failed(self.now_ms())
            else:  # the target answered: it is up (this message may go through later)
                self.outage.up()
            told = 0 if exc.retry_after_s is None else self.now_ms() + int(exc.retry_after_s * 1000)
            if exc.retry_after_s is not None and exc.retry_after_s > longest_backoff_s(
                    self.settings.deliver_attempts, self.settings.deliver_backoff_s):
                # (a 429 or 503 that says when, past what a round waits: every trigger waits for it)
                self.outage.told_to_wait(told)
            self._show_target(str(exc))  # (kept before what follows may take a while, or fail)
            if not self._again_later(trigger, str(exc), exc.attempts or self.settings.deliver_attempts, told):
                self._give_up(trigger, "retries_exhausted",
                              self._earlier_attempts(trigger_id) + (exc.attempts or self.settings.deliver_attempts),
                              str(exc))
            return
        except Permanent as exc:
            if exc.answered:  # (not one refused before the target was asked: a down target stays down)
                self.outage.up()
            self._show_target()
            self._give_up(trigger, "rejected", self._earlier_attempts(trigger_id) + exc.attempts, str(exc))
            return
        self.outage.up()
        self._show_target()
        done = self.now_ms()
        self.ledger.mark(trigger_id, SENT, done, attempts=attempts)
        self.metrics.deliveries.labels(kind, "sent").inc()
        self.metrics.delay.observe(max(0.0, (done - _send_at_ms(trigger)) / 1000))
        if unsubscribed is not None:  # sent to a person who gave consent again: their link unsubscribes again
            self.ledger.subscribed_again(str(trigger.get("profile_id")), _opt_out_address(trigger["email"]))
        if sent.bounced:
            self.withdraw(str(trigger.get("profile_id")), _opt_out_address(trigger["email"]), "bounce")

    def _earlier_attempts(self, trigger_id: str) -> int:
        """The attempts of the rounds this trigger failed before this one (none for one that only
        waited for a down target); read before its outcome is marked, which forgets its rounds."""
        return self.ledger.attempts(trigger_id, self.settings.deliver_attempts)

    def _probe(self) -> None:
        """Asks a down target whether it answers again, sending nothing (:meth:`Target.probe`)."""
        self.heartbeat.beat(self.settings.deliver_timeout_s)
        try:
            self.target.probe(self.settings.mail_from)
        except Exception as exc:  # (Temporary, or what no target classified: never past here)
            if isinstance(exc, Temporary) and not exc.target_down:
                self._probe_answered()
                return
            self.outage.failed(self.now_ms())
            self.metrics.probes.labels(self.target.name, "unanswered").inc()
            log.info("deliver: the target did not answer a probe (%s); the next in %.0f s",
                     _failure_class(str(exc)) if isinstance(exc, Temporary) else type(exc).__name__,
                     max(0, self.outage.until_ms - self.now_ms()) / 1000)
            log.debug("deliver: the probe's failure: %s", str(exc)[:300])
            return
        self._probe_answered()

    def _probe_answered(self) -> None:
        self.outage.answered_probe(self.now_ms())
        self.metrics.probes.labels(self.target.name, "answered").inc()
        log.info("deliver: the target answered a probe: due triggers are tried again")

    def _show_target(self, why: str = "") -> None:
        # 0 from the outage's start until the target answers a trigger's attempt or a probe; not back
        # to 1 while the wait for the next probe is over but it has not answered yet (the alert on it
        # watches for 10 minutes of 0)
        self.metrics.target_up.set(0 if self.outage.counted_down else 1)
        # said at the default level (warn), once when it starts and once when a trigger goes through
        # again: else e-mails stopped for up to the retry window without a line in the log
        if self.outage.counted_down and not self._said_down:
            self._said_down = True
            log.warning("deliver: the target (%s) counts as down%s; due triggers wait for it and it is probed "
                        "now and then (mailpulse_delivery_target_up)", self.target.name,
                        f" ({_failure_class(why)})" if why else "")
        elif self._said_down and not self.outage.state():
            self._said_down = False
            log.warning("deliver: the target (%s) takes e-mails again; the waiting triggers are sent",
                        self.target.name)
        state = self.outage.state()
        if state:
            state["target"] = self._target_id
        if state != self._outage_kept:
            self.ledger.note_outage(state)
            self.ledger.sync()  # (rare: the outage began, ended or waits longer)
            self._outage_kept = state

    def _again_later(self, trigger: dict[str, Any], why: str, attempts: int, not_before_ms: int = 0) -> bool:
        """Holds a trigger not sent (its target failed temporarily, or is down) for its next round;
        False when its rounds are used up (``MAILPULSE_DELIVER_RETRY_HOURS``).  ``attempts``: this
        round's; ``not_before_ms``: when the target's ``Retry-After`` ends (0: none)."""
        trigger_id, now = trigger["trigger_id"], self.now_ms()
        rounds, since = self.ledger.rounds(trigger_id) or (0, now)
        if now - since >= self.settings.deliver_retry_hours * 3_600_000:
            return False
        made = self._earlier_attempts(trigger_id) + attempts
        self.ledger.forget(trigger_id)  # (its ``sending`` mark: it was not sent)
        self.ledger.note_round(trigger_id, rounds + 1, since, made)
        # after the triggers waiting for the target to come back (one of them probes it, not this one)
        at = max(now + round_delay_ms(rounds + 1), self.outage.until_ms + 1000 if self.outage.down(now) else 0,
                 not_before_ms)
        self.ledger.hold(at, trigger_id, orjson.dumps(trigger), str(trigger.get("profile_id")))
        self.ledger.sync()  # (else a power loss brings back its ``sending`` mark: "interrupted", never sent)
        self.metrics.deliveries.labels(_type_label(trigger["type"]), "deferred").inc()
        log.info("deliver: trigger %s tried again in round %d (%s)", trigger_id, rounds + 2, _failure_class(why))
        log.debug("deliver: trigger %s: %s", trigger_id, why[:300])
        return True

    def message(self, trigger: Mapping[str, Any]) -> EmailMessage:
        url = unsubscribe.link(self.unsubscribe_base, self.secret, str(trigger.get("profile_id")),
                               _opt_out_address(trigger["email"]))
        rendered = self.renderer.render(trigger, url)
        message = EmailMessage(policy=POLICY)
        message["From"] = self.settings.mail_from
        message["To"] = trigger["email"]
        message["Subject"] = rendered.subject
        message["Date"] = formatdate(self.now_ms() / 1000, usegmt=True)
        # the same in every attempt and round: an idempotency key's requests must not differ
        message["Message-ID"] = f"<{hashlib.sha256(trigger['trigger_id'].encode()).hexdigest()[:40]}@mailpulse.local>"
        message["X-Mailpulse-Trigger"] = f"{trigger['type']} {trigger['trigger_id']}"
        for name, value in unsubscribe.headers(url).items():
            message[name] = value
        _check_headers(message)
        message.set_content(rendered.text)
        message.add_alternative(rendered.html, subtype="html")
        return message

    # --- the unsubscribe loop ---
    def withdraw(self, profile_id: str, email: str, source: str) -> None:
        """No more e-mail to this person: noted here (their triggers already on the way are held back)
        and sent to the pipeline as an ``identify`` with ``consent.email=false``.  Once per person and
        address: the same link used again (a page reloaded, or anyone holding it, without end) writes and
        sends nothing more (the first ``identify`` is kept in the ledger until the broker takes it)."""
        if self.ledger.unsubscribed_both(profile_id, email):
            return
        now = self.now_ms()
        self.ledger.unsubscribe(profile_id, email, now)
        event = unsubscribe.consent_withdrawn(email, now, "unsubscribe" if source == "unsubscribe" else "bounce")
        self.produce(IDENTITIES, orjson.dumps(event), email.encode())
        self.ledger.sync()  # the unsubscribe and its record outlive a power loss before the page says done
        self.poll_producer()  # (delivery reports so far)
        self.metrics.unsubscribes.labels(source).inc()

    def _give_up(self, trigger: Mapping[str, Any], code: str, attempts: int, message: str) -> None:
        """Marks the trigger failed with ``code`` (never tried again) and reports it on ``delivery-failed``."""
        self.ledger.mark(str(trigger["trigger_id"]), FAILED, self.now_ms(), code=code)
        self._failed(trigger, attempts, code, message)

    def _failed(self, trigger: Mapping[str, Any], attempts: int, code: str, message: str) -> None:
        self.metrics.deliveries.labels(_type_label(trigger.get("type")), "failed").inc()
        self._report(trigger, attempts, code, message)
        log.warning("delivery failed (%s) for trigger %r", code, _cut(trigger.get("trigger_id"), 128))

    def _no_address(self, trigger: Mapping[str, Any]) -> None:
        """A trigger with ``"email": null``: nobody's address is known yet (an anonymous visitor's cart or
        browsing), so no e-mail can be sent.  It goes to ``delivery-failed`` with code ``no_address``, as
        the contract has every trigger not delivered, but it is no failure of delivery: it counts as
        ``outcome="no_address"``, not ``failed`` (shop traffic has many, which set off
        MailpulseDeliveriesFailing for good as ``bad_trigger``) and logs nothing.  Not marked in the
        ledger: read again, it is reported again, as a ``bad_trigger`` is."""
        self._report(trigger, 0, "no_address", "no e-mail address is known for this person")
        self.metrics.deliveries.labels(_type_label(trigger["type"]), "no_address").inc()

    def _report(self, trigger: Mapping[str, Any], attempts: int, code: str, message: str) -> None:
        record = {"trigger_id": _cut(trigger.get("trigger_id")), "type": _cut(trigger.get("type")),
                  "profile_id": _cut(trigger.get("profile_id")),
                  "attempts": attempts, "error": {"code": code, "message": message[:1000]},
                  "at": format_ms(self.now_ms())}
        key = record["profile_id"].encode() if isinstance(record["profile_id"], str) else None
        self.produce(DELIVERY_FAILED, orjson.dumps(record), key)


#: The ``type`` label of the delivery metrics: the built-in trigger types, and ``other`` for any other
#: producer's (a label per value read from a message would grow without bound).
TYPE_LABELS = frozenset(Triggers.model_fields)


#: How long a trigger not sent waits for its next round: 1 min, doubling, at most 1 h.
FIRST_ROUND_MS, LONGEST_ROUND_MS = 60_000, 3_600_000
#: Triggers failed temporarily in a row after which the target counts as down.
DOWN_AFTER = 3


def round_delay_ms(rounds: int) -> int:
    return int(min(FIRST_ROUND_MS * 2 ** min(rounds - 1, 16), LONGEST_ROUND_MS))


class Outage:
    """Whether the target is down: :data:`DOWN_AFTER` triggers in a row failed after all their attempts for the
    target's sake (no connection, timeouts, SMTP 421 or a session that cannot start, HTTP 5xx, 401, 408 or 429).
    Then due triggers wait, without an attempt and without using one of their rounds (a down target would
    otherwise cost every one its attempts and backoff), until the first of them probes it (or, with none due
    when a wait ends, :meth:`Deliverer._probe`); any answer from the target ends it."""

    def __init__(self, kept: Mapping[str, Any] | None = None, now_ms: int = 0) -> None:
        """``kept``: a :meth:`state` from before a restart, read as far as it makes sense at
        ``now_ms`` (no wait longer than the longest, nothing answered in the future)."""
        def count(name: str) -> int:
            value = (kept or {}).get(name, 0)
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

        self.in_a_row = count("in_a_row")
        self.until_ms = min(count("until_ms"), now_ms + LONGEST_ROUND_MS)  # (a clock set back meanwhile)
        self.waits = count("waits")  # waits since the target last answered a message
        self.probe_answered_ms: int | None = min(count("probe_answered_ms"), now_ms) or None

    def state(self) -> dict[str, Any]:
        """What a restart needs to go on ({} when nothing is counted: the target is up)."""
        kept = {"in_a_row": self.in_a_row, "until_ms": self.until_ms, "waits": self.waits,
                "probe_answered_ms": self.probe_answered_ms}
        return {name: value for name, value in kept.items() if value}

    def failed(self, now_ms: int) -> None:
        if self.probe_answered_ms is not None and now_ms - self.probe_answered_ms > LONGEST_ROUND_MS:
            self.in_a_row, self.waits = 0, 0  # an answered probe long ago: counted afresh
        self.probe_answered_ms = None
        self.in_a_row += 1
        if self.in_a_row >= DOWN_AFTER:
            self.waits += 1
            self.until_ms = now_ms + round_delay_ms(self.waits)

    def up(self) -> None:
        """The target answered (it took a message, or refused one for that message's sake)."""
        self.in_a_row, self.until_ms, self.waits, self.probe_answered_ms = 0, 0, 0, None

    def answered_probe(self, now_ms: int) -> None:
        """The target answered a probe, which carries no message: it counts as up and due triggers are
        tried, but a trigger that fails for the target's sake within the longest wait counts it down
        again, and the waits go on doubling (a webhook's router may answer HEAD while every POST gets
        a 503); a failure later than that is counted afresh."""
        self.in_a_row, self.until_ms, self.probe_answered_ms = DOWN_AFTER - 1, 0, now_ms

    def told_to_wait(self, until_ms: int) -> None:
        """The target answered that it takes nothing before ``until_ms`` (a ``Retry-After``): it counts
        as down until then, whatever the triggers in a row, and then the first trigger due probes it."""
        self.in_a_row = max(self.in_a_row, DOWN_AFTER)
        self.until_ms = max(self.until_ms, until_ms)
        self.probe_answered_ms = None

    def down(self, now_ms: int) -> bool:
        return now_ms < self.until_ms

    @property
    def counted_down(self) -> bool:
        """Down until the target answers again (between probes too, and while one runs)."""
        return self.in_a_row >= DOWN_AFTER


#: The ``reason`` label of ``mailpulse_delivery_withdrawals_total`` (besides ``other`` and ``unreadable``).
WITHDRAWAL_REASONS = ("consent", "erased")


def _cut(value: Any, limit: int = 1000) -> Any:
    """A malformed trigger's field as its report passes it on, cut to ``limit`` characters (its JSON
    text where it is no string), so that no report outgrows the broker's message size."""
    if isinstance(value, str):
        return value[:limit]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    try:
        text = orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper than it writes)
        return f"<{type(value).__name__} nested too deeply to pass on>"
    return value if len(text) <= limit else text[:limit]


def _failure_class(why: str) -> str:
    """What kind of failure a target's message names (``SMTP 450``, ``HTTP 503``, ``recipient refused``,
    ``SMTP TimeoutError``), without the rest: a server's reply text can quote the recipient's address,
    and an info line names no person."""
    return why.partition(":")[0][:60]


def _opt_out_address(email: Any) -> Any:
    """An address as opt-outs are kept and compared: as the ingest normalizes it (one written with
    padding or capitals is the same person's); as given when it is none (a trigger held by an earlier
    version, which took any text with an "@").  ``To:`` is the trigger's ``email`` as given (contract)."""
    if isinstance(email, str):
        with contextlib.suppress(ValueError):
            return normalize_email(email)
    return email


def _breaks_a_line(text: str) -> bool:
    """Whether ``text`` holds a line break or another control character (Unicode's Cc, Zl, Zp)."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def _check_headers(message: EmailMessage) -> None:
    """Raises ValueError when a header, as the e-mail library reads it, holds a line break or another
    control character (tabs aside).  The library decodes RFC 2047 encoded words in the text it is given,
    so a name typed as ``=?utf-8?q?x=0D=0ABcc:_all@example.net?=`` reads as a line break, which Python
    before 3.11.10 (CVE-2024-6923) wrote out as it reads: a ``Bcc:`` header, or a blank line and a body
    of the name's own."""
    for name, value in message.items():
        if _breaks_a_line(str(value).replace("\t", " ")):  # (a tab folds a header; it breaks no line)
            raise ValueError(f"its {name} header would hold a line break or a control character")


def _is_fatal(error: KafkaError) -> bool:
    return bool(error.fatal()) or error.code() == KafkaError._FATAL


def _target_id(target: Target) -> str:
    """Which target an outage was counted for: its kind and a digest of where it is (a webhook's URL
    may carry a token), so that a state folder used with another target does not start it down."""
    where = f"{getattr(target, 'host', '')}:{getattr(target, 'port', '')}:{getattr(target, 'url', '')}"
    return f"{target.name}:{hashlib.sha256(where.encode()).hexdigest()[:16]}"


def _type_label(kind: Any) -> str:
    return kind if isinstance(kind, str) and kind in TYPE_LABELS else "other"  # (a list is unhashable)


def sender_problem(mail_from: str) -> str | None:
    """Why ``mail_from`` cannot be the From: of an e-mail (None: it can)."""
    try:
        message = EmailMessage(policy=POLICY)
        message["From"] = mail_from
        addresses = email.utils.getaddresses([str(message["From"])])
        address = addresses[0][1]
    except Exception as exc:
        return f"not an address ({type(exc).__name__})"
    if len(addresses) > 1:  # (a From: of several needs a Sender:, and a webhook's "from" takes one)
        return "more than one address"
    return None if "@" in address else "not an address"


def _timestamp_ms(value: Any) -> int | None:
    """An ISO-8601 timestamp's epoch milliseconds (None: not one)."""
    if not isinstance(value, str):
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _send_at_ms(trigger: Mapping[str, Any]) -> int:
    for field in ("send_at", "at"):
        if (ms := _timestamp_ms(trigger.get(field))) is not None:
            return ms
    return 0


def _malformed(trigger: Any) -> str | None:
    if not isinstance(trigger, dict):
        return "not a JSON object"
    for field in ("trigger_id", "type", "profile_id"):  # (the ledger keeps held triggers and opt-outs by profile)
        if not isinstance(trigger.get(field), str) or not trigger[field].strip():
            return f"missing or empty {field}"
    try:  # held and marked in the ledger as JSON: nested past what the encoder takes, it would fail there
        orjson.dumps(trigger)
    except orjson.JSONEncodeError:
        return "nested too deeply"
    email = trigger.get("email", "")  # null: no address known (the pipeline's anonymous profiles), not malformed
    if email is not None:
        if not isinstance(email, str) or not email.strip():
            return "missing or empty email"
        try:  # one bare address, as the pipeline writes them: "Ana <ana@example.com>" or "a@x.com, b@y.com"
            # would reach other recipients than the unsubscribe and bounce paths know of
            normalize_email(email)
        except ValueError:
            return "email is not an address"
        # read with its padding stripped, but To: is the email as given: a line break there ends the headers
        if _breaks_a_line(email):
            return "email is not an address"
    # absent, it is sent at ``at``; there but unreadable, it is not sent at once (quiet hours)
    if trigger.get("send_at") is not None and _timestamp_ms(trigger["send_at"]) is None:
        return "send_at is not an ISO-8601 timestamp"
    return None


def unsubscribe_app(deliverer: Deliverer, metrics_app: Any) -> Any:
    """WSGI: ``POST /unsubscribe?...`` (RFC 8058 one-click) unsubscribes; ``GET`` shows a page with a
    button that posts (link scanners follow GETs); ``/metrics``; ``/healthz`` (503 once deliver's loop
    stalled: :class:`Heartbeat`)."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz":
            stalled = deliverer.heartbeat.stalled_s()
            if stalled:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [f"deliver's loop stalled {stalled:.0f} s\n".encode()]
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path != "/unsubscribe":
            return metrics_app(environ, start_response)
        query = environ.get("QUERY_STRING", "")
        who = unsubscribe.verify(deliverer.secret, query)
        if who is None:
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"this unsubscribe link is not valid\n"]
        if method == "POST":
            deliverer.withdraw(who[0], who[1], "unsubscribe")
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [b"<p>You are unsubscribed. You will get no more e-mails from us.</p>\n"]
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        # relative to the page's own address: the link's, whatever path a proxy serves it under
        # (``MAILPULSE_UNSUBSCRIBE_URL=https://shop.example.com/mail``), where "/unsubscribe" is not ours
        action = html.escape("?" + urllib.parse.quote(query, safe="=&%"))
        return [f'<form method="post" action="{action}"><button>Unsubscribe</button></form>\n'.encode()]

    return app


def make_target(settings: Settings, dry_run: Path | None) -> Target:
    if dry_run is not None:
        return DryRun(dry_run)
    if settings.deliver_target == "webhook":
        if not settings.webhook_url:
            raise ValueError("MAILPULSE_DELIVER_TARGET=webhook needs MAILPULSE_WEBHOOK_URL")
        token = settings.webhook_token.get_secret_value() if settings.webhook_token else None
        return Webhook(settings.webhook_url, token, settings.deliver_timeout_s)
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return Smtp(settings.smtp_host, settings.smtp_port, settings.smtp_security, settings.smtp_user, password,
                settings.deliver_timeout_s)


def run_deliver(settings: Settings, dry_run: Path | None, stop: threading.Event,
                announce: Callable[[str], None] = lambda text: None) -> int:
    """Runs until ``stop`` is set.  Returns the exit code."""
    bootstrap = settings.bootstrap_servers
    folder = settings.data_dir / "deliver"
    ledger = Ledger(folder)
    metrics = DeliverMetrics()
    secret = settings.unsubscribe_secret.get_secret_value().encode() if settings.unsubscribe_secret \
        else ledger.secret()
    reports_to: list[Deliverer] = []  # (the producer's errors go to the deliverer made with it)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "log_level": 3, "logger": LIBRDKAFKA,
                         "error_cb": lambda error: reports_to[0].producer_error(error) if reports_to else None})
    target = make_target(settings, dry_run)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{settings.app_id}-deliver",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest", "log_level": 3,
                         "logger": LIBRDKAFKA,
                         # a killed connector's partitions move on after this (librdkafka's default: 45 s)
                         "session.timeout.ms": int(settings.session_timeout_s * 1000),
                         # a batch of slow sends (retries, backoff) may take minutes before the next poll
                         "max.poll.interval.ms": 1_800_000,
                         "client.id": f"mailpulse-deliver-{uuid.uuid4().hex[:8]}"})
    withdrawals: _Withdrawals | None = None
    server: WSGIServer | None = None
    try:
        deliverer = Deliverer(target, ledger, Renderer(settings.templates_dir, settings.mail_brand, settings.shop_url),
                              producer, metrics, settings, "", secret)
        reports_to.append(deliverer)
        app = unsubscribe_app(deliverer, make_wsgi_app(metrics.registry))
        try:
            server = serve_wsgi(settings.metrics_host, settings.deliver_port, app, "deliver-http", finish_requests=True)
        except OSError:  # taken (a second deliver on this machine): any free port, announced below
            server = serve_wsgi(settings.metrics_host, 0, app, "deliver-http", finish_requests=True)
        port = server.server_port
        deliverer.unsubscribe_base = settings.unsubscribe_url or f"http://{settings.metrics_host}:{port}"
        announce(f"deliver: {target.name}{' to ' + str(dry_run) if dry_run else ''}; /metrics and /unsubscribe "
                 f"on http://{settings.metrics_host}:{port}; state in {folder}")
        if dry_run is None and not settings.unsubscribe_url:
            log.warning("deliver: the unsubscribe links in e-mails point at %s, which recipients cannot reach "
                        "unless it is public; set MAILPULSE_UNSUBSCRIBE_URL to the public address of /unsubscribe",
                        deliverer.unsubscribe_base)
        deliverer.fail_interrupted()
        if kept := deliverer.produce_kept():
            log.info("deliver: %d records for Kafka not acknowledged before the last stop, produced again", kept)
        # (-inf: not yet; 0.0 was "not yet" only on a machine up more than the waits below)
        pruned_at, withdrawals_tried, kept_at = -math.inf, -math.inf, time.monotonic()
        while not stop.is_set():
            deliverer.heartbeat.beat()
            if deliverer.fatal is not None:  # a restart makes a new producer; what it did not take is kept
                log.error("deliver: the producer failed for good (%s); stopping", deliverer.fatal)
                return 1
            if time.monotonic() - kept_at > 60:
                deliverer.produce_kept()
                kept_at = time.monotonic()
            if time.monotonic() - pruned_at > 3600:
                deliverer.prune()
                if withdrawals is not None:
                    try:
                        withdrawals.assign_new()  # partitions added since
                    except (KafkaException, KeyError) as exc:  # (a broker away, the topic gone)
                        log.warning("deliver: the withdrawals topic's partitions were not checked (%s)", exc)
                pruned_at = time.monotonic()
            if withdrawals is None:  # first the withdrawals, to their end: no trigger is sent before
                deliverer.poll_producer()  # (librdkafka's log lines: e.g. a broker it cannot reach)
                if time.monotonic() - withdrawals_tried < 5:
                    stop.wait(0.2)
                    continue
                withdrawals_tried = time.monotonic()
                try:
                    withdrawals = _read_withdrawals(settings, ledger, deliverer)
                except (KafkaException, BrokerError, KeyError) as exc:  # no broker yet, no right to create it
                    log.warning("deliver: the withdrawals topic cannot be read yet (%s); triggers wait for it",
                                error.str() if (error := kafka_error(exc)) is not None else exc)
                    continue
                withdrawals.catch_up(stop)  # a fresh ledger reads both topics from their start
                consumer.subscribe([TRIGGERS], on_assign=start_uncommitted_at_first_offset)
            withdrawals.drain()
            batch = consumer.consume(num_messages=200, timeout=0.5)
            handled, stopped = 0, False
            for message in batch:
                if stop.is_set():  # stopping (SIGTERM): the rest of the batch is read again at the next start
                    stopped = True
                    break
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("deliver: consumer error %s", error)
                    continue
                deliverer.heartbeat.beat()  # (a trigger due at once is sent from here)
                deliverer.handle(message.value())
                handled += 1
            if handled and not stopped:  # (a commit now would pass what was not handled)
                # what the offsets pass is on disk first: held triggers, outcomes, and the reports the
                # broker has not acknowledged yet (produced again until it does)
                ledger.sync()
                # (a broker gone just now holds the commit until librdkafka's request times out, 60 s: no stall)
                deliverer.heartbeat.beat(COMMIT_WAIT_S)
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as exc:  # e.g. the partitions were taken away meanwhile:
                    # read again, by this process (its ledger skips what it delivered) or another
                    log.warning("deliver: offset commit failed (%s); those triggers are read again",
                                error.name() if (error := kafka_error(exc)) is not None else exc)
            if not stopped:
                withdrawals.drain()
                deliverer.release_due(stop.is_set, withdrawals.drain)
            deliverer.poll_producer()  # its delivery reports and librdkafka's log lines, also while nothing is sent
        return 0
    finally:
        if server is not None:  # no unsubscribe click reaches the ledger once it is closed (and the port is free):
            server.shutdown()  # no new request; then those in progress are waited for
            server.server_close()
        consumer.close()
        if withdrawals is not None:
            withdrawals.close()
        try:
            producer.flush(10)  # (what it does not deliver now is kept, for the next start)
        except KafkaException as exc:
            log.warning("deliver: the producer's last flush failed (%s)", exc)
        reports_to.clear()
        ledger.close()


def start_uncommitted_at_first_offset(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """``on_assign`` of the triggers subscription: a partition without a committed offset starts at
    offset 0, not where the broker says it begins (:data:`streams.broker.FIRST_OFFSET`); the others
    at their committed offsets.  If the committed offsets cannot be read now, librdkafka's own choice
    (committed, else ``auto.offset.reset``) stands."""
    try:
        committed = consumer.committed(partitions, timeout=10)
    except KafkaException as exc:
        log.warning("deliver: the committed offsets of the triggers topic were not read (%s)", exc)
        return
    places = []
    for tp in committed:
        if tp.error is not None:  # its committed offset unknown: librdkafka looks it up itself
            tp = TopicPartition(tp.topic, tp.partition, OFFSET_INVALID)
        elif tp.offset < 0:  # OFFSET_INVALID: nothing committed yet
            tp.offset = FIRST_OFFSET
        places.append(tp)
    try:
        consumer.assign(places)  # (the group's default eager protocol: a cooperative one needs
        # incremental_assign here)
    except KafkaException as exc:
        # confluent-kafka does not assign the partitions itself once ``assign`` was called from here:
        # as given (where nothing is committed, at the broker's "beginning"), else the error ends the
        # loop (in ``mailpulse deliver``, the process, to be restarted) rather than leaving it in the
        # group reading nothing
        log.warning("deliver: the triggers partitions could not be assigned at offset 0 (%s); assigned "
                    "from their committed offsets or the broker's beginning instead", exc)
        consumer.assign(partitions)


POLL_MOST = 500  # withdrawals taken from the consumer at a time


class _Withdrawals:
    """Every partition of the pipeline's withdrawals topic, read by this process alone (its position kept
    in the ledger, not in a group): the topic is keyed by profile id and ``triggers`` may be cut otherwise,
    so each connector reads all of it, as few records as there are withdrawals."""

    def __init__(self, consumer: Consumer, topic: str, ledger: Ledger, deliverer: Deliverer) -> None:
        self.consumer, self.topic, self.ledger, self.deliverer = consumer, topic, ledger, deliverer
        self.partitions: set[int] = set()

    def assign_new(self) -> None:
        """Assigns the topic's partitions not read yet (all at start; later, those added since), each from
        the position the ledger keeps, or from its start: also when that position is past its end (the
        topic was made anew, e.g. by a restarted in-memory broker), which a broker need not report."""
        metadata = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        new = sorted(set(metadata.partitions) - self.partitions)
        places = []
        for n in new:
            at = self.ledger.read_up_to(n)
            if at is not None:
                _, end = self.consumer.get_watermark_offsets(TopicPartition(self.topic, n), timeout=10, cached=False)
                if at > end:
                    log.warning("deliver: the withdrawals topic's partition %d ends at %d, before the %d read "
                                "here: read again from its start", n, end, at)
                    at = None
            places.append(TopicPartition(self.topic, n, FIRST_OFFSET if at is None else at))
        if places:
            self.consumer.incremental_assign(places)
            self.partitions.update(new)

    def poll(self, timeout: float = 0) -> tuple[int, set[int]]:
        """Applies what has arrived; (records applied, partitions found at their end)."""
        self.deliverer.heartbeat.beat()  # (reading them to their end at start may take a while)
        applied, ended = 0, set()
        for message in self.consumer.consume(num_messages=POLL_MOST, timeout=timeout):
            error, partition, offset = message.error(), message.partition(), message.offset()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF and partition is not None:
                    ended.add(partition)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("deliver: withdrawals consumer error %s", error)
                continue
            self.deliverer.withdrawal(message.value())
            if partition is not None and offset is not None:
                self.ledger.note_read(partition, offset + 1)
            applied += 1
        return applied, ended

    def drain(self) -> None:
        """Applies every withdrawal that has arrived (a burst of thousands too: a CRM's consent sync)."""
        while self.poll()[0] >= POLL_MOST:
            pass

    def catch_up(self, stop: threading.Event) -> None:
        """Reads every partition to its end (until stopped; a line every 30 s says it still waits)."""
        ended: set[int] = set()
        said, read = time.monotonic(), 0
        while not stop.is_set() and not ended >= self.partitions:
            if time.monotonic() - said > 30:
                log.warning("deliver: reading the withdrawals topic to its end before any trigger (%d read, "
                            "%d of %d partitions at their end)", read, len(ended & self.partitions),
                            len(self.partitions))
                said = time.monotonic()
            applied, now_ended = self.poll(0.5)
            read += applied
            ended |= now_ended
        self.ledger.sync()

    def close(self) -> None:
        self.consumer.close()


def _read_withdrawals(settings: Settings, ledger: Ledger, deliverer: Deliverer) -> _Withdrawals:
    topic = withdrawals_topic(settings.app_id)
    ensure_topics(settings.bootstrap_servers, settings.partitions, [], [topic], settings.replication_factor)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                         "group.id": f"{settings.app_id}-deliver-withdrawals",  # (assigned, never joined)
                         "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
                         "log_level": 3, "logger": LIBRDKAFKA})
    withdrawals = _Withdrawals(consumer, topic, ledger, deliverer)
    try:
        withdrawals.assign_new()
    except BaseException:
        consumer.close()
        raise
    return withdrawals
