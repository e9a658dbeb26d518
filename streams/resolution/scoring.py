"""Field-aware match score of two identify records, in [0, 1].

The score is a Fellegi-Sunter style sum of per-field evidence (in bits: log2 of how much more likely
the observed agreement is for the same person than for two different people), plus a prior, squashed
with a logistic: ``score = 1 / (1 + 2 ** -(PRIOR_BITS + sum(field bits)))``.

* names: Jaro-Winkler per part, given names also through the nickname table, first/last swapped
  tried too (the better reading counts, minus a small penalty);
* birthday: exact, day/month swapped, or one digit off (a typo) count for, anything else strongly against;
* postcode exact or same 3-character prefix; city Jaro-Winkler; street ``token_set_ratio`` on the
  street name plus an exact house number;
* a shared e-mail local part with another domain is good evidence; an equal normalized e-mail or
  phone number is decisive (score 1.0) -- those are exact merges in the identity graph anyway;
* a field missing on either side adds 0 bits: it neither helps nor hurts. Disagreeing addresses cost
  little (people move), disagreeing birthdays cost a lot.

:class:`Person` is plain data derived from one accepted identify event (see :func:`person_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rapidfuzz.distance import OSA, JaroWinkler
from rapidfuzz.fuzz import token_set_ratio

from streams.resolution import normalize as norm

# --- evidence in bits (documented defaults; tuned on `make eval-identity`) ---------------------------
PRIOR_BITS = -9.0            # two records of one block are, a priori, rarely the same person
LAST_EXACT = 5.0             # Jaro-Winkler >= 0.97
LAST_CLOSE = 3.5             # >= 0.90, or one typo (OSA distance 1) in names of 4+ letters
LAST_NEAR = 1.0              # >= 0.82
LAST_DIFF = -5.0
FIRST_EXACT = 3.5            # equal, or equal after nickname canonicalization (Bob = Robert)
FIRST_CLOSE = 2.5            # Jaro-Winkler >= 0.90, or one typo in names of 4+ letters
FIRST_NEAR = 0.5             # >= 0.82
FIRST_INITIAL = 1.0          # "R" vs "Robert"
FIRST_DIFF = -4.0
SWAP_PENALTY = 1.5           # first and last name swapped (both compared on the family-name scale)
BIRTHDAY_EXACT = 7.0
BIRTHDAY_SWAPPED = 4.0       # day and month swapped (US vs European order)
BIRTHDAY_TYPO = 2.0          # one digit off
BIRTHDAY_DIFF = -7.0
POSTCODE_EXACT = 3.0
POSTCODE_PREFIX = 1.0        # same first 3 characters
POSTCODE_DIFF = -0.5
CITY_SAME = 1.0              # Jaro-Winkler >= 0.90
CITY_DIFF = -0.5
STREET_EXACT = 4.0           # street name token_set_ratio >= 85 and the same house number
STREET_NO_NUMBER = 1.5       # street name matches, a house number is missing
STREET_OTHER_NUMBER = 0.0    # same street, another house number
STREET_DIFF = -0.5
EMAIL_LOCAL = 4.0            # same e-mail local part at another domain
GENDER_DIFF = -4.0
# Family name and address alone identify a household, not a person: without a comparable given name,
# birthday or e-mail local part the score is capped here (a possible match under the default thresholds).
UNSPECIFIC_MAX = 0.8

_GENERIC_LOCALS = frozenset({"info", "contact", "mail", "email", "office", "admin", "hello", "kontakt", "test",
                             "noreply", "no-reply", "support", "service"})

_jw = JaroWinkler.normalized_similarity
_osa = OSA.distance


@dataclass(frozen=True, slots=True)
class Person:
    """The matching view of one identify record: plain, hashable data (safe to keep in a table)."""

    first: str                 # folded given name, "" when missing
    first_canon: str           # after the nickname table
    last: str                  # folded family name
    birthday: str              # YYYY-MM-DD or ""
    postcode: str
    city: str
    house: str
    street: str                # street name, abbreviations spelled out
    gender: str
    emails: frozenset[str]     # normalized e-mail addresses (event and traits)
    phones: frozenset[str]     # E.164
    locals: frozenset[str]     # e-mail local parts worth matching on

    def sort_key(self) -> tuple[str, ...]:
        """A total order on content, so pair orientation (and so every result) never depends on input order."""
        return (self.last, self.first, self.birthday, self.postcode, self.city, self.house, self.street,
                self.gender, ",".join(sorted(self.emails)), ",".join(sorted(self.phones)))


def person_of(event: dict[str, Any]) -> Person:
    """The :class:`Person` of an accepted (decoded) identify event; other events give an empty one."""
    traits: dict[str, Any] = event.get("traits") or {}
    emails = {e for e in (event.get("email"), traits.get("email")) if e}
    phones = {p for p in (event.get("phone"), traits.get("phone")) if p}
    first = norm.name(traits.get("first_name"))
    last = norm.name(traits.get("last_name"))
    house, street = norm.street(traits.get("street"))
    locals_ = set()
    for email in emails:
        local = email.partition("@")[0]
        if len(local) >= 3 and local not in _GENERIC_LOCALS:
            locals_.add(local)
    return Person(
        first=first, first_canon=norm.NICKNAMES.get(first, first), last=last,
        birthday=norm.birthday(traits.get("birthday")), postcode=norm.postcode(traits.get("postcode")),
        city=norm.name(traits.get("city")), house=house, street=street, gender=norm.name(traits.get("gender"))[:1],
        emails=frozenset(emails), phones=frozenset(phones), locals=frozenset(locals_))


def _given(a: str, a_canon: str, b: str, b_canon: str) -> float:
    if not a or not b:
        return 0.0
    if a_canon == b_canon:
        return FIRST_EXACT
    if len(a) == 1 or len(b) == 1:
        return FIRST_INITIAL if a[0] == b[0] else FIRST_DIFF
    sim = _jw(a, b)
    if a_canon != a or b_canon != b:
        sim = max(sim, _jw(a_canon, b_canon))
    return _graded(a, b, sim, FIRST_EXACT, FIRST_CLOSE, FIRST_NEAR, FIRST_DIFF)


def _graded(a: str, b: str, sim: float, exact: float, close: float, near: float, diff: float) -> float:
    """The evidence of two names by Jaro-Winkler ``sim``: >= 0.97 exact, >= 0.90 or one typo close,
    >= 0.82 near, else different (given and family names differ only in the bits)."""
    if sim >= 0.97:
        return exact
    if sim >= 0.90 or _one_typo(a, b):
        return close
    return near if sim >= 0.82 else diff


def _one_typo(a: str, b: str) -> bool:
    """One substitution, insertion, deletion or swap of neighbours, in names long enough for it to say much."""
    return len(a) >= 4 and len(b) >= 4 and abs(len(a) - len(b)) <= 1 and _osa(a, b, score_cutoff=1) <= 1


def _family(a: str, b: str) -> float:
    if not a or not b:
        return 0.0
    if a == b:
        return LAST_EXACT
    return _graded(a, b, _jw(a, b), LAST_EXACT, LAST_CLOSE, LAST_NEAR, LAST_DIFF)


def _cross(a: str, b: str) -> float:
    """A name part against the other record's other part (swapped names): family scale, initials allowed."""
    if (len(a) == 1 or len(b) == 1) and a and b:
        return FIRST_INITIAL if a[0] == b[0] else FIRST_DIFF
    return _family(a, b)


