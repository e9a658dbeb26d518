"""Identity resolution: exact merges through shared identifiers, fuzzy merges of identify records.

Building blocks (pure functions of plain data, so the stream can keep their inputs and outputs in tables):

* :func:`identifier_keys` -- the exact identifiers of an event: ``u:<user_id>``, ``e:<email>``,
  ``a:<anonymous_id>``, ``ph:<E.164 phone>``. Two records sharing one are the same profile (exact merge).
* :func:`blocking_keys` -- where to look for fuzzy candidates, so a record is compared with O(block)
  others, not with everyone (see the function for the keys).
* :func:`streams.domain.resolution.scoring.score` -- the probability that a pair is one person (a learned
  Fellegi-Sunter model, :mod:`streams.domain.resolution.model`).
* :func:`representative` -- the surviving identifier of a cluster, whose :func:`profile_id_for` is the
  cluster's profile id: the smallest ``u:`` key, else the smallest ``e:``, else ``a:``, else ``ph:``.
  For a record alone this is exactly :func:`streams.domain.identity.profile_key`, so unmerged profiles keep
  the ids they had before identity resolution.

Decisions (defaults, all parameters; the thresholds are match probabilities): a pair scoring
``>= merge_threshold`` (0.90) is a link; a pair in ``[possible_threshold, merge_threshold)`` (0.50 .. 0.90)
is only recorded, on both profiles, as a possible match with its score -- a wrong merge is worse than a
missed one. Exact identifiers merge unconditionally. Fuzzy links merge clusters **soundly**: the links
are taken strongest first, and a link joins two clusters only when the pairs across them (at most
:data:`SOUND_CHECK` records of each side) average at least :data:`SOUND_LOGIT` log-odds of one person --
and at least even odds when one of those pairs is more likely two members of one household. So one
record that looks like two people (``J Smith`` with no birthday, at the address of John Smith and of
Jane Smith) joins one of them, not both: a link held back is reported as a possible match instead.
The result does not depend on the order of the input.

Two ways to run it:

* :func:`resolve_all` / :func:`resolve_batch` (the ``mailpulse resolve`` command): all records are
  blocked first, then scored and clustered. Order-independent: the same records in any order give the
  same clusters, the same profile ids and the same possible matches. A block with more than
  ``max_block`` records (a very common name in a big postcode, say) is skipped whole and counted in
  :attr:`BatchResult.skipped_blocks`: its records are still found through their other keys. By default
  the shipped model scores (the stream's); ``fit=True`` fits the model on the records first
  (unsupervised, :func:`streams.domain.resolution.model.fit_model`; pairs that share an identifier are its
  anchors).
* :class:`Resolver` (incremental, for the stream): :meth:`Resolver.add` one event at a time and get its
  :class:`Resolution` right away. After all records are added its clusters equal the batch ones as long
  as no block outgrew ``max_block`` (the same pairs are scored; components do not depend on order).
  The difference: a block is dropped once it outgrows the cap, but the pairs scored while it was
  smaller stay, so with oversized blocks the incremental result can depend on arrival order. A profile
  id reported earlier can also change later, when a merge brings in a smaller representative -- that is
  what ``merged_with`` reports. The soundness check sees the clusters as they are when a record
  arrives, so when it holds a link back the result can depend on arrival order too.

The stream (:mod:`.blocks`) reports links pair by pair, block by block: it cannot see clusters, so its
profiles are the connected components of the links (no soundness check there).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.domain.identity import profile_id_for, rank
from streams.domain.identity_graph import over_limits
from streams.domain.resolution.compare import compare
from streams.domain.resolution.model import Model, default_model, fit_model
from streams.domain.resolution.normalize import phonetic
from streams.domain.resolution.scoring import Person, person_of, score, score_levels

MERGE_THRESHOLD = 0.90      # match probability at or above which a pair is linked
POSSIBLE_THRESHOLD = 0.50   # ... and from which it is a possible match
MAX_BLOCK = 50             # records in a block past which it is not compared any more
SOUND_LOGIT = -3.0          # clusters join when the pairs across them average at least these log-odds
SOUND_CHECK = 20            # records of each cluster checked against the other's


def identifier_keys(event: dict[str, Any]) -> list[str]:
    """The exact identifier keys of an accepted event (e-mails and phones from the traits too), sorted."""
    traits: dict[str, Any] = event.get("traits") or {}
    keys: set[str] = set()
    if user_id := event.get("user_id"):
        keys.add(f"u:{user_id}")
    for email in (event.get("email"), traits.get("email")):
        if email:
            keys.add(f"e:{email}")
    if anonymous_id := event.get("anonymous_id"):
        keys.add(f"a:{anonymous_id}")
    for phone in (event.get("phone"), traits.get("phone")):
        if phone:
            keys.add(f"ph:{phone}")
    return sorted(keys)


def representative(keys: Iterable[str]) -> str:
    """The cluster's surviving identifier key: smallest ``u:``, else ``e:``, else ``a:``, else ``ph:``."""
    return min(keys, key=rank)


