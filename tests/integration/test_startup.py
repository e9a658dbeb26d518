"""Start-up checks of ``mailpulse run`` against a real broker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from streams.broker import check_partitions, ensure_topics
from streams.topics import OUTPUT_TOPICS, partitioned_internal_topics

from .conftest import MAILPULSE, PARTITIONS

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
