"""When a worker's state folder is used as it is, and when it is rebuilt from the changelogs."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from streams.worker import (
    CLEAN_STOP_MARKER,
    STATE_MAX_AGE_S,
    StateFolderError,
    locked_data_dir,
    mark_clean_stop,
    stale_state,
)


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
    folder = _folder(tmp_path, None)
    (folder / CLEAN_STOP_MARKER).write_text(f"{now - STATE_MAX_AGE_S - 1:.3f}\n")  # the stop it holds
    os.utime(folder / CLEAN_STOP_MARKER, (now, now))  # the copy's file time (set after the write, which moves it)
    reason = stale_state(folder, now)
    assert reason is not None and "stopped more than 12 hours ago" in reason
    # the older of the two counts, whichever it is
    (folder / CLEAN_STOP_MARKER).write_text(f"{now:.3f}\n")
    os.utime(folder / CLEAN_STOP_MARKER, (now - STATE_MAX_AGE_S - 1, now - STATE_MAX_AGE_S - 1))
    reason = stale_state(folder, now)
    assert reason is not None and "stopped more than 12 hours ago" in reason
    (folder / CLEAN_STOP_MARKER).write_text("")  # a marker of an older version: its file time
    os.utime(folder / CLEAN_STOP_MARKER, (now, now))
    assert stale_state(folder, now) is None


@pytest.mark.parametrize("place", ["a file", "below a file", "a lock that is a folder", "cannot be made"])
def test_a_state_folder_that_cannot_be_used_is_a_one_line_error(tmp_path: Path, place: str) -> None:
    """``worker-0`` a file or below one, its lock file one that cannot be opened (another user's: here a folder),
    a folder that takes no new one (a read-only mount, no permission; here procfs): mkdir's or open's
    traceback ended the start."""
    base = tmp_path
    if place == "a file":
        (tmp_path / "worker-0").write_text("x")
    elif place == "below a file":  # (the embedded broker's ``embedded`` folder)
        base = tmp_path / "embedded"
        base.write_text("x")
    elif place == "a lock that is a folder":
        (tmp_path / "worker-0" / ".lock").mkdir(parents=True)
    else:
        if not Path("/proc/self").is_dir():
            pytest.skip("needs procfs, where no folder can be made")
        base = Path("/proc/self")
    line = f"MAILPULSE_DATA_DIR {base}: {base / 'worker-0'} cannot be used ("
    with pytest.raises(StateFolderError, match=re.escape(line)), locked_data_dir(base):
        pytest.fail("no state folder can be used here")


def test_state_this_user_cannot_write_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Table state left by a worker run as another user (``sudo mailpulse run`` once): the folder
    was locked, then the worker crashed opening its tables, with a traceback from deep in Faust
    (or, its state stale, from emptying the folder)."""
    table = tmp_path / "worker-0" / "v1" / "tables" / "profiles-0"
    table.mkdir(parents=True)
    (table / "000012.sst").write_text("x")
    with locked_data_dir(tmp_path):  # (a folder it can write is used)
        pass
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (Path(path).name != "profiles-0"
                                                                and access(path, mode, **kw)))
    with pytest.raises(StateFolderError, match=re.escape(f"MAILPULSE_DATA_DIR {tmp_path}: {table} cannot be ")), \
            locked_data_dir(tmp_path):
        pytest.fail("the state cannot be written")
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (Path(path).suffix != ".sst"
                                                                and access(path, mode, **kw)))
    with pytest.raises(StateFolderError, match=re.escape(f"{table / '000012.sst'} cannot be ")), \
            locked_data_dir(tmp_path):
        pytest.fail("the state cannot be written")
    monkeypatch.undo()
    with locked_data_dir(tmp_path) as folder:
        assert folder.name == "worker-0"  # (its lock was let go)


def test_a_clean_stop_marker_that_cannot_be_written_is_a_note_and_the_next_start_rebuilds(tmp_path: Path) -> None:
    """A full disk as the worker stopped: the marker's write raised, and the clean stop ended in a
    traceback.  Now one line says what follows; without the marker the next start rebuilds."""
    assert mark_clean_stop(tmp_path / CLEAN_STOP_MARKER) is None
    assert stale_state(tmp_path, time.time()) is None
    (tmp_path / CLEAN_STOP_MARKER).unlink()
    (tmp_path / "table").write_text("x")
    (tmp_path / CLEAN_STOP_MARKER).mkdir()  # (cannot be written, as on a full disk)
    note = mark_clean_stop(tmp_path / CLEAN_STOP_MARKER)
    assert note is not None and note.count("\n") == 0
    assert "could not be written" in note and "rebuilds the table state" in note


def test_a_state_folder_is_its_owners_alone(tmp_path: Path) -> None:
    """The tables hold the profiles (names, addresses, birthdays): a folder made with the usual umask
    (0755) let every local user read them.  A new one, and one an earlier version made, are 0700."""
    old = tmp_path / "worker-0"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    with locked_data_dir(tmp_path) as first, locked_data_dir(tmp_path) as second:
        assert (first, second.name) == (old, "worker-1")
        assert {first.stat().st_mode & 0o777, second.stat().st_mode & 0o777} == {0o700}