def blocking_keys(person: Person) -> list[str]:
    """Candidate blocks of a record; two records are compared when they share one.

    * ``b|<year><min(month,day)><max(month,day)>|<initial>`` for the initial of each name part --
      birthday (day/month-swap tolerant) with a name initial (survives typos, swaps, nicknames of the other part);
    * ``d|<the same birthday stamp>|<first two postcode characters>`` -- birthday in a region, whatever
      the names (both names replaced or mistyped);
    * ``n|<phonetic>|<phonetic>`` -- the phonetic keys of canonical given name and family name, sorted
      (survives swapped names, nicknames, most typos; finds people whose birthday is missing or mistyped);
    * ``z|<postcode>|<phonetic>`` for each name part -- postcode with a phonetic name;
    * ``h|<house number>|<phonetic street>|<city initial>`` and ``p|<postcode>|<phonetic street>`` -- the
      address with the street's words joined (spaces and typos after the first letters do not matter),
      for records whose names and birthday are both off;
    * ``l|<e-mail local part>`` -- the same mailbox name at another domain.

    A record without any name (e.g. a non-identify event) has no blocks: it only links identifiers.
    Measured on ``make eval-identity``: these keys compare 98.5-99.8% of the true pairs of each data
    set (the pairs completeness it prints).
    """
    if not (person.first or person.last):
        return []
    keys: list[str] = []
    ph_first = phonetic(person.first_canon) if person.first else ""
    ph_last = phonetic(person.last) if person.last else ""
    if bday := person.birthday:
        month, day = bday[5:7], bday[8:10]
        stamp = bday[:4] + (month + day if month <= day else day + month)
        for initial in sorted({person.first[:1], person.last[:1]} - {""}):
            keys.append(f"b|{stamp}|{initial}")
        if person.postcode:
            keys.append(f"d|{stamp}|{person.postcode[:2]}")
    if ph_first and ph_last:
        keys.append("n|" + "|".join(sorted((ph_first, ph_last))))
    if person.postcode:
        for ph in sorted({ph_first, ph_last} - {""}):
            keys.append(f"z|{person.postcode}|{ph}")
    if street_key := phonetic(person.street):
        if person.house and person.city:
            keys.append(f"h|{person.house.split()[0]}|{street_key}|{person.city[0]}")
        if person.postcode:
            keys.append(f"p|{person.postcode}|{street_key}")
    for local in sorted(person.locals):
        keys.append(f"l|{local}")
    return keys


@dataclass(frozen=True, slots=True)
class Resolution:
    """What adding one event did: its profile now, the profiles merged into it, its possible matches."""

    profile_id: str
    merged_with: list[str] = field(default_factory=list)   # profile ids that no longer exist (merged into it)
    possible_matches: list[tuple[str, float]] = field(default_factory=list)  # (profile id, score), best first
    exact_merges: int = 0   # how many of merged_with came through a shared identifier
    fuzzy_merges: int = 0   # ... and how many only through a fuzzy match


@dataclass(frozen=True, slots=True)
class BatchResult:
    """:func:`resolve_batch`: one profile id per input event, in input order, and what led there."""

    profile_ids: list[str]
    possible_matches: dict[str, list[tuple[str, float]]]  # profile id -> (other profile id, score), best first
    pairs_scored: int
    skipped_blocks: int          # blocks over max_block, not compared
    fuzzy_links: int             # scored pairs at or above the merge threshold
    held_back: int = 0           # of those, links that would have joined two clusters unsoundly
    model: Model | None = None   # the model that scored (the shipped one unless fitted)


class UnionFind:
    """Clusters of record numbers; a cluster is named by its smallest number."""

    def __init__(self, n: int = 0) -> None:
        self.parent = list(range(n))

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, i: int, j: int) -> int:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            if rj < ri:
                ri, rj = rj, ri
            self.parent[rj] = ri
        return ri


