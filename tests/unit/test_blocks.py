"""streams.domain.resolution.blocks: person records, block keys, per-block scoring and its order independence."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import defaultdict
from typing import Any

import orjson
import pytest

from bench.eval_identity import decode_all, evaluate_set, generate, stream_profiles
from streams.domain.resolution import (
    MAX_BLOCK,
    BlockOutcome,
    Person,
    block_keys,
    blocking_keys,
    drop_member,
    identifier_keys,
    linkable_pairs,
    on_block_message,
    person_from_record,
    person_of,
    person_record,
    resolve_all,
    score,
)
from streams.ingest import Accepted, Source, decode

Record = dict[str, Any]


def identify(first: str | None = None, last: str | None = None, birthday: str | None = None,
             street: str | None = None, city: str | None = None, postcode: str | None = None,
             **ids: Any) -> dict[str, Any]:
    """An accepted identify event, decoded like the stream does it."""
    traits = {k: v for k, v in {"first_name": first, "last_name": last, "birthday": birthday, "street": street,
                                "city": city, "postcode": postcode}.items() if v is not None}
    traits.update(ids.pop("traits", {}))
    if not {"user_id", "anonymous_id", "email"} & set(ids):
        ids["anonymous_id"] = "anon"
    raw = {"event_id": "i-1", "type": "identify", "timestamp": "2026-03-01T10:00:00Z", **ids, "traits": traits}
    result = decode(orjson.dumps(raw), Source("identities", 0, 0, None, 0), 0)
    assert isinstance(result, Accepted), result
    return result.event


ANNA = dict(first="Katherine", last="Johnson", birthday="1984-03-17", street="12 Main Street", city="Boston",
            postcode="02108")


def rec(**fields: Any) -> Record:
    record = person_record(identify(**fields))
    assert record is not None
    return record


def block_of(*records: tuple[str, Record]) -> dict[str, Record]:
    members: dict[str, Record] = {}
    for key, record in records:
        members = on_block_message(members, key, record).members
    return members


def shared_block(a: Record, b: Record) -> str:
    common = sorted(set(block_keys(a)) & set(block_keys(b)))
    assert common, "the pair must meet in some block"
    return common[0]


# --- records ---------------------------------------------------------------------------------------

def test_records_round_trip_through_orjson() -> None:
    events = [
        identify(**ANNA, user_id="u-17"),
        identify(first="Bob", last="Smiht", street="Hauptstr. 5", email="Bob.Smith@Example.com",
                 traits={"gender": "male", "phone": "+1 415 555 0123"}),
        identify(last="Müller", postcode="10115", anonymous_id="anon-5"),
    ]
    for event in events:
        record = person_record(event)
        assert record is not None
        again = orjson.loads(orjson.dumps(record))
        assert again == record
        assert person_from_record(record) == person_from_record(again) == person_of(event)
        assert all(isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
                   for v in record.values())


def test_a_full_record_carries_every_person_field_and_empty_ones_are_left_out() -> None:
    event = identify(**ANNA, email="kate.j@example.com", traits={"gender": "f", "phone": "+1 415 555 0123"})
    record = person_record(event)
    assert record is not None
    assert set(record) == {f.name for f in dataclasses.fields(Person)}  # a new Person field must not be lost
    assert person_from_record(record) == person_of(event)
    sparse = rec(first="Ana", last="Lopez")
    assert sparse == {"first": "ana", "first_canon": "ana", "last": "lopez"}
    assert person_from_record({**sparse, "birthday": None, "emails": None}) == person_from_record(sparse)


def test_generated_records_round_trip(generated: list[dict[str, Any]]) -> None:
    records = 0
    for event in generated:
        record = person_record(event)
        if record is None:
            assert blocking_keys(person_of(event)) == []
            continue
        records += 1
        assert person_from_record(orjson.loads(orjson.dumps(record))) == person_of(event)
    assert records > len(generated) // 2


def test_no_record_without_a_name() -> None:
    assert person_record(identify(birthday="1984-03-17", street="12 Main Street", city="Boston",
                                  email="kate@example.com")) is None
    assert person_record(identify(first="Ana", city="Boston")) is None  # a name, but no block to meet others in
    page_view = {"type": "page_view", "user_id": "u-1", "traits": None}
    assert person_record(page_view) is None


def test_malformed_records_are_refused() -> None:
    with pytest.raises(ValueError, match="emails"):
        person_from_record({"first": "ana", "emails": "ana@example.com"})
    with pytest.raises(ValueError, match="last"):
        person_from_record({"last": 7})


def test_block_keys_are_the_prefixed_blocking_keys() -> None:
    event = identify(**ANNA, email="kate.j@example.com")
    record = person_record(event)
    assert record is not None
    keys = block_keys(record)
    assert keys == ["b:" + k for k in blocking_keys(person_of(event))]
    assert "b:n|J525|K365" in keys and "b:l|kate.j" in keys
    assert all(k.startswith("b:") for k in keys)


# --- on_block_message: decisions -------------------------------------------------------------------

def test_typo_in_the_family_name_links() -> None:
    a, b = rec(**ANNA), rec(**{**ANNA, "last": "Jonhson"})
    members = block_of(("u:u-17", a))
    out = on_block_message(members, "e:kate@example.com", b)
    s = score(person_from_record(a), person_from_record(b))
    assert out.links == [("e:kate@example.com", "u:u-17", s)] and s >= 0.9
    assert out.possible == [] and not out.skipped
    assert out.members == {"e:kate@example.com": b, "u:u-17": a}
    shared_block(a, b)


def test_swapped_first_and_last_name_links() -> None:
    a, b = rec(**ANNA), rec(**{**ANNA, "first": "Johnson", "last": "Katherine"})
    assert shared_block(a, b) == "b:b|19840317|j"
    assert "b:n|J525|K365" in set(block_keys(a)) & set(block_keys(b))
    out = on_block_message(block_of(("a:anon-5", a)), "u:u-17", b)
    assert [(x, y) for x, y, _ in out.links] == [("a:anon-5", "u:u-17")]
    assert out.links[0][2] >= 0.9


def test_same_name_other_birthday_and_city_does_not_link() -> None:
    a = rec(**ANNA)
    b = rec(**{**ANNA, "birthday": "1961-11-02", "street": "3 Elm Street", "city": "Chicago", "postcode": "60601"})
    assert shared_block(a, b) == "b:n|J525|K365"
    out = on_block_message(block_of(("u:u-1", a)), "u:u-2", b)
    assert out.links == [] and out.possible == []
    assert set(out.members) == {"u:u-1", "u:u-2"}


def test_a_borderline_pair_is_only_possible() -> None:
    c = rec(first="Marta", last="Klein", city="Berlin")
    d = rec(first="Marta", last="Klein", city="Berlin", street="4 Lindenweg")
    s = score(person_from_record(c), person_from_record(d))
    assert 0.5 <= s < 0.9
    out = on_block_message(block_of(("a:crm-9", d)), "a:crm-8", c)
    assert out.links == [] and out.possible == [("a:crm-8", "a:crm-9", s)]
    lowered = on_block_message(block_of(("a:crm-9", d)), "a:crm-8", c, merge_threshold=0.5, possible_threshold=0.3)
    assert lowered.links == [("a:crm-8", "a:crm-9", s)] and lowered.possible == []
    with pytest.raises(ValueError):
        on_block_message(None, "a:x", c, merge_threshold=0.5, possible_threshold=0.9)


def test_a_key_is_never_scored_against_itself_and_a_replacement_is_rescored() -> None:
    a = rec(**ANNA)
    first = on_block_message(None, "u:u-17", a)
    assert first == BlockOutcome({"u:u-17": a}, [], [], False)
    again = on_block_message(first.members, "u:u-17", a)
    assert again == first  # no pair with itself, the block unchanged
    b = rec(**{**ANNA, "first": "Kate"})
    with_b = on_block_message(again.members, "a:anon-5", b)
    assert len(with_b.links) == 1
    # u-17 sends a new record: its pairs are reported again, with the new record's score
    moved = rec(**{**ANNA, "city": "Chicago", "postcode": "60601", "street": "9 Oak Avenue"})
    replaced = on_block_message(with_b.members, "u:u-17", moved)
    assert replaced.members == {"a:anon-5": b, "u:u-17": moved}
    assert [(x, y) for x, y, _ in replaced.links] == [("a:anon-5", "u:u-17")]
    assert replaced.links[0][2] == score(person_from_record(b), person_from_record(moved))
    # an identical redelivery is re-scored too (at-least-once: its first outputs may be lost)
    assert on_block_message(replaced.members, "u:u-17", moved).links == replaced.links


def test_a_block_over_max_block_is_skipped() -> None:
    people = [rec(first="Ana", last="Lopez", birthday=f"1990-01-0{i}") for i in range(1, 5)]
    members = block_of(*((f"a:{i}", r) for i, r in enumerate(people[:3])))
    out = on_block_message(members, "a:new", rec(first="Ana", last="Lopez", birthday="1990-01-01"), max_block=3)
    assert out.skipped and out.links == [] and out.possible == []
    assert out.members == members  # nothing more stored
    # a member of a full block may still replace its record (the block does not grow)
    replaced = on_block_message(members, "a:2", people[0], max_block=3)
    assert not replaced.skipped and [(x, y) for x, y, _ in replaced.links] == [("a:0", "a:2")]
    # erasure makes room again
    room = drop_member(members, "a:1")
    assert set(room) == {"a:0", "a:2"}
    assert not on_block_message(room, "a:new", people[0], max_block=3).skipped
    assert len(block_of(*((f"a:{i:03d}", people[0]) for i in range(MAX_BLOCK + 5)))) == MAX_BLOCK


def test_linkable_pairs_hold_every_link_the_blocks_report_in_any_order(generated: list[dict[str, Any]]) -> None:
    """The superset ``train`` splits a history by: whatever the arrival order, and with several
    messages per key (a member's record replaced), each reported link is a pair it names, also
    through blocks that fill up (chained: every key of such a block is paired)."""
    messages = [(f"a:{i % 400:05d}", record) for i, event in enumerate(generated)
                if (record := person_record(event)) is not None]
    for max_block in (MAX_BLOCK, 4):
        parent: dict[str, str] = {}

        def find(key: str, parent: dict[str, str] = parent) -> str:
            while parent.get(key, key) != key:
                key = parent[key]
            return key

        for a, b in linkable_pairs(messages, max_block=max_block):
            parent[find(a)] = find(b)
        for seed in range(3):
            order = random.Random(seed).sample(messages, len(messages))
            blocks: dict[str, dict[str, Record]] = {}
            reported = 0
            for key, record in order:
                for block in block_keys(record):
                    out = on_block_message(blocks.get(block), key, record, max_block=max_block)
                    blocks[block] = out.members
                    for x, y, _ in out.links:
                        assert find(x) == find(y), (x, y)
                        reported += 1
            assert reported > 50
    big = [(f"a:{i}", rec(first="Ana", last="Lopez", birthday=f"19{50 + i}-01-01")) for i in range(6)]
    assert len({frozenset(pair) for pair in linkable_pairs(big, max_block=4)}) >= 5  # chained, not scored


def test_drop_member() -> None:
    a, b = rec(**ANNA), rec(first="Ana", last="Lopez")
    members = block_of(("u:1", a), ("u:2", b))
    assert drop_member(members, "u:1") == {"u:2": b}
    assert drop_member(members, "u:9") == members
    assert drop_member(None, "u:1") == {}
    assert drop_member({"u:1": a}, "u:1") == {}
    assert "u:1" in members  # the input is not modified


def test_outcomes_are_deterministic_and_inputs_untouched() -> None:
    members = block_of(("u:b", rec(**ANNA)), ("u:a", rec(**{**ANNA, "first": "Kate"})),
                       ("u:c", rec(**{**ANNA, "last": "Jonhson"})))
    snapshot = orjson.dumps(members)
    newcomer = rec(**{**ANNA, "first": "Johnson", "last": "Katherine"})
    one = on_block_message(members, "u:0", newcomer)
    two = on_block_message(dict(reversed(members.items())), "u:0", newcomer)
    assert one == two and orjson.dumps(one.members) == orjson.dumps(two.members)
    assert [(x, y) for x, y, _ in one.links] == [("u:0", "u:a"), ("u:0", "u:b"), ("u:0", "u:c")]
    assert list(one.members) == sorted(one.members)
    assert orjson.dumps(members) == snapshot


# --- order independence ----------------------------------------------------------------------------

MESSAGES: list[tuple[str, Record]] = [
    ("u:u-17", rec(**ANNA)),
    ("e:kate@example.com", rec(**{**ANNA, "last": "Jonhson"})),
    ("a:anon-5", rec(**{**ANNA, "first": "Johnson", "last": "Katherine"})),
    ("a:anon-6", rec(**{**ANNA, "first": "Kate", "postcode": None})),
    ("u:u-18", rec(**{**ANNA, "birthday": "1961-11-02", "city": "Chicago", "postcode": "60601"})),
    ("u:u-19", rec(first="Katherine", last="Johnson", city="Boston")),
    ("u:u-20", rec(first="Katherine", last="Johnson", city="Boston", street="7 Elm Street")),
]


def replay(messages: list[tuple[str, Record]], **kwargs: Any) -> tuple[dict[str, Record], set[frozenset[str]],
                                                                     set[frozenset[str]]]:
    members: dict[str, Record] | None = None
    links: set[frozenset[str]] = set()
    possible: set[frozenset[str]] = set()
    for key, record in messages:
        out = on_block_message(members, key, record, **kwargs)
        members = out.members
        links.update(frozenset((a, b)) for a, b, _ in out.links)
        possible.update(frozenset((a, b)) for a, b, _ in out.possible)
    assert members is not None
    return members, links, possible


def test_links_do_not_depend_on_arrival_order() -> None:
    members, links, possible = replay(MESSAGES)
    persons = {k: person_from_record(r) for k, r in MESSAGES}
    everything = {frozenset(p): score(persons[p[0]], persons[p[1]]) for p in itertools.combinations(persons, 2)}
    assert links == {p for p, s in everything.items() if s >= 0.9} and len(links) >= 4
    assert possible == {p for p, s in everything.items() if 0.5 <= s < 0.9} and possible
    stored = orjson.dumps(members)
    for order in itertools.permutations(MESSAGES[:5]):  # every order of five, random orders of all seven
        assert replay(list(order))[1] == {p for p in links if p <= {k for k, _ in MESSAGES[:5]}}
    rng = random.Random(7)
    for _ in range(200):
        shuffled = MESSAGES[:]
        rng.shuffle(shuffled)
        again = replay(shuffled)
        assert again[1:] == (links, possible)
        assert orjson.dumps(again[0]) == stored  # the same table value, byte for byte


def test_after_replacements_every_pair_of_current_records_was_scored() -> None:
    newer = [("u:u-17", rec(**{**ANNA, "first": "Kathy", "city": "Chicago"})),
             ("u:u-19", rec(first="Katherine", last="Johnson", birthday="1984-03-17"))]
    rng = random.Random(3)
    for _ in range(100):
        messages = MESSAGES + newer
        rng.shuffle(messages)
        # a key's newer record must arrive after its older one for it to be the newer
        for key, record in newer:
            messages.remove((key, record))
            messages.append((key, record))
        members, links, _ = replay(messages)
        current = {k: person_from_record(r) for k, r in members.items()}
        assert current["u:u-17"] == person_from_record(newer[0][1])
        final = {frozenset((a, b)) for a, b in itertools.combinations(current, 2)
                 if score(current[a], current[b]) >= 0.9}
        assert final <= links


@pytest.fixture(scope="module")
def generated() -> list[dict[str, Any]]:
    raw, _ = generate(300, 5)
    return decode_all(raw)


def test_routing_by_block_ends_where_the_batch_resolver_does(generated: list[dict[str, Any]]) -> None:
    """Every record routed to its blocks, in a random order: links plus exact identifiers give the batch clusters."""
    events = generated
    keys = [f"a:{i:05d}" for i in range(len(events))]  # one profile per event, so nothing is replaced
    routed: list[tuple[str, str, Record]] = []
    for k, event in zip(keys, events, strict=True):
        if (record := person_record(event)) is not None:
            routed.extend((block, k, record) for block in block_keys(record))
    rng = random.Random(11)
    rng.shuffle(routed)
    table: dict[str, dict[str, Record]] = {}
    links: set[tuple[str, str]] = set()
    skipped = 0
    for block, k, record in routed:
        out = on_block_message(table.get(block), k, record)
        table[block] = out.members
        skipped += out.skipped
        links.update((a, b) for a, b, _ in out.links)
    assert skipped == 0 and max(len(m) for m in table.values()) <= MAX_BLOCK
    # clusters: connected components of fuzzy links and shared identifier keys
    parent = {k: k for k in keys}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, str] = {}
    pairs = list(links)
    for k, event in zip(keys, events, strict=True):
        pairs.extend((owner.setdefault(ident, k), k) for ident in identifier_keys(event))
    for a, b in pairs:
        parent[find(a)] = find(b)
    streamed: dict[str, set[int]] = defaultdict(set)
    batch: dict[str, set[int]] = defaultdict(set)
    for i, (k, pid) in enumerate(zip(keys, resolve_all(events), strict=True)):
        streamed[find(k)].add(i)
        batch[pid].add(i)
    assert sorted(map(sorted, streamed.values())) == sorted(map(sorted, batch.values()))
    assert len(links) > 50


def test_the_evaluation_measures_what_the_worker_decides_beside_the_batch() -> None:
    """The bridge of docs/identity.md: "J Smith" at the address of John and of Jane Smith.  The batch
    resolver joins it to one of them; the worker's blocks, which see pairs and not clusters, chain all
    three into one profile.  ``make eval-identity`` shows both (``mailpulse stream``)."""
    address = {"street": "12 Oak Road", "city": "Berlin", "postcode": "10115"}
    events = [{"type": "identify", "anonymous_id": f"x-{n}", "traits": {**traits, **address}} for n, traits in
              enumerate([{"first_name": "John", "last_name": "Smith", "birthday": "1980-05-04"},
                         {"first_name": "Jane", "last_name": "Smith", "birthday": "1982-07-09"},
                         {"first_name": "J", "last_name": "Smith"}])]
    assert len(set(resolve_all(events))) == 2
    assert len(set(stream_profiles(events))) == 1
    rows = {row.method: row.scores for row in evaluate_set("bridge", events, [0, 1, 1], None)}  # J is Jane
    assert rows["mailpulse"].precision == 1.0 and rows["mailpulse stream"].precision == pytest.approx(1 / 3)


@pytest.mark.parametrize("letter", ["\ufdfa", "\U00020000", "\ufb03"])  # 18 letters under NFKD; 4 bytes; FFI
def test_a_full_block_of_the_longest_records_stays_under_the_value_limit(letter: str) -> None:
    """Every text field at its longest, of letters that folding makes longer or that take 4 bytes, the
    longest identifiers beside them: a block of ``MAX_BLOCK`` such people is still one storable value
    (before, the 12th such person made the block too large to write: it and every later member were
    dead-lettered)."""
    from schemas.timeparse import MAX_EPOCH_MS
    from streams.record_step import MAX_VALUE_BYTES

    members: dict[str, Record] = {}
    for n in range(MAX_BLOCK + 5):
        text = letter * 508 + f"{n:04d}"
        local = "x" * 60 + f"{n:04d}"
        email = f"{local}@{'d' * 60}.{'e' * 60}.{'f' * 60}.com"
        record = rec(first=text, last=text, birthday="1980-01-02", street="1 " + text[2:], city=text,
                     postcode="AB" + text[2:], user_id=letter * 508 + f"{n:04d}", email=email,
                     traits={"email": "y" + email})
        outcome = on_block_message(members, f"u:{letter * 508}{n:04d}", record, at=MAX_EPOCH_MS)  # (its time too)
        members = outcome.members
        assert len(orjson.dumps(members)) <= MAX_VALUE_BYTES, n
    assert len(members) == MAX_BLOCK


def test_a_record_keeps_the_time_of_its_event_and_a_replacement_its_own() -> None:
    """``at`` is stored beside the person fields (no person field: the score is the same) and replaced
    with the record; a record sent without it (an older worker's) stores none."""
    a = b = rec(first="Anna", last="Smith", birthday="1980-01-02")
    members = on_block_message(None, "e:a@x.example", a, at=1_000).members
    assert members["e:a@x.example"] == {**a, "at": 1_000} and person_from_record(members["e:a@x.example"]) == \
        person_from_record(a)
    outcome = on_block_message(members, "e:b@x.example", b)
    assert "at" not in outcome.members["e:b@x.example"] and outcome.links
    assert on_block_message(outcome.members, "e:a@x.example", a, at=2_000).members["e:a@x.example"]["at"] == 2_000
