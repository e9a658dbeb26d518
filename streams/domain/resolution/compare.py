"""Comparison levels of two person records, field by field: the input of the Fellegi-Sunter model.

:func:`compare` turns a pair of :class:`~streams.domain.resolution.scoring.Person` into one small integer per
field of :data:`FIELDS` -- its *comparison level*, from the strongest agreement down to disagreement,
with "missing on either side" as a level of its own. The model (:mod:`.model`) learns how likely each
level is for two records of one person (``m``) and of two people (``u``); nothing here is a weight.

Levels, per field (``LEVELS`` holds their names, in this order):

* ``given`` / ``family`` -- exact (given names also after the nickname table: Bob = Robert), one typo
  (one substitution, insertion, deletion or swap of neighbours), Jaro-Winkler >= 0.90, >= 0.80, an
  initial or a prefix of the other below that (given names only: ``R.`` vs ``Robert``), different.
  Names are compared with their spaces removed (:func:`.normalize.name`), so a space inserted or
  dropped changes nothing. Both parts are also compared crosswise (given against the other record's
  family name); when that reading is better the levels are those of the crossed reading and
* ``order`` is ``swapped`` (else ``straight``).
* ``birthday`` -- exact, day and month transposed, one digit off (one substitution or two neighbouring
  digits swapped), the same year only, different.
* ``email`` -- a shared e-mail local part (at any domain), none shared.
* ``gender`` -- same, different.
* ``postcode`` -- exact, two neighbouring characters transposed, one character off, the same first three
  characters, different.
* ``city`` -- exact (spaces removed), one typo or Jaro-Winkler >= 0.92, >= 0.80, different.
* ``street`` (the words of the street lines, house numbers apart) -- exact; the same words once spaces
  are removed or the words sorted (``pullenstreet`` = ``pullen street``, words moved between address
  lines); token sort ratio >= 90 (typos in the same words); token set ratio >= 90, or the shorter one
  (8+ letters, spaces removed) matching part of the longer one at >= 90 (a second address line missing
  on one side); either ratio >= 75; different.
* ``house`` -- exact, near (two digits transposed, one digit off, or a shared number), different.

Pure functions of plain strings. The levels of a pair of names, cities and streets are cached (the
same few values come back on every record; bounded like the caches of :mod:`.normalize`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from rapidfuzz.distance import OSA, Hamming, JaroWinkler
from rapidfuzz.fuzz import partial_ratio, ratio, token_set_ratio, token_sort_ratio

from streams.domain.resolution.normalize import CACHE_SIZE

if TYPE_CHECKING:
    from streams.domain.resolution.scoring import Person

MISSING = 0

#: Field name -> level names, strongest agreement first after ``missing`` (``order`` has no missing level).
LEVELS: dict[str, tuple[str, ...]] = {
    "given": ("missing", "exact", "typo", "jw90", "jw80", "initial", "different"),
    "family": ("missing", "exact", "typo", "jw90", "jw80", "different"),
    "order": ("straight", "swapped"),
    "birthday": ("missing", "exact", "day_month", "one_digit", "year", "different"),
    "email": ("missing", "shared", "different"),
    "gender": ("missing", "same", "different"),
    "postcode": ("missing", "exact", "transposed", "one_char", "prefix", "different"),
    "city": ("missing", "exact", "typo", "jw80", "different"),
    "street": ("missing", "exact", "same_words", "sort90", "subset90", "ratio75", "different"),
    "house": ("missing", "exact", "near", "different"),
}
FIELDS: tuple[str, ...] = tuple(LEVELS)

# Field indexes, for the model's tables.
GIVEN, FAMILY, ORDER, BIRTHDAY, EMAIL, GENDER, POSTCODE, CITY, STREET, HOUSE = range(len(FIELDS))

_jw = JaroWinkler.normalized_similarity
_osa = OSA.distance
_hamming = Hamming.distance


def _one_typo(a: str, b: str) -> bool:
    """One substitution, insertion, deletion or swap of neighbours (names of 3+ letters)."""
    return len(a) >= 3 and len(b) >= 3 and abs(len(a) - len(b)) <= 1 and _osa(a, b, score_cutoff=1) <= 1


def name_level(a: str, b: str, a_canon: str = "", b_canon: str = "", given: bool = False) -> int:
    """The level of two folded name parts (``given`` adds the nickname and initial levels)."""
    if not a or not b:
        return MISSING
    if a == b or (given and a_canon and a_canon == b_canon):
        return 1
    if given and (len(a) == 1 or len(b) == 1):
        return 5 if a[0] == b[0] else 6
    if _one_typo(a, b):
        return 2
    sim = _jw(a, b)
    if given and (a_canon != a or b_canon != b):
        sim = max(sim, _jw(a_canon or a, b_canon or b))
    if sim >= 0.90:
        return 3
    if sim >= 0.80:
        return 4
    if given:
        if len(a) >= 2 and len(b) >= 2 and (a.startswith(b) or b.startswith(a)):
            return 5
        return 6
    return 5


def names(a: Person, b: Person) -> tuple[int, int, int]:
    """``(given level, family level, order level)``: the straight reading, or the crossed one when better.

    Crossed: ``a``'s given name against ``b``'s family name and ``a``'s family name against ``b``'s given
    name, when both records have both parts. It is taken only when both parts agree at ``typo`` or
    better, and together more than in the straight reading. Its better part becomes the ``given`` level
    and the other the ``family`` level, so the result does not depend on which record comes first.
    """
    af, bf, al, bl = a.first, b.first, a.last, b.last
    if af and bf:
        same = af == bf or (a.first_canon and a.first_canon == b.first_canon)
        given = 1 if same else _given_pair(af, bf, a.first_canon, b.first_canon)
    else:
        given = MISSING
    family = (1 if al == bl else _family_pair(al, bl)) if al and bl else MISSING
    if given == 1 and family == 1:
        return 1, 1, 0
    # both crossed parts must be exact or one typo apart: a cheap length test first
    if not (af and al and bf and bl) or abs(len(af) - len(bl)) > 1 or abs(len(al) - len(bf)) > 1:
        return given, family, 0
    c1 = _given_pair(af, bl, "", "")
    if c1 > 2:
        return given, family, 0
    c2 = _given_pair(al, bf, "", "")
    if c2 <= 2 and _strength(c1) + _strength(c2) > _strength(given) + _strength(family):
        return min(c1, c2), max(c1, c2), 1
    return given, family, 0


@lru_cache(maxsize=CACHE_SIZE)
def _given_pair(a: str, b: str, a_canon: str, b_canon: str) -> int:
    return name_level(a, b, a_canon, b_canon, given=True)


@lru_cache(maxsize=CACHE_SIZE)
def _family_pair(a: str, b: str) -> int:
    return name_level(a, b)


_STRENGTH = (0, 3, 2, 1)  # exact, typo, jw90 (levels 1-3 mean the same on both scales); the rest 0


def _strength(level: int) -> int:
    return _STRENGTH[level] if level < len(_STRENGTH) else 0


def birthday_level(a: str, b: str) -> int:
    if not a or not b:
        return MISSING
    if a == b:
        return 1
    if a[:4] == b[:4] and a[5:7] == b[8:10] and a[8:10] == b[5:7]:
        return 2
    if _osa(a, b, score_cutoff=1) <= 1:  # one digit replaced, or two neighbours swapped (same length)
        return 3
    return 4 if a[:4] == b[:4] else 5


def postcode_level(a: str, b: str) -> int:
    if not a or not b:
        return MISSING
    if a == b:
        return 1
    if len(a) == len(b):
        differ = _hamming(a, b, score_cutoff=2)
        if differ == 1:
            return 3
        if differ == 2 and _osa(a, b, score_cutoff=1) == 1:
            return 2
    if len(a) >= 4 and len(b) >= 4 and a[:3] == b[:3]:
        return 4
    return 5


def city_level(a: str, b: str) -> int:
    if not a or not b:
        return MISSING
    if a == b:
        return 1
    return _city_pair(a, b)


@lru_cache(maxsize=CACHE_SIZE)
def _city_pair(a: str, b: str) -> int:
    if _one_typo(a, b):
        return 2
    sim = _jw(a, b)
    if sim >= 0.92:
        return 2
    return 3 if sim >= 0.80 else 4


@lru_cache(maxsize=CACHE_SIZE)
def street_forms(street: str) -> tuple[str, str]:
    """``(words joined without spaces, words sorted and joined without spaces)`` of a street name."""
    words = street.split()
    return "".join(words), "".join(sorted(words))


def street_level(a: str, b: str) -> int:
    if not a or not b:
        return MISSING
    if a == b:
        return 1
    return _street_pair(a, b)


@lru_cache(maxsize=CACHE_SIZE)
def _street_pair(a: str, b: str) -> int:
    a_joined, a_sorted = street_forms(a)
    b_joined, b_sorted = street_forms(b)
    if a_joined == b_joined or a_sorted == b_sorted:
        return 2
    sort = max(token_sort_ratio(a, b), ratio(a_joined, b_joined))
    if sort >= 90:
        return 3
    subset = token_set_ratio(a, b)
    short, long = sorted((a_joined, b_joined), key=len)
    if subset >= 90 or (len(short) >= 8 and partial_ratio(short, long) >= 90):
        return 4
    return 5 if max(sort, subset) >= 75 else 6


def house_level(a: str, b: str) -> int:
    if not a or not b:
        return MISSING
    if a == b:
        return 1
    if (len(a) == len(b) and _osa(a, b, score_cutoff=1) <= 1) or set(a.split()) & set(b.split()):
        return 2
    return 3


def compare(a: Person, b: Person) -> tuple[int, ...]:
    """The comparison level of each field of :data:`FIELDS` (symmetric: ``compare(a, b) == compare(b, a)``)."""
    given, family, order = names(a, b)
    email = (1 if a.locals & b.locals else 2) if a.locals and b.locals else MISSING
    gender = (1 if a.gender == b.gender else 2) if a.gender and b.gender else MISSING
    # the equal and the missing cases inline: they are most of the pairs
    x, y = a.birthday, b.birthday
    birthday = (1 if x == y else birthday_level(x, y)) if x and y else MISSING
    x, y = a.postcode, b.postcode
    postcode = (1 if x == y else postcode_level(x, y)) if x and y else MISSING
    x, y = a.city, b.city
    city = (1 if x == y else _city_pair(x, y)) if x and y else MISSING
    x, y = a.street, b.street
    street = (1 if x == y else _street_pair(x, y)) if x and y else MISSING
    x, y = a.house, b.house
    house = (1 if x == y else house_level(x, y)) if x and y else MISSING
    return given, family, order, birthday, email, gender, postcode, city, street, house
