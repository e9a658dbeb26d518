"""The identity graph across partitions: one live profile per connected set of identifiers.

Every identifier key (``u:<user_id>``, ``e:<email>``, ``a:<anonymous_id>``, ``ph:<E.164 phone>``)
has at most one entry in the profile-state table, in the partition the key routes to:

- a **live profile** (the root of its component),
- a **redirect** ``{"merged_into": root}``, or
- an **erasure marker** ``{"erased_at": ts}``.

The root of a component is its smallest key by :func:`rank` (user ids before e-mails before
anonymous ids before phones; then by text), so the surviving ``profile_id`` = ``profile_id_for(root)``
depends on the input only, never on the order workers see it in.

The protocol is label propagation through the internal topic, ``(state, message) -> (state,
messages)`` per key (:func:`place`, :func:`on_link`, :func:`forward_absorb`; the caller merges an
arriving profile with :func:`streams.merge.merge_states`):

- An event whose identifiers include a key smaller than the one it was routed to makes that key
  give up: its state travels to the smaller key (``_absorb``) and it becomes a redirect.
- Other identifiers of the event, not yet linked, get ``_link {root}``: an empty key becomes a
  redirect; a live profile with a larger key is absorbed; a smaller one answers with a link back.
- Redirects forward events and absorbs to their root.

Every message moves state towards smaller keys, so it ends when each component has one live
profile at its smallest key.  Profile contents are order-tolerant folds and merges, so they come out
the same whatever order the messages were delivered in (tested by simulation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.identity import profile_id_for, rank
from streams.profile import State

LINK, ABSORB, POSSIBLE, BLOCK, FORGET = "_link", "_absorb", "_possible", "_block", "_forget"
def smallest(keys: Iterable[str]) -> str:
    return min(keys, key=rank)


def identifier_keys(event: dict[str, Any]) -> list[str]:
    """Every identifier key an (accepted, normalized) event names, its traits included."""
    traits = event.get("traits") or {}
    keys = set()
    if event.get("user_id"):
        keys.add(f"u:{event['user_id']}")
    for email in (event.get("email"), traits.get("email")):
        if email:
            keys.add(f"e:{email}")
    if event.get("anonymous_id"):
        keys.add(f"a:{event['anonymous_id']}")
    for phone in (event.get("phone"), traits.get("phone")):
        if phone:
            keys.add(f"ph:{phone}")
    return sorted(keys, key=rank)


def is_redirect(state: State | None) -> bool:
    return state is not None and "merged_into" in state


def is_live(state: State | None) -> bool:
    return state is not None and "profile" in state


@dataclass
class Routing:
    """What handling one message at one key decided."""

    state: State | None  # the key's state afterwards
    send: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (target key, message)
    retired: str | None = None  # profile_id of a live profile that became a redirect (tombstone it)


def _redirect(root: str, previous: State | None) -> State:
    state: State = {"merged_into": root}
    if previous is not None and previous.get("due") is not None:
        state["due"] = previous["due"]  # so the caller deletes the due entry
    return state


def _give_up(key: str, state: State, root: str, kind: str, also: Iterable[str] = ()) -> Routing:
    """``key``'s live profile joins ``root``: its whole state travels, its links are pointed there."""
    links = sorted({*state.get("links", []), *also} - {root, key}, key=rank)
    send: list[tuple[str, dict[str, Any]]] = [(root, {"type": ABSORB, "from": key, "kind": kind, "state": state})]
    send += [(k, {"type": LINK, "root": root, "kind": kind}) for k in links]
    return Routing(_redirect(root, state), send=send, retired=profile_id_for(key) if state.get("published") else None)


def place(key: str, state: State, event: dict[str, Any]) -> Routing:
    """After an event was received into ``key``'s live state: if the event names a smaller key, the
    profile joins it; otherwise the event's other identifiers not linked yet are told their root."""
    keys = identifier_keys(event)
    root = smallest([*keys, key])
    if root != key:
        return _give_up(key, state, root, "exact", also=keys)
    links: list[str] = state.setdefault("links", [])
    new = [k for k in keys if k != key and k not in links]
    if new:
        links.extend(new)
        links.sort(key=rank)
    return Routing(state, send=[(k, {"type": LINK, "root": key, "kind": "exact"}) for k in new])


def on_link(key: str, state: State | None, root: str, kind: str) -> Routing:
    """``key`` belongs to the component of ``root``."""
    if root == key:
        return Routing(state)
    if state is None:
        return Routing(_redirect(root, None))
    if is_redirect(state):
        current = state["merged_into"]
        if current == root:
            return Routing(state)
        if rank(root) < rank(current):
            return Routing({**state, "merged_into": root}, send=[(current, {"type": LINK, "root": root, "kind": kind})])
        return Routing(state, send=[(root, {"type": LINK, "root": current, "kind": kind})])
    if not is_live(state):  # an erasure marker: the erased person is not linked to anything again
        return Routing(state)
    if rank(root) < rank(key):
        return _give_up(key, state, root, kind)
    return Routing(state, send=[(root, {"type": LINK, "root": key, "kind": kind})])


def forward_absorb(state: State, message: dict[str, Any]) -> Routing:
    """A redirect passes an arriving profile on to its root."""
    return Routing(state, send=[(state["merged_into"], message)])
