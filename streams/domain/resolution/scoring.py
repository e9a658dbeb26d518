"""Match probability of two identify records, in [0, 1]: a learned Fellegi-Sunter model and a few rules.

* :func:`.compare.compare` gives each field a comparison level (exact, one typo, Jaro-Winkler bands,
  spaces or word order ignored, names crossed, day and month transposed, one digit off, missing, ...);
* the model (:mod:`.model`, shipped as ``default_model.json``) turns the levels into the probability
  that the two records are one person: ``m`` and ``u`` probabilities per level, learned from data, with
  latent classes for people who moved and for households;
* an equal normalized e-mail address or phone number is decisive (1.0) -- those are exact merges in the
  identity graph anyway;
* **not enough to merge**: agreements that strangers reach in a large population, however the model
  scores them, are capped at :data:`UNSPECIFIC_MAX` (a possible match at most under the default
  thresholds), see :func:`capped`: family name and address alone (a household); names without an
  agreeing birthday (exact, or day and month transposed), street or postcode (a name in a town, or with
  a birthday one digit off); a given name and a birthday without a family name or an address; names
  and a neighbouring house number (one digit off) without a birthday. A shared e-mail local part lifts
  each of these;
* **one household**: a pair the model places in one household with probability >= :data:`HOUSEHOLD_SURE`
  whose birthdays are not known to differ scores at least :data:`HOUSEHOLD_SCORE`, so it is kept as a
  possible match (for a person to look at) rather than dropped.

:class:`Person` is plain data derived from one accepted identify event (see :func:`person_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.domain.resolution import normalize as norm
from streams.domain.resolution.compare import (
    BIRTHDAY,
    EMAIL,
    FAMILY,
    FIELDS,
    GIVEN,
    HOUSE,
    LEVELS,
    MISSING,
    POSTCODE,
    STREET,
    compare,
)
from streams.domain.resolution.model import Model, default_model

# Agreements strangers reach (a household, a name in a town, ...; see capped()): the score is capped here.
UNSPECIFIC_MAX = 0.8
# A pair surely of one household (P(one person or one household) >= HOUSEHOLD_SURE) whose birthdays do
# not differ is a possible match at least, with this score (the default possible-match threshold).
HOUSEHOLD_SURE = 0.9
HOUSEHOLD_SCORE = 0.5
#: The most characters of each text field of a :class:`Person` (names, postcode, city, street, house number),
#: past which the rest is left out: longer than any real one, while folding can make a name of 512
#: characters 15 times longer (U+FDFA).  A fuzzy-matching block stores up to ``MAX_BLOCK`` records in one
#: table value, which must stay under the broker's message limit.
MAX_FIELD_CHARS = 128

_GENERIC_LOCALS = frozenset({"info", "contact", "mail", "email", "office", "admin", "hello", "kontakt", "test",
                             "noreply", "no-reply", "support", "service"})
#: Local parts (folded, :func:`norm.fold`) that forms and tag managers fill in where a person gave no
#: address, besides the placeholder words of names (``null``, ``unknown``, ``guest``, ``user``, ...):
#: ``null@gmail.com`` and ``null@yahoo.com`` share no person, yet a shared local part with one name
#: merged two John Smiths of two towns.
_PLACEHOLDER_LOCALS = frozenset({"noemail", "no email", "nomail", "no mail", "nobody", "noone", "no one",
                                 "example", "fake", "asdf", "qwerty", "abc", "abc123", "123", "1234", "12345",
                                 "firstname lastname", "first last", "name", "yourname", "your name", "me"})

_BIRTHDAY_DIFFERS = (LEVELS["birthday"].index("year"), LEVELS["birthday"].index("different"))
_BIRTHDAY_AGREES = (LEVELS["birthday"].index("exact"), LEVELS["birthday"].index("day_month"))
_SHARED = LEVELS["email"].index("shared")
_HOUSE_NEAR = LEVELS["house"].index("near")


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


def _names_a_person(local: str) -> bool:
    """Whether an e-mail local part is evidence of one person: not too short, not a shared mailbox's
    (:data:`_GENERIC_LOCALS`) nor what forms fill in for no address (:data:`_PLACEHOLDER_LOCALS`, the
    placeholder words of names)."""
    if len(local) < 3 or local in _GENERIC_LOCALS:
        return False
    folded = norm.fold(local)
    return bool(folded) and folded not in norm.PLACEHOLDER_NAME_PARTS and folded not in _PLACEHOLDER_LOCALS


def person_of(event: dict[str, Any]) -> Person:
    """The :class:`Person` of an accepted (decoded) identify event; other events give an empty one."""
    traits: dict[str, Any] = event.get("traits") or {}
    emails = {e for e in (event.get("email"), traits.get("email")) if e}
    phones = {p for p in (event.get("phone"), traits.get("phone")) if p}
    first, last = (part[:MAX_FIELD_CHARS] for part in norm.names(traits.get("first_name"), traits.get("last_name")))
    house, street = (part[:MAX_FIELD_CHARS] for part in norm.street(traits.get("street")))
    locals_ = set()
    for email in emails:
        local = email.partition("@")[0]
        if _names_a_person(local):
            locals_.add(local)
    return Person(
        first=first, first_canon=norm.NICKNAMES.get(first, first), last=last,
        birthday=norm.birthday(traits.get("birthday")),
        postcode=norm.postcode(traits.get("postcode"))[:MAX_FIELD_CHARS],
        city=norm.name(traits.get("city"))[:MAX_FIELD_CHARS], house=house, street=street,
        gender=norm.name(traits.get("gender"))[:1],
        emails=frozenset(emails), phones=frozenset(phones), locals=frozenset(locals_))


def capped(levels: tuple[int, ...]) -> bool:
    """Whether the pair is one of the agreements strangers reach (see the module): then the score is
    capped at :data:`UNSPECIFIC_MAX`, whatever the model says."""
    shared_local = levels[EMAIL] == _SHARED
    address = bool(levels[POSTCODE] or levels[STREET])
    if not (levels[GIVEN] or levels[BIRTHDAY] or shared_local):
        return True  # a household: family name and address only
    if not (levels[BIRTHDAY] in _BIRTHDAY_AGREES or shared_local or address):
        return True  # a name in a town, or with a birthday one digit off
    if not (levels[FAMILY] or address or shared_local):
        return True  # a given name and a birthday
    # names and a neighbour's house number, no birthday to tell neighbours apart
    return levels[BIRTHDAY] == MISSING and not shared_local and levels[HOUSE] == _HOUSE_NEAR


def score_levels(levels: tuple[int, ...], model: Model) -> float:
    """:func:`score` of a pair from its comparison levels (no identifier shared)."""
    person, household = model.probabilities(levels)
    result = person
    if capped(levels):
        result = min(result, UNSPECIFIC_MAX)
    if result < HOUSEHOLD_SCORE and household >= HOUSEHOLD_SURE and levels[BIRTHDAY] not in _BIRTHDAY_DIFFERS:
        result = HOUSEHOLD_SCORE
    return result


def evidence(a: Person, b: Person, model: Model | None = None) -> dict[str, float]:
    """The evidence of each field in bits (``log2(m / u)`` of its level) and the resulting probabilities,
    for explanations and tests; ``inf`` marks a decisive identifier.

    Keys: the field names of :data:`~streams.domain.resolution.compare.FIELDS`, ``"p_person"`` (the model's
    probability of one person), ``"p_household"`` (of one person or one household), ``"capped"`` (1.0
    when the :data:`UNSPECIFIC_MAX` cap applies) and ``"score"`` (what :func:`score` returns).
    """
    if a.emails & b.emails or a.phones & b.phones:
        return {"identifier": float("inf"), "score": 1.0}
    model = model or default_model()
    levels = compare(a, b)
    person, household = model.probabilities(levels)
    return {**model.weights(levels), "p_person": person, "p_household": household,
            "capped": 1.0 if capped(levels) else 0.0, "score": score_levels(levels, model)}


def levels_of(a: Person, b: Person) -> dict[str, str]:
    """The comparison level of each field, by name (for explanations)."""
    return {name: LEVELS[name][level] for name, level in zip(FIELDS, compare(a, b), strict=True)}


def score(a: Person, b: Person, model: Model | None = None) -> float:
    """Probability in [0, 1] that ``a`` and ``b`` are one person (after the rules above); symmetric."""
    if a.emails & b.emails or a.phones & b.phones:
        return 1.0
    return score_levels(compare(a, b), model or default_model())
