"""Topic names of the contract (section 2) and the project's internal topics."""

from __future__ import annotations

from schemas.events import INPUT_TOPICS

CLICKS, CARTS, PURCHASES, IDENTITIES = INPUT_TOPICS
PROFILES = "profiles"
SEGMENT_CHANGES = "segment-changes"
TRIGGERS = "triggers"
SCORES = "scores"
DEAD_LETTER = "dead-letter"

OUTPUT_TOPICS = (PROFILES, SEGMENT_CHANGES, TRIGGERS, SCORES, DEAD_LETTER)
COMPACTED_TOPICS = (PROFILES,)
CONTRACT_TOPICS = (*INPUT_TOPICS, *OUTPUT_TOPICS)


def events_topic(app_id: str) -> str:
    """Internal topic: accepted events routed by profile key (ticks broadcast to every partition).

    Each record is a batch: an orjson list of ``[profile_key, event]`` pairs (``[null, tick]`` for
    ticks) of one partition, in ingest order; see :func:`streams.app.partition_for`."""
    return f"{app_id}-profile-events"
