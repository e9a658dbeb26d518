"""The Fellegi-Sunter model of :func:`~streams.domain.resolution.scoring.score`: learned, not hand-set.

A pair of records is described by its comparison levels (:func:`.compare.compare`, one level per field).
For each field ``k`` and level ``l`` the model holds

* ``u[k][l]`` -- how often two records of *different* people show that level: counted on random pairs
  of the records the model is fitted on (nearly all of them are two people);
* ``m[k][l]`` -- how often two records of the *same* person show it: estimated by EM over the pairs
  that blocking compares, where matches are common.

Plain Fellegi-Sunter multiplies the fields' ratios as if the fields were independent. Two dependencies
matter too much for that: people move (a person's records then differ in *every* address field at
once), and people share a family name and an address with their household (two such records agree in
every household field at once, but they are two people). So a compared pair comes from one of four
latent classes, each drawing a field from ``m`` (as one person would) or from ``u`` (as strangers would):

=============  ======================  ===========  ==========================
class          given, order, birthday,  family name  postcode, city, street,
               e-mail, gender                        house number
=============  ======================  ===========  ==========================
``same``       m                        m            m
``moved``      m                        m            u (a new address)
``household``  u                        m            m
``unrelated``  u                        u            u
=============  ======================  ===========  ==========================

except that in a household the given names follow a table ``h`` of their own: members of one
household share a given name no more often than strangers do (EM keeps ``h`` at or below ``u`` for
the agreeing levels). The classes share the tables; EM learns ``m``, ``h`` and the four class weights.
The weights are priors among *all* pairs of the records (blocking compares nearly every pair of one
person but few of the strangers), so the match probability of a pair, ``P(same) + P(moved)`` given
its levels, is a posterior with the right prior: it asks for more evidence among more records.

Details: "missing on either side" is a level like the others (its ``m`` and ``u`` are learned too, and
come out nearly equal); every count gets 0.5 added (no level is impossible); pairs known to be one
person (they share an e-mail address, a phone or a user id) can anchor EM; a field compared on fewer
than :data:`MIN_COMPARED` pairs is not learned (``m = u``); the ``order`` field (names crossed) is
counted but weighs nothing: a crossed reading scores by its name levels like a straight one.

Everything learned is in a JSON file: the package ships ``default_model.json``, fitted on the
generated records of ``make eval-identity`` (``python -m bench.eval_identity --write-model``, with the
generator's shared identifiers as anchors). :func:`fit_model` fits a model on any records.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from streams.domain.resolution.compare import (
    BIRTHDAY,
    CITY,
    EMAIL,
    FAMILY,
    FIELDS,
    GENDER,
    GIVEN,
    HOUSE,
    LEVELS,
    ORDER,
    POSTCODE,
    STREET,
    compare,
)

CLASSES = ("same", "moved", "household", "unrelated")
PERSON_FIELDS = (GIVEN, ORDER, BIRTHDAY, EMAIL, GENDER)
ADDRESS_FIELDS = (POSTCODE, CITY, STREET, HOUSE)
#: For each class, the fields it draws from ``m`` (all others from ``u``, except the household's given
#: names, from ``h``).
M_FIELDS: dict[str, frozenset[int]] = {
    "same": frozenset(range(len(FIELDS))),
    "moved": frozenset((*PERSON_FIELDS, FAMILY)),
    "household": frozenset((FAMILY, *ADDRESS_FIELDS)),
    "unrelated": frozenset(),
}
HOUSEHOLD = CLASSES.index("household")
MATCH_CLASSES = ("same", "moved")

DEFAULT_PATH = Path(__file__).with_name("default_model.json")
FORMAT = "mailpulse-identity-model/1"
RANDOM_PAIRS = 50_000       # random pairs counted for u (fewer when the records have fewer pairs)
MIN_COMPARED = 30           # a field compared on fewer pairs than this is not learned: m = u (no evidence)
_MEMO_SIZE = 8192           # level tuples whose probabilities are kept (a few thousand occur)


@dataclass(frozen=True)
class Model:
    """Learned tables (``m[field][level]``, ``u[field][level]``) and class weights; immutable."""

    m: tuple[tuple[float, ...], ...]
    u: tuple[tuple[float, ...], ...]
    h: tuple[float, ...]                         # given-name levels within a household
    priors: tuple[float, ...]                    # per class of CLASSES, summing to 1
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    _weights: tuple[tuple[tuple[float, ...], ...], ...] = field(init=False, repr=False, compare=False)
    _memo: dict[tuple[int, ...], tuple[float, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.m) != len(FIELDS) or len(self.u) != len(FIELDS) or len(self.priors) != len(CLASSES):
            raise ValueError("model: wrong number of fields or classes")
        for name, m, u in zip(FIELDS, self.m, self.u, strict=True):
            if len(m) != len(LEVELS[name]) or len(u) != len(LEVELS[name]):
                raise ValueError(f"model: field {name!r} needs {len(LEVELS[name])} levels")
            if not all(0 < p <= 1 for p in (*m, *u)):  # (NaN fails too)
                raise ValueError(f"model: field {name!r} has a probability outside (0, 1]")
        if len(self.h) != len(LEVELS["given"]) or not all(0 < p <= 1 for p in self.h):
            raise ValueError("model: bad household given-name table")
        if not all(0 < p < math.inf for p in self.priors):
            raise ValueError("model: a class weight is not a positive number")
        # natural-log tables per class and field
        weights = tuple(tuple(tuple(math.log(p) for p in self.table(c, k)) for k in range(len(FIELDS)))
                        for c in range(len(CLASSES)))
        object.__setattr__(self, "_weights", weights)
        object.__setattr__(self, "_memo", {})

    def table(self, c: int, k: int) -> tuple[float, ...]:
        """The level probabilities of field ``k`` in class ``c`` (an index into :data:`CLASSES`)."""
        if c == HOUSEHOLD and k == GIVEN:
            return self.h
        return self.m[k] if k in M_FIELDS[CLASSES[c]] else self.u[k]

    # --- scoring --------------------------------------------------------------------------------

    def class_log_likelihoods(self, levels: Sequence[int]) -> list[float]:
        """``log P(levels | class)`` for each class of :data:`CLASSES`."""
        return [sum(table[k][level] for k, level in enumerate(levels)) for table in self._weights]

    def posteriors(self, levels: Sequence[int]) -> list[float]:
        """``P(class | levels)`` for each class of :data:`CLASSES`."""
        logs = [math.log(p) + ll for p, ll in zip(self.priors, self.class_log_likelihoods(levels), strict=True)]
        top = max(logs)
        exps = [math.exp(x - top) for x in logs]
        total = sum(exps)
        return [x / total for x in exps]

    def probabilities(self, levels: tuple[int, ...]) -> tuple[float, float]:
        """``(P(one person), P(one person or one household))`` of a pair with these levels (memoized)."""
        found = self._memo.get(levels)
        if found is None:
            same, moved, household, _ = self.posteriors(levels)
            found = (same + moved, same + moved + household)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[levels] = found
        return found

    def weights(self, levels: Sequence[int]) -> dict[str, float]:
        """``log2(m / u)`` of each field's level: the field's evidence for one person, in bits."""
        return {name: math.log2(self.m[k][level] / self.u[k][level]) for k, (name, level) in
                enumerate(zip(FIELDS, levels, strict=True))}

    # --- files ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "info": self.info,
            "classes": {c: _digits(p) for c, p in zip(CLASSES, self.priors, strict=True)},
            "fields": {name: {"levels": list(LEVELS[name]), "m": [_digits(p) for p in self.m[k]],
                              "u": [_digits(p) for p in self.u[k]],
                              **({"h": [_digits(p) for p in self.h]} if k == GIVEN else {})}
                       for k, name in enumerate(FIELDS)},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Model:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"model: not a {FORMAT} file")
        fields = data["fields"]
        for name in FIELDS:
            if list(fields[name]["levels"]) != list(LEVELS[name]):
                raise ValueError(f"model: field {name!r} has other levels than this version compares")
        return cls(m=tuple(tuple(float(p) for p in fields[name]["m"]) for name in FIELDS),
                   u=tuple(tuple(float(p) for p in fields[name]["u"]) for name in FIELDS),
                   h=tuple(float(p) for p in fields["given"]["h"]),
                   priors=tuple(float(data["classes"][c]) for c in CLASSES), info=dict(data.get("info", {})))

    def save(self, path: Path) -> None:
        """Write the model as JSON: one line per field."""
        import json  # the package's only I/O, kept out of import time (the domain imports no JSON library)

        data = self.to_json()
        fields = ",\n".join(f"  {json.dumps(name)}: {json.dumps(table)}" for name, table in data["fields"].items())
        path.write_text(f'{{\n "format": {json.dumps(data["format"])},\n "info": {json.dumps(data["info"])},\n'
                        f' "classes": {json.dumps(data["classes"])},\n "fields": {{\n{fields}\n }}\n}}\n')

    @classmethod
    def load(cls, path: Path) -> Model:
        import json

        try:
            loaded: dict[str, Any] = json.loads(path.read_text())
        except RecursionError:  # (every caller reports a ValueError in one line; this was a traceback)
            raise ValueError(f"model: not a {FORMAT} file (nested too deeply)") from None
        return cls.from_json(loaded)


def _digits(p: float) -> float:
    """Eight significant digits: small probabilities (class weights among millions of pairs) stay > 0."""
    return float(f"{p:.8g}")


_CHOSEN: list[Model] = []  # a fitted model the worker was started with (MAILPULSE_IDENTITY_MODEL)


def use_model(model: Model | None) -> None:
    """Makes ``model`` the one :func:`default_model` returns (None: the shipped one again)."""
    _CHOSEN[:] = [model] if model is not None else []


def default_model() -> Model:
    """The model the stream scores with: the one given to :func:`use_model`, else the shipped one."""
    return _CHOSEN[0] if _CHOSEN else shipped_model()


@lru_cache(maxsize=1)
def shipped_model() -> Model:
    """The shipped model (``default_model.json``, fitted on the generated records of ``make eval-identity``)."""
    if not DEFAULT_PATH.is_file():
        raise FileNotFoundError(f"{DEFAULT_PATH} is missing from this installation: the package data must "
                                'include it ([tool.setuptools.package-data] streams = [..., "resolution/*.json"])')
    return Model.load(DEFAULT_PATH)


# --- fitting ------------------------------------------------------------------------------------------

def _normalized(counts: Sequence[float]) -> tuple[float, ...]:
    total = sum(counts)
    return tuple(c / total for c in counts)


def u_tables(levels: Iterable[tuple[int, ...]], pseudo: float = 0.5) -> tuple[tuple[float, ...], ...]:
    """``u[field][level]`` from the levels of random pairs (with ``pseudo`` added to every count)."""
    counts = [[pseudo] * len(LEVELS[name]) for name in FIELDS]
    for row in levels:
        for k, level in enumerate(row):
            counts[k][level] += 1
    return tuple(_normalized(c) for c in counts)


def random_pairs(n: int, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` distinct random pairs ``(i, j)``, ``i < j < n`` (all pairs when there are fewer)."""
    total = n * (n - 1) // 2
    if total <= count:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    while len(seen) < count:
        i, j = rng.randrange(n), rng.randrange(n)
        if i != j:
            seen.add((min(i, j), max(i, j)))
    return sorted(seen)


