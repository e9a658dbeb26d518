"""One internal record of the profile hop, or a fetched run of them, as one step:
``step(entries, io, rules, ...) -> RecordResult``.

The step reads what it needs through :class:`StepIO` and changes nothing outside the states it
decoded for this record: every table write, due-index change, send and counter comes back in the
:class:`RecordResult`, which the profile agent applies in one go (:func:`streams.app._profile_agent`).

Why: an exception while handling one entry or one profile must not stop the agent, nor leave half
of a record applied.  When the step raises, nothing was applied; :func:`step_isolated` runs it again
with the culprit left out (an entry, or every entry of a profile whose advance or encoding failed)
and dead-letters what it left out with code ``processing_error``.  States are decoded afresh for
each attempt, so a retry starts from the tables as they were before the record.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import orjson

from schemas.timeparse import format_ms
from streams import topics as names
from streams.domain.dispatch import dispatch
from streams.domain.identity import profile_id_for
from streams.domain.identity_graph import ABSORB, holds_someone, withdrawal_ids
from streams.domain.profile import DEFAULT_LIMITS, Limits, shrink, snapshot
from streams.domain.state import ErasureMarker, LiveState, State, is_live
from streams.domain.timeline import NeighboursOf, Outputs, RuleSet, _no_neighbours, advance, idle, next_due
from streams.ingest import Source, reject
from streams.routing import PartitionBatches, partition_for
from streams.watermark import clock_time, due_first, indexable_due, merge_clocks, watermark

log = logging.getLogger(__name__)

#: A state or output value larger than this is not written: its profile is treated as failing (a
#: broker refuses records over 1 MB by default, and the commit path must never meet one).
MAX_VALUE_BYTES = 900_000
#: A live state larger than this releases its parked events at once (folded, as past
#: ``limits.parked_events``, counted in ``released_early``): parked events are what can make a
#: bounded state big (up to 1,000 input messages of up to 64 KiB each), and folding them shrinks it.
SOFT_STATE_BYTES = MAX_VALUE_BYTES // 3
#: A live state is made smaller once it is past all but this part (1/7, ~128 KB) of the value limit:
#: when its key gives the profile away to a smaller key, the absorb message carries the state as
#: stored plus the event that linked it (up to 64 KiB), which must still fit under the limit.
ABSORB_ROOM = 7
#: A due profile the step left out after a failure is due again this much event time later (ten
#: minutes): its timers are not lost, and a profile that fails every time costs one failed attempt
#: (and one dead letter) per ten minutes of event time, not one per record.
DUE_RETRY_MS = 10 * 60_000
#: The most due profiles one step advances besides those its entries changed: a clock that makes a whole
#: partition due at once (a closing tick, the wall clock after a stop) is advanced in chunks of this many,
#: the event loop turning between them (the health beat, the broker's heartbeats, the other agents).  A
#: due profile at a closing tick costs 0.5-0.8 ms: in one step, a partition of 100k held the loop a minute.
MOST_DUE_PER_STEP = 1000


class StepFailure(Exception):
    """The step raised while handling entry ``index`` (stage ``dispatch``) or profile ``key``."""

    def __init__(self, stage: str, cause: BaseException, index: int | None = None, key: str | None = None) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}")
        self.stage, self.cause, self.index, self.key = stage, cause, index, key


@dataclass
class StepIO:
    """What a step reads: table values (decoded afresh on each call), the partition's input clocks,
    the due index (``pop_due(watermark)``, the same answer for every attempt of a record), the time."""

    partition: int
    read_state: Callable[[str], Any]
    read_block: Callable[[str], Any]
    clocks: dict[str, int]
    pop_due: Callable[[int], set[str]]
    now_ms: int
    record_arrival_ms: int
    neighbours_of: NeighboursOf = _no_neighbours


@dataclass(frozen=True)
class StepContext:
    """What stays the same for every record of a worker."""

    rules: RuleSet
    expected_clocks: Any
    wall_delay_ms: int | None
    partitions: int
    events_topic: str
    withdrawals_topic: str = names.withdrawals_topic("mailpulse")


@dataclass
class RecordResult:
    """Everything one record changes, for the agent to apply."""

    #: (key, encoded state or None to delete) of profile-state, in the order to stage them.
    state_writes: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    #: (key, new due or None, previous due or None) for the due index.
    due_changes: list[tuple[bytes, int | None, int | None]] = field(default_factory=list)
    block_writes: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    clocks: bytes | None = None  # the partition's clocks when they moved
    #: (topic, key, value, partition or None) in the order to send them.
    sends: list[tuple[str, bytes | None, bytes | None, int | None]] = field(default_factory=list)
    #: Co-occurrence pairs of the events folded: product -> [[other product, weight], ...].  Sent by
    #: the sink (the worker sums them until the next commit: :mod:`streams.cooccurrence`).
    pairs: dict[str, list[list[Any]]] = field(default_factory=dict)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (input topic, outcome) -> events
    late: Counter[str] = field(default_factory=Counter)
    before_dedupe: Counter[str] = field(default_factory=Counter)  # input topic -> duplicates by their time only
    merges: list[str] = field(default_factory=list)
    limited: list[str] = field(default_factory=list)
    entries_dropped: Counter[str] = field(default_factory=Counter)  # collection -> entries a bound kept out
    released_early: int = 0  # parked events applied before the watermark (limits.parked_events)
    shrunk: int = 0  # states over the value limit made smaller (profile.shrink)
    blocks_skipped: int = 0
    profiles_written: Counter[str] = field(default_factory=Counter)  # updated | merged | erased
    released: int = 0
    triggers: Counter[str] = field(default_factory=Counter)
    suppressed: list[tuple[str, str]] = field(default_factory=list)
    deferred: list[tuple[str, str]] = field(default_factory=list)
    segment_changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    waits: dict[str, list[float]] = field(default_factory=lambda: {
        names.PROFILES: [], names.SEGMENT_CHANGES: [], names.TRIGGERS: []})
    unknown: list[str] = field(default_factory=list)  # internal message types this version does not know
    #: (stage, exception class) of each entry left out, in order; their dead letters are in ``sends``.
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Profiles left out that no entry named (only due) -> (stage, exception class, the event time
    #: they are tried at again); dead-lettered by :func:`step_isolated`.
    due_failures: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    left_out_whole: bool = False  # the record was left out whole: nothing of it is in this result
    #: Due profiles popped but not advanced (past ``most_due``): the caller advances them in later steps
    #: (``due_keys``) at the watermark ``due_at``, before the record is acked.
    due_left: list[str] = field(default_factory=list)
    due_at: int | None = None
    #: What was left out, as lines to log at warning level once the result is applied (a dropped
    #: result's are not: the run is stepped again, which says it again).
    warnings: list[str] = field(default_factory=list)
    letters: int = 0  # dead letters of entries left out (none for a clock entry or a batch marker)


class RecordSink(Protocol):
    """Where one record's result goes: the agent's producer, tables and due index, or a test's."""

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> None: ...

    def stage_state(self, key: bytes, value: bytes | None, partition: int) -> None: ...

    def stage_block(self, key: bytes, value: bytes | None, partition: int) -> None: ...

    def stage_clocks(self, value: bytes, partition: int) -> None: ...

    def add_pairs(self, pairs: dict[str, list[list[Any]]], partition: int) -> None: ...

    def push_due(self, partition: int, due: int, key: bytes, previous: int | None) -> None: ...

    def discard_due(self, partition: int, key: bytes, previous: int | None) -> None: ...


