"""streams.domain.resolution: normalization, pair scores, exact and fuzzy merges, determinism, `mailpulse resolve`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.eval_identity import decode_all, generate, link_scores, pairwise
from streams.cli import main
from streams.domain.identity import profile_id_for, profile_key
from streams.domain.resolution import (
    Resolver,
    identifier_keys,
    person_of,
    representative,
    resolve_all,
    resolve_batch,
    score,
)
from streams.domain.resolution import normalize as norm
from streams.ingest import Accepted, Source, decode

_n = 0


def identify(first: str | None = None, last: str | None = None, birthday: str | None = None,
             street: str | None = None, city: str | None = None, postcode: str | None = None,
             **ids: Any) -> dict[str, Any]:
    """An accepted identify event, decoded like the stream does it."""
    global _n
    _n += 1
    traits = {k: v for k, v in {"first_name": first, "last_name": last, "birthday": birthday, "street": street,
                                "city": city, "postcode": postcode}.items() if v is not None}
    if "email" in ids and "traits_email" not in ids:
        traits["email"] = ids.pop("email")
    ids.pop("traits_email", None)
    if not {"user_id", "anonymous_id", "email"} & set(ids) and "email" not in traits:
        ids["anonymous_id"] = f"anon-{_n}"
    raw = {"event_id": f"i-{_n}", "type": "identify", "timestamp": "2026-03-01T10:00:00Z", **ids, "traits": traits}
    result = decode(orjson.dumps(raw), Source("identities", 0, _n, None, 0), 0)
    assert isinstance(result, Accepted), result
    return result.event


ANNA = dict(first="Katherine", last="Johnson", birthday="1984-03-17", street="12 Main Street", city="Boston",
            postcode="02108")


def pair(a: dict[str, Any], b: dict[str, Any]) -> float:
    return score(person_of(a), person_of(b))


# --- normalize ---------------------------------------------------------------------------------------

def test_names_are_folded_and_nicknames_canonical() -> None:
    assert norm.fold("  Müller-Lüdenscheidt ") == "muller ludenscheidt"
    assert norm.name("Mc Donald") == norm.name("McDonald") == "mcdonald"
    assert norm.given_name("Bob") == norm.given_name("ROBERT") == "robert"
    assert norm.given_name("Liz") == "elizabeth" and norm.given_name("Anna") == "anna"


def _identify(n: int, **traits: str) -> dict[str, Any]:
    return {"type": "identify", "anonymous_id": f"x-{n}", "traits": traits}


def test_names_in_other_scripts_are_names_not_missing() -> None:
    assert norm.fold("Иван Петров") == "иван петров" and norm.fold("Γιάννης") == "γιαννης"
    assert norm.fold("王 伟") == "王 伟" and norm.fold("Đorđe O\u02bcBrien") == "ore obrien"  # Latin as before
    assert norm.phonetic("петров") == "ПЕТР" and norm.phonetic("smith") == "S530"
    ivan = {"first_name": "Иван", "last_name": "Петров", "birthday": "1985-03-14", "city": "Москва",
            "street": "ул. Ленина 5", "postcode": "101000"}
    events = [_identify(1, **ivan), _identify(2, **{**ivan, "first_name": "Иавн"}),
              _identify(3, **{**ivan, "street": "пр. Мира 12", "postcode": "129090"}),
              _identify(4, **{**ivan, "first_name": "Ольга", "last_name": "Петрова", "birthday": "1987-11-02"}),
              _identify(5, **{**ivan, "birthday": "1962-07-30", "city": "Казань", "street": "", "postcode": "420000"}),
              _identify(6, first_name="王", last_name="伟", birthday="1990-01-05"),
              _identify(7, first_name="王", last_name="伟", birthday="1991-06-05")]
    ids = resolve_all(events)
    assert ids[0] == ids[1] == ids[2]  # a typo, a move: one person, as in Latin letters
    assert len({ids[0], *ids[3:]}) == 5  # a household member, a namesake elsewhere, two namesakes: apart


def test_the_vowel_signs_of_other_scripts_are_letters_not_accents() -> None:
    """Dropped as accents, the vowel signs of Devanagari (or the kana voicing marks) made different names
    one: मधु (Madhu) and मेधा (Medha) of one household were one person, Madhu and Medha two."""
    assert norm.fold("मधु") != norm.fold("मेधा") and norm.fold("राम") != norm.fold("रमा")
    assert norm.fold("ガク") != norm.fold("カク")
    # accents go, as Latin's do: Greek's, Cyrillic's, Arabic's harakat, Hebrew's points, the nukta
    assert norm.fold("Γιάννης") == "γιαννης" and norm.fold("Ёлкин") == "елкин"
    assert norm.fold("مُحَمَّد") == norm.fold("محمد") and norm.fold("שָׁלוֹם") == norm.fold("שלום")
    assert norm.fold("ज़ोया") == norm.fold("जोया")
    home = {"street": "12 MG Road", "city": "Pune", "postcode": "411001"}
    for madhu, medha, sharma in (("Madhu", "Medha", "Sharma"), ("मधु", "मेधा", "शर्मा")):
        events = [_identify(1, first_name=madhu, last_name=sharma, **home),
                  _identify(2, first_name=medha, last_name=sharma, **home)]
        assert len(set(resolve_all(events))) == 2, madhu


def test_streets_postcodes_and_phonetic_keys() -> None:
    assert norm.street("12a Main St.") == ("12a", "main street")
    assert norm.street("Hauptstr. 5") == norm.street("Hauptstraße 5") == ("5", "hauptstrasse")
    assert norm.street("7 Sunset Blvd") == ("7", "sunset boulevard")
    assert norm.postcode("sw1a 1aa") == "SW1A1AA"
    assert norm.phonetic("robert") == norm.phonetic("rupert") == "R163"
    assert norm.phonetic("smith") == norm.phonetic("smyth") == norm.phonetic("smiht") == "S530"
    assert norm.phonetic("muller") == norm.phonetic(norm.name("Müller"))
    assert norm.phonetic("") == ""


# --- scoring ---------------------------------------------------------------------------------------

def test_typical_duplicates_score_above_the_merge_threshold() -> None:
    base = identify(**ANNA)
    typo = identify(**{**ANNA, "last": "Jonhson"})
    swapped = identify(**{**ANNA, "first": "Johnson", "last": "Katherine"})
    nickname = identify(**{**ANNA, "first": "Kate", "street": "12 Main St"})
    shouting = identify(**{**ANNA, "first": "KATHERINE", "last": "JOHNSON", "postcode": None})
    for other in (typo, swapped, nickname, shouting):
        assert pair(base, other) >= 0.9, other["traits"]
    assert pair(base, identify(**ANNA)) > 0.9999


def test_score_is_symmetric_and_in_range() -> None:
    a = identify(**ANNA)
    b = identify(**{**ANNA, "first": "Johnson", "last": "Katharine", "birthday": "1984-03-18"})
    assert pair(a, b) == pair(b, a)
    assert 0.0 <= pair(a, b) <= 1.0


def test_same_name_other_birthday_and_city_is_another_person() -> None:
    other = identify(**{**ANNA, "birthday": "1961-11-02", "street": "3 Elm Street", "city": "Chicago",
                        "postcode": "60601"})
    assert pair(identify(**ANNA), other) < 0.5


def test_household_members_do_not_match() -> None:
    spouse = identify(**{**ANNA, "first": "Richard", "birthday": "1979-06-30"})
    assert pair(identify(**ANNA), spouse) < 0.5
    # family name and address alone identify a household, not a person: never more than possible
    no_first = identify(last="Johnson", street="12 Main Street", city="Boston", postcode="02108")
    assert 0.5 <= pair(identify(**{**ANNA, "birthday": None}), no_first) < 0.9


def test_birthday_swaps_and_typos_count_for_other_birthdays_against() -> None:
    a = identify(**ANNA)
    early = identify(**{**ANNA, "birthday": "1984-03-07"})
    assert pair(early, identify(**{**ANNA, "birthday": "1984-07-03", "first": "Kathrine"})) >= 0.9
    moved = dict(street="9 Oak Avenue", city="Chicago", postcode="60601")
    assert pair(identify(**{**ANNA, **moved}), identify(**{**ANNA, "birthday": "1984-03-18"})) < 0.9
    assert pair(identify(**{**ANNA, **moved}), a) >= 0.9  # moved, same name and birthday


def test_equal_email_or_phone_is_decisive() -> None:
    a = identify(first="Ana", last="Lopez", email="ana@example.com")
    b = identify(first="Peter", last="Parker", email="ANA@example.com")
    assert pair(a, b) == 1.0
    c = identify(first="Ana", last="Lopez", phone="+14155550123")
    d = identify(first="Zed", last="Zulu", phone="(415) 555-0123")
    assert pair(c, d) == 1.0


# --- resolver --------------------------------------------------------------------------------------

def test_exact_identifiers_merge_transitively_and_the_smallest_user_id_survives() -> None:
    events = [
        identify(first="Ana", user_id="u-9", anonymous_id="a-1"),
        identify(first="Ana", anonymous_id="a-1", email="ana@example.com"),
        identify(first="Ana", user_id="u-10", email="ana@example.com"),
        identify(first="Bo", user_id="u-11"),
    ]
    ids = resolve_all(events)
    assert ids[0] == ids[1] == ids[2] == profile_id_for("u:u-10")  # "u:u-10" < "u:u-9"
    assert ids[3] == profile_id_for("u:u-11")


def test_a_record_alone_keeps_the_profile_id_of_the_foundation_keying() -> None:
    for event in (identify(first="Ana", user_id="u-1", anonymous_id="a-1"),
                  identify(first="Ana", anonymous_id="a-2", email="ana@example.com"),
                  identify(first="Ana", anonymous_id="a-3")):
        assert resolve_all([event]) == [profile_id_for(profile_key(event))]
    assert representative(["ph:+14155550123", "a:z", "e:b@x.org", "e:a@x.org"]) == "e:a@x.org"
    assert identifier_keys(identify(first="A", user_id="u-1", phone="+1 415 555 0123")) == [
        "ph:+14155550123", "u:u-1"]


def test_fuzzy_duplicates_merge_and_a_borderline_pair_is_only_a_possible_match() -> None:
    a = identify(**ANNA, user_id="u-1")
    b = identify(**{**ANNA, "last": "Jonhson", "first": "Kate"}, anonymous_id="crm-7")
    c = identify(first="Marta", last="Klein", city="Berlin", anonymous_id="crm-8")
    d = identify(first="Marta", last="Klein", city="Berlin", street="4 Lindenweg",
                 anonymous_id="crm-9")
    result = resolve_batch([a, b, c, d])
    ids = result.profile_ids
    assert ids[0] == ids[1] == profile_id_for("u:u-1")
    assert ids[2] != ids[3]
    s = pair(c, d)
    assert 0.5 <= s < 0.9
    assert result.possible_matches[ids[2]] == [(ids[3], round(s, 4))]
    assert result.possible_matches[ids[3]] == [(ids[2], round(s, 4))]
    assert ids[0] not in result.possible_matches


def test_thresholds_are_parameters() -> None:
    c = identify(first="Marta", last="Klein", city="Berlin")
    d = identify(first="Marta", last="Klein", city="Berlin", street="4 Lindenweg")
    assert len(set(resolve_all([c, d]))) == 2
    assert len(set(resolve_all([c, d], merge_threshold=0.5, possible_threshold=0.3))) == 1
    with pytest.raises(ValueError):
        Resolver(merge_threshold=0.5, possible_threshold=0.9)


def test_incremental_resolver_reports_merges_and_possible_matches() -> None:
    r = Resolver()
    first = r.add(identify(**ANNA, anonymous_id="a-1"))
    assert first.profile_id == profile_id_for("a:a-1") and first.merged_with == []
    second = r.add(identify(**{**ANNA, "first": "Kate"}, user_id="u-5"))
    assert second.profile_id == profile_id_for("u:u-5")
    assert second.merged_with == [first.profile_id] and second.fuzzy_merges == 1
    third = r.add(identify(first="Zoe", anonymous_id="a-1"))  # exact: the anonymous id
    assert third.profile_id == second.profile_id and third.merged_with == []
    c = r.add(identify(first="Marta", last="Klein", city="Berlin", anonymous_id="a-7"))
    d = r.add(identify(first="Marta", last="Klein", city="Berlin", street="4 Lindenweg",
                       anonymous_id="a-8"))
    assert d.profile_id != c.profile_id and [pid for pid, _ in d.possible_matches] == [c.profile_id]
    assert [pid for pid, _ in r.possible_matches(3)] == [d.profile_id]
    assert r.profile_id(0) == second.profile_id and len(r) == 5


@pytest.fixture(scope="module")
def generated() -> tuple[list[dict[str, Any]], list[int]]:
    raw, truth = generate(400, 3)
    return decode_all(raw), truth


def test_resolve_all_is_order_independent(generated: tuple[list[dict[str, Any]], list[int]]) -> None:
    events, _ = generated
    ids = resolve_all(events)
    for seed in (1, 2):
        order = list(range(len(events)))
        random.Random(seed).shuffle(order)
        again = resolve_all([events[i] for i in order])
        assert [ids[i] for i in order] == again
    assert resolve_batch(events).possible_matches == resolve_batch(events[::-1]).possible_matches


def test_incremental_ends_where_batch_does(generated: tuple[list[dict[str, Any]], list[int]]) -> None:
    events, _ = generated
    r = Resolver()
    for event in reversed(events):
        r.add(event)
    incremental = [r.profile_id(len(events) - 1 - k) for k in range(len(events))]
    assert incremental == resolve_all(events)


def test_quality_on_generated_records_beats_the_targets(generated: tuple[list[dict[str, Any]], list[int]]) -> None:
    events, truth = generated
    s = pairwise(resolve_all(events), truth)
    assert s.precision >= 0.98 and s.f1 >= 0.95


def test_a_baselines_links_are_scored_as_the_profiles_they_make() -> None:
    # links a-b and b-c put a, b and c in one profile: three pairs, all true here, all wrong but one there
    assert link_scores([(0, 1), (1, 2)], [7, 7, 7]) == pairwise(["p", "p", "p"], [7, 7, 7])
    assert link_scores([(0, 1), (1, 2)], [7, 7, 7]).recall == 1.0
    assert link_scores([(0, 1), (1, 2)], [7, 7, 8]).precision == pytest.approx(1 / 3)
    assert link_scores([], [7, 7]).recall == 0.0


# --- mailpulse resolve -----------------------------------------------------------------------------

def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _lines(*events: dict[str, Any]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


RAW = [
    {"event_id": "1", "type": "identify", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-1",
     "traits": {"first_name": "Robert", "last_name": "Smith", "birthday": "1970-05-04", "postcode": "10115",
                "city": "Berlin", "street": "Hauptstraße 5"}},
    {"event_id": "2", "type": "identify", "timestamp": 1772359200000, "email": "Bob.Smith@Example.com",
     "traits": {"first_name": "Bob", "last_name": "Smiht", "birthday": "1970-05-04", "postcode": "10115",
                "city": "Berlin", "street": "Hauptstr. 5"}},
    {"event_id": "3", "type": "identify", "timestamp": "2026-03-01T10:02:00Z", "user_id": "u-2",
     "email": "bob.smith@example.com"},
    {"event_id": "4", "type": "identify", "timestamp": "2026-03-01T10:03:00Z", "user_id": "u-3",
     "traits": {"first_name": "Ana", "last_name": "Lopez", "birthday": "1991-12-01"}},
]


def test_resolve_command_writes_one_line_per_event(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(_lines(*RAW[:2]) + "\n" + _lines(*RAW[2:]))  # a blank line is skipped
    code, _, err = run(capsys, "resolve", "--input", str(src), "--out", str(out))
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user_id"] for r in rows] == ["u-1", None, "u-2", "u-3"]
    assert rows[0]["profile_id"] == rows[1]["profile_id"] == rows[2]["profile_id"] == profile_id_for("u:u-1")
    assert rows[3]["profile_id"] == profile_id_for("u:u-3")
    assert "resolved 4 identify events to 2 profiles" in err


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("{not json", "in.jsonl:2: not JSON"),
        (json.dumps({"event_id": "x", "type": "page_view", "timestamp": 1772359200000, "user_id": "u"}),
         "in.jsonl:2: a page_view event, not an identify event"),
        (json.dumps({"event_id": "x", "type": "identify", "timestamp": 1772359200000}), "in.jsonl:2: "),
        (json.dumps({"event_id": "x", "type": "identify", "timestamp": 1772359200000, "email": "nope"}),
         "in.jsonl:2: invalid_identifier at email"),
    ],
)
def test_resolve_command_stops_at_a_bad_line_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                           bad: str, fragment: str) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(_lines(RAW[0]) + bad + "\n" + _lines(RAW[1]))
    code, _, err = run(capsys, "resolve", "--input", str(src), "--out", str(out))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("mailpulse: error: ") and fragment in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("model", ["fit", "shipped"])
def test_resolve_command_fits_by_default_and_its_model_can_be_saved_and_used_again(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, model: str) -> None:
    src, out, saved = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "model.json"
    src.write_text(_lines(*RAW))
    code, _, err = run(capsys, "resolve", "--input", str(src), "--out", str(out), "--model", model,
                       "--save-model", str(saved))
    assert code == 0, err
    first = out.read_text()
    assert "model shipped" in err  # four records: too few to fit on, so --model fit uses the shipped one too
    code, _, err = run(capsys, "resolve", "--input", str(src), "--out", str(out), "--model", str(saved))
    assert code == 0, err
    assert out.read_text() == first  # the saved model decides the same


def test_resolve_command_fits_on_enough_records(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    first = ["Anna", "Bernd", "Clara", "Dieter", "Elif", "Frank", "Greta", "Hakan", "Ines", "Jonas"]
    last = ["Meyer", "Schulz", "Yilmaz", "Novak", "Berger", "Krause", "Vogel", "Lang", "Roth", "Kaya"]
    lines = []
    for n in range(300):  # 300 people, two records each: the second with the family name mistyped
        person = {"first_name": first[n % 10], "birthday": f"19{50 + n % 40}-0{1 + n % 9}-1{n % 10}",
                  "postcode": f"{10000 + n * 7}", "city": "Berlin", "street": f"Hauptstr. {n}"}
        for k, family in enumerate((last[n // 10 % 10], last[n // 10 % 10][:-1] + "x")):
            lines.append({"event_id": f"{n}-{k}", "type": "identify", "timestamp": 1772359200000 + n,
                          "user_id": f"u-{n}-{k}", "traits": {**person, "last_name": family}})
    src, out, saved = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "model.json"
    src.write_text(_lines(*lines))
    code, _, err = run(capsys, "resolve", "--input", str(src), "--out", str(out), "--save-model", str(saved))
    assert code == 0, err
    assert "model fitted on the input" in err
    assert json.loads(saved.read_text())["info"]["fitted_on"] == "the records resolved"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["profile_id"] for r in rows}) <= 330  # most of the 300 pairs found


def test_resolve_and_run_refuse_an_unusable_model_file_with_one_line(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src, bad = tmp_path / "in.jsonl", tmp_path / "bad.json"
    src.write_text(_lines(*RAW))
    bad.write_text('{"format": "something else"}')
    code, _, err = run(capsys, "resolve", "--input", str(src), "--out", str(tmp_path / "o"), "--model", str(bad))
    assert code == 2 and err.count("\n") == 1 and "--model" in err and "Traceback" not in err
    monkeypatch.setenv("MAILPULSE_IDENTITY_MODEL", str(bad))
    code, _, err = run(capsys, "run", "--broker", "kafka://127.0.0.1:1")
    assert code == 2 and "MAILPULSE_IDENTITY_MODEL" in err and "Traceback" not in err


def test_resolve_command_missing_input_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "resolve", "--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no such file" in err


def test_every_normalization_cache_is_bounded() -> None:
    """An entry costs ~300 bytes: a cache sized by the number of people grows a worker's RSS for days."""
    import functools

    from schemas import identifiers
    from streams.domain.resolution import normalize

    caches = [value for module in (identifiers, normalize) for value in vars(module).values()
              if isinstance(value, functools._lru_cache_wrapper)]
    assert len(caches) >= 8
    for cache in caches:
        maxsize = cache.cache_parameters()["maxsize"]
        assert maxsize is not None and maxsize <= 8192, cache


