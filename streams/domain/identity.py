"""Which profile an event belongs to.

Foundation keying: a profile is keyed by the first of ``user_id``, ``email``, ``anonymous_id``.
The identity-resolution work replaces :func:`profile_key` (and adds merges); the agents only ever
call these two functions, so they do not change with it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from typing_extensions import TypeIs


def profile_key(event: dict[str, Any]) -> str:
    """The routing/table key of the profile an (accepted, non-tick) event belongs to."""
    if user_id := event.get("user_id"):
        return f"u:{user_id}"
    email = event.get("email") or (event.get("traits") or {}).get("email")
    if email:
        return f"e:{email}"
    return f"a:{event['anonymous_id']}"


#: Identifier kinds by precedence: user ids, then e-mails, anonymous ids, phones.
_KIND_RANK = {"u": 0, "e": 1, "a": 2, "ph": 3}


def is_identity_key(key: object) -> TypeIs[str]:
    """A key of one of the four identifier kinds (``u:``, ``e:``, ``a:``, ``ph:``): the only keys the
    identity graph links."""
    return isinstance(key, str) and key.partition(":")[0] in _KIND_RANK


def rank(key: str) -> tuple[int, str]:
    """Order of identifier keys (``u:`` < ``e:`` < ``a:`` < ``ph:``, then by text): a person's
    smallest key is the root of their profile, in the stream and in the batch resolver alike."""
    return _KIND_RANK.get(key.partition(":")[0], 9), key


def profile_id_for(key: str) -> str:
    """A stable, opaque profile id derived from the profile key (same input, same id)."""
    return "p-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