def apply_result(result: RecordResult, partition: int, sink: RecordSink) -> None:
    """What the profile agent does with a step's result, in its order: the sends, then the clocks,
    the due index, the states, the blocks and the co-occurrence pairs.  (A key that gave its
    profile away is written as a redirect only once the absorb carrying that profile is sent: the
    writes are staged, and the stage is written after the sends are delivered.)"""
    for topic, key, value, target in result.sends:
        sink.send(topic, key, value, target)
    if result.clocks is not None:
        sink.stage_clocks(result.clocks, partition)
    for kb, due, previous in result.due_changes:
        if due is None:
            sink.discard_due(partition, kb, previous)
        else:
            sink.push_due(partition, due, kb, previous)
    for kb, value in result.state_writes:
        sink.stage_state(kb, value, partition)
    for kb, value in result.block_writes:
        sink.stage_block(kb, value, partition)
    if result.pairs:
        sink.add_pairs(result.pairs, partition)


class _Cache(dict[str, Any]):
    """The values one attempt touches, read through once (``None``: no entry)."""

    _NOT_READ: Any = object()

    def __init__(self, load: Callable[[str], Any]) -> None:
        super().__init__()
        self._load = load

    def get(self, key: str, default: Any = None) -> Any:
        value = dict.get(self, key, self._NOT_READ)
        if value is self._NOT_READ:
            value = self[key] = self._load(key)
        return value


