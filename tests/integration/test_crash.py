"""kill -9 mid-stream, then restart: the profiles come out as if nothing had happened."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import MAILPULSE, latest_by_key, read_topic
from .test_pipeline import _many_events, expected_profiles, write_jsonl

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("restart_dir", ["same", "fresh"])
def test_kill_9_mid_stream_then_restart_gives_the_uninterrupted_profiles(
    broker, start_worker, tmp_path: Path, restart_dir: str
) -> None:
    events = _many_events(6000, 300)
    expected = {k.encode(): v for k, v in expected_profiles(events).items()}
    history = write_jsonl(tmp_path / "history.jsonl", events)

    worker = start_worker(data_dir="state")
    replay = subprocess.Popen([MAILPULSE, "replay", str(history), "--broker", broker.url, "--rate", "1500"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    worker.wait_metric("mailpulse_events_total", 1500, outcome="processed")
    worker.process.kill()  # SIGKILL: no flush, no commit, no clean close of RocksDB
    worker.process.wait(10)
    assert worker.metric("mailpulse_events_total") == 0  # it is really gone

    restarted = start_worker(data_dir="state" if restart_dir == "same" else "fresh")
    assert replay.wait(60) == 0, replay.stderr.read() if replay.stderr else ""
    try:
        read_topic(broker.bootstrap, "profiles", lambda m: latest_by_key(m) == expected, timeout=120)
    except AssertionError:
        got = latest_by_key(read_topic(broker.bootstrap, "profiles"))
        differing = sorted(k for k in expected.keys() | got.keys() if got.get(k) != expected.get(k))
        raise AssertionError(f"{len(differing)} of {len(expected)} profiles differ, e.g. "
                             f"{[(k, got.get(k), expected.get(k)) for k in differing[:2]]}") from None
    # the restarted worker re-read what the killed one had not committed, and dropped what it had applied
    assert restarted.metric("mailpulse_events_total", outcome="processed") < len(events)