def _initial_m(u: Sequence[Sequence[float]]) -> list[list[float]]:
    m: list[list[float]] = []
    for k, name in enumerate(FIELDS):
        n = len(LEVELS[name])
        if k == ORDER:
            m.append([0.95, 0.05])
            continue
        missing = u[k][0]
        rest = [0.5 ** i for i in range(n - 1)]  # exact most likely, then each level half as likely
        scale = (1.0 - missing) / sum(rest)
        m.append([missing, *(r * scale for r in rest)])
    return m


def em(patterns: dict[tuple[int, ...], int], u: Sequence[Sequence[float]],
       m: Sequence[Sequence[float]] | None = None, h: Sequence[float] | None = None,
       priors: Sequence[float] | None = None, max_iterations: int = 500, tolerance: float = 1e-8,
       pseudo: float = 0.5, fixed: Iterable[int] = (), neutral: Iterable[int] = (),
       total_pairs: int | None = None, anchors: dict[tuple[int, ...], int] | None = None) -> EMResult:
    """EM for ``m``, ``h`` and the class weights over compared pairs (``patterns``: level tuple -> count),
    ``u`` fixed. Fields in ``fixed`` keep their ``m``; fields in ``neutral`` take no part in telling the
    classes apart (their ``m`` is only counted). ``pseudo`` is added to every expected count.

    With ``total_pairs`` (all pairs of the records, compared or not) the class weights are those among
    all pairs: blocking compares nearly every pair of one person or household but few of the strangers,
    so a class's weight is its expected number of compared pairs over ``total_pairs`` and strangers take
    the rest. Without it, they are the weights among the compared pairs.

    ``anchors`` (level tuple -> count) are pairs known to be one person (they share an e-mail address, a
    phone number or a user id): they count for the classes ``same`` and ``moved`` only. They pin down
    how often one person's records disagree, which the unlabelled pairs alone leave open (a wrong
    birthday of one person looks like a household member with the same given name).
    """
    import numpy as np

    k_fields = len(FIELDS)
    anchors = anchors or {}
    keys = list(patterns) + list(anchors)
    rows = np.array(keys, dtype=np.int64).reshape(-1, k_fields)
    counts = np.array([*patterns.values(), *anchors.values()], dtype=np.float64)
    known = np.zeros(len(keys), dtype=bool)
    known[len(patterns):] = True
    match_only = np.array([c in MATCH_CLASSES for c in CLASSES])
    mm = [np.array(x, dtype=np.float64) for x in (m if m is not None else _initial_m(u))]
    hh = np.array(h if h is not None else _initial_h(u[GIVEN]), dtype=np.float64)
    neutral = frozenset(neutral)
    log_u = np.stack([np.log(np.asarray(u[k], dtype=np.float64))[rows[:, k]] for k in range(k_fields)], axis=1)
    log_u[:, sorted(neutral)] = 0.0
    if priors is None:
        share = min(0.1, counts.sum() / total_pairs) if total_pairs else 0.1
        priors = (share, share / 5, share / 5, 1 - share * 1.4)
    pri = np.array(priors, dtype=np.float64)
    fixed = frozenset(fixed)
    uses_m = np.array([[k in M_FIELDS[c] for k in range(k_fields)] for c in CLASSES])
    previous = -math.inf
    ll = previous
    iteration = 0
    for iteration in range(1, max_iterations + 1):  # noqa: B007
        log_m = np.stack([np.log(mm[k])[rows[:, k]] for k in range(k_fields)], axis=1)
        log_m[:, sorted(neutral)] = 0.0
        per_class = []
        for c in range(len(CLASSES)):
            fields = np.where(uses_m[c], log_m, log_u)
            if c == HOUSEHOLD:
                fields[:, GIVEN] = np.log(hh)[rows[:, GIVEN]]
            per_class.append(fields.sum(axis=1) + math.log(pri[c]))
        logs = np.stack(per_class, axis=1)
        logs[np.ix_(known, ~match_only)] = -np.inf
        top = logs.max(axis=1, keepdims=True)
        resp = np.exp(logs - top)
        total = resp.sum(axis=1, keepdims=True)
        ll = float(((np.log(total) + top).ravel() * counts)[~known].sum())
        resp = resp / total * counts[:, None]
        if total_pairs:
            pri = resp.sum(axis=0) / total_pairs
            pri[-1] = 1.0 - pri[:-1].sum()
        else:
            pri = resp.sum(axis=0) / counts.sum()
        for k in range(k_fields):
            if k in fixed:
                continue
            drawn = uses_m[:, k].copy()
            if k == GIVEN:
                drawn[HOUSEHOLD] = False
            new = np.bincount(rows[:, k], weights=resp[:, drawn].sum(axis=1), minlength=len(mm[k])) + pseudo
            mm[k] = new / new.sum()
        new = np.bincount(rows[:, GIVEN], weights=resp[:, HOUSEHOLD], minlength=len(hh)) + pseudo
        hh = _household_given(new / new.sum(), u[GIVEN])
        if abs(ll - previous) < tolerance * max(1.0, abs(ll)):
            break
        previous = ll
    return EMResult(m=tuple(tuple(float(p) for p in x) for x in mm), h=tuple(float(p) for p in hh),
                    priors=tuple(float(p) for p in pri), iterations=iteration, log_likelihood=ll)