def _checked(data: bytes) -> bytes:
    """``data``, or ValueError when it is over the broker's value limit."""
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(f"value of {len(data)} bytes over the limit of {MAX_VALUE_BYTES}")
    return data


def _encoded(value: Any) -> bytes:
    return _checked(orjson.dumps(value))


def _shrink_past() -> int:
    """A live state, stored or carried by an absorb, is made smaller past this many bytes: all but
    :data:`ABSORB_ROOM` of :data:`MAX_VALUE_BYTES` (read at the call: tests lower the limit)."""
    return MAX_VALUE_BYTES - MAX_VALUE_BYTES // ABSORB_ROOM


def step(entries: list[Any], io: StepIO, ctx: StepContext, skip: frozenset[int] = frozenset(),
         skip_keys: frozenset[str] = frozenset(), most_due: int | None = None,
         due_keys: Sequence[str] | None = None) -> RecordResult:
    """One record's entries (``[key, message]``; key ``None``: clocks) applied to the states they
    address, then every changed or due profile advanced to the watermark.  Raises
    :class:`StepFailure` naming the culprit; ``skip``/``skip_keys`` leave entries and profiles out.
    ``most_due``: at most that many due profiles besides the changed ones (the rest, popped, are in
    the result's ``due_left``); ``due_keys``: the due profiles to advance, popped by an earlier step
    (the due index is not read)."""
    rules = ctx.rules
    result = RecordResult()
    clocks = io.clocks
    wall = clocks.get("wall")
    delay = ctx.wall_delay_ms
    before = watermark(clocks, ctx.expected_clocks, None if delay is None or wall is None else wall - delay)
    states, blocks = _Cache(io.read_state), _Cache(io.read_block)
    changed: set[str] = set()
    republish: set[str] = set()
    outbox: list[tuple[str, str, dict[str, Any]]] = []  # (source key, target key, message)
    moved = False
    for index, entry in enumerate(entries):
        if index in skip:
            continue
        key = None
        try:
            key, message = entry  # (a damaged entry fails here, alone)
            if key is not None and key in skip_keys:
                continue
            if key is None:  # clocks of input partitions, or the wall clock
                if "clocks" in message:
                    moved |= merge_clocks(clocks, message["clocks"])
                elif "wall" in message and clock_time(message["wall"]) > clocks.get("wall", 0):
                    clocks["wall"] = message["wall"]
                    moved = True
                continue
            if type(message) is dict and message.get("type") == ABSORB:
                check_absorbed(message.get("state"))
            effects = dispatch(states, blocks, key, message, before, rules)
        except Exception as exc:
            raise StepFailure("dispatch", exc, index=index, key=key if isinstance(key, str) else None) from exc
        if effects.outcome is not None:
            topic = message["src"][0]
            result.outcomes[topic, "duplicate" if effects.outcome == "duplicate" else "processed"] += 1
            if effects.late:
                result.late[topic] += 1
            if effects.before_dedupe:
                result.before_dedupe[topic] += 1
        if effects.late_absorbed:
            result.late.update(effects.late_absorbed)
        if effects.changed:
            changed.add(key)
        if effects.republish:
            republish.add(key)
        if effects.send:
            outbox += [(key, target, sent) for target, sent in effects.send]
        for profile_id, why in effects.tombstones:
            result.sends.append((names.PROFILES, profile_id.encode(), None, None))
            result.profiles_written[why] += 1
        for profile_id, reason, up_to in effects.withdrawn:
            result.sends.append(_withdrawal(ctx, profile_id, reason, up_to))
        result.merges += effects.merges
        result.limited += effects.limited
        if effects.matches_dropped:
            result.entries_dropped["possible_matches"] += effects.matches_dropped
        if effects.seen_dropped:
            result.entries_dropped["seen"] += effects.seen_dropped
        if effects.history_dropped:
            result.entries_dropped["history"] += effects.history_dropped
        if effects.blocks_dropped:
            result.entries_dropped["blocks"] += effects.blocks_dropped
        if effects.merge_dropped:
            result.entries_dropped.update(effects.merge_dropped)
        if effects.aliases_dropped:
            result.entries_dropped["match_aliases"] += effects.aliases_dropped
        result.blocks_skipped += effects.blocks_skipped
        if effects.unknown is not None:
            result.unknown.append(effects.unknown)
    if moved:
        result.clocks = orjson.dumps(clocks)
        wall = clocks.get("wall")
        now_wm = watermark(clocks, ctx.expected_clocks, None if delay is None or wall is None else wall - delay)
    else:  # a record without clock entries leaves the watermark where it was
        now_wm = before
    if due_keys is not None:
        due_now = set(due_keys) if now_wm is not None else set()
    else:
        due_now = io.pop_due(now_wm) if now_wm is not None else set()
    if skip_keys and now_wm is not None:
        for key in sorted(due_now & skip_keys):  # left out after a failure: tried again later
            _retry_later(key, now_wm, io, result)
        due_now -= skip_keys
    if most_due is not None and len(due_now) > most_due:  # (rare: no set is made for a record's few)
        rest = sorted(due_now - changed)
        if len(rest) > most_due:
            result.due_left, result.due_at = rest[most_due:], now_wm
            due_now -= set(result.due_left)
    now = io.now_ms
    pairs: dict[str, list[list[Any]]] = {}
    for key in sorted(changed | due_now):
        try:
            _advance_one(key, states, blocks, key in changed, key in republish, key in due_now, now_wm, now, io, ctx,
                         result, pairs)
        except Exception as exc:
            if key in changed:  # its entries' effects are in this attempt: it goes again without them
                raise StepFailure("advance", exc, key=key) from exc
            # only due (no entry here): _advance_one left nothing of it in the result, so it is left
            # out in place, not by another attempt (one attempt per failing profile would cost a
            # record with many of them, after a rebalance say, that many steps)
            assert now_wm is not None  # a key is due only at a watermark
            result.due_failures[key] = ("advance", type(exc).__name__, _retry_later(key, now_wm, io, result))
    result.pairs = pairs
    if outbox:
        _route_outbox(outbox, ctx, result)
    return result