def _sound(persons: Sequence[Person], model: Model, left: Sequence[int], right: Sequence[int]) -> bool:
    """Whether two clusters may join: the pairs across them (at most :data:`SOUND_CHECK` records of each
    side) average at least :data:`SOUND_LOGIT` log-odds of one person, and at least even odds when one
    of those pairs is more likely two members of one household (a shared identifier counts as certain)."""
    total = 0.0
    count = 0
    household = False
    for x in left[:SOUND_CHECK]:
        a = persons[x]
        for y in right[:SOUND_CHECK]:
            b = persons[y]
            if a.emails & b.emails or a.phones & b.phones:
                total += log_odds(1.0)
            else:
                person, related = model.probabilities(compare(a, b))
                total += log_odds(person)
                household = household or related - person > 0.5
            count += 1
    return total >= (0.0 if household else SOUND_LOGIT) * count


def log_odds(p: float) -> float:
    """``ln(p / (1 - p))``, with ``p`` kept within [1e-9, 1 - 1e-9]."""
    p = min(max(p, 1e-9), 1.0 - 1e-9)
    return math.log(p / (1.0 - p))


def _check(merge_threshold: float, possible_threshold: float) -> None:
    if not 0.0 < possible_threshold <= merge_threshold <= 1.0:
        raise ValueError("need 0 < possible_threshold <= merge_threshold <= 1")


def candidate_pairs(persons: Sequence[Person], max_block: int = MAX_BLOCK,
                    order: Sequence[int] | None = None) -> tuple[list[tuple[int, int]], int]:
    """The pairs blocking compares (``(i, j)`` with ``i`` before ``j`` in ``order``, each once, in a
    canonical order) and the number of blocks skipped for holding more than ``max_block`` records."""
    blocks: dict[str, list[int]] = defaultdict(list)
    for i in order if order is not None else range(len(persons)):
        for key in blocking_keys(persons[i]):
            blocks[key].append(i)
    n = len(persons)
    seen: set[int] = set()
    pairs: list[tuple[int, int]] = []
    skipped = 0
    for members in blocks.values():
        size = len(members)
        if size < 2:
            continue
        if size > max_block:
            skipped += 1
            continue
        for x in range(size - 1):
            i = members[x]
            base = i * n
            for j in members[x + 1:]:
                if base + j not in seen:
                    seen.add(base + j)
                    pairs.append((i, j))
    return pairs, skipped


def resolve_batch(events: Sequence[dict[str, Any]], merge_threshold: float = MERGE_THRESHOLD,
                  possible_threshold: float = POSSIBLE_THRESHOLD, max_block: int = MAX_BLOCK,
                  model: Model | None = None, fit: bool = False,
                  limits: Mapping[str, int] | None = None) -> BatchResult:
    """Resolve accepted identify events all at once; the result does not depend on their order.

    ``model`` scores the pairs (default: the shipped one); with ``fit`` a model is first fitted on these
    records (:func:`streams.domain.resolution.model.fit_model`, unsupervised) and used instead.
    ``limits`` (``identity.max_per_profile``: kind -> most identifiers of it per profile) keeps apart, as
    a possible match of score 0, two profiles that together would pass them, as the stream does: shared
    identifiers join records in event-time order, so the first to come are together and the rest stay
    apart (a family address, a kiosk's browser id); a fuzzy link is held back the same way.
    """
    _check(merge_threshold, possible_threshold)
    n = len(events)
    persons = [person_of(e) for e in events]
    ids = [identifier_keys(e) for e in events]
    # A canonical order by content: blocks, pair orientation and tie-breaks never see the input order.
    order = sorted(range(n), key=lambda i: (persons[i].sort_key(), ids[i]))
    position = [0] * n
    for pos, i in enumerate(order):
        position[i] = pos
    uf = UnionFind(n)
    fits = _Limits(uf, ids, limits)
    owner: dict[str, int] = {}
    refused: list[tuple[int, int, float]] = []  # shared identifiers the limits kept apart
    for i in sorted(order, key=lambda i: (events[i].get("ts", 0), position[i])):
        for key in ids[i]:
            j = owner.setdefault(key, i)
            if j != i and not fits.join(i, j):
                refused.append((i, j, 0.0))
    candidates, skipped = candidate_pairs(persons, max_block, order)
    find = uf.find
    pairs: list[tuple[int, int]] = []
    same: list[tuple[int, int]] = []  # already one profile (shared identifiers): nothing to decide
    for i, j in candidates:
        (same if find(i) == find(j) else pairs).append((i, j))
    levels = [compare(persons[i], persons[j]) for i, j in pairs]
    if fit:
        model = fit_model([persons[i] for i in order], [(position[i], position[j]) for i, j in pairs],
                          levels=levels, anchors=[(position[i], position[j]) for i, j in same],
                          info={"fitted_on": "the records resolved"})
    model = model or default_model()
    memo: dict[tuple[int, ...], float] = {}
    links: list[tuple[float, int, int, int, int]] = []
    possible: list[tuple[int, int, float]] = []
    for (i, j), pair_levels in zip(pairs, levels, strict=True):
        s = memo.get(pair_levels)
        if s is None:
            s = memo[pair_levels] = score_levels(pair_levels, model)
        if s >= merge_threshold:
            a, b = (position[i], position[j]) if position[i] < position[j] else (position[j], position[i])
            links.append((-s, a, b, i, j))
        elif s >= possible_threshold:
            possible.append((i, j, s))
    links.sort()
    clusters = _Clusters(uf, persons, model, order, fits)
    held_back = 0
    for negative, _, _, i, j in links:
        if not clusters.join(i, j):
            held_back += 1
            possible.append((i, j, -negative))
    possible += [(i, j, s) for i, j, s in refused if find(i) != find(j)]
    keys_of: dict[int, set[str]] = defaultdict(set)
    for i in range(n):
        keys_of[find(i)].update(ids[i])
    pid_of_root = {root: profile_id_for(representative(keys)) for root, keys in keys_of.items()}
    profile_ids = [pid_of_root[find(i)] for i in range(n)]
    best: dict[str, dict[str, float]] = defaultdict(dict)
    for i, j, s in possible:
        pa, pb = profile_ids[i], profile_ids[j]
        if pa != pb and s > best[pa].get(pb, -1.0):
            best[pa][pb] = s
            best[pb][pa] = s
    matches = {pid: sorted(((other, round(s, 4)) for other, s in others.items()), key=lambda m: (-m[1], m[0]))
               for pid, others in sorted(best.items())}
    return BatchResult(profile_ids, matches, len(pairs), skipped, len(links), held_back, model)