@pytest.mark.parametrize("traits", [
    {"first_name": "unknown", "last_name": "unknown", "birthday": "1900-01-01"},
    {"first_name": "Guest", "last_name": "Guest", "postcode": "00000"},
    {"first_name": "n/a", "last_name": "N/A", "street": "n/a", "postcode": "00000"},
    {"first_name": "undefined", "last_name": "null", "birthday": "1970-01-01", "city": "Unknown"},
])
def test_placeholder_names_addresses_and_birthdays_merge_no_strangers(traits: dict[str, Any]) -> None:
    """What forms fill in where a person gave nothing reads as missing to fuzzy matching: seven
    strangers with their own ids and addresses, all "Guest Guest" at postcode 00000, stay seven
    (four fuzzy merges made five of them one before)."""
    from streams.domain.config import PipelineConfig
    from streams.domain.dispatch import run_locally
    from streams.domain.timeline import RuleSet
    from tests.unit.test_identity_graph import UNTIL, ev

    events = [ev(f"i{n}", "identify", n, user_id=f"customer-{n}", email=f"person{n}@mail{n}.com", traits=traits)
              for n in range(7)]
    run = run_locally(events, UNTIL, RuleSet.build(PipelineConfig(), 7 * 86_400_000))
    assert run.merges == [] and len(run.profiles) == 7