def check_absorbed(state: Any) -> None:
    """An absorb's state is of its declared shape (``streams/domain/state.py``, strictly) with timers
    of ``[due, cause, payload]``, else :class:`ValueError` or :class:`msgspec.ValidationError`: a
    damaged one merged would fail the profile's later steps, past this step's isolation."""
    shape = LiveState if isinstance(state, dict) and "profile" in state else ErasureMarker
    msgspec.convert(state, shape, strict=True)
    timers = state.get("rules", {}).get("timers", {})
    for timer in timers.values():
        if not (len(timer) == 3 and type(timer[0]) is int and isinstance(timer[1], str) and isinstance(timer[2], dict)):
            raise ValueError("a timer is [due, cause, payload]")


def _retry_later(key: str, now_wm: int, io: StepIO, result: RecordResult) -> int:
    """A due profile left out of this step is due again :data:`DUE_RETRY_MS` later (returned): its stored
    state, read afresh (this step changed nothing of it), is written back with that due time, so the
    due index and the state agree (a rebuilt index does not try it again at once, and the index's
    entry is moved, not doubled, when the state is next written).  A state that cannot be read is
    given the index entry alone."""
    at = now_wm + DUE_RETRY_MS
    kb = key.encode()
    try:
        stored = io.read_state(key)
        if not is_live(stored):  # pragma: no cover - only a live profile is due
            raise TypeError("not a live profile")
        stored["due"] = at
        data = orjson.dumps(due_first(stored))
    except Exception:
        result.due_changes.append((kb, at, None))
        return at
    _stage_state(kb, (data, at, None, None), result, popped=True)  # (it is left out where it was popped)
    return at


def _withdrawal(ctx: StepContext, profile_id: str, reason: str, at: int) -> tuple[str, bytes, bytes, None]:
    """The message that tells ``deliver`` to drop what it still has of this profile stamped up to ``at``."""
    value = orjson.dumps({"profile_id": profile_id, "reason": reason, "at": format_ms(at)})
    return ctx.withdrawals_topic, profile_id.encode(), value, None


