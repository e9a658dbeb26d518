"""Operations with real servers: Prometheus scraping a live worker with the project's scrape config,
promtool on deploy/, the dashboard's queries, JSON logs without personal data, the metrics bind
address, and /healthz of a worker whose ingest agent crashed."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Producer

from schemas.events import TOPIC_OF_TYPE
from streams import topics as names
from streams.broker import free_port

from .conftest import PARTITIONS, Worker, consumer_lags, read_topic, wait_until
from .test_pipeline import _many_events

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Prometheus is not installed (Debian: apt-get install prometheus; .ci/run installs it)",
)


def _produce(bootstrap: str, events: list[dict[str, Any]], extra: list[tuple[str, bytes]] = ()) -> None:  # type: ignore[assignment]
    producer = Producer({"bootstrap.servers": bootstrap})
    for n, event in enumerate(events):
        producer.produce(TOPIC_OF_TYPE[event["type"]], orjson.dumps(event), partition=n % PARTITIONS)
    for topic, raw in extra:
        producer.produce(topic, raw, partition=0)
    assert producer.flush(30) == 0


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@needs_prometheus
def test_promtool_checks_the_config_and_the_rules_and_each_alert_fires_only_on_trouble() -> None:
    assert PROMTOOL is not None
    for args in (["check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
                 ["test", "rules", str(DEPLOY / "prometheus/alerts_test.yml")]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    tests = (DEPLOY / "prometheus/alerts_test.yml").read_text()
    for rule in alerts["groups"][0]["rules"]:  # every alert has a test that expects it to fire
        assert re.search(rf"alertname: {rule['alert']}\n\s+exp_alerts:\n\s+- exp_labels", tests), rule["alert"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Starts Prometheus on loopback with deploy/prometheus/prometheus.yml, the one job ``job`` kept and
    its targets pointed at the given ports: ``start(ports, job="mailpulse") -> base URL``."""
    assert PROMETHEUS is not None
    processes: list[subprocess.Popen[bytes]] = []

    def start(ports: list[int], job_name: str = "mailpulse") -> str:
        config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        [job] = config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] == job_name]
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in ports]}]
        shutil.copy(DEPLOY / "prometheus/alerts.yml", tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        processes.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _get(base + "/-/ready", 2)[0] == 200:
                    return base
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError("Prometheus did not become ready: " + (tmp_path / "prometheus.log").read_text()[-2000:])

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _query(base: str, expr: str) -> dict[str, Any]:
    status, body = _get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    answer: dict[str, Any] = json.loads(body)
    assert status == 200 and answer["status"] == "success", (expr, answer)
    return answer


def _scraped_total(base: str) -> float:
    result = _query(base, 'sum(mailpulse_events_total{outcome="processed"})')["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


@needs_prometheus
def test_prometheus_scrapes_a_live_worker_and_every_dashboard_query_runs(broker, start_worker, prometheus) -> None:
    events = _many_events(600, 40)
    first, second = events[:300], events[300:]
    worker = start_worker(MAILPULSE_LOG_FORMAT="json")
    _produce(broker.bootstrap, first)
    worker.wait_metric("mailpulse_events_total", len(first), outcome="processed")
    base = prometheus([worker.metrics_port])

    wait_until(lambda: _scraped_total(base) >= len(first))
    targets = json.loads(_get(base + "/api/v1/targets")[1])["data"]["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [("mailpulse", "up")]
    _produce(broker.bootstrap, second)
    wait_until(lambda: _scraped_total(base) == len(events))  # it rises after a replay

    names = set(json.loads(_get(base + "/api/v1/label/__name__/values")[1])["data"])
    assert {"mailpulse_events_total", "mailpulse_worker_state", "mailpulse_consumer_lag",
            "mailpulse_commit_seconds_bucket", "process_resident_memory_bytes"} <= names
    rules = json.loads(_get(base + "/api/v1/rules")[1])["data"]["groups"]
    loaded = sorted(rule["name"] for group in rules for rule in group["rules"])
    configured = sorted(r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
                        for r in g["rules"])
    assert loaded == configured
    wait_until(lambda: _query(base, 'mailpulse_worker_state{state="running"}')["data"]["result"] != [])
    # every query of the dashboard runs without error on the live data
    dashboard = json.loads((DEPLOY / "grafana/dashboards/mailpulse.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 14
    for expr in exprs:
        _query(base, expr.replace("$__rate_interval", "1m").replace("$__interval", "15s"))
    processed = _query(base, 'sum by (outcome) (mailpulse_events_total{outcome="processed"})')["data"]["result"]
    assert float(processed[0]["value"][1]) == len(events)

    # the worker's log: one JSON object per line, no identifier of anyone in the events
    worker.stop()
    lines = worker.log.read_text().splitlines()
    assert len(lines) > 5
    parsed = [json.loads(line) for line in lines]  # raises on a line that is not JSON
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in parsed)
    assert any("metrics, /healthz and /readyz on http://127.0.0.1:" in line["message"] for line in parsed)
    text = worker.log.read_text().lower()
    emails = {str(e["email"]).lower() for e in events if e.get("email")}
    assert emails and not [email for email in emails if email in text]
    # nor a user id or an anonymous id (as whole words: "u-1" is not in "u-12")
    ids = {str(e[field]) for e in events for field in ("user_id", "anonymous_id") if e.get(field)}
    assert len(ids) > 20
    log_text = worker.log.read_text()
    assert not [person for person in ids if re.search(rf"(?<![\w-]){re.escape(person)}(?![\w-])", log_text)]


def _value(base: str, expr: str) -> float | None:
    result = _query(base, expr)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@needs_prometheus
def test_prometheus_scrapes_a_live_deliver_and_sees_its_target_go_down(broker, prometheus, tmp_path: Path) -> None:
    """deploy/prometheus's deliver job against a live ``mailpulse deliver`` on loopback, whose target
    is an SMTP server on loopback: the e-mails sent are scraped as sent; once the server answers 421
    (down) to three triggers in a row, ``mailpulse_delivery_target_up`` is 0 in Prometheus, and the
    alert that watches it is loaded.  Every deliver panel of the dashboard runs on that data."""
    from tests.fakes import SmtpInbox, serving_smtp

    from .test_deliver import produce, start_deliver, trigger

    inbox = SmtpInbox()
    with serving_smtp(inbox) as smtp_port:
        process, port = start_deliver(broker, tmp_path, MAILPULSE_SMTP_HOST="127.0.0.1",
                                      MAILPULSE_SMTP_PORT=str(smtp_port), MAILPULSE_DELIVER_GRACE_S="0")
        try:
            base = prometheus([port], "mailpulse-deliver")
            produce(broker.bootstrap, [orjson.dumps(trigger(n)) for n in range(3)])
            wait_until(lambda: _value(base, 'sum(mailpulse_deliveries_total{outcome="sent"})') == 3)
            targets = json.loads(_get(base + "/api/v1/targets")[1])["data"]["activeTargets"]
            assert [(t["labels"]["job"], t["health"]) for t in targets] == [("mailpulse-deliver", "up")]
            assert _value(base, "min(mailpulse_delivery_target_up)") == 1
            inbox.refuse_rcpt = "421 4.3.2 service not available"
            produce(broker.bootstrap, [orjson.dumps(trigger(n)) for n in range(3, 8)])
            wait_until(lambda: _value(base, "min(mailpulse_delivery_target_up)") == 0)
            assert len(inbox.received) == 3
            # three failed their attempts, two waited without one (more once a minute's round came)
            wait_until(lambda: (_value(base, 'sum(mailpulse_deliveries_total{outcome="deferred"})') or 0) >= 5)
            rules = json.loads(_get(base + "/api/v1/rules")[1])["data"]["groups"]
            assert "MailpulseDeliveryTargetDown" in {rule["name"] for group in rules for rule in group["rules"]}
            dashboard = json.loads((DEPLOY / "grafana/dashboards/mailpulse.json").read_text())
            exprs = [t["expr"] for panel in dashboard["panels"] if panel["title"].startswith("deliver:")
                     for t in panel["targets"]]
            assert len(exprs) == 5
            assert all(_query(base, expr)["data"]["result"] for expr in exprs)
        finally:
            process.terminate()
            process.wait(30)


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: it picks the outgoing interface
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_metrics_bind_loopback_and_an_ingest_failure_ends_the_worker_and_the_next_start_reads_its_batch_again(
        broker, start_worker) -> None:
    """An exception outside the ingest's per-input guard (as a bug would raise) ends the worker at
    once, with a line saying so and exit status 70, before Faust could ack the batch; the next start
    reads the batch again, so none of its events is lost.  (Faust would restart the agent past the
    batch, whose offsets its take would have acked.)"""
    worker: Worker = start_worker(command=[sys.executable, "-m", "tests.integration.crashing_worker"])
    events = _many_events(50, 10)
    _produce(broker.bootstrap, events)
    worker.wait_metric("mailpulse_events_total", len(events), outcome="processed")
    url = f"http://127.0.0.1:{worker.metrics_port}"
    assert _get(url + "/healthz")[0] == 200 and _get(url + "/readyz")[0] == 200
    other = _non_loopback_address()
    if other is not None:  # bound to loopback only: not reachable on the machine's other address
        with pytest.raises(OSError):
            socket.create_connection((other, worker.metrics_port), timeout=2).close()

    later = [{"event_id": f"later-{n}", "timestamp": 1772445600000 + n, "user_id": f"later-{n}",
              "type": "product_view", "product_id": "sku-1"} for n in range(30)]
    _produce(broker.bootstrap, later, extra=[("clicks", b'{"event_id": "crash-the-ingest-agent"}')])
    assert worker.process.wait(30) == 70
    log = worker.log.read_text(errors="replace")
    assert "the ingest agent failed outside its per-input isolation (RuntimeError)" in log, log[-3000:]

    wanted = {event["event_id"] for event in later}

    def forwarded(messages: list[tuple[bytes | None, Any]]) -> set[str]:
        return {entry[1]["event_id"] for _, record in messages for entry in record
                if isinstance(entry[1], dict) and "event_id" in entry[1]}

    # the crash batch's events were not forwarded (some could have come in a batch before it)
    assert len(wanted & forwarded(read_topic(broker.bootstrap, names.events_topic("mailpulse")))) < len(wanted)
    start_worker()  # the same group and state folder, without the crash
    internal = read_topic(broker.bootstrap, names.events_topic("mailpulse"),
                          done=lambda messages: wanted <= forwarded(messages), timeout=90)
    assert wanted <= forwarded(internal)


def test_a_partition_the_worker_stops_reading_fails_healthz_and_shows_its_lag(broker, start_worker) -> None:
    """A fetch that stopped (here: the partition left paused) hands the agents nothing, so none has
    records waiting, and the lag counted to the end as of the last fetch stayed 0: the worker looked
    alive and caught up while a partition's events piled up at the broker.  The broker's ends are
    asked every few seconds (1 s and a 3 s wait in this test build)."""
    worker: Worker = start_worker(command=[sys.executable, "-m", "tests.integration.stalled_worker"])
    events = _many_events(20, 5)
    _produce(broker.bootstrap, events)
    worker.wait_metric("mailpulse_events_total", len(events), outcome="processed")
    url = f"http://127.0.0.1:{worker.metrics_port}"
    wait_until(lambda: _get(url + "/readyz")[0] == 200, timeout=30)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    stop = {"event_id": "stop-reading-this-partition", "timestamp": 1772445600000, "user_id": "s-1",
            "type": "product_view", "product_id": "sku-1"}
    producer.produce("clicks", orjson.dumps(stop), partition=1)
    assert producer.flush(30) == 0
    worker.wait_metric("mailpulse_events_total", len(events) + 1, outcome="processed")
    for n in range(25):  # nothing of these is read
        later = {**stop, "event_id": f"later-{n}", "timestamp": stop["timestamp"] + n}
        producer.produce("clicks", orjson.dumps(later), partition=1)
    assert producer.flush(30) == 0
    seen: list[bytes] = []
    try:
        wait_until(lambda: seen.append(_get(url + "/healthz")[1]) or b"25 records wait" in seen[-1], timeout=30)
    except AssertionError:
        raise AssertionError(f"{sorted(set(seen))} {consumer_lags(worker.metrics_port)}") from None
    assert seen[-1].startswith(b"partition clicks/1 read nothing for"), seen
    assert consumer_lags(worker.metrics_port)[("clicks", "1")] == 25
    assert worker.metric("mailpulse_worker_state", state="error") == 1


def test_a_partition_that_ends_in_a_transaction_marker_is_read(broker, start_worker) -> None:
    """A producer that writes an input topic in transactions leaves a commit marker after its records:
    an offset the consumer passes over and no agent gets.  Every record read and committed, the
    committed offset stays one short of the broker's end for good; /healthz must not call that a
    partition read nothing (a restart finds it the same: a restart loop)."""
    worker: Worker = start_worker(command=[sys.executable, "-m", "tests.integration.stalled_worker"])
    url = f"http://127.0.0.1:{worker.metrics_port}"
    worker.wait_metric("mailpulse_worker_state", 1, state="running")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "upstream"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for n in range(3):
        event = {"event_id": f"tx-{n}", "timestamp": 1772445600000 + n, "user_id": "t-1", "type": "product_view",
                 "product_id": "sku-1"}
        producer.produce("clicks", orjson.dumps(event), partition=0)
    producer.commit_transaction(30)
    worker.wait_metric("mailpulse_events_total", 3, outcome="processed")
    seen = []
    for _ in range(20):  # past the 3 s wait of this build, the ends asked every second
        seen.append(_get(url + "/healthz"))
        time.sleep(0.5)
    assert set(seen) == {(200, b"ok\n")}, sorted(set(seen))
    assert worker.metric("mailpulse_worker_state", state="error") == 0


def test_readyz_turns_red_when_the_broker_goes_away_while_healthz_stays_green(broker, start_worker) -> None:
    """Contract 7: /readyz answers 200 once the broker is reachable (and partitions are assigned and
    tables recovered); a broker that stops answering takes the worker out of service, while /healthz
    (the process and its event loop) stays green, so an orchestrator waits instead of restarting it."""
    worker: Worker = start_worker()
    events = _many_events(20, 5)
    _produce(broker.bootstrap, events)
    worker.wait_metric("mailpulse_events_total", len(events), outcome="processed")
    # the worker's side of the latency: one observation per input record and one per internal record
    # of the profile hop, both agents taking fetched runs of records
    assert worker.metric("mailpulse_record_seconds_count", agent="ingest") == len(events)
    internal = read_topic(broker.bootstrap, names.events_topic("mailpulse"))
    assert len(internal) >= PARTITIONS
    wait_until(lambda: worker.metric("mailpulse_record_seconds_count", agent="profiles") == len(internal),
               timeout=20)
    url = f"http://127.0.0.1:{worker.metrics_port}"
    wait_until(lambda: _get(url + "/readyz")[0] == 200, timeout=30)
    broker.stop()
    gone_at = time.monotonic()
    wait_until(lambda: _get(url + "/readyz") == (503, b"broker unreachable\n"), timeout=40)
    assert time.monotonic() - gone_at < 25
    assert _get(url + "/healthz") == (200, b"ok\n")
    assert worker.process.poll() is None, worker.log.read_text()[-3000:]
    # the Kafka client's errors while the broker is gone: a line of each per 30 s, not one every 50 ms
    log = worker.log.read_text(errors="replace")
    assert log.count("Unable connect to node") <= 3, log[-3000:]
    # a stop during the outage is a stop, not a wait for the orchestrator's kill (the consumer's
    # thread used to die in aiokafka's stop, and Faust waited 60 s for it)
    stopping = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(30)
    assert time.monotonic() - stopping < 15, worker.log.read_text(errors="replace")[-3000:]
    # and says what it could not do, instead of claiming a commit
    log = worker.log.read_text(errors="replace")
    assert "stopped while the broker was unreachable" in log and "stopped: offsets committed" not in log, log[-3000:]


def test_the_internal_topics_commits_keep_up_with_the_runs_the_profile_agent_takes(broker, start_worker) -> None:
    """The profile agent takes fetched runs of internal records as one message; the whole run must be
    acked, or the commit stops at the first run of three records or more (Faust's compiled stream
    iterator acks only the message's own offset).  Under load every internal partition's committed
    offset reaches its end."""
    worker: Worker = start_worker()
    events = _many_events(20000, 300)
    _produce(broker.bootstrap, events)
    worker.wait_metric("mailpulse_events_total", len(events), outcome="processed", timeout=180)
    topic = names.events_topic("mailpulse")

    def internal_lags() -> dict[str, float]:
        return {partition: lag for (shown, partition), lag in consumer_lags(worker.metrics_port).items()
                if shown == topic}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (len(internal_lags()) < PARTITIONS or any(internal_lags().values())):
        time.sleep(0.5)
    assert internal_lags() == {str(n): 0.0 for n in range(PARTITIONS)}


def test_healthz_stays_green_while_the_tables_recover_at_the_first_start(broker, start_worker) -> None:
    """Faust starts its timers, the health beat among them, only once the first table recovery is
    done; a recovery longer than the stall limit (a large changelog, a state folder rebuilt) made
    /healthz answer "event loop stalled" while the loop turned, and a liveness probe restarted the
    worker in the middle of its recovery, again and again.  While tables recover, /readyz is red
    and /healthz green.  The consumer lag, also a timer's, had no series then either, however far
    the input piled up."""
    worker: Worker = start_worker(command=[sys.executable, "-m", "tests.integration.slow_recovery_worker"])
    url = f"http://127.0.0.1:{worker.metrics_port}"

    def answers_at_all() -> bool:
        try:
            return _get(url + "/readyz")[0] in (200, 503)
        except urllib.error.URLError:  # (not listening yet)
            return False

    wait_until(answers_at_all, timeout=30)
    # events that wait while the tables recover (one batch each: the embedded broker may tell a
    # partition's end by the start of its last batch)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for n in range(3 * PARTITIONS):
        view = {"event_id": f"waits-{n}", "type": "product_view", "timestamp": 1772359200000 + n,
                "user_id": f"u-{n}", "product_id": "sku-1"}
        producer.produce("clicks", orjson.dumps(view), partition=n % PARTITIONS)
        assert producer.flush(30) == 0
    answers: list[tuple[int, bytes, int]] = []
    lags_while_recovering: dict[tuple[str, str], float] = {}
    while (ready := _get(url + "/readyz")[0]) != 200:
        assert worker.process.poll() is None, worker.log.read_text(errors="replace")[-3000:]
        answers.append((*_get(url + "/healthz"), ready))
        lags_while_recovering.update(consumer_lags(worker.metrics_port))
        assert len(answers) < 200, answers[-3:]
        time.sleep(0.25)
    assert len(answers) > 20, answers  # (the recovery took its 12 s)
    assert [answer for answer in answers if answer[0] != 200] == []
    assert _get(url + "/healthz")[0] == 200
    assert worker.metric("mailpulse_worker_state", state="running") == 1
    # the lag had series while the tables recovered: the input that waited, counted from the broker
    assert {partition: lag for (topic, partition), lag in lags_while_recovering.items() if topic == "clicks"} \
        == {str(n): 3.0 for n in range(PARTITIONS)}, lags_while_recovering
    wait_until(lambda: not any(lag for (topic, _), lag in consumer_lags(worker.metrics_port).items()
                               if topic == "clicks"), timeout=30)


@pytest.mark.parametrize("where", ["", "faust"])
def test_a_stop_before_the_worker_started_leaves_its_state_folder_usable(broker, start_worker, where) -> None:
    """A SIGTERM in the seconds before Faust starts (topics checked, the app and its models built)
    killed the process with no line, and the clean-stop marker was already gone: the next start took
    the untouched state folder for a crashed worker's and rebuilt every table from the changelogs.
    In Faust's own start, before it took the signals over, it ended with a traceback and exit status 1,
    the marker gone as well."""
    first = start_worker(data_dir="state")
    first.wait_metric("mailpulse_assigned_partitions", 1)
    assert first.stop() == 0
    build = [sys.executable, "-m", "tests.integration.slow_start_worker", *([where] if where else [])]
    slow = start_worker(data_dir="state", command=build)
    wait_until(lambda: b"starting slowly" in slow.log.read_bytes(), timeout=60)
    assert slow.stop() == 0, slow.log.read_text(errors="replace")[-3000:]
    # (in Faust's own start, before it handles the stop signals: it stops as it would a moment later)
    assert ("stopped before the worker started" if not where else "stopped: ") in slow.log.read_text()
    assert "Traceback" not in slow.log.read_text()
    again = start_worker(data_dir="state")
    again.wait_metric("mailpulse_assigned_partitions", 1)
    assert "did not stop cleanly" not in again.log.read_text()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_stop_signal_after_faust_stopped_does_not_cut_the_stop_short(broker, start_worker, second) -> None:
    """A second SIGTERM (or Ctrl-C) after Faust had stopped, while the worker closed its producer and
    wrote the clean-stop marker, killed it there (Faust's loop, closed, left the signals at their
    defaults): no marker, no last line, and the next start rebuilt every table from the changelogs."""
    slow = start_worker(data_dir="state", command=[sys.executable, "-m", "tests.integration.slow_stop_worker"])
    slow.wait_metric("mailpulse_assigned_partitions", 1)
    slow.process.send_signal(signal.SIGTERM)
    wait_until(lambda: b"stopping slowly" in slow.log.read_bytes(), timeout=60)
    slow.process.send_signal(second)
    assert slow.process.wait(30) == 0, slow.log.read_text(errors="replace")[-3000:]
    assert "stopped: " in slow.log.read_text()
    again = start_worker(data_dir="state")
    again.wait_metric("mailpulse_assigned_partitions", 1)
    assert "did not stop cleanly" not in again.log.read_text()