class _Clusters:
    """Union of clusters with the soundness check: a link joins two clusters only when the pairs across
    them (at most :data:`SOUND_CHECK` records of each, the first in canonical order) average at least
    :data:`SOUND_LOGIT` log-odds of being one person."""

    def __init__(self, uf: UnionFind, persons: Sequence[Person], model: Model, order: Sequence[int],
                 fits: _Limits) -> None:
        self.uf = uf
        self.persons = persons
        self.model = model
        self.order = order
        self.fits = fits
        # members by canonical position (so the records checked do not depend on input order)
        self.members: dict[int, list[int]] = defaultdict(list)
        for pos, i in enumerate(order):
            self.members[uf.find(i)].append(pos)

    def join(self, i: int, j: int) -> bool:
        """Join the clusters of ``i`` and ``j`` if sound; whether they are one cluster afterwards."""
        ri, rj = self.uf.find(i), self.uf.find(j)
        if ri == rj:
            return True
        if not self.fits.within(ri, rj):  # (a set union: before the soundness check's model scores)
            return False
        order = self.order
        left, right = self.members[ri], self.members[rj]
        if not _sound(self.persons, self.model, [order[p] for p in left[:SOUND_CHECK]],
                      [order[p] for p in right[:SOUND_CHECK]]):
            return False
        root = self.fits.union(ri, rj)
        self.members[root] = sorted(self.members.pop(ri) + self.members.pop(rj))
        return True


class _Limits:
    """The identifiers of each cluster, and whether two clusters together stay within the identity
    limits (None: no limits)."""

    def __init__(self, uf: UnionFind, ids: Sequence[Sequence[str]], limits: Mapping[str, int] | None) -> None:
        self.uf, self.limits = uf, limits
        self.keys: dict[int, set[str]] = {i: set(keys) for i, keys in enumerate(ids)} if limits is not None else {}

    def within(self, a: int, b: int) -> bool:
        limits = self.limits
        return limits is None or not over_limits(self.keys[self.uf.find(a)] | self.keys[self.uf.find(b)], limits)

    def union(self, a: int, b: int) -> int:
        """Joins the clusters of ``a`` and ``b`` (whether they fit is :meth:`within`'s); the root."""
        ra, rb = self.uf.find(a), self.uf.find(b)
        root = self.uf.union(ra, rb)
        if self.limits is not None and ra != rb:
            other = rb if root == ra else ra
            self.keys[root] |= self.keys.pop(other)
        return root

    def join(self, a: int, b: int) -> bool:
        if self.uf.find(a) == self.uf.find(b):
            return True
        if not self.within(a, b):
            return False
        self.union(a, b)
        return True


def resolve_all(events: Sequence[dict[str, Any]], merge_threshold: float = MERGE_THRESHOLD,
                possible_threshold: float = POSSIBLE_THRESHOLD, max_block: int = MAX_BLOCK) -> list[str]:
    """The profile id of each accepted identify event, in input order (order-independent values)."""
    return resolve_batch(events, merge_threshold, possible_threshold, max_block).profile_ids


