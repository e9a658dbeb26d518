"""Possible matches of a profile, named by the other person's profile as it is now, whatever order
the identity graph's messages arrive in.

A fuzzy-matching block scores two person records and sends ``_possible`` to both keys.  Either key
may since have become, or later become, part of a bigger profile (``_absorb``, ``_link``), so the
pair's names go stale.  The state keeps what arrived, as order-free facts, and the published view is
derived from them (:func:`view`):

- **entries** ``[mine, other, score]``: a scored pair, ``mine`` the key this side had when it was
  scored, ``other`` the key of the other side then; one per (mine, other), the highest score.
- **aliases** ``{old key: new key}``: the other side told us that ``old`` is now part of the profile
  at ``new`` (an ``_alias`` message); with several, the smallest by :func:`streams.domain.identity.rank`
  (a person's root only ever moves to a smaller key).

The profile that holds an entry whose ``mine`` is not its own key sends ``_alias {old: mine, new:
own key}`` to ``other`` (:func:`aliases_to_send`): when it records the pair and whenever an absorb
brings the entry to a new root.  So each side ends up knowing the other's root, and the view names
each other person once, by the profile id of that root, without the profile's own keys.

All of it is unions and maxima: delivered twice or in any order, the same view comes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from streams.domain.identity import profile_id_for, rank

#: Message type: "the key ``old`` is now part of the profile at ``new``".
ALIAS = "_alias"
#: Message type: "the person at ``keys`` was erased: take out every match naming them".
UNMATCH = "_unmatch"

Entry = list[Any]  # [mine, other, score]
#: Most entries a profile keeps by default (the best by score; ``limits.possible_matches``); a drop is counted
#: (``mailpulse_profile_entries_dropped_total{collection="possible_matches"}``).
MOST = 100


def _legacy(entry: Any) -> tuple[str, float] | None:
    """(profile id, score) of an entry written before entries named keys: ``{"profile_id", "score"}``
    (or a ``[profile_id, score]`` pair); ``None`` for a ``[mine, other, score]`` entry."""
    if isinstance(entry, Mapping):
        return entry["profile_id"], entry["score"]
    return (entry[0], entry[1]) if len(entry) == 2 else None


def record(entries: list[Entry], mine: str, other: str, score: float) -> bool:
    """Adds the scored pair (or raises its score); whether anything changed."""
    for entry in entries:
        if _legacy(entry) is None and entry[0] == mine and entry[1] == other:
            if score <= entry[2]:
                return False
            entry[2] = score
            return True
    entries.append([mine, other, score])
    entries.sort(key=_order)
    return True


def trim(entries: list[Any], most: int = MOST) -> int:
    """Keeps the ``most`` (config ``limits.possible_matches``) best entries (highest score, then the
    order of :func:`_order`); how many were dropped.  Top-N of a union is the top-N of the parts'
    top-N, so trimming keeps the view order-free."""
    if len(entries) <= most:
        return 0
    kept = sorted(entries, key=_best)[:most]
    dropped = len(entries) - most
    entries[:] = sorted(kept, key=_order)
    return dropped


def _best(entry: Any) -> tuple[float, tuple[int, str, str]]:
    legacy = _legacy(entry)
    return (-(legacy[1] if legacy is not None else entry[2]), _order(entry))


def _order(entry: Any) -> tuple[int, str, str]:
    legacy = _legacy(entry)
    return (1, entry[0], entry[1]) if legacy is None else (0, legacy[0], "")


def union(a: Iterable[Any], b: Iterable[Any]) -> list[Any]:
    """Both sides' entries, each pair once with its highest score.  Entries written before entries
    named keys are kept, as ``{"profile_id", "score"}``."""
    pairs: dict[tuple[str, str], float] = {}
    legacy: dict[str, float] = {}
    for entry in (*a, *b):
        old = _legacy(entry)
        if old is not None:
            legacy[old[0]] = max(legacy.get(old[0], old[1]), old[1])
        else:
            pair = (entry[0], entry[1])
            pairs[pair] = max(pairs.get(pair, entry[2]), entry[2])
    merged: list[Any] = [[mine, other, score] for (mine, other), score in pairs.items()]
    merged += [{"profile_id": pid, "score": score} for pid, score in legacy.items()]
    return sorted(merged, key=_order)


def add_alias(aliases: dict[str, str], old: str, new: str) -> bool:
    """Notes that ``old`` is now part of the profile at ``new``; whether anything changed."""
    current = aliases.get(old)
    if old == new or (current is not None and rank(current) <= rank(new)):
        return False
    aliases[old] = new
    return True


def union_aliases(a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, str]:
    merged = dict(a)
    for old, new in b.items():
        add_alias(merged, old, new)
    return merged


def aliases_to_send(entries: Iterable[Any], own_key: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(target key, _alias message)`` for each entry held under another key of this person."""
    for entry in entries:  # one per (mine, other): one message each
        if _legacy(entry) is None and entry[0] != own_key:
            yield entry[1], {"type": ALIAS, "old": entry[0], "new": own_key}