def _advance_one(key: str, states: _Cache, blocks: _Cache, changed: bool, republish: bool, popped: bool,
                 now_wm: int | None, now: int, io: StepIO, ctx: StepContext, result: RecordResult,
                 pairs: dict[str, list[list[Any]]]) -> None:
    """One changed or due key: a block written back, a redirect or marker written, or a live profile
    advanced, written and published.  ``popped``: this step took the key's entry out of the due index
    (its write then has no old entry to move)."""
    if key.startswith("b:"):
        members = blocks.get(key)
        result.block_writes.append((key.encode(), _encoded(members) if members else None))
        return
    state = states.get(key)
    if state is None:
        return
    kb = key.encode()
    if not holds_someone(state):  # a redirect, an erasure marker, or nobody yet
        if changed:
            _stage_state(kb, _encode_state(state), result, popped)
        return
    if changed and not republish and idle(state, now_wm, ctx.rules.limits.parked_events, next_due(state)):
        out = Outputs()  # what advance would give: nothing is due (at live rates, an event's first pass)
    else:
        out = advance(state, now_wm, ctx.rules, now, io.neighbours_of)
    if not (out.steps or changed):
        return  # a stale index entry: nothing was due
    publish = out.changed or republish
    if publish:
        state["published"] = True  # a later merge or erase then tombstones it

    def release_parked() -> None:
        out.extend(advance(state, now_wm, ctx.rules, now, io.neighbours_of, most_parked=0))
        if out.changed:
            state["published"] = True

    encoded = _encode_state(state, release_parked, ctx.rules.limits)
    publish = out.changed or republish
    if not (publish or out.steps):
        _stage_state(kb, encoded, result, popped)
        return  # events parked, nothing folded: nothing to send (at live rates, an event's first pass)
    # what can raise comes before anything goes into the result: a profile that fails here leaves
    # nothing of itself behind (``step`` leaves a profile that was only due out in place)
    arrived = max((ev["src"][3] for ev in out.released), default=io.record_arrival_ms)
    waited = max(0.0, (now - arrived) / 1000)
    pid = state["profile"]["profile_id"].encode()
    published = _encoded(snapshot(state, out.cart)) if publish else None
    changes = [orjson.dumps(change) for change in out.segment_changes]
    scores = [orjson.dumps(score) for score in out.scores]
    triggers = [_encoded(trigger) for trigger in out.triggers]
    _stage_state(kb, encoded, result, popped)
    result.released += len(out.released)
    for product, other, weight in out.pairs:
        pairs.setdefault(product, []).append([other, weight])
    if out.withdrawn is not None:  # (before the triggers: deliver reads it apart from them, as early as it can)
        result.sends += [_withdrawal(ctx, profile_id, "consent", out.withdrawn)
                         for profile_id in withdrawal_ids(key, state)]
    if published is not None:
        result.sends.append((names.PROFILES, pid, published, None))
        result.profiles_written["updated"] += 1
        result.waits[names.PROFILES].append(waited)
    for change, value in zip(out.segment_changes, changes, strict=True):
        result.sends.append((names.SEGMENT_CHANGES, pid, value, None))
        result.segment_changes[change["segment"], change["change"]] += 1
        result.waits[names.SEGMENT_CHANGES].append(waited)
    for value in scores:
        result.sends.append((names.SCORES, pid, value, None))
    for trigger, value in zip(out.triggers, triggers, strict=True):
        result.sends.append((names.TRIGGERS, pid, value, None))
        result.triggers[trigger["type"]] += 1
        result.waits[names.TRIGGERS].append(waited)
    result.suppressed += out.suppressed
    if out.dropped:
        result.entries_dropped.update(out.dropped)
    result.released_early += out.released_early
    result.deferred += out.deferred


#: A state's write: (encoded state, its next due time, the due time the index holds, the entries
#: shrinking dropped or None).
Encoded = tuple[bytes, int | None, int | None, "Counter[str] | None"]


def _stage_state(kb: bytes, encoded: Encoded, result: RecordResult, popped: bool = False) -> None:
    """``encoded`` into the result; ``popped``: the key's old entry is already out of the due index
    (its pop took it), so nothing is deleted for it: a delete there was a RocksDB tombstone of an
    entry long gone, written for every fold."""
    data, due, previous, shrunk = encoded
    if popped:
        previous = None
    if shrunk is not None:
        result.shrunk += 1
        result.entries_dropped.update(shrunk)
    if due != previous:
        result.due_changes.append((kb, due, previous))
    result.state_writes.append((kb, data))