class Resolver:
    """Incremental resolution: :meth:`add` events one by one. All state is in plain dicts and lists.

    Not thread-safe; one instance per partition of the identity graph.
    """

    def __init__(self, merge_threshold: float = MERGE_THRESHOLD, possible_threshold: float = POSSIBLE_THRESHOLD,
                 max_block: int = MAX_BLOCK, model: Model | None = None) -> None:
        _check(merge_threshold, possible_threshold)
        self.merge_threshold = merge_threshold
        self.possible_threshold = possible_threshold
        self.max_block = max_block
        self.model = model or default_model()
        self._persons: list[Person] = []
        self._uf = UnionFind()
        self._owner: dict[str, int] = {}            # identifier key -> first record that carried it
        self._rep: dict[int, str] = {}              # cluster root -> representative identifier key
        self._members: dict[int, list[int]] = {}    # cluster root -> its records
        self._blocks: dict[str, list[int]] = {}     # blocking key -> records
        self._oversized: set[str] = set()           # blocks dropped for outgrowing max_block
        self._possible: dict[int, dict[int, float]] = defaultdict(dict)  # record -> other record -> score

    def __len__(self) -> int:
        return len(self._persons)

    def profile_id(self, record: int) -> str:
        """The current profile id of the ``record``-th added event."""
        return profile_id_for(self._rep[self._uf.find(record)])

    def add(self, event: dict[str, Any]) -> Resolution:
        """Add one accepted identify event (or any accepted event: it then only links identifiers).

        Exact identifiers merge first; then the fuzzy links, strongest first, each only when sound
        (see the module); a link held back is kept as a possible match.
        """
        person = person_of(event)
        keys = identifier_keys(event)
        uf = self._uf
        i = uf.add()
        self._persons.append(person)
        self._rep[i] = representative(keys)
        self._members[i] = [i]
        exact_roots: set[int] = set()
        for key in keys:
            j = self._owner.setdefault(key, i)
            if j != i:
                exact_roots.add(uf.find(j))
        links: list[tuple[float, int]] = []
        for j in sorted(self._candidates(person, i)):
            s = score(person, self._persons[j], self.model)
            if s >= self.merge_threshold:
                links.append((-s, j))
            elif s >= self.possible_threshold:
                self._possible[i][j] = s
                self._possible[j][i] = s
        before = {root: profile_id_for(self._rep[root]) for root in exact_roots | {uf.find(j) for _, j in links}}
        root = i
        for other in sorted(exact_roots):
            root = self._union(root, other)
        for negative, j in sorted(links):
            other = uf.find(j)
            if other == root:
                continue
            if _sound(self._persons, self.model, self._members[root], self._members[other]):
                root = self._union(root, other)
            else:
                self._possible[i][j] = self._possible[j][i] = -negative
        profile_id = profile_id_for(self._rep[root])
        merged = sorted({pid for r, pid in before.items() if pid != profile_id and uf.find(r) == root})
        exact_pids = {before[r] for r in exact_roots}
        n_exact = sum(1 for pid in merged if pid in exact_pids)
        return Resolution(profile_id, merged, self.possible_matches(i), n_exact, len(merged) - n_exact)

    def possible_matches(self, record: int) -> list[tuple[str, float]]:
        """Possible matches (other profile id, best score) of the profile of the ``record``-th event."""
        uf = self._uf
        root = uf.find(record)
        best: dict[str, float] = {}
        for member in self._members[root]:
            for other, s in self._possible.get(member, {}).items():
                other_root = uf.find(other)
                if other_root != root:
                    pid = profile_id_for(self._rep[other_root])
                    if s > best.get(pid, -1.0):
                        best[pid] = s
        return sorted(((pid, round(s, 4)) for pid, s in best.items()), key=lambda m: (-m[1], m[0]))

    def _candidates(self, person: Person, i: int) -> set[int]:
        found: set[int] = set()
        for key in blocking_keys(person):
            if key in self._oversized:
                continue
            members = self._blocks.setdefault(key, [])
            if len(members) >= self.max_block:
                self._oversized.add(key)
                del self._blocks[key]
                continue
            found.update(members)
            members.append(i)
        return found

    def _union(self, a: int, b: int) -> int:
        ra, rb = self._uf.find(a), self._uf.find(b)
        if ra == rb:
            return ra
        root = self._uf.union(ra, rb)
        gone = rb if root == ra else ra
        self._members[root].extend(self._members.pop(gone))
        self._rep[root] = min(self._rep[root], self._rep.pop(gone), key=rank)
        return root