def _names(a: Person, b: Person) -> float:
    straight = _given(a.first, a.first_canon, b.first, b.first_canon) + _family(a.last, b.last)
    if straight >= FIRST_EXACT + LAST_EXACT or not ((a.first and b.last) or (a.last and b.first)):
        return straight
    # Both cross comparisons on the family-name scale: symmetric in a and b, like every part of the score.
    swapped = _cross(a.first, b.last) + _cross(a.last, b.first) - SWAP_PENALTY
    return max(straight, swapped)


def _birthday(a: str, b: str) -> float:
    if not a or not b:
        return 0.0
    if a == b:
        return BIRTHDAY_EXACT
    if a[:4] == b[:4] and a[5:7] == b[8:10] and a[8:10] == b[5:7]:
        return BIRTHDAY_SWAPPED
    if sum(x != y for x, y in zip(a, b, strict=False)) == 1:
        return BIRTHDAY_TYPO
    return BIRTHDAY_DIFF


def _address(a: Person, b: Person) -> float:
    bits = 0.0
    if a.postcode and b.postcode:
        if a.postcode == b.postcode:
            bits += POSTCODE_EXACT
        elif len(a.postcode) >= 4 and a.postcode[:3] == b.postcode[:3]:
            bits += POSTCODE_PREFIX
        else:
            bits += POSTCODE_DIFF
    if a.city and b.city:
        bits += CITY_SAME if a.city == b.city or _jw(a.city, b.city) >= 0.90 else CITY_DIFF
    if a.street and b.street:
        if a.street == b.street or token_set_ratio(a.street, b.street) >= 85:
            if not a.house or not b.house:
                bits += STREET_NO_NUMBER
            else:
                bits += STREET_EXACT if a.house == b.house else STREET_OTHER_NUMBER
        else:
            bits += STREET_DIFF
    return bits


def _specific(a: Person, b: Person) -> bool:
    """Whether anything person-specific (not just family name and address) could be compared."""
    return bool((a.first and b.first) or (a.birthday and b.birthday) or a.locals & b.locals)


def evidence(a: Person, b: Person) -> dict[str, float]:
    """The bits each field contributes (for explanations and tests); ``inf`` marks a decisive identifier.

    ``"specific"`` is 1.0 when a given name, birthday or e-mail local part could be compared (else the
    score is capped at :data:`UNSPECIFIC_MAX`).
    """
    if a.emails & b.emails or a.phones & b.phones:
        return {"identifier": float("inf")}
    return {
        "prior": PRIOR_BITS,
        "names": _names(a, b),
        "birthday": _birthday(a.birthday, b.birthday),
        "address": _address(a, b),
        "email_local": EMAIL_LOCAL if a.locals & b.locals else 0.0,
        "gender": GENDER_DIFF if a.gender and b.gender and a.gender != b.gender else 0.0,
        "specific": 1.0 if _specific(a, b) else 0.0,
    }


def score(a: Person, b: Person) -> float:
    """Probability-like confidence in [0, 1] that ``a`` and ``b`` are one person; symmetric by construction."""
    if a.emails & b.emails or a.phones & b.phones:
        return 1.0
    bits = PRIOR_BITS + _names(a, b) + _birthday(a.birthday, b.birthday) + _address(a, b)
    if a.locals & b.locals:
        bits += EMAIL_LOCAL
    if a.gender and b.gender and a.gender != b.gender:
        bits += GENDER_DIFF
    result = 1.0 if bits > 60 else 1.0 / (1.0 + 2.0 ** -bits)
    if not _specific(a, b):
        return min(result, UNSPECIFIC_MAX)
    return result
