"""The deliver state, in RocksDB (rocksdict): which trigger ids were delivered (or failed, or were
being sent when the process stopped), the triggers held until their ``send_at``, and who
unsubscribed.  Every write goes to RocksDB's log before the Kafka offset is committed, so a restart
neither sends twice nor forgets a held trigger.

Keys: ``d:<trigger id>`` the outcome; ``t:<first marked, ms>:<trigger id>`` the same ids by age, so
that :meth:`Ledger.prune` forgets the oldest without a scan; ``h:<send_at, ms>:<trigger id>`` held
triggers, and ``ph:<length of the profile id>:<profile id>:<trigger id>`` the same by profile and id
(its value the hold key: whether a trigger is held is one read);
``u:``/``ue:`` unsubscribed profile ids and addresses (kept until they give consent again);
``r:<trigger id>`` the rounds of a
trigger tried again later (until its outcome); ``w:<profile id>`` the latest event time at which the
pipeline said that profile withdrew consent or was erased (kept for the ledger's retention), and
``o:<partition>`` how far its withdrawals topic was read; ``x:<kept at, ms>:<random>`` the records
for Kafka (``delivery-failed`` reports, consent withdrawals) the broker has not acknowledged yet;
``k:`` the link secret and, in
``k:outage``, whether the target counts as down (so that a restart during an outage does not forget
it)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import rocksdict

SENDING, SENT, FAILED, SUPPRESSED = "sending", "sent", "failed", "suppressed"


def _by_profile(profile_id: str) -> bytes:
    """The index's prefix of one profile's held triggers (its id's length first: no profile's prefix
    starts another's)."""
    encoded = profile_id.encode()
    return b"ph:%d:" % len(encoded) + encoded + b":"


def _opt_out_keys(profile_id: str, email: str) -> tuple[bytes, bytes]:
    """The keys of a profile's and an address's unsubscribe (``u:``, ``ue:``; the address lower-cased)."""
    return b"u:" + profile_id.encode(), b"ue:" + email.lower().encode()


#: Keys read or deleted between two calls of :attr:`Ledger.progress` (a few milliseconds' worth).
PROGRESS_EVERY = 1000

#: Where a hold key's trigger id starts (``h:<13 digits>:``).
HOLD_ID_AT = len(b"h:0000000000000:")


class LedgerError(OSError):
    """The ledger's folder cannot be used (a one-line error at start)."""


class LedgerInUse(LedgerError):
    """Another process has the ledger open (RocksDB's lock)."""


def _nothing() -> None:
    return None


class Ledger:
    def __init__(self, folder: Path) -> None:
        self.closed = False
        #: called every :data:`PROGRESS_EVERY` keys a scan reads or a prune deletes: a read of every id
        #: (millions at a large shop's retention: seconds) or a prune after a long stop is then no stall
        #: of deliver's /healthz (its owner beats its heartbeat here)
        self.progress: Callable[[], None] = _nothing
        try:  # (a file there, another user's folder, a read-only mount: mkdir's traceback otherwise)
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"{folder}: the deliver state folder cannot be made ({exc.strerror or exc})") from None
        # its owner's alone, also when an earlier version made it: it keeps the key that signs unsubscribe
        # links (with it, anyone could withdraw anyone's consent) and the held triggers' addresses
        with contextlib.suppress(OSError):  # (another user's folder: RocksDB says so below)
            folder.chmod(0o700)
        try:
            self.db = rocksdict.Rdict(str(folder / "ledger"))
        except Exception as exc:  # rocksdict raises a bare Exception (or an OSError), with one line of RocksDB's
            if "/LOCK: " in str(exc):  # (RocksDB's lock file; not "lock" anywhere: a path may hold it)
                raise LedgerInUse(f"{folder} is in use by another deliver process (each needs its own "
                                  "MAILPULSE_DATA_DIR)") from None
            raise LedgerError(f"{folder}: the deliver state in it cannot be opened ({exc})") from None
        if self.db.get(b"k:aged") is None:  # a ledger from before the age index: index what it holds
            for key in list(self._keys(b"d:")):
                self.db[b"t:%013d:" % max(orjson.loads(self._get(key)).get("at", 0), 0) + key[2:]] = b""
            self.db[b"k:aged"] = b"1"
        # held before this index (with none, or the profile index of ``p:<length>:<profile id>:<hold key>``,
        # read by a scan of the profile), or by an earlier version since (a rollback writes ``p:`` again,
        # and holds this index does not know): made anew from the holds
        if self.db.get(b"k:held-by-id") is None or next(self._keys(b"p:"), None) is not None:
            for key in [*self._keys(b"p:"), *self._keys(b"ph:")]:
                del self.db[key]
            for key in list(self._keys(b"h:")):
                try:
                    profile_id = orjson.loads(self._get(key)).get("profile_id")
                except (orjson.JSONDecodeError, AttributeError):
                    continue  # (held triggers were read as JSON objects)
                self.db[_by_profile(str(profile_id)) + key[HOLD_ID_AT:]] = key
            if self.db.get(b"k:by-profile") is not None:
                del self.db[b"k:by-profile"]
            self.db[b"k:held-by-id"] = b"1"
        self.entries = sum(1 for _ in self._keys(b"d:"))
        self.held = sum(1 for _ in self._keys(b"h:"))
        self.unacknowledged = sum(1 for _ in self._keys(b"x:"))

    def close(self) -> None:
        self.closed = True
        self.db.close()

    def sync(self) -> None:
        """What was written so far on disk (RocksDB's log synced): it then outlives a power loss, not
        only a process crash."""
        self.db.flush_wal(True)

    def _keys(self, prefix: bytes) -> Iterator[bytes]:
        it = self.db.iter()
        it.seek(prefix)
        read = 0
        while it.valid():
            key = it.key()
            if not isinstance(key, bytes) or not key.startswith(prefix):
                break
            yield key
            read += 1
            if read % PROGRESS_EVERY == 0:
                self.progress()
            it.next()

    def _delete(self, keys: list[bytes]) -> None:
        for n, key in enumerate(keys, 1):
            del self.db[key]
            if n % PROGRESS_EVERY == 0:
                self.progress()

    def _get(self, key: bytes) -> bytes:
        value = self.db[key]
        assert isinstance(value, bytes)
        return value

    # --- delivered trigger ids ---
    def outcome(self, trigger_id: str) -> dict[str, Any] | None:
        raw = self.db.get(b"d:" + trigger_id.encode())
        if raw is None:
            return None
        value: dict[str, Any] = orjson.loads(raw)
        return value

    def mark(self, trigger_id: str, state: str, at_ms: int, **extra: Any) -> None:
        key = b"d:" + trigger_id.encode()
        if self.db.get(key) is None:
            self.entries += 1
            self.db[b"t:%013d:" % max(at_ms, 0) + trigger_id.encode()] = b""
        self.db[key] = orjson.dumps({"state": state, "at": at_ms, **extra})
        if state != SENDING and self.db.get(b"r:" + trigger_id.encode()) is not None:
            del self.db[b"r:" + trigger_id.encode()]  # an outcome: no more rounds

    def forget(self, trigger_id: str) -> None:
        """No outcome for ``trigger_id`` (it was not sent, and will be tried again)."""
        key = b"d:" + trigger_id.encode()
        raw = self.db.get(key)
        if raw is None:
            return
        del self.db[key]
        self.entries -= 1
        aged = b"t:%013d:" % max(orjson.loads(raw).get("at", 0), 0) + trigger_id.encode()
        if self.db.get(aged) is not None:
            del self.db[aged]

    # --- rounds of a trigger whose target failed for a while ---
    def rounds(self, trigger_id: str) -> tuple[int, int] | None:
        """(rounds failed so far, when the first failed or waited for a target that was down, ms) of a
        trigger being tried again."""
        raw = self.db.get(b"r:" + trigger_id.encode())
        if raw is None:
            return None
        value = orjson.loads(raw)
        return int(value["rounds"]), int(value["since"])

    def attempts(self, trigger_id: str, per_round: int) -> int:
        """The attempts made in the rounds a trigger failed so far (``per_round`` each for rounds noted
        without their attempts, by an older version)."""
        raw = self.db.get(b"r:" + trigger_id.encode())
        if raw is None:
            return 0
        value = orjson.loads(raw)
        made = value.get("attempts")
        return int(made) if made is not None else int(value["rounds"]) * per_round

    def note_round(self, trigger_id: str, rounds: int, since_ms: int, attempts: int | None = None) -> None:
        value: dict[str, int] = {"rounds": rounds, "since": since_ms}
        if attempts is not None:  # (a round stopped early by a ``Retry-After`` made fewer than its share)
            value["attempts"] = attempts
        self.db[b"r:" + trigger_id.encode()] = orjson.dumps(value)

    def prune(self, before_ms: int) -> int:
        """Forgets the trigger ids first marked before ``before_ms``; how many.  (A trigger read
        again after that would be delivered again: the retention must exceed the triggers topic's.)"""
        old = []
        for key in self._keys(b"t:"):
            if int(key[2:15]) >= before_ms:
                break
            old.append(key)
        self._delete(old)
        done = [b"d:" + key[16:] for key in old if self.db.get(b"d:" + key[16:]) is not None]
        self._delete(done)
        self.entries -= len(done)
        return len(old)

    def interrupted(self) -> list[tuple[str, dict[str, Any]]]:
        """(trigger id, its ``sending`` mark) of the triggers whose sending was under way when the
        process stopped: a read of every id (:attr:`progress` is called along)."""
        marks = ((key[2:].decode(), orjson.loads(self._get(key))) for key in self._keys(b"d:"))
        return [(trigger_id, mark) for trigger_id, mark in marks if mark.get("state") == SENDING]

    # --- held until send_at ---
    def hold(self, send_at_ms: int, trigger_id: str, trigger: bytes, profile_id: str) -> None:
        key = b"h:%013d:" % max(send_at_ms, 0) + trigger_id.encode()
        if self.db.get(key) is None:
            self.held += 1
        self.db[key] = trigger
        # (held again for a later round, it is indexed by its new hold key before the old one is released)
        self.db[_by_profile(profile_id) + trigger_id.encode()] = key

    def is_held(self, trigger_id: str, profile_id: str) -> bool:
        key = self.db.get(_by_profile(profile_id) + trigger_id.encode())
        return isinstance(key, bytes) and self.holds(key)

    def held_for(self, profile_id: str) -> list[tuple[bytes, bytes]]:
        """(hold key, trigger) of the triggers held for ``profile_id``."""
        return [(key, raw) for indexed in list(self._keys(_by_profile(profile_id)))
                if isinstance(key := self.db.get(indexed), bytes) and (raw := self.db.get(key)) is not None]

    def due(self, now_ms: int) -> list[bytes]:
        """The hold keys of held triggers whose send_at has come, earliest first (keys sort by send_at,
        so no later one is read).  The caller reads each with :meth:`held_trigger` when it gets to it: a
        withdrawal read meanwhile may have released it."""
        due = []
        for key in self._keys(b"h:"):
            if int(key[2:15]) > now_ms:
                break
            due.append(key)
        return due

    def held_trigger(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def holds(self, key: bytes) -> bool:
        return self.held_trigger(key) is not None

    def release(self, key: bytes, profile_id: str) -> None:
        if self.holds(key):
            self.held -= 1
            del self.db[key]
        indexed = _by_profile(profile_id) + key[HOLD_ID_AT:]
        if self.db.get(indexed) == key:  # (not when it is held again, under another key)
            del self.db[indexed]

    # --- what the pipeline withdrew ---
    def note_withdrawal(self, profile_id: str, at_ms: int, now_ms: int) -> None:
        key = b"w:" + profile_id.encode()
        if (known := self.withdrawn_at(profile_id)) is None or at_ms > known:
            self.db[key] = orjson.dumps({"at": at_ms, "noted": now_ms})

    def withdrawn_at(self, profile_id: str) -> int | None:
        """The latest event time the pipeline said ``profile_id`` withdrew consent or was erased at."""
        raw = self.db.get(b"w:" + profile_id.encode())
        return None if raw is None else int(orjson.loads(raw)["at"])

    def prune_withdrawals(self, before_ms: int) -> int:
        """Forgets the withdrawals noted before ``before_ms`` (their triggers are past the ledger's
        retention too); how many."""
        old = [key for key in self._keys(b"w:") if orjson.loads(self._get(key))["noted"] < before_ms]
        self._delete(old)
        return len(old)

    def read_up_to(self, partition: int) -> int | None:
        """The next offset to read of the withdrawals topic's ``partition`` (None: from its start)."""
        raw = self.db.get(b"o:%d" % partition)
        return None if raw is None else int(raw)

    def note_read(self, partition: int, next_offset: int) -> None:
        self.db[b"o:%d" % partition] = b"%d" % next_offset

    # --- records for Kafka, until the broker acknowledges them ---
    def keep_record(self, topic: str, key: bytes | None, value: bytes, at_ms: int) -> bytes:
        """Keeps a record about to be produced; returns its entry, for :meth:`acknowledged`.  (Bounded
        by what gives up while the broker is away: held triggers, unsubscribe clicks, bounces.)"""
        entry = b"x:%013d:" % max(at_ms, 0) + secrets.token_hex(8).encode()
        self.db[entry] = orjson.dumps({"topic": topic, "key": None if key is None else key.decode(),
                                       "value": value.decode()})
        self.unacknowledged += 1
        return entry

    def acknowledged(self, entry: bytes) -> None:
        if self.db.get(entry) is not None:
            del self.db[entry]
            self.unacknowledged -= 1

    def oldest_kept_ms(self) -> int | None:
        """When the oldest record not acknowledged yet was kept (ms), None when there is none."""
        return next((int(entry[2:15]) for entry in self._keys(b"x:")), None)

    def kept_records(self) -> list[tuple[bytes, str, bytes | None, bytes]]:
        """(entry, topic, key, value) of the records not acknowledged yet, oldest first."""
        kept = []
        for entry in list(self._keys(b"x:")):
            record = orjson.loads(self._get(entry))
            key = record["key"]
            kept.append((entry, str(record["topic"]), None if key is None else str(key).encode(),
                         str(record["value"]).encode()))
        return kept

    # --- unsubscribed people ---
    def unsubscribe(self, profile_id: str, email: str, at_ms: int) -> None:
        for key in _opt_out_keys(profile_id, email):
            self.db[key] = orjson.dumps({"at": at_ms})

    def unsubscribed_both(self, profile_id: str, email: str) -> bool:
        """Whether this profile and this address have each unsubscribed already."""
        return all(self.db.get(key) is not None for key in _opt_out_keys(profile_id, email))

    def unsubscribed(self, profile_id: str, email: str) -> bool:
        return self.unsubscribed_at(profile_id, email) is not None

    def unsubscribed_at(self, profile_id: str, email: str) -> int | None:
        """When this profile or this address last unsubscribed (ms); None: neither has."""
        ats = [int(orjson.loads(raw)["at"]) for key in _opt_out_keys(profile_id, email)
               if isinstance(raw := self.db.get(key), bytes)]
        return max(ats) if ats else None

    def subscribed_again(self, profile_id: str, email: str) -> None:
        """Forgets the unsubscribe of this profile and this address (they gave consent again): the link
        unsubscribes again."""
        for key in _opt_out_keys(profile_id, email):
            if self.db.get(key) is not None:
                del self.db[key]

    # --- whether the target counts as down ---
    def outage(self) -> dict[str, Any]:
        """What :meth:`note_outage` kept ({} when the target was up, or when what is kept cannot be
        read: the state is advisory, a start must not fail on it)."""
        raw = self.db.get(b"k:outage")
        try:
            value = orjson.loads(raw) if isinstance(raw, bytes) else {}
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def note_outage(self, state: dict[str, Any]) -> None:
        if state:
            self.db[b"k:outage"] = orjson.dumps(state)
        elif self.db.get(b"k:outage") is not None:
            del self.db[b"k:outage"]

    # --- the unsubscribe links' key ---
    def secret(self) -> bytes:
        key = b"k:unsubscribe"
        value = self.db.get(key)
        if value is None:
            value = secrets.token_bytes(32)
            self.db[key] = value
        assert isinstance(value, bytes)
        return value
