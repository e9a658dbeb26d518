"""Topic names of the contract (section 2) and the project's internal topics."""

from __future__ import annotations

from schemas.events import INPUT_TOPICS

CLICKS, CARTS, PURCHASES, IDENTITIES = INPUT_TOPICS
PROFILES = "profiles"
SEGMENT_CHANGES = "segment-changes"
TRIGGERS = "triggers"
SCORES = "scores"
DEAD_LETTER = "dead-letter"
DELIVERY_FAILED = "delivery-failed"  # (v1.1) written by `mailpulse deliver`

OUTPUT_TOPICS = (PROFILES, SEGMENT_CHANGES, TRIGGERS, SCORES, DEAD_LETTER)
COMPACTED_TOPICS = (PROFILES,)
CONTRACT_TOPICS = (*INPUT_TOPICS, *OUTPUT_TOPICS, DELIVERY_FAILED)


def events_topic(app_id: str) -> str:
    """Internal topic: accepted events routed by profile key.

    Each record is a batch: an orjson list of ``[profile_key, event]`` pairs of one partition, in
    ingest order, then ``[null, {"clocks": [[topic, partition, ts], ...]}]`` (input clocks of earlier
    batches, :class:`streams.routing.DelayedClocks`) or ``[null, {"wall": ms}]``, and last the
    batch's marker ``[null, {"batch": [worker token, batch number]}]``; see :mod:`streams.watermark`."""
    return f"{app_id}-profile-events"


def cooccurrence_topic(app_id: str) -> str:
    """Internal topic: product co-occurrence counts routed by product; each record an orjson list of
    ``[product, [[other, weight], ...]]`` of one partition (see :mod:`streams.domain.rules.recommend`)."""
    return f"{app_id}-co-occurrence"


def withdrawals_topic(app_id: str) -> str:
    """Internal topic: profile id -> ``{"profile_id", "reason", "at"}`` when a person withdrew e-mail
    consent (``reason`` "consent") or was erased ("erased") at event time ``at`` (ISO-8601).  Read whole
    by every ``deliver``, which then drops the triggers of that profile stamped at or before ``at`` that
    it still holds or has yet to read (``streams.deliver.service``)."""
    return f"{app_id}-withdrawals"


def product_recs_topic(app_id: str) -> str:
    """Internal compacted topic: product -> its top neighbours (a JSON list), read by every worker."""
    return f"{app_id}-product-recs"


#: The worker's tables; Faust keeps each in the changelog topic ``<app_id>-<table>-changelog``.
TABLE_NAMES = ("profile-state", "partition-clocks", "identity-blocks", "product-neighbours")


def partitioned_internal_topics(app_id: str) -> tuple[str, ...]:
    """The internal topics whose partition count must equal ``MAILPULSE_PARTITIONS``: a profile key's
    partition (crc32 mod partitions) names both its internal-topic and its table partition."""
    return (events_topic(app_id), cooccurrence_topic(app_id), *(f"{app_id}-{t}-changelog" for t in TABLE_NAMES))