def test_a_real_name_that_looks_like_a_placeholder_word_is_kept() -> None:
    assert norm.name("Na") == "na" and norm.name("n/a") == "" and norm.name("Unknown") == ""
    assert norm.name("Nan") == "nan" and norm.name("Guest") == "guest"  # real names, alone
    assert norm.names("Guest", "Guest") == ("", "") and norm.names("Test", "User") == ("", "")
    assert norm.names("Nan", "Li") == ("nan", "li") and norm.names("Ann", "Guest") == ("ann", "guest")
    assert norm.names("Guest", None) == ("guest", "")
    assert norm.postcode("10115") == "10115" and norm.postcode("0000") == "" and norm.postcode("XXXXX") == ""
    assert norm.postcode("1111") == "1111" and norm.postcode("55555") == "55555"  # Budapest XI, a US code
    assert norm.birthday("1980-01-01") == "1980-01-01" and norm.birthday("1900-01-01") == ""
    assert norm.street("12 Main St.") == ("12", "main street") and norm.street("N/A") == ("", "")


@pytest.mark.parametrize("local", ["null", "Unknown", "guest", "noemail", "no.email", "nobody", "user", "n.a"])
def test_a_placeholder_local_part_is_no_evidence_of_one_person(local: str) -> None:
    """Two John Smiths of two towns whose forms were filled in with ``null@gmail.com`` and
    ``null@yahoo.com`` merged: the shared local part counted as a shared address."""
    springfield = identify("John", "Smith", city="Springfield", postcode="62701", user_id="u-1",
                           email=f"{local}@gmail.com")
    portland = identify("John", "Smith", city="Portland", postcode="97201", user_id="u-2", email=f"{local}@yahoo.com")
    assert not person_of(springfield).locals
    first, second = resolve_all([springfield, portland])
    assert first != second
    # a real local part still counts
    jsmith = [identify("John", "Smith", city="Springfield", postcode="62701", user_id="u-3", email="jsmith@gmail.com"),
              identify("John", "Smith", city="Portland", postcode="97201", user_id="u-4", email="jsmith@yahoo.com")]
    assert person_of(jsmith[0]).locals == {"jsmith"}


def test_folding_a_text_of_many_letter_characters_stays_as_long_as_the_longest_text() -> None:
    """U+FDFA decomposes into 18 characters: a name of 512 of them folded to 9,216 letters (kept in each
    cache of the module, and read letter by letter); now at most twice the longest text a trait takes."""
    for letter in ("\ufdfa", "\U00020000", "é"):
        folded = norm.fold(letter * 512)
        assert folded and len(folded) <= 1024
        assert norm.name(letter * 512) == folded.replace(" ", "")
    assert norm.fold("Müller-Lüdenscheidt") == "muller ludenscheidt"


def test_folding_keeps_the_capitals_a_compatibility_form_brings() -> None:
    """Lowered before the compatibility decomposition only, U+210C (a black-letter H) and U+3250 (PTE in
    a square) gave capitals that the letters' filter then dropped: U+210C 'ans' read as 'ans'."""
    assert norm.fold("\u210cans") == "hans"
    assert norm.fold("\u3250") == "pte"
    assert norm.fold("\uff2a\uff4f\uff48\uff4e \u2167") == "john viii"  # (full-width John, Roman eight)
