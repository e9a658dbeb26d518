"""The delivery ledger is bounded: trigger ids older than the retention are forgotten, oldest first,
without a scan of the rest, and counted; held triggers and unsubscribes are kept."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.deliver.ledger import SENT, Ledger
from streams.deliver.service import Deliverer
from streams.deliver.targets import DryRun
from streams.metrics import DeliverMetrics
from streams.settings import Settings

from .test_service import Recorder

DAY = 86_400_000
NOW = 1_800_000_000_000


def test_prune_forgets_the_ids_marked_before_the_cut_and_nothing_else(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    for n in range(10):
        ledger.mark(f"t-{n}", SENT, NOW - (10 - n) * DAY)
    ledger.mark("t-3", SENT, NOW)  # marked again later: its age is its first mark
    ledger.hold(NOW + DAY, "t-held", b"{}", "p-1")
    ledger.unsubscribe("p-1", "ana@example.com", NOW - 100 * DAY)

    assert ledger.prune(NOW - 5 * DAY) == 5
    assert [n for n in range(10) if ledger.outcome(f"t-{n}") is not None] == [5, 6, 7, 8, 9]
    assert ledger.entries == 5 and ledger.held == 1
    assert ledger.unsubscribed("p-1", "ana@example.com")
    assert ledger.prune(NOW - 5 * DAY) == 0
    ledger.close()
    again = Ledger(tmp_path)
    assert again.entries == 5 and again.prune(NOW + 1) == 5 and again.entries == 0


def test_a_ledger_written_before_the_age_index_is_indexed_once_when_opened(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    for n in range(4):  # as the version before wrote them: the outcome only
        ledger.db[f"d:old-{n}".encode()] = orjson.dumps({"state": SENT, "at": NOW - (4 - n) * DAY})
    del ledger.db[b"k:aged"]
    ledger.close()
    ledger = Ledger(tmp_path)
    assert ledger.entries == 4
    assert ledger.prune(NOW - 2 * DAY) == 2
    assert ledger.outcome("old-0") is None and ledger.outcome("old-3") is not None


def test_the_deliverer_prunes_past_its_setting_and_counts_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state")
    for n in range(6):
        ledger.mark(f"t-{n}", SENT, NOW - n * DAY)
    metrics = DeliverMetrics()
    deliverer = Deliverer(DryRun(tmp_path / "out"), ledger, None, Recorder(), metrics,  # type: ignore[arg-type]
                          Settings(deliver_ledger_days=2.5), "http://u", b"k" * 32, now_ms=lambda: NOW)
    assert deliverer.prune() == 3
    assert metrics.ledger_pruned._value.get() == 3
    assert metrics.registry.get_sample_value("mailpulse_delivery_ledger_entries") == 3  # read at the scrape


def test_a_ledger_another_process_holds_is_a_clear_error(tmp_path: Path) -> None:
    from streams.deliver.ledger import LedgerInUse

    first = Ledger(tmp_path)
    try:
        with pytest.raises(LedgerInUse, match="another deliver process"):
            Ledger(tmp_path)
    finally:
        first.close()


def test_a_ledger_that_cannot_be_opened_under_a_path_naming_a_lock_is_not_called_in_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any open error whose text held "lock" was "in use by another deliver process": under a folder
    such as ``/srv/blocklist`` a permission error sent the user looking for a process that was not there."""
    import rocksdict

    from streams.deliver.ledger import LedgerError, LedgerInUse

    folder = tmp_path / "blocklist"

    def denied(path: str) -> None:
        raise Exception(f"IO error: While open a file for appending: {path}/000004.log: Permission denied")

    monkeypatch.setattr(rocksdict, "Rdict", denied)
    with pytest.raises(LedgerError, match=r"cannot be opened .*Permission denied") as raised:
        Ledger(folder)
    assert not isinstance(raised.value, LedgerInUse)


@pytest.mark.parametrize("place", ["below a file", "a file in its place", "cannot be made"])
def test_a_ledger_folder_that_cannot_be_used_is_a_clear_error(tmp_path: Path, place: str) -> None:
    """A file where the folder would be made, a file where RocksDB's folder is, a folder that takes no
    new one (another user's, a read-only mount; here procfs): mkdir's or RocksDB's traceback."""
    from streams.deliver.ledger import LedgerError

    folder = tmp_path / "state" / "deliver"
    if place == "below a file":
        (tmp_path / "state").write_text("x")
    elif place == "a file in its place":
        folder.mkdir(parents=True)
        (folder / "ledger").write_text("x")
    else:
        if not Path("/proc/self").is_dir():
            pytest.skip("needs procfs, where no folder can be made")
        folder = Path("/proc/self/mailpulse-deliver")
    with pytest.raises(LedgerError, match=f"^{folder}: the deliver state .* cannot be "):
        Ledger(folder)