def _encode_state(state: State, release_parked: Callable[[], None] | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> Encoded:
    """``state`` with its next due time first (the due index reads it from there).  A live
    state over :data:`SOFT_STATE_BYTES` with parked events calls ``release_parked`` and is encoded
    again; one still past all but :data:`ABSORB_ROOM` of :data:`MAX_VALUE_BYTES` is made smaller
    (:func:`streams.domain.profile.shrink`, counted) until it is under :data:`SOFT_STATE_BYTES` or
    nothing is left to shrink.  Nothing goes
    into a result here, so a failure after it leaves none of it behind."""
    previous = state.get("due")  # what the index holds for this key
    shrunk: Counter[str] | None = None
    if not is_live(state):
        state.pop("due", None)  # a redirect or erasure marker keeps nothing but its key's fate
        data = _encoded(state)
        due = None
    else:
        # checked here, in the step's isolation: a time the due index cannot hold (a timer of a state
        # another program wrote) fails this profile, not the agent that applies the result
        state["due"] = due = indexable_due(next_due(state))
        data = orjson.dumps(due_first(state))
        if len(data) > SOFT_STATE_BYTES:  # (rare; a third of the value limit, under _shrink_past)
            if state.get("pending") and release_parked is not None:
                release_parked()
                state["due"] = due = indexable_due(next_due(state))
                data = orjson.dumps(due_first(state))
            if len(data) > _shrink_past():
                shrunk = Counter()
                while len(data) > SOFT_STATE_BYTES and shrink(state, limits, shrunk):
                    data = orjson.dumps(due_first(state))
            data = _checked(data)
    return data, due, previous, shrunk


def _fit_absorbed(target_key: str, message: dict[str, Any], data: bytes, limits: Limits,
                  result: RecordResult) -> bytes:
    """An absorb (``data``, its encoding) whose live state is made smaller as a stored one is
    (:func:`_encode_state`) while the message is past :func:`_shrink_past`: it was stored with room
    for one more event, but the record that made it leave can have parked more of its person's events
    in it (each drop counted).  Its encoding as it is then."""
    state: LiveState = message["state"]
    shrunk: Counter[str] = Counter()
    while len(data) > _shrink_past() and shrink(state, limits, shrunk):
        data = orjson.dumps([target_key, message])
    if shrunk:
        result.shrunk += 1
        result.entries_dropped.update(shrunk)
    return data


def _route_outbox(outbox: list[tuple[str, str, dict[str, Any]]], ctx: StepContext, result: RecordResult) -> None:
    """The identity messages of this record, batched per target partition onto the internal topic.
    A message that cannot be encoded fails the key that sent it."""
    routed = PartitionBatches()
    shrink_past = _shrink_past()
    for source, target_key, message in outbox:
        target = partition_for(target_key, ctx.partitions)
        try:
            data = orjson.dumps([target_key, message])
            if len(data) > shrink_past and message.get("type") == ABSORB \
                    and is_live(message.get("state")):  # (rare: the step's encode keeps states under it)
                data = _fit_absorbed(target_key, message, data, ctx.rules.limits, result)
            size = len(_checked(data)) + 1
        except Exception as exc:
            raise StepFailure("route", exc, key=source) from exc
        # its real size: an estimate let a run's forwards or absorbs make one record over the
        # producer's message limit, which it refuses (and the worker ends)
        full = routed.add(target, target_key, message, size)
        if full is not None:
            result.sends.append((ctx.events_topic, None, full, target))
    for target, batch in routed.records():
        result.sends.append((ctx.events_topic, None, batch, target))


@dataclass
class Run:
    """A fetched run of one partition's internal records, decoded, to be applied as one step."""

    entries: list[Any] = field(default_factory=list)  # every record's entries, in order
    sources: list[Source] = field(default_factory=list)  # each entry's record
    records: list[list[Any]] = field(default_factory=list)  # each record's entries (its batch marker)
    places: list[Source] = field(default_factory=list)  # each record's place
    #: records that are not one of ours (or damaged): their place, value and what decoding raised
    undecodable: list[tuple[Source, bytes | None, Exception]] = field(default_factory=list)


class StepReader(Protocol):
    """The reads of one step: ``make_io`` gives each attempt fresh readers (the due index popped once
    per watermark, the same keys for every attempt); ``give_back`` pushes what it popped back, for a
    step whose result is not applied."""

    def make_io(self) -> StepIO: ...

    def give_back(self) -> None: ...


class DuePops:
    """The due index as one step reads it: popped once per watermark (every attempt of the step gets
    the same keys), and pushed back by :meth:`give_back` when the step's result is dropped."""

    def __init__(self, pop: Callable[[int], list[tuple[int, bytes]]], push: Callable[[int, bytes], None]) -> None:
        self._pop, self._push = pop, push
        self._popped: dict[int, list[tuple[int, bytes]]] = {}

    def pop_due(self, upto: int) -> set[str]:
        popped = self._popped.get(upto)
        if popped is None:
            popped = self._popped[upto] = self._pop(upto)
        return {kb.decode() for _, kb in popped}

    def give_back(self) -> None:
        for popped in self._popped.values():
            for due, key in popped:
                self._push(due, key)
        self._popped.clear()


def decode_run(records: Iterable[tuple[Source, bytes | None]]) -> Run:
    """The records of a run as one step's entries.  Why one step rather than one per record: a
    step's own work per record (the clocks read, merged and written, the due index popped, the
    result built, applied and counted) is paid once per run; a run is applied, acked and committed
    as a whole anyway (streams.consumer, fix 3), and a record's size is the ingest's batching, which
    the step does not depend on.  An event of a later record is then judged late against the
    watermark the run started with, and every profile is advanced once, to where the run's clocks
    leave the watermark, so the run's events are folded in event-time order."""
    run = Run()
    for source, value in records:
        try:
            entries = orjson.loads(value or b"")  # a tombstone fails as an empty value does
            if not isinstance(entries, list):
                raise TypeError("an internal record is a list of [key, message] entries")
        except Exception as exc:  # nothing in it can be applied
            run.undecodable.append((source, value, exc))
            continue
        run.entries += entries
        run.sources += [source] * len(entries)
        run.records.append(entries)
        run.places.append(source)
    return run


def apply_run(run: Run, reader: Callable[[int], StepReader], ctx: StepContext, partition: int,
              sink: RecordSink, most_due: int | None = None) -> list[RecordResult]:
    """``run`` as one step, applied into ``sink``.  When that step left an entry or a profile out and
    the run holds more than one record, its result is dropped, what it popped from the due index is
    given back, and the records are stepped and applied one by one instead: what a failure leaves out
    is then no more than one record held, as when each record was its own step (a profile that
    fails in one record keeps its entries of the others; a failure that names no entry or key costs
    its own record only).  A step that left its record out whole gives back what it popped from the
    due index.  ``reader(arrived_ms)`` gives the reads of one step.  Returns the applied results; the
    due profiles a step left past ``most_due`` are in their ``due_left``, for :func:`apply_due`."""
    first = reader(run.places[0].arrived_ms)
    sources = run.sources or run.places[0]  # a run of empty records names its first record
    result = step_isolated(run.entries, first.make_io, ctx, sources, most_due)
    # a due profile left out costs no entry: only a left-out entry or key sends the run record by record
    if len(result.failures) == len(result.due_failures) or len(run.records) == 1:
        if result.left_out_whole:  # what its step popped from the due index is due as before
            first.give_back()
        _apply_logged(result, partition, sink)
        return [result]
    first.give_back()
    results = []
    for entries, place in zip(run.records, run.places, strict=True):
        own = reader(place.arrived_ms)
        one = step_isolated(entries, own.make_io, ctx, place, most_due)
        if one.left_out_whole:
            own.give_back()
        _apply_logged(one, partition, sink)
        results.append(one)
    return results


def apply_due(keys: Sequence[str], at: int, reader: StepReader, ctx: StepContext, place: Source, partition: int,
              sink: RecordSink, push: Callable[[int, bytes], None]) -> RecordResult:
    """Due profiles an earlier step of the record popped and left (its ``due_left``), advanced to the
    watermark ``at`` as one step without entries, applied into ``sink``.  A step left out whole puts
    them back in the due index, due at ``at`` (``push(due, key)``): the next record takes them."""
    result = step_isolated([], reader.make_io, ctx, place, due_keys=keys)
    if result.left_out_whole:
        for key in keys:
            push(at, key.encode())
    _apply_logged(result, partition, sink)
    return result


def _apply_logged(result: RecordResult, partition: int, sink: RecordSink) -> None:
    for line in result.warnings:
        log.warning("%s", line)
    apply_result(result, partition, sink)


def step_isolated(entries: list[Any], make_io: Callable[[], StepIO], ctx: StepContext,
                  source: Source | Sequence[Source], most_due: int | None = None,
                  due_keys: Sequence[str] | None = None) -> RecordResult:
    """:func:`step`, run again without the culprit each time it fails: a failed entry is left out,
    a failed profile with every entry of the record addressed to it, and a failure that names
    neither (the partition's clocks) the whole record.  What was left out is dead-lettered
    (``processing_error``: the stage and the exception's class, no personal data), a due profile
    left out too (no entry names it: a timer's, left out by :func:`step` itself) and due again
    :data:`DUE_RETRY_MS` later.  ``make_io`` gives each attempt fresh readers; ``source`` is the
    internal record's place, or each entry's record's (a :class:`Run`'s ``sources``, not empty).
    What it left out is in the result's ``warnings``, for whoever applies it to log.  ``most_due``
    and ``due_keys``: as :func:`step`'s."""
    warnings: list[str] = []
    skip: set[int] = set()
    skip_keys: set[str] = set()
    why: dict[int | str, tuple[str, str]] = {}  # entry index or key -> (stage, exception class)
    for _ in range(len(entries) + 2):
        try:
            result = step(entries, make_io(), ctx, frozenset(skip), frozenset(skip_keys), most_due, due_keys)
            break
        except Exception as exc:
            failure = exc if isinstance(exc, StepFailure) else StepFailure("record", exc)
            cause = type(failure.cause).__name__
            where = profile_id_for(failure.key) if failure.key is not None else "-"
            warnings.append(f"processing_error in the profile hop ({failure.stage}: {cause}, profile {where}): "
                            "left out, dead-lettered")
            log.debug("processing_error detail", exc_info=failure.cause)
            if failure.index is not None and failure.index not in skip:
                skip.add(failure.index)
                why[failure.index] = (failure.stage, cause)
            elif failure.key is not None and failure.key not in skip_keys:
                skip_keys.add(failure.key)
                why[failure.key] = (failure.stage, cause)
            else:  # nothing to single out: the whole record is left out
                result = RecordResult(left_out_whole=True)
                why.update({index: (failure.stage, cause) for index in range(len(entries)) if index not in skip})
                skip.update(range(len(entries)))
                break
    else:  # pragma: no cover - each attempt leaves out one more entry or a key with entries, or ends above
        result = RecordResult(left_out_whole=True)
        why.update({index: ("record", "StepFailure") for index in range(len(entries)) if index not in skip})
        skip.update(range(len(entries)))
    warnings += [f"processing_error in the profile hop ({stage}: {cause}, profile {profile_id_for(key)}, due): "
                 "left out, dead-lettered, tried again later" for key, (stage, cause, _) in result.due_failures.items()]
    result.warnings = warnings
    if why or result.due_failures:
        _dead_letter(entries, skip, skip_keys, why, source, result)
    return result


def _dead_letter(entries: list[Any], skip: set[int], skip_keys: set[str], why: dict[int | str, tuple[str, str]],
                 sources: Source | Sequence[Source], result: RecordResult) -> None:
    """A ``processing_error`` dead letter for every entry left out.  An input event names its input
    place (topic, partition, offset) and carries its normalized form as ``raw``; an internal message
    names the internal record and carries ``[key, message]``."""
    for index, entry in enumerate(entries):
        key, message = entry if isinstance(entry, list | tuple) and len(entry) == 2 else (None, entry)
        if not (index in skip or (key is not None and key in skip_keys)):
            continue
        source = sources if isinstance(sources, Source) else sources[index]
        stage, cause = why.get(index) or why.get(key) or ("record", "Exception")  # type: ignore[arg-type]
        result.failures.append((stage, cause))
        if key is None and isinstance(message, dict) and not {"clocks", "wall", "batch"}.isdisjoint(message):
            continue  # a clock update or a batch marker: nothing to keep
        src = message.get("src") if isinstance(message, dict) else None
        is_event = isinstance(src, list) and len(src) >= 3
        try:
            place = Source(str(src[0]), int(src[1]), int(src[2]), None, source.arrived_ms) if is_event else source  # type: ignore[index]
        except Exception:
            place, is_event = source, False
        try:
            raw = orjson.dumps(message if is_event else [key, message])  # ``reject`` keeps its first 64 KiB
        except Exception:
            raw = b"(not encodable)"
        _send_letter(place, raw, stage, cause, source.arrived_ms, result)
        if is_event:
            result.outcomes[place.topic, "dead_letter"] += 1
    # a profile left out that no entry addressed: it was due (a timer, or a parked event the
    # watermark reached), and it is tried again at ``retry_at``; its letter names the step's record
    for key, (stage, cause, retry_at) in sorted(result.due_failures.items()):
        source = sources if isinstance(sources, Source) else sources[0]
        result.failures.append((stage, cause))
        raw = orjson.dumps([key, {"due": True, "retry_at": retry_at}])
        _send_letter(source, raw, stage, cause, source.arrived_ms, result)


def _send_letter(place: Source, raw: bytes, stage: str, cause: str, arrived_ms: int, result: RecordResult) -> None:
    letter = reject(place, raw, "processing_error", f"profile hop, {stage}: {cause}", arrived_ms).record
    letter["stage"] = "profiles"
    result.sends.append((names.DEAD_LETTER, None, orjson.dumps(letter), None))
    result.letters += 1
