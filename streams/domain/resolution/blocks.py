"""Fuzzy matching one block at a time, for the stream: state in a table keyed by blocking key.

The batch :func:`~streams.domain.resolution.resolver.resolve_batch` and the in-process
:class:`~streams.domain.resolution.resolver.Resolver` hold every block in memory. The stream cannot: its state
lives in a partitioned table, so the fuzzy part is split by block.

* An ``identify`` event with traits reaches its profile (key ``u:...``, ``e:...`` or ``a:...``). The
  profile side turns it into a :func:`person_record` (plain JSON-able data) and sends one message
  ``(profile key, record)`` per :func:`block_keys` entry, keyed by that block key, so each message lands
  on the partition that owns the block.
* The block's owner calls :func:`on_block_message` with the table value of the block (profile key ->
  record): the newcomer is stored and scored against every other member. Links (``>= merge_threshold``)
  and possible matches go back to the caller's link protocol; :func:`drop_member` serves erasure.

Every pair of members of a block is scored exactly when the later of the two arrives, against the other's
record as stored at that moment. So for messages with distinct profile keys the union of reported links
does not depend on arrival order, as long as the block never holds more than ``max_block`` members (then
it equals the links the batch resolver finds in that block; the batch also keeps two clusters apart when
a link between them is unsound, which a block cannot see). Pure functions; no state of their own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.domain.resolution.resolver import MAX_BLOCK, MERGE_THRESHOLD, POSSIBLE_THRESHOLD, blocking_keys
from streams.domain.resolution.scoring import Person, person_of, score

BLOCK_PREFIX = "b:"

# Record field names: the string fields and the set fields of :class:`Person` (stored as sorted lists).
_STR_FIELDS = ("first", "first_canon", "last", "birthday", "postcode", "city", "house", "street", "gender")
_SET_FIELDS = ("emails", "phones", "locals")


def _record_of(person: Person) -> dict[str, Any]:
    """Empty fields are left out: a block holds up to ``max_block`` records and most traits are missing."""
    record: dict[str, Any] = {}
    for name in _STR_FIELDS:
        if value := getattr(person, name):
            record[name] = value
    for name in _SET_FIELDS:
        if values := getattr(person, name):
            record[name] = sorted(values)
    return record


def person_record(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The table/message form of :func:`person_of`, or ``None`` when it would fall in no block.

    ``None`` exactly when :func:`blocking_keys` is empty (no name): fuzzy matching never sees such a
    record, so nothing needs to be sent. String fields are ``str``, the e-mail/phone/local-part sets
    sorted lists of ``str``; empty fields are omitted. ``person_from_record(person_record(e)) == person_of(e)``.
    """
    person = person_of(event if isinstance(event, dict) else dict(event))
    if not blocking_keys(person):
        return None
    return _record_of(person)


def _str_field(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"person record field {name!r}: expected a string, got {type(value).__name__}")
    return value


def _set_field(record: Mapping[str, Any], name: str) -> frozenset[str]:
    value = record.get(name)
    if value is None:
        return frozenset()
    # A bare string would otherwise become a set of its characters.
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"person record field {name!r}: expected a list of strings, got {type(value).__name__}")
    items = frozenset(value)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"person record field {name!r}: expected a list of strings")
    return items


def person_from_record(record: Mapping[str, Any]) -> Person:
    """The :class:`Person` of a record (missing or ``None`` fields are empty); unknown keys are ignored."""
    first, first_canon, last, birthday, postcode, city, house, street, gender = (
        _str_field(record, name) for name in _STR_FIELDS)
    emails, phones, locals_ = (_set_field(record, name) for name in _SET_FIELDS)
    return Person(first=first, first_canon=first_canon, last=last, birthday=birthday, postcode=postcode, city=city,
                  house=house, street=street, gender=gender, emails=emails, phones=phones, locals=locals_)


def block_keys(record: Mapping[str, Any]) -> list[str]:
    """The table/routing keys of the record's blocks: its :func:`blocking_keys`, each prefixed ``b:``.

    The prefix keeps block keys apart from profile keys (``u:``/``e:``/``a:``) in shared topics and logs.
    """
    return [BLOCK_PREFIX + key for key in blocking_keys(person_from_record(record))]


@dataclass(frozen=True, slots=True)
class BlockOutcome:
    """What one block message did: the block's new table value and the pairs it found."""

    members: dict[str, dict[str, Any]]          # profile key -> person record, sorted by key
    links: list[tuple[str, str, float]] = field(default_factory=list)     # (key_a, key_b, score), key_a < key_b
    possible: list[tuple[str, str, float]] = field(default_factory=list)  # in [possible, merge) thresholds
    skipped: bool = False                       # over max_block: nothing stored or scored (the caller counts it)