def withdrawals(entries: Iterable[Any], own_key: str) -> list[tuple[str, dict[str, Any]]]:
    """``(target key, _unmatch message)`` for each other person an erased profile's entries name: the
    keys this side was scored under, so the other side drops the pairs (and aliases) naming them."""
    scored_as: dict[str, set[str]] = {}
    for entry in entries:
        if _legacy(entry) is None:
            scored_as.setdefault(entry[1], {own_key}).add(entry[0])
    return [(other, {"type": UNMATCH, "keys": sorted(keys)}) for other, keys in sorted(scored_as.items())]


def withdraw(entries: list[Any], aliases: dict[str, str], keys: Iterable[str]) -> bool:
    """Takes out the entries whose other side is one of ``keys`` (an erased person's), by the key it was
    scored under or the one an alias leads to, and the aliases of those keys; whether anything changed.
    (An entry written before entries named keys goes when it names one of the keys' profile ids.)"""
    gone = set(keys)
    pids = {profile_id_for(key) for key in gone}
    kept = [entry for entry in entries
            if not ((legacy[0] in pids) if (legacy := _legacy(entry)) is not None
                    else (entry[1] in gone or resolve(aliases, entry[1]) in gone))]
    stale = [old for old, new in aliases.items() if old in gone or new in gone]
    for old in stale:
        del aliases[old]
    if len(kept) == len(entries):
        return bool(stale)
    entries[:] = kept
    return True


def trim_aliases(aliases: dict[str, str], entries: Iterable[Any], most: int) -> int:
    """Keeps at most ``most`` (config ``limits.match_aliases``) aliases; how many were dropped.  An alias
    can arrive before the entry it renames, so all are kept while there is room, and below the bound
    the view is the same whatever order messages come in.  Past it, those no entry leads to go first,
    then those the view follows; each group by the key that sorts last
    (:func:`streams.domain.identity.rank`).  There order counts: an alias dropped before its entry
    arrived is not sent again, and the view names that match by the key it was scored under."""
    excess = len(aliases) - most
    if excess <= 0:
        return 0
    followed: set[str] = set()
    for entry in entries:
        if _legacy(entry) is None:
            key = entry[1]
            for _ in range(64):  # as far as :func:`resolve` goes
                nxt = aliases.get(key)
                if nxt is None or rank(nxt) >= rank(key) or key in followed:
                    break
                followed.add(key)
                key = nxt
    for old in sorted(aliases, key=lambda old: (old not in followed, rank(old)), reverse=True)[:excess]:
        del aliases[old]
    return excess


def resolve(aliases: Mapping[str, str], key: str) -> str:
    """The key ``key`` is known to be part of now (following aliases; they only lead to smaller keys)."""
    for _ in range(64):
        nxt = aliases.get(key)
        if nxt is None or rank(nxt) >= rank(key):
            return key
        key = nxt
    return key


def view(entries: Iterable[Any], aliases: Mapping[str, str], own_keys: set[str]) -> list[dict[str, Any]]:
    """The published ``possible_matches``: ``{"profile_id", "score"}`` per other person, best first
    (then by profile id); none of the profile's own keys."""
    best: dict[str, float] = {}
    for entry in entries:
        old = _legacy(entry)
        pid, score = old if old is not None else (profile_id_for(resolve(aliases, entry[1])), entry[2])
        best[pid] = max(best.get(pid, score), score)
    own = {profile_id_for(key) for key in own_keys}
    ranked = sorted(((pid, s) for pid, s in best.items() if pid not in own), key=lambda item: (-item[1], item[0]))
    return [{"profile_id": pid, "score": score} for pid, score in ranked]
