"""Families at shared addresses: a history whose people merge (exactly and fuzzily) while pairs of
them are possible matches.  Raw input events; the unit and broker tests share it."""

from __future__ import annotations

import random
from typing import Any

from schemas.timeparse import parse_timestamp

START = parse_timestamp("2026-03-01T10:00:00Z")


def households(seed: int, addresses: int = 2, start_ms: int = START) -> list[dict[str, Any]]:
    """Each person under several identifiers (exact merges), with a CRM record with a shortened
    first name (a fuzzy merge), the same family name and address as the others (possible matches
    between them); a random subset of those records, at random minutes of the first 100."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for house in range(addresses):
        address = {"street": f"{12 + house} Baker Street", "city": "London", "postcode": f"NW1 {house}XE"}
        for first in ("Mary", "Peter", "Jonathan", "Susan"):
            handle = f"{first.lower()}{house}"
            traits = {"first_name": first, "last_name": "Smith", **address}
            forms: list[dict[str, Any]] = [
                {"email": f"{handle}@example.com", "traits": traits},
                {"user_id": f"u-{handle}", "traits": {"email": f"{handle}@example.com"}},
                {"anonymous_id": f"a-{handle}", "user_id": f"u-{handle}"},
                {"email": f"{handle}.smith@work.example", "source": "crm",
                 "traits": {**traits, "first_name": first[:3] if len(first) > 4 else first}}]
            for form in forms:
                if rng.random() < 0.8:
                    events.append({"event_id": f"e-{len(events)}", "type": "identify",
                                   "timestamp": start_ms + rng.randrange(100) * 60_000, **form})
    return events
