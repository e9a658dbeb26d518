"""Start-up checks of ``mailpulse run`` against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from streams.broker import check_partitions, ensure_topics, free_port
from streams.topics import OUTPUT_TOPICS, partitioned_internal_topics

from .conftest import MAILPULSE, PARTITIONS, WorkerFactory, wait_until

pytestmark = pytest.mark.integration


def test_a_changed_partition_count_stops_run_with_one_line(broker, tmp_path: Path) -> None:
    internal = partitioned_internal_topics("mailpulse")
    ensure_topics(broker.bootstrap, PARTITIONS, [], internal)  # as a first run with 8 partitions left them
    assert check_partitions(broker.bootstrap, PARTITIONS, internal, OUTPUT_TOPICS) == []
    env = {**os.environ, "MAILPULSE_BROKER": broker.url, "MAILPULSE_DATA_DIR": str(tmp_path),
           "MAILPULSE_PARTITIONS": "4", "MAILPULSE_METRICS_PORT": "0"}
    run = subprocess.run([MAILPULSE, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("mailpulse: error: MAILPULSE_PARTITIONS is 4, but mailpulse-profile-events has 8 partitions")
    # output topics are keyed by profile id: another count there is only noted
    assert check_partitions(broker.bootstrap, 4, [], OUTPUT_TOPICS)[0] == \
        "profiles has 8 partitions, MAILPULSE_PARTITIONS is 4"


def test_the_demo_writes_its_first_e_mails_and_logs_one_json_object_per_line(start_worker: WorkerFactory,
                                                                           tmp_path: Path) -> None:
    """`make run` is `mailpulse run --demo`, here with the JSON log format: demo traffic flows, the
    in-process `deliver` writes the first e-mails to the outbox, and every line of the log is one JSON
    object.  (deliver announces itself from its own thread, usually once Faust runs: with Faust's
    stdout redirect that line was a warning of ``mode.redirect`` holding the JSON line as its message;
    tests/unit/test_logs.py checks the redirect itself.)"""
    worker = start_worker(command=[MAILPULSE, "run", "--demo"], MAILPULSE_LOG_FORMAT="json",
                          MAILPULSE_DELIVER_PORT=str(free_port()))
    wait_until(lambda: worker.process.poll() is not None or any((tmp_path / "state").glob("*/outbox/*.eml")),
               timeout=90)
    assert worker.process.poll() is None, worker.log.read_text()[-3000:]
    assert worker.stop() == 0
    lines = [json.loads(line) for line in worker.log.read_text().splitlines()]  # raises on a line that is not JSON
    [announced] = [line for line in lines if "dry-run to" in line["message"]]
    assert (announced["logger"], announced["level"]) == ("mailpulse", "info")
    assert announced["message"].startswith("deliver: dry-run to ")
