"""``make eval-identity``: quality and speed of identity resolution on generated person records.

Generates ``--persons`` people (default 5000), each with 1-4 identify records carrying realistic
corruption (typos, swapped name parts, nicknames, case, missing fields, a previous address, mistyped
birthdays, street abbreviations), plus households (same family name and address, other people) and
common names shared by different people. Every record goes through ``streams.ingest.decode`` like the
stream's input. Reports pairwise precision / recall / F1 against the ground-truth person ids, for

* ``baseline``: exact match on name + birthday (case-folded; a record without them stays alone),
* ``resolve``: :func:`streams.resolution.resolve_all` on the records as generated (some share an
  e-mail, phone or user id, most do not),
* ``resolve, traits only``: the same records with every identifier made unique -- fuzzy matching alone,

and records/s of ``resolve_all`` on about ``--speed-records`` (default 20000) records. With ``--check``
the exit code is 1 when resolve misses a target: F1 >= 0.98, precision >= 0.99, >= 10k records/s.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import orjson

from streams.ingest import Accepted, Source, decode
from streams.resolution import resolve_batch
from streams.tools.generate import FIRST_NAMES, LAST_NAMES, NICKNAMES, STREETS, _typo

TARGET_F1, TARGET_PRECISION, TARGET_RATE = 0.98, 0.99, 10_000.0

MORE_FIRST = ("John", "Mary", "David", "Sarah", "Christopher", "Laura", "Joseph", "Karen", "Richard", "Nancy",
              "Charles", "Lisa", "Anthony", "Betty", "Mark", "Sandra", "Donald", "Ashley", "Steven", "Kimberly",
              "Paul", "Donna", "Andrew", "Emily", "Joshua", "Michelle", "Kenneth", "Carol", "Kevin", "Amanda",
              "Brian", "Melissa", "George", "Deborah", "Timothy", "Stephanie", "Ronald", "Rebecca", "Jason",
              "Sharon", "Edward", "Cynthia", "Jeffrey", "Kathleen", "Ryan", "Amy", "Jacob", "Angela", "Gary",
              "Shirley", "Nicholas", "Brenda", "Eric", "Pamela", "Jonathan", "Nicole", "Stephen", "Ruth",
              "Larry", "Virginia", "Justin", "Victoria", "Scott", "Julia", "Frank", "Helen", "Raymond", "Diana",
              "Gregory", "Joyce", "Hannah", "Jonas", "Leon", "Felix", "Paula", "Greta", "Moritz", "Clara",
              "Jan", "Lea", "Tim", "Marie", "Finn", "Lena", "Elias", "Johanna", "Paul", "Nora", "Julian", "Ida")
MORE_LAST = ("Becker", "Hoffmann", "Schulz", "Koch", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
             "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Werner", "Krause",
             "Lehmann", "Köhler", "Herrmann", "König", "Walter", "Mayer", "Huber", "Kaiser", "Fuchs", "Peters",
             "Lang", "Möller", "Weiß", "Jung", "Hahn", "Vogel", "Friedrich", "Keller", "Günther", "Frank",
             "Berger", "Winkler", "Roth", "Beck", "Lorenz", "Baumann", "Franke", "Albrecht", "Ludwig", "Winter",
             "Simon", "Kraus", "Böhm", "Schuster", "Jäger", "Otto", "Sommer", "Groß", "Seidel", "Heinrich",
             "Brandt", "Haas", "Schreiber", "Graf", "Schulte", "Dietrich", "Ziegler", "Kuhn", "Pohl", "Engel",
             "Horn", "Busch", "Bergmann", "Thomas", "Voigt", "Sauer", "Arnold", "Wolff", "Pfeiffer",
             "Rodriguez", "Hernandez", "Gonzalez", "Perez", "Sanchez", "Ramirez", "Torres", "Flores", "Rivera",
             "Gomez", "Diaz", "Reyes", "Cruz", "Morales", "Ortiz", "Gutierrez", "Chavez", "Ramos", "Ruiz",
             "Kim", "Lee", "Park", "Nguyen", "Tran", "Chen", "Wang", "Li", "Zhang", "Liu", "Singh", "Patel",
             "Kumar", "Shah", "Ali", "Khan", "Murphy", "Kelly", "O'Brien", "Ryan", "Walsh", "Byrne", "Collins",
             "Stewart", "Morris", "Rogers", "Reed", "Cook", "Morgan", "Bell", "Cooper", "Richardson", "Cox",
             "Howard", "Ward", "Peterson", "Gray", "James", "Watson", "Brooks", "Kelley", "Sanders", "Price",
             "Bennett", "Wood", "Barnes", "Ross", "Henderson", "Coleman", "Jenkins", "Perry", "Powell", "Long",
             "Patterson", "Hughes", "Washington", "Butler", "Simmons", "Foster", "Gonzales", "Bryant",
             "Alexander", "Russell", "Griffin", "Hayes", "Myers", "Ford", "Hamilton", "Graham", "Sullivan")
MORE_NICKNAMES = {"Christopher": "Chris", "Nicholas": "Nick", "Jonathan": "Jon", "Victoria": "Vicky",
                  "Rebecca": "Becky", "Anthony": "Tony", "Andrew": "Andy", "Richard": "Rick", "Joseph": "Joe",
                  "David": "Dave", "Steven": "Steve", "Edward": "Ed", "Timothy": "Tim", "Kenneth": "Ken",
                  "Ronald": "Ron", "Gregory": "Greg", "Deborah": "Debbie", "Katherine": "Katie",
                  "Elizabeth": "Beth", "Margaret": "Peggy", "Jennifer": "Jenny", "Samuel": "Sammy"}
ALL_NICKNAMES = {**NICKNAMES, **MORE_NICKNAMES}
MORE_STREETS = ("Washington Avenue", "Lake Road", "Hill Street", "Sunset Boulevard", "Bahnhofstraße",
                "Schillerstraße", "Gartenweg", "Church Road", "Station Road", "Mill Lane", "Pine Street",
                "Birkenallee", "Victoria Road", "Broadway", "Kings Road", "Queen Street", "Market Place")
CITIES = (("Berlin", "10", "DE"), ("Hamburg", "20", "DE"), ("Munich", "80", "DE"), ("Cologne", "50", "DE"),
          ("New York", "100", "US"), ("Los Angeles", "900", "US"), ("Chicago", "606", "US"),
          ("Boston", "021", "US"), ("Seattle", "981", "US"), ("Paris", "750", "FR"), ("Lyon", "690", "FR"),
          ("Vienna", "1", "AT"))
ABBREVIATIONS = (("Street", "St"), ("Avenue", "Ave"), ("Road", "Rd"), ("Lane", "Ln"), ("Boulevard", "Blvd"),
                 ("straße", "str."), ("Court", "Ct"))
DOMAINS = ("example.com", "mail.example.org", "inbox.example.net", "post.example.de", "web.example.fr")


def _zipf(names: Sequence[str], s: float = 0.8) -> tuple[list[str], list[float]]:
    return list(names), [1.0 / (rank + 1) ** s for rank in range(len(names))]


FIRST = _zipf(tuple(dict.fromkeys(FIRST_NAMES + MORE_FIRST)))
LAST = _zipf(tuple(dict.fromkeys(LAST_NAMES + MORE_LAST)))
ALL_STREETS = STREETS + MORE_STREETS


@dataclass
class Truth:
    index: int
    first: str
    last: str
    birthday: date
    address: tuple[str, str, str, str]          # street, city, postcode, country
    old_address: tuple[str, str, str, str] | None
    emails: list[str]
    phone: str | None
    records: list[dict[str, Any]] = field(default_factory=list)


def _address(rng: random.Random) -> tuple[str, str, str, str]:
    city, prefix, country = rng.choice(CITIES)
    width = 5 if country != "AT" else 4
    code = prefix + "".join(str(rng.randrange(10)) for _ in range(width - len(prefix)))
    return f"{rng.randrange(1, 200)} {rng.choice(ALL_STREETS)}", city, code, country


def _plain(text: str) -> str:
    text = text.lower().replace("ü", "ue").replace("ö", "oe").replace("ä", "ae").replace("ß", "ss")
    return "".join(ch for ch in text if ch.isalnum())


def _person(index: int, rng: random.Random, household_of: Truth | None, phones: set[str]) -> Truth:
    first = rng.choices(*FIRST)[0]
    if household_of is not None:  # same family name and address, another person
        last, address = household_of.last, household_of.address
        while first == household_of.first:
            first = rng.choices(*FIRST)[0]
    else:
        last, address = rng.choices(*LAST)[0], _address(rng)
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 65))
    emails = [f"{_plain(first)}.{_plain(last)}{rng.randrange(1000)}@{rng.choice(DOMAINS)}"]
    if rng.random() < 0.5:
        emails.append(f"{_plain(first)[0]}{_plain(last)}{rng.randrange(100)}@{rng.choice(DOMAINS)}")
    phone = None
    if rng.random() < 0.5:
        while phone is None or phone in phones:  # different people, different numbers
            phone = f"+1415{rng.randrange(2_000_000, 10_000_000):07d}"
        phones.add(phone)
    return Truth(index, first, last, born, address, _address(rng) if rng.random() < 0.25 else None, emails, phone)


def _bad_birthday(born: date, rng: random.Random) -> str:
    text = born.isoformat()
    if born.day <= 12 and born.day != born.month and rng.random() < 0.5:
        return f"{born.year:04d}-{born.day:02d}-{born.month:02d}"
    for _ in range(20):
        i = rng.choice((2, 3, 6, 8, 9))
        candidate = text[:i] + str(rng.randrange(10)) + text[i + 1:]
        try:
            if candidate != text and date.fromisoformat(candidate):
                return candidate
        except ValueError:
            continue
    return text


def _record(p: Truth, number: int, rng: random.Random) -> dict[str, Any]:
    """One identify record of ``p`` with independent, realistic corruption."""
    first, last = p.first, p.last
    if rng.random() < 0.12:
        last = _typo(last, rng)
    if rng.random() < 0.12:
        first = _typo(first, rng)
    elif rng.random() < 0.12:
        first = ALL_NICKNAMES.get(first, first)
    elif rng.random() < 0.03:
        first = first[0] + "."
    if rng.random() < 0.05:
        first, last = last, first
    roll = rng.random()
    if roll < 0.10:
        first, last = first.upper(), last.upper()
    elif roll < 0.15:
        first, last = first.lower(), last.lower()
    street, city, postcode, country = p.old_address if p.old_address and rng.random() < 0.4 else p.address
    if rng.random() < 0.3:
        for full, short in ABBREVIATIONS:
            street = street.replace(full, short)
    birthday = _bad_birthday(p.birthday, rng) if rng.random() < 0.04 else p.birthday.isoformat()
    traits: dict[str, Any] = {"first_name": first, "last_name": last, "birthday": birthday, "street": street,
                              "city": city, "postcode": postcode, "country": country}
    for name, chance in (("birthday", 0.10), ("street", 0.10), ("postcode", 0.08), ("city", 0.05),
                         ("first_name", 0.03)):
        if rng.random() < chance:
            traits.pop(name)
    event: dict[str, Any] = {"event_id": f"rec-{number}", "type": "identify",
                             "timestamp": 1_772_359_200_000 + number * 1000, "source": rng.choice(("crm", "form"))}
    if rng.random() < 0.2:
        event["user_id"] = f"u-{p.index}"
    roll = rng.random()
    if roll < 0.4:
        traits["email"] = p.emails[0]
    elif roll < 0.5 and len(p.emails) > 1:
        traits["email"] = p.emails[1]
    if p.phone and rng.random() < 0.3:
        traits["phone"] = p.phone
    if "user_id" not in event:
        event["anonymous_id"] = f"r-{number}"
    event["traits"] = traits
    return event


def generate(persons: int, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Raw identify records and the true person index of each, shuffled."""
    rng = random.Random(seed)
    people: list[Truth] = []
    phones: set[str] = set()
    for index in range(persons):
        household = rng.choice(people) if people and rng.random() < 0.06 else None
        people.append(_person(index, rng, household, phones))
    rows: list[tuple[dict[str, Any], int]] = []
    number = 0
    for p in people:
        for _ in range(rng.choices((1, 2, 3, 4), (35, 30, 20, 15))[0]):
            number += 1
            rows.append((_record(p, number, rng), p.index))
    rng.shuffle(rows)
    return [r for r, _ in rows], [t for _, t in rows]


