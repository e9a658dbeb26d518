"""The metrics module's batched histogram observation gives what one observe per amount gives."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.metrics import LATENCY_BUCKETS, observe_many

AMOUNTS = [0.0, 0.001, 0.0011, 0.003, 0.05, 0.05, 0.7, 2.5, 29.9, 30.0, 31.0, 1e9, -1.0]


def _exposition(registry: CollectorRegistry) -> list[bytes]:
    """Every line but the creation times and the sum (added in another order: it may differ in the
    last digit)."""
    return [line for line in generate_latest(registry).splitlines()
            if b"_created" not in line and b"_sum" not in line]


def registry_sum(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value("latency_sum", {"output": "profiles"})
    assert value is not None
    return value


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("latency", "l", ["output"], buckets=LATENCY_BUCKETS, registry=registry)


def test_observe_many_equals_one_observe_each() -> None:
    one_by_one, h1 = _histogram()
    batched, h2 = _histogram()
    for amount in AMOUNTS:
        h1.labels("profiles").observe(amount)
    observe_many(h2.labels("profiles"), AMOUNTS[:5])
    observe_many(h2.labels("profiles"), AMOUNTS[5:])
    observe_many(h2.labels("profiles"), [])
    assert _exposition(batched) == _exposition(one_by_one)
    assert registry_sum(batched) == pytest.approx(registry_sum(one_by_one)) == pytest.approx(sum(AMOUNTS))
    assert b'latency_bucket{le="0.001",output="profiles"} 3.0' in generate_latest(batched)
    assert b'latency_count{output="profiles"} 13.0' in generate_latest(batched)


def test_healthz_and_readyz_answer_from_the_health_the_event_loop_keeps() -> None:
    import time
    import urllib.error
    import urllib.request

    from streams.broker import free_port
    from streams.metrics import BROKER_SILENT_AFTER_S, STALL_AFTER_S, Health, Metrics

    health = Health()
    port = Metrics().serve(free_port(), health)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    assert get("/healthz") == (200, "ok\n")
    assert get("/readyz")[0] == 503  # no partitions assigned yet
    health.ready = True
    assert get("/readyz") == (503, "broker unreachable\n")  # no probe has reached the broker yet
    health.broker_reachable(True)
    assert get("/readyz") == (200, "ready\n") and health.state() == "starting"  # the loop never reported
    health.started = True
    assert health.state() == "running"
    health.broker_reachable(False)  # a failed probe right after an answer: still within the grace
    assert get("/readyz")[0] == 200
    assert health.broker_answered is not None
    health.broker_answered -= BROKER_SILENT_AFTER_S + 1  # no answer for longer than that
    assert get("/readyz") == (503, "broker unreachable\n")
    health.broker_reachable(True)
    health.beat = time.monotonic() - STALL_AFTER_S - 1  # the event loop stopped turning
    assert get("/healthz")[0] == 503 and health.state() == "error"
    health.beat, health.crashed = time.monotonic(), "ingest"
    assert get("/healthz") == (503, "agent ingest crashed\n")
    status, body = get("/metrics")
    assert status == 200 and "mailpulse_events_total" in body


def test_readyz_fails_while_outputs_wait_with_none_acknowledged_or_once_one_is_lost() -> None:
    """A partition that takes no writes: the worker goes on, its outputs pile up in the producer.
    /readyz says so once that lasted OUTPUTS_STUCK_AFTER_S, and the log is told once each way; an
    output the producer gave up on keeps /readyz failing, though the queue is empty again."""
    from streams.metrics import OUTPUTS_STUCK_AFTER_S, Health

    health = Health(ready=True, started=True)
    health.broker_reachable(True)
    t = 1000.0
    assert health.output_progress(0, 0, now=t) is None and health.answer("/readyz") == (True, "ready\n")
    assert health.output_progress(5, 0, now=t + 1) is None  # queued, none acknowledged yet: waiting starts
    assert health.output_progress(9, 3, now=t + 2) is None  # some acknowledged: the producer is moving
    assert health.output_progress(9, 3, now=t + 3) is None
    assert health.outputs_stuck_s(t + 3 + OUTPUTS_STUCK_AFTER_S) == 0.0  # not past the limit yet
    told = health.output_progress(9, 3, now=t + 3.5 + OUTPUTS_STUCK_AFTER_S)
    assert told is not None and told.startswith("9 outputs queued and none acknowledged")
    assert health.output_progress(12, 3, now=t + 5 + OUTPUTS_STUCK_AFTER_S) is None  # told once
    health.beat = time.monotonic()
    health.outputs_waiting_since = health.beat - OUTPUTS_STUCK_AFTER_S - 2
    ok, text = health.answer("/readyz")
    assert not ok and text.startswith("outputs not acknowledged by the broker for 3")
    assert health.state() == "running" and health.answer("/healthz")[0]  # alive: the broker is the one stuck
    # a stalled event loop sees no acknowledgement: the wait counts only up to its last turn
    health.outputs_waiting_since = health.beat - OUTPUTS_STUCK_AFTER_S - 1  # past it by the wall clock
    health.beat -= 10
    assert health.answer("/readyz") == (True, "ready\n")
    health.beat = time.monotonic()
    assert health.output_progress(12, 4) == "outputs are acknowledged by the broker again"
    assert health.answer("/readyz") == (True, "ready\n")
    assert health.output_progress(0, 4) is None
    # librdkafka gave up on two outputs: the queue is empty, and /readyz still fails
    assert health.output_progress(0, 4, 2) is None
    assert health.answer("/readyz") == (False, "2 outputs lost (the broker did not take them)\n")


@pytest.mark.parametrize("finish_requests", [True, False])
def test_a_server_that_finishes_requests_closes_only_once_the_request_in_progress_has_answered(
        finish_requests: bool) -> None:
    """``deliver`` closes its ledger after its HTTP server: an unsubscribe click in progress at the
    stop must still reach the ledger and be answered.  prometheus-client's own server (daemon request
    threads) closes at once, which the second case shows."""
    import threading
    import urllib.request

    from streams.metrics import serve_wsgi

    entered, release = threading.Event(), threading.Event()

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        entered.set()
        release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [b"done\n"]

    server = serve_wsgi("127.0.0.1", 0, app, "test-http", finish_requests=finish_requests)
    answers: list[tuple[int, bytes]] = []

    def click() -> None:
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{server.server_port}/unsubscribe", data=b"", method="POST"), timeout=10) as response:
            answers.append((response.status, response.read()))

    client = threading.Thread(target=click)
    client.start()
    assert entered.wait(5)
    server.shutdown()  # serves no new request
    closing = threading.Thread(target=server.server_close)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive() is finish_requests  # waits for the request in progress, or does not
    release.set()
    closing.join(5)
    client.join(5)
    assert not closing.is_alive()
    assert answers == [(200, b"done\n")]


def test_a_client_that_trickles_its_request_holds_the_close_no_longer_than_its_limit(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """A byte every 0.2 s keeps each read alive; the close waits ``finish_within_s`` in all, not for
    the request.  A client that goes quiet is one debug line, not socketserver's traceback on stderr."""
    import logging
    import socket
    import threading

    from streams import metrics
    from streams.metrics import serve_wsgi

    monkeypatch.setattr(metrics._FinishingWSGIServer, "finish_within_s", 1.0)
    monkeypatch.setattr(metrics._TimedHandler, "timeout", 0.5)
    caplog.set_level(logging.DEBUG, logger="streams.metrics")
    def app(environ: dict[str, object], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    server = serve_wsgi("127.0.0.1", 0, app, "test-http", finish_requests=True)
    stop_trickling = threading.Event()

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", server.server_port)) as conn:
            conn.sendall(b"POST /unsubscribe HTTP/1.1\r\n")
            while not stop_trickling.wait(0.2):
                conn.sendall(b"X")

    quiet = socket.create_connection(("127.0.0.1", server.server_port))  # sends nothing: times out
    trickler = threading.Thread(target=trickle)
    trickler.start()
    time.sleep(1.0)  # both in progress; the quiet one has timed out
    server.shutdown()
    started = time.monotonic()
    server.server_close()
    took = time.monotonic() - started
    stop_trickling.set()
    trickler.join(5)
    quiet.close()
    assert 0.8 < took < 2.0
    assert "Traceback" not in capsys.readouterr().err
    assert [r.levelno for r in caplog.records if r.name == "streams.metrics"] == [logging.DEBUG]


def test_an_app_that_raises_answers_500_and_logs_one_error_line_without_the_exceptions_text(
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """wsgiref prints the traceback of an app that raised to stderr (not JSON, and its text can hold
    a request's values, an e-mail address say): one error line naming the class instead."""
    import logging
    import urllib.error
    import urllib.request

    from streams.metrics import serve_wsgi

    def app(environ: dict[str, object], start_response: Any) -> list[bytes]:
        raise ValueError("ana@example.com")

    server = serve_wsgi("127.0.0.1", 0, app, "test-http", finish_requests=True)
    caplog.set_level(logging.DEBUG, logger="streams.metrics")
    try:
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/unsubscribe", timeout=5)
        assert raised.value.code == 500
    finally:
        server.shutdown()
        server.server_close()
    assert "ana@example.com" not in capsys.readouterr().err
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["http: a request's app raised ValueError; answered 500"]
    assert any("ana@example.com" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_a_client_that_connects_and_sends_nothing_is_let_go() -> None:
    """The worker's /metrics, /healthz and /readyz server gave each connection a thread that read
    without a timeout: a client that connected and sent nothing (a half-open probe, a port scan) held
    one for good, without bound.  It is let go after the handler's timeout, as deliver's are."""
    import socket
    import urllib.request

    from streams.metrics import Health, Metrics, _TimedHandler

    port = Metrics().serve(0, Health())
    quiet = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        time.sleep(_TimedHandler.timeout + 1.5)
        for connection in quiet:
            connection.settimeout(1)
            assert connection.recv(1) == b""  # closed by the server (a timeout here raises)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200  # and it still serves
    finally:
        for connection in quiet:
            connection.close()


def test_healthz_fails_once_a_helper_thread_of_the_worker_ended() -> None:
    """``run --demo`` runs its shop feed and deliver in threads beside the agents.  When deliver's
    thread ended on an error, /healthz still said ok while no e-mail went out again."""
    import threading

    from streams.metrics import Health

    health = Health()
    release = threading.Event()
    running = threading.Thread(target=release.wait, daemon=True)
    running.start()
    health.helpers["deliver"] = running
    assert health.answer("/healthz") == (True, "ok\n")
    release.set()
    running.join(5)
    assert health.answer("/healthz") == (False, "deliver stopped\n") and health.state() == "error"


def test_every_processing_error_series_is_exported_at_zero_before_the_first_error() -> None:
    """MailpulseProcessingErrors alerts on ``increase(...) > 0``: a series that first appears at 1
    shows no increase, so the first input that raised (often the only one) never fired it."""
    from streams.metrics import Metrics

    registry = Metrics().registry
    # every (agent, stage) that streams/app.py counts
    expected = {("ingest", "decode"), ("cooccurrence", "record"), ("product_recs", "record"),
                *(("profiles", stage) for stage in ("dispatch", "advance", "route", "record", "stored_state"))}
    missing = {labels for labels in expected if registry.get_sample_value(
        "mailpulse_processing_errors_total", dict(zip(("agent", "stage"), labels, strict=True))) != 0}
    assert not missing


def _failing_at(health: Any, now: float) -> str | None:
    """What /healthz says at ``now`` (a test's own clock), the event loop having just turned: the
    beat is then no older than ``now``, whatever the machine's monotonic clock reads."""
    health.beat = now
    return health.failing(now=now)


def test_healthz_fails_for_an_agent_that_takes_no_record_while_records_wait() -> None:
    """The contract's /healthz is 200 "while every agent runs": an agent awaiting something that never
    comes (its records handed to it and waiting, the event loop turning) was reported alive."""
    from streams.metrics import AGENT_STALL_AFTER_S, Health

    health = Health(ready=True, started=True)
    t = 1000.0
    health.watch_agents({"ingest": 5, "profiles": 0}, now=t)
    health.took("ingest")  # busy: it takes records as they come
    health.watch_agents({"ingest": 5, "profiles": 0}, now=t + AGENT_STALL_AFTER_S + 10)
    assert _failing_at(health, t + AGENT_STALL_AFTER_S + 10) is None
    # then it takes none while they wait
    health.watch_agents({"ingest": 7, "profiles": 0}, now=t + 2 * AGENT_STALL_AFTER_S + 11)
    assert _failing_at(health, t + 2 * AGENT_STALL_AFTER_S + 11) == \
        f"agent ingest took no record for {AGENT_STALL_AFTER_S + 1:.0f} s while 7 wait"
    health.took("ingest")  # it moves again
    health.watch_agents({"ingest": 7, "profiles": 0}, now=t + 2 * AGENT_STALL_AFTER_S + 12)
    assert _failing_at(health, t + 2 * AGENT_STALL_AFTER_S + 12) is None
    # nothing waiting (idle), or tables recovering (not ready): never wedged, however long
    idle = Health(ready=True, started=True)
    recovering = Health(ready=False, started=True)
    for n in range(3):
        idle.watch_agents({"profiles": 0}, now=t + n * AGENT_STALL_AFTER_S)
        recovering.watch_agents({"profiles": 9}, now=t + n * AGENT_STALL_AFTER_S)
    assert idle.wedged is None and recovering.wedged is None


def test_healthz_fails_for_a_partition_the_worker_reads_nothing_of_while_the_broker_holds_records() -> None:
    """A fetch that stopped, or a partition left paused: nothing reaches the agents, so none has
    records waiting, and a worker whose other partitions go on kept /healthz at ok."""
    from streams.metrics import PARTITION_STALL_AFTER_S, Health

    health = Health(ready=True, started=True)
    t = 1000.0
    health.watch_partitions({"clicks/0": (10, 15), "clicks/1": (4, 4)}, now=t)
    health.watch_partitions({"clicks/0": (12, 20), "clicks/1": (4, 4)}, now=t + PARTITION_STALL_AFTER_S)  # read on
    assert _failing_at(health, t + PARTITION_STALL_AFTER_S) is None
    health.watch_partitions({"clicks/0": (12, 25), "clicks/1": (4, 4)}, now=t + 2 * PARTITION_STALL_AFTER_S + 1)
    assert _failing_at(health, t + 2 * PARTITION_STALL_AFTER_S + 1) == \
        f"partition clicks/0 read nothing for {PARTITION_STALL_AFTER_S + 1:.0f} s while 13 records wait"
    health.watch_partitions({"clicks/0": (25, 25), "clicks/1": (4, 4)}, now=t + 2 * PARTITION_STALL_AFTER_S + 2)
    assert _failing_at(health, t + 2 * PARTITION_STALL_AFTER_S + 2) is None
    # at its end (idle), or tables recovering (not ready): never unread, however long
    idle = Health(ready=True, started=True)
    recovering = Health(ready=False, started=True)
    for n in range(3):
        idle.watch_partitions({"clicks/0": (7, 7)}, now=t + n * PARTITION_STALL_AFTER_S)
        recovering.watch_partitions({"clicks/0": (7, 90)}, now=t + n * PARTITION_STALL_AFTER_S)
    assert idle.unread is None and recovering.unread is None


def test_a_partition_held_longer_than_an_agent_may_wait_but_within_its_own_time_is_still_read() -> None:
    """In a long catch-up the fetch holds a partition for a while: its committed offset may stay put
    for :data:`PARTITION_STALL_AFTER_S` (5 minutes), longer than an agent may take no record, before
    /healthz fails."""
    from streams.metrics import AGENT_STALL_AFTER_S, PARTITION_STALL_AFTER_S, Health

    assert AGENT_STALL_AFTER_S < PARTITION_STALL_AFTER_S
    health = Health(ready=True, started=True)
    t = 1000.0
    for now in (t, t + AGENT_STALL_AFTER_S + 1, t + PARTITION_STALL_AFTER_S):
        health.watch_partitions({"clicks/0": (10, 15)}, now=now)
        assert _failing_at(health, now) is None
    health.watch_partitions({"clicks/0": (10, 15)}, now=t + PARTITION_STALL_AFTER_S + 1)
    assert _failing_at(health, t + PARTITION_STALL_AFTER_S + 1) is not None


def test_the_readme_names_every_metric_and_processing_error_series() -> None:
    """Each mailpulse metric of the worker and of deliver is named in the README by its exposed name,
    and each (agent, stage) of ``mailpulse_processing_errors_total`` by its label values."""
    from pathlib import Path

    from streams.metrics import PROCESSING_ERROR_STAGES, DeliverMetrics, Metrics

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    named = {metric.name + ("_total" if metric.type == "counter" else "")
             for metrics in (Metrics(), DeliverMetrics()) for metric in metrics.registry.collect()
             if metric.name.startswith("mailpulse_")}
    assert sorted(name for name in named if f"`{name}" not in readme) == []
    section = readme[readme.index("`mailpulse_processing_errors_total{agent,stage}`"):]
    assert [(agent, stage) for agent, stage in PROCESSING_ERROR_STAGES
            if f'agent="{agent}"' not in section or (f"`{stage}`" not in section and f'stage="{stage}"' not in section)
            ] == []


def test_every_delivery_outcome_the_failing_alert_reads_is_exported_at_zero_before_the_first() -> None:
    """MailpulseDeliveriesFailing divides ``rate`` of ``outcome="failed"`` by that of sent and failed: a
    series that first appears at 1 shows no increase, so each trigger type's first failure (a
    low-volume type's only one) never counted."""
    from streams.deliver.service import TYPE_LABELS
    from streams.metrics import DeliverMetrics

    registry = DeliverMetrics().registry
    missing = {(kind, outcome) for kind in TYPE_LABELS for outcome in ("sent", "failed")
               if registry.get_sample_value("mailpulse_deliveries_total", {"type": kind, "outcome": outcome}) != 0}
    assert not missing


def test_every_dead_letter_series_the_alert_reads_is_exported_at_zero_before_the_first() -> None:
    """MailpulseDeadLettersHigh reads ``rate`` of the dead letters: a series that first appears with a
    batch's count shows no increase, so a first batch of bad input (a bad deploy's first minutes) was
    invisible to it.  Every code of the README's table, and every input topic's ``dead_letter``."""
    import re
    from pathlib import Path

    from schemas.events import INPUT_TOPICS
    from streams.metrics import DEAD_LETTER_CODES, Metrics

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("| code | cause |"):]
    table = table[:table.index("\n\n")]
    assert sorted(DEAD_LETTER_CODES) == sorted(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    registry = Metrics().registry
    missing = [code for code in DEAD_LETTER_CODES
               if registry.get_sample_value("mailpulse_dead_letters_total", {"reason": code}) != 0]
    missing += [topic for topic in INPUT_TOPICS if registry.get_sample_value(
        "mailpulse_events_total", {"topic": topic, "outcome": "dead_letter"}) != 0]
    assert not missing