def _sorted_copy(members: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sorted by key, so the stored value (and its bytes) does not depend on arrival order."""
    return {key: dict(members[key]) for key in sorted(members)}


def on_block_message(members: Mapping[str, Mapping[str, Any]] | None, key: str, record: Mapping[str, Any],
                     merge_threshold: float = MERGE_THRESHOLD, possible_threshold: float = POSSIBLE_THRESHOLD,
                     max_block: int = MAX_BLOCK, at: int | None = None) -> BlockOutcome:
    """Store ``key``'s record in the block and score it against every other member (never against itself).

    ``members`` is the block's table value (``None`` for a new block). Each pair is reported at most once
    per message, as ``(smaller key, larger key, score)``, pairs sorted; the same members and message give
    the same outcome.

    A key already in the block has its record replaced and is re-scored against all others, so its pairs
    are reported again (with the new record's scores) -- the caller's link protocol must be idempotent.
    An identical redelivery is re-scored on purpose: under at-least-once delivery the first attempt's
    outputs may be lost while its table write survived. After any sequence of messages, every pair of
    current members has been scored with their current records; a pair linked by an older record of a key
    is not withdrawn here.

    When the block already holds ``max_block`` other members it has outgrown blocking (a very common
    name in a big postcode, say): nothing is stored or scored and ``skipped`` is set. Pairs scored while
    it was smaller stay reported, so past the cap the result can depend on arrival order (as with
    :class:`~streams.domain.resolution.resolver.Resolver`); the members are found through their other blocks.

    ``at``, the time of the event the record is from, is stored with it (field ``at``; no person field):
    a match on the record of a person erased since tells that person's key it was made on their data.
    """
    if not 0.0 < possible_threshold <= merge_threshold <= 1.0:
        raise ValueError("need 0 < possible_threshold <= merge_threshold <= 1")
    current = members or {}
    others = sorted(k for k in current if k != key)
    if len(others) >= max_block:
        return BlockOutcome(_sorted_copy(current), skipped=True)
    person = person_from_record(record)
    links: list[tuple[str, str, float]] = []
    possible: list[tuple[str, str, float]] = []
    for other in others:
        s = score(person, person_from_record(current[other]))
        if s >= merge_threshold:
            found = links
        elif s >= possible_threshold:
            found = possible
        else:
            continue
        found.append((key, other, s) if key < other else (other, key, s))
    stored = {k: current[k] for k in others}
    stored[key] = _record_of(person) | ({} if at is None else {"at": at})  # canonical, whatever the message's shape
    return BlockOutcome(_sorted_copy(stored), sorted(links), sorted(possible))


def linkable_pairs(messages: Iterable[tuple[str, Mapping[str, Any]]], merge_threshold: float = MERGE_THRESHOLD,
                   max_block: int = MAX_BLOCK,
                   joined: Callable[[str, str], bool] = lambda a, b: False) -> Iterator[tuple[str, str]]:
    """Pairs of keys that the blocks could link, from every block message of a history as (key, person
    record), in any order: a superset of the links :func:`on_block_message` reports for them in any
    arrival order, where a message's member key may be any key of that person.

    Every pair of distinct messages of a block with two keys is scored (the stream scores a newcomer
    only against the records stored then, a subset), except pairs the caller already ``joined`` (a
    union-find that takes each pair as it comes: the same person's keys, linked earlier).  A block
    that gets more than ``max_block`` messages may fill up, and then what it scores depends on
    arrival order: all its keys are paired (chained).  For splitting a history into shards that fold
    independently (``train``).
    """
    # a key's repeated record is scored once, but every message counts towards filling its blocks:
    # each can add a member (sent under the person's root of that moment)
    distinct: dict[tuple[str, str], tuple[str, Person, list[str]]] = {}
    sent: dict[str, int] = {}  # block -> messages
    for key, record in messages:
        mark = (key, repr(sorted(record.items())))
        if mark not in distinct:
            person = person_from_record(record)
            distinct[mark] = (key, person, blocking_keys(person))
        for block in distinct[mark][2]:
            sent[block] = sent.get(block, 0) + 1
    members: dict[str, list[tuple[str, Person]]] = {}
    for key, person, blocks in distinct.values():
        for block in blocks:
            members.setdefault(block, []).append((key, person))
    for block in sorted(members):
        people = members[block]
        keys = sorted({key for key, _ in people})
        if len(keys) < 2:
            continue
        if sent[block] > max_block:
            yield from itertools.pairwise(keys)
            continue
        for i, (key_a, person_a) in enumerate(people):
            for key_b, person_b in people[i + 1:]:
                if key_a != key_b and not joined(key_a, key_b) and score(person_a, person_b) >= merge_threshold:
                    yield key_a, key_b


def drop_member(members: Mapping[str, Mapping[str, Any]] | None, key: str) -> dict[str, dict[str, Any]]:
    """The block without ``key`` (erasure); ``{}`` means the caller can delete the block's table entry.

    Links already reported are the caller's to undo. A block that was full accepts newcomers again.
    """
    return _sorted_copy({k: v for k, v in (members or {}).items() if k != key})