def decode_all(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events = []
    for n, record in enumerate(raw):
        result = decode(orjson.dumps(record), Source("identities", 0, n, None, 0), 0)
        if not isinstance(result, Accepted):
            raise SystemExit(f"eval-identity: generated record {n} was rejected: {result.record['error']}")
        events.append(result.event)
    return events


def traits_only(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same records with no shared identifier left: a unique anonymous id, no e-mail, no phone."""
    out = []
    for n, event in enumerate(events):
        traits = {k: v for k, v in event["traits"].items() if k not in ("email", "phone")}
        out.append({"type": "identify", "anonymous_id": f"x-{n}", "traits": traits})
    return out


def baseline(events: list[dict[str, Any]]) -> list[str]:
    """Exact match on (first name, last name, birthday), case-folded; incomplete records stay alone."""
    labels = []
    for n, event in enumerate(events):
        t = event.get("traits") or {}
        if t.get("first_name") and t.get("last_name") and t.get("birthday"):
            labels.append(f"{t['first_name'].strip().lower()}|{t['last_name'].strip().lower()}|{t['birthday']}")
        else:
            labels.append(f"#{n}")
    return labels


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    f1: float


def _pairs(counts: Counter[Any]) -> int:
    return sum(c * (c - 1) // 2 for c in counts.values())


def pairwise(predicted: Sequence[str], truth: Sequence[int]) -> Scores:
    """Pairwise precision, recall and F1 of a clustering against the true person ids."""
    pairs = _pairs
    tp = pairs(Counter(zip(predicted, truth, strict=True)))
    pp, tt = pairs(Counter(predicted)), pairs(Counter(truth))
    precision = tp / pp if pp else 1.0
    recall = tp / tt if tt else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval-identity", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--persons", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--speed-records", type=int, default=20_000, help="records for the records/s measurement")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    raw, truth = generate(args.persons, args.seed)
    t0 = time.perf_counter()
    events = decode_all(raw)
    decode_s = time.perf_counter() - t0
    print(f"eval-identity: {args.persons} persons, {len(events)} identify records (seed {args.seed}); "
          f"{sum(c * (c - 1) // 2 for c in Counter(truth).values())} true pairs; "
          f"decode {len(events) / decode_s:,.0f} records/s")

    rows: list[tuple[str, Scores, float | None, str]] = []
    t0 = time.perf_counter()
    base = baseline(events)
    rows.append(("baseline: name+birthday", pairwise(base, truth), len(events) / (time.perf_counter() - t0), ""))
    t0 = time.perf_counter()
    result = resolve_batch(events)
    elapsed = time.perf_counter() - t0
    note = (f"{result.pairs_scored} pairs scored, {result.fuzzy_links} fuzzy links, "
            f"{len(result.possible_matches)} profiles with possible matches, {result.skipped_blocks} blocks skipped")
    resolved = pairwise(result.profile_ids, truth)
    rows.append(("resolve", resolved, len(events) / elapsed, note))
    t0 = time.perf_counter()
    fuzzy = resolve_batch(traits_only(events))
    elapsed = time.perf_counter() - t0
    rows.append(("resolve, traits only", pairwise(fuzzy.profile_ids, truth), len(events) / elapsed,
                 f"{fuzzy.pairs_scored} pairs scored"))

    shuffled = list(range(len(events)))
    random.Random(1).shuffle(shuffled)
    again = resolve_batch([events[i] for i in shuffled]).profile_ids
    order_free = all(again[k] == result.profile_ids[i] for k, i in enumerate(shuffled))

    print(f"{'method':<24} {'precision':>9} {'recall':>7} {'F1':>7} {'records/s':>10}")
    for label, s, rate, extra in rows:
        shown = f"{rate:>10,.0f}" if rate is not None else f"{'':>10}"
        print(f"{label:<24} {s.precision:>9.4f} {s.recall:>7.4f} {s.f1:>7.4f} {shown}  {extra}")
    print(f"order-independent (same profile ids on shuffled input): {'yes' if order_free else 'NO'}")

    # Throughput on about --speed-records records (a separate data set of the same kind).
    speed_raw, _ = generate(max(1, round(args.speed_records / 2.15)), args.seed + 1)
    speed_events = decode_all(speed_raw)
    t0 = time.perf_counter()
    resolve_batch(speed_events)
    rate = len(speed_events) / (time.perf_counter() - t0)
    print(f"resolve_all throughput: {len(speed_events)} records in {len(speed_events) / rate:.2f} s = "
          f"{rate:,.0f} records/s")

    missed = []
    if resolved.f1 < TARGET_F1:
        missed.append(f"F1 {resolved.f1:.4f} < {TARGET_F1}")
    if resolved.precision < TARGET_PRECISION:
        missed.append(f"precision {resolved.precision:.4f} < {TARGET_PRECISION}")
    if rate < TARGET_RATE:
        missed.append(f"{rate:,.0f} records/s < {TARGET_RATE:,.0f}")
    if not order_free:
        missed.append("not order-independent")
    print("targets (F1 >= 0.98, precision >= 0.99, >= 10k records/s): " + ("met" if not missed else
                                                                            "MISSED: " + "; ".join(missed)))
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