@dataclass(frozen=True)
class EMResult:
    m: tuple[tuple[float, ...], ...]
    h: tuple[float, ...]
    priors: tuple[float, ...]
    iterations: int
    log_likelihood: float


_AGREE = (1, 2, 3, 4)         # given-name levels exact, typo, jw90, jw80
_DIFFERENT = len(LEVELS["given"]) - 1


def _household_given(h: Any, u_given: Sequence[float]) -> Any:
    """Members of one household share a given name no more often than strangers: the agreeing levels
    of ``h`` are capped at ``u``'s and the excess goes to ``different``. Without this, EM lets the
    household class explain a person's own records whose birthday is wrong."""
    capped = h.copy()
    for level in _AGREE:
        capped[level] = min(h[level], u_given[level])
    capped[_DIFFERENT] += h.sum() - capped.sum()
    return capped


def _initial_h(u_given: Sequence[float]) -> list[float]:
    """Household members: given names as strangers', but agreeing ten times less often."""
    h = [p / 10 if 1 <= level <= 3 else p for level, p in enumerate(u_given)]
    total = sum(h)
    return [p / total for p in h]


def fit_model(persons: Sequence[Any], pairs: Sequence[tuple[int, int]],
              levels: Sequence[tuple[int, ...]] | None = None, random_count: int = RANDOM_PAIRS, seed: int = 0,
              info: dict[str, Any] | None = None, anchors: Sequence[tuple[int, int]] = ()) -> Model:
    """Fit a model on records (:class:`~streams.domain.resolution.scoring.Person`) and the pairs blocking compares.

    Unsupervised: ``u`` from ``random_count`` random pairs of ``persons`` (drawn with ``seed`` by
    position: pass the records in a canonical order for a result that does not depend on input order),
    ``m``, ``h`` and the class weights by :func:`em` over ``pairs`` (``levels``: their comparison
    levels, when already computed). Fields compared on fewer than :data:`MIN_COMPARED` pairs are not
    learned (``m = u``: no evidence either way). ``anchors`` are pairs known to be one person (see
    :func:`em`). ``info`` is recorded in :attr:`Model.info`.
    """
    n = len(persons)
    sample = random_pairs(n, random_count, seed)
    u = list(u_tables(compare(persons[i], persons[j]) for i, j in sample))
    if levels is None:
        levels = [compare(persons[i], persons[j]) for i, j in pairs]
    if anchors:  # a pair known to be one person is not also an unlabelled one
        known = set(anchors)
        levels = [row for pair, row in zip(pairs, levels, strict=True) if pair not in known]
    patterns: Counter[tuple[int, ...]] = Counter(levels)
    if not patterns:
        raise ValueError("fit: no compared pairs")
    compared = [0] * len(FIELDS)
    for row, count in patterns.items():
        for k, level in enumerate(row):
            if level != 0 or k == ORDER:
                compared[k] += count
    not_learned = tuple(FIELDS[k] for k in range(len(FIELDS)) if compared[k] < MIN_COMPARED)
    m_init = _initial_m(tuple(u))
    fixed = []
    for name in not_learned:
        k = FIELDS.index(name)
        m_init[k] = list(u[k])
        fixed.append(k)
    anchored: Counter[tuple[int, ...]] = Counter(compare(persons[i], persons[j]) for i, j in anchors)
    result = em(patterns, u, m_init, fixed=fixed, neutral=(ORDER,), total_pairs=n * (n - 1) // 2,
                anchors=dict(anchored))
    m_list = [list(x) for x in result.m]
    # A crossed reading scores by its name levels like a straight one: the order itself is no evidence
    # (strangers rarely agree crosswise, but that is already in the name levels' u).
    u[ORDER] = tuple(m_list[ORDER])
    meta = {**(info or {}), "records": n, "compared_pairs": sum(patterns.values()), "patterns": len(patterns),
            "anchor_pairs": len(anchors), "random_pairs": len(sample), "em_iterations": result.iterations,
            "log_likelihood": round(result.log_likelihood, 3), "not_learned": list(not_learned)}
    return Model(m=tuple(tuple(x) for x in m_list), u=tuple(tuple(x) for x in u), h=result.h,
                 priors=result.priors, info=meta)
