"""Identity resolution: exact merges through shared identifiers, fuzzy merges of identify records.

Building blocks (pure functions of plain data, so the stream can keep their inputs and outputs in tables):

* :func:`identifier_keys` -- the exact identifiers of an event: ``u:<user_id>``, ``e:<email>``,
  ``a:<anonymous_id>``, ``ph:<E.164 phone>``. Two records sharing one are the same profile (exact merge).
* :func:`blocking_keys` -- where to look for fuzzy candidates, so a record is compared with O(block)
  others, not with everyone (see the function for the keys).
* :func:`streams.resolution.scoring.score` -- the field-aware pair score in [0, 1].
* :func:`representative` -- the surviving identifier of a cluster, whose :func:`profile_id_for` is the
  cluster's profile id: the smallest ``u:`` key, else the smallest ``e:``, else ``a:``, else ``ph:``.
  For a record alone this is exactly :func:`streams.identity.profile_key`, so unmerged profiles keep
  the ids they had before identity resolution.

Decisions (defaults, all parameters): a pair scoring ``>= merge_threshold`` (0.90) is merged; a pair in
``[possible_threshold, merge_threshold)`` (0.50 .. 0.90) is only recorded, on both profiles, as a
possible match with its score -- a wrong merge is worse than a missed one. Merges are transitive (the
clusters are the connected components of exact links and fuzzy pairs above the threshold), so the
result does not depend on the order pairs are looked at.

Two ways to run it:

* :func:`resolve_all` / :func:`resolve_batch` (the ``mailpulse resolve`` command): all records are
  blocked first, then scored and clustered. Order-independent: the same records in any order give the
  same clusters, the same profile ids and the same possible matches. A block with more than
  ``max_block`` records (a very common name in a big postcode, say) is skipped whole and counted in
  :attr:`BatchResult.skipped_blocks`: its records are still found through their other keys.
* :class:`Resolver` (incremental, for the stream): :meth:`Resolver.add` one event at a time and get its
  :class:`Resolution` right away. After all records are added its clusters equal the batch ones as long
  as no block outgrew ``max_block`` (the same pairs are scored; components do not depend on order).
  The difference: a block is dropped once it outgrows the cap, but the pairs scored while it was
  smaller stay, so with oversized blocks the incremental result can depend on arrival order. A profile
  id reported earlier can also change later, when a merge brings in a smaller representative -- that is
  what ``merged_with`` reports.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.identity import profile_id_for, rank
from streams.resolution.normalize import phonetic
from streams.resolution.scoring import Person, person_of, score

MERGE_THRESHOLD = 0.90
POSSIBLE_THRESHOLD = 0.50
MAX_BLOCK = 100


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
    * ``n|<phonetic>|<phonetic>`` -- the phonetic keys of canonical given name and family name, sorted
      (survives swapped names, nicknames, most typos; finds people whose birthday is missing or mistyped);
    * ``z|<postcode>|<phonetic>`` for each name part -- postcode with a phonetic name;
    * ``l|<e-mail local part>`` -- the same mailbox name at another domain.

    A record without any name (e.g. a non-identify event) has no blocks: it only links identifiers.
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
    if ph_first and ph_last:
        keys.append("n|" + "|".join(sorted((ph_first, ph_last))))
    if person.postcode:
        for ph in sorted({ph_first, ph_last} - {""}):
            keys.append(f"z|{person.postcode}|{ph}")
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


class _UnionFind:
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


def _check(merge_threshold: float, possible_threshold: float) -> None:
    if not 0.0 < possible_threshold <= merge_threshold <= 1.0:
        raise ValueError("need 0 < possible_threshold <= merge_threshold <= 1")


def resolve_batch(events: Sequence[dict[str, Any]], merge_threshold: float = MERGE_THRESHOLD,
                  possible_threshold: float = POSSIBLE_THRESHOLD, max_block: int = MAX_BLOCK) -> BatchResult:
    """Resolve accepted identify events all at once; the result does not depend on their order."""
    _check(merge_threshold, possible_threshold)
    n = len(events)
    persons = [person_of(e) for e in events]
    ids = [identifier_keys(e) for e in events]
    # A canonical order by content: blocks, pair orientation and tie-breaks never see the input order.
    order = sorted(range(n), key=lambda i: (persons[i].sort_key(), ids[i]))
    uf = _UnionFind(n)
    owner: dict[str, int] = {}
    for i in order:
        for key in ids[i]:
            j = owner.setdefault(key, i)
            if j != i:
                uf.union(i, j)
    blocks: dict[str, list[int]] = defaultdict(list)
    for i in order:
        for key in blocking_keys(persons[i]):
            blocks[key].append(i)
    seen: set[tuple[int, int]] = set()
    possible: list[tuple[int, int, float]] = []
    skipped = scored = links = 0
    find = uf.find
    for members in blocks.values():
        size = len(members)
        if size < 2:
            continue
        if size > max_block:
            skipped += 1
            continue
        for x in range(size - 1):
            i = members[x]
            pi = persons[i]
            for y in range(x + 1, size):
                j = members[y]
                if (i, j) in seen:
                    continue
                seen.add((i, j))
                if find(i) == find(j):
                    continue  # already one profile: its score changes nothing
                s = score(pi, persons[j])
                scored += 1
                if s >= merge_threshold:
                    uf.union(i, j)
                    links += 1
                elif s >= possible_threshold:
                    possible.append((i, j, s))
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
    return BatchResult(profile_ids, matches, scored, skipped, links)


def resolve_all(events: Sequence[dict[str, Any]], merge_threshold: float = MERGE_THRESHOLD,
                possible_threshold: float = POSSIBLE_THRESHOLD, max_block: int = MAX_BLOCK) -> list[str]:
    """The profile id of each accepted identify event, in input order (order-independent values)."""
    return resolve_batch(events, merge_threshold, possible_threshold, max_block).profile_ids


class Resolver:
    """Incremental resolution: :meth:`add` events one by one. All state is in plain dicts and lists.

    Not thread-safe; one instance per partition of the identity graph.
    """

    def __init__(self, merge_threshold: float = MERGE_THRESHOLD, possible_threshold: float = POSSIBLE_THRESHOLD,
                 max_block: int = MAX_BLOCK) -> None:
        _check(merge_threshold, possible_threshold)
        self.merge_threshold = merge_threshold
        self.possible_threshold = possible_threshold
        self.max_block = max_block
        self._persons: list[Person] = []
        self._uf = _UnionFind()
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
        """Add one accepted identify event (or any accepted event: it then only links identifiers)."""
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
        fuzzy_roots: set[int] = set()
        for j in sorted(self._candidates(person, i)):
            s = score(person, self._persons[j])
            if s >= self.merge_threshold:
                fuzzy_roots.add(uf.find(j))
            elif s >= self.possible_threshold:
                self._possible[i][j] = s
                self._possible[j][i] = s
        before = {root: profile_id_for(self._rep[root]) for root in exact_roots | fuzzy_roots}
        root = i
        for other in sorted(exact_roots | fuzzy_roots):
            root = self._union(root, other)
        profile_id = profile_id_for(self._rep[root])
        merged = sorted({pid for pid in before.values() if pid != profile_id})
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