def test_triggers_held_by_a_ledger_before_the_profile_index_are_found_by_their_profile(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.db[b"h:%013d:t-old" % (NOW + DAY)] = b'{"trigger_id": "t-old", "profile_id": "p-7"}'
    del ledger.db[b"k:held-by-id"]  # as a ledger of a version before any profile index
    ledger.close()
    again = Ledger(tmp_path)
    assert [key for key, _ in again.held_for("p-7")] == [b"h:%013d:t-old" % (NOW + DAY)]
    assert again.is_held("t-old", "p-7") and not again.is_held("t-ol", "p-7")


def test_triggers_held_by_a_ledger_with_the_scanned_profile_index_are_found_by_their_id(tmp_path: Path) -> None:
    """A ledger of the version before kept ``p:<length>:<profile id>:<hold key>``, read by a scan of
    the profile's holds: at open it is indexed by trigger id, and the old entries are gone."""
    ledger = Ledger(tmp_path)
    for trigger_id in ("t-1", "t-2"):
        key = b"h:%013d:" % (NOW + DAY) + trigger_id.encode()
        ledger.db[key] = orjson.dumps({"trigger_id": trigger_id, "profile_id": "p-7"})
        ledger.db[b"p:3:p-7:" + key] = b""  # as the version before wrote them
    del ledger.db[b"k:held-by-id"]
    ledger.db[b"k:by-profile"] = b"1"
    ledger.close()
    again = Ledger(tmp_path)
    assert again.held == 2 and not list(again._keys(b"p:"))
    assert again.is_held("t-1", "p-7") and again.is_held("t-2", "p-7") and not again.is_held("t-1", "p-8")
    assert [key for key, _ in again.held_for("p-7")] == [b"h:%013d:t-%d" % (NOW + DAY, n) for n in (1, 2)]
    again.release(b"h:%013d:t-1" % (NOW + DAY), "p-7")
    assert not again.is_held("t-1", "p-7") and again.is_held("t-2", "p-7")


def test_a_released_trigger_leaves_the_profile_index(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.hold(NOW + DAY, "t-1", b"{}", "p-1")
    [(key, _)] = ledger.held_for("p-1")
    ledger.release(key, "p-1")
    assert ledger.held == 0 and not list(ledger._keys(b"ph:")) and not list(ledger._keys(b"h:"))
    assert not ledger.is_held("t-1", "p-1")


def test_a_trigger_held_again_for_a_later_round_stays_indexed_when_its_old_hold_is_released(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.hold(NOW, "t-1", b"{}", "p-1")
    ledger.hold(NOW + DAY, "t-1", b"{}", "p-1")  # its round failed: held again, then the due one released
    ledger.release(b"h:%013d:t-1" % NOW, "p-1")
    assert ledger.is_held("t-1", "p-1") and [key for key, _ in ledger.held_for("p-1")] == [b"h:%013d:t-1" % (NOW + DAY)]


def test_the_outage_kept_survives_a_reopen_and_is_gone_once_the_target_is_up(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state")
    assert ledger.outage() == {}
    ledger.note_outage({"in_a_row": 3, "until_ms": 5, "target": "smtp:x"})
    ledger.close()
    ledger = Ledger(tmp_path / "state")
    assert ledger.outage() == {"in_a_row": 3, "until_ms": 5, "target": "smtp:x"}
    ledger.note_outage({})
    assert ledger.outage() == {}
    ledger.db[b"k:outage"] = b"not json"  # (another version's, or damaged): a start must not fail on it
    assert ledger.outage() == {}
    ledger.close()


_ROLLBACK_AT = 1_780_000_000_000


def _hold_as_the_version_before(ledger: Ledger, trigger_id: str, profile_id: str, send_at: int) -> None:
    """What the version before 47d2c10 did at open (index held triggers under ``p:`` unless
    ``k:by-profile``) and at ``hold``."""
    if ledger.db.get(b"k:by-profile") is None:
        for key in list(ledger._keys(b"h:")):
            pid = orjson.loads(ledger.db[key]).get("profile_id")
            encoded = str(pid).encode()
            ledger.db[b"p:%d:" % len(encoded) + encoded + b":" + key] = b""
        ledger.db[b"k:by-profile"] = b"1"
    key = b"h:%013d:" % send_at + trigger_id.encode()
    ledger.db[key] = orjson.dumps({"trigger_id": trigger_id, "profile_id": profile_id})
    encoded = profile_id.encode()
    ledger.db[b"p:%d:" % len(encoded) + encoded + b":" + key] = b""


def test_a_trigger_held_by_the_version_before_after_a_rollback_is_found_again_after_the_upgrade(
        tmp_path: Path) -> None:
    """Upgraded, rolled back (the older version indexes its holds under ``p:`` again and holds one
    more), upgraded again: the index by trigger id was built once, and the hold made in between was
    neither seen as held nor cancelled by a withdrawal (found in review).  ``p:`` entries make it anew."""
    Ledger(tmp_path).close()  # the new version opened it once (k:held-by-id set, k:by-profile gone)
    old = Ledger(tmp_path)  # (the same RocksDB, written as the version before writes it)
    _hold_as_the_version_before(old, "t-rolled", "p-7", _ROLLBACK_AT + 86_400_000)
    old.close()
    again = Ledger(tmp_path)  # upgraded again
    assert again.held == 1
    assert again.is_held("t-rolled", "p-7"), "a held trigger is not seen as held (it would be held twice)"
    assert [key for key, _ in again.held_for("p-7")] == [b"h:%013d:t-rolled" % (_ROLLBACK_AT + 86_400_000)], \
        "a withdrawal of p-7 would not cancel the trigger the older version held"


@pytest.mark.parametrize("existing", [False, True])
def test_the_state_folder_that_keeps_the_link_key_is_its_owners_alone(tmp_path: Path, existing: bool) -> None:
    """Without ``MAILPULSE_UNSUBSCRIBE_SECRET`` the key that signs unsubscribe links is made and kept in
    the ledger, whose files the umask left readable to every user of the machine (0644 in a 0755
    folder): anyone there could sign a link for any person and withdraw their consent (and read the
    held triggers' addresses and names).  The folder is made, or kept, for its owner alone."""
    import os
    import stat

    folder = tmp_path / "data" / "deliver"
    if existing:  # made by an earlier version
        folder.mkdir(parents=True, mode=0o755)
        os.chmod(folder, 0o755)
    ledger = Ledger(folder)
    try:
        ledger.secret()
        ledger.sync()
    finally:
        ledger.close()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
