"""When a worker's state folder is used as it is, and when it is rebuilt from the changelogs."""

from __future__ import annotations

import os
from pathlib import Path

from streams.worker import CLEAN_STOP_MARKER, STATE_MAX_AGE_S, stale_state


def _folder(tmp_path: Path, stopped_at: float | None) -> Path:
    (tmp_path / ".lock").touch()
    (tmp_path / "tables").mkdir()
    if stopped_at is not None:
        marker = tmp_path / CLEAN_STOP_MARKER
        marker.touch()
        os.utime(marker, (stopped_at, stopped_at))
    return tmp_path


def test_a_recent_clean_stop_keeps_the_state(tmp_path: Path) -> None:
    now = 2_000_000_000.0
    assert stale_state(_folder(tmp_path, now - 3600), now) is None


def test_no_clean_stop_rebuilds(tmp_path: Path) -> None:
    assert stale_state(_folder(tmp_path, None), 2_000_000_000.0) == \
        "the last worker on this state folder did not stop cleanly"


def test_a_clean_stop_older_than_a_changelog_keeps_its_deletions_rebuilds(tmp_path: Path) -> None:
    """Another worker may have held its partitions meanwhile and deleted keys (an erasure): past the
    changelogs' delete.retention.ms their tombstones are gone, and the old folder would keep the keys."""
    now = 2_000_000_000.0
    reason = stale_state(_folder(tmp_path, now - STATE_MAX_AGE_S - 1), now)
    assert reason is not None and "stopped more than 12 hours ago" in reason


def test_an_empty_folder_needs_no_rebuild(tmp_path: Path) -> None:
    (tmp_path / ".lock").touch()
    assert stale_state(tmp_path, 2_000_000_000.0) is None


def test_a_folder_copied_without_its_file_times_is_as_old_as_its_stop_says(tmp_path: Path) -> None:
    """``cp -r`` gives every file the copy's time: an old folder's marker read as a stop just now,
    and the folder was used with what its changelogs' compaction no longer deletes."""
    now = 2_000_000_000.0
    folder = _folder(tmp_path, now)  # the copy's file time
    (folder / CLEAN_STOP_MARKER).write_text(f"{now - STATE_MAX_AGE_S - 1:.3f}\n")  # the stop it holds
    reason = stale_state(folder, now)
    assert reason is not None and "stopped more than 12 hours ago" in reason
    (folder / CLEAN_STOP_MARKER).write_text("")  # a marker of an older version: its file time
    os.utime(folder / CLEAN_STOP_MARKER, (now, now))
    assert stale_state(folder, now) is None
