"""Output messages (contract sections 3 and 5).  The worker builds these as plain dicts for speed;
the models here are the documented shape, exported as JSON Schema and checked against in tests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class DeadLetterError(_Out):
    code: str
    message: str


class DeadLetter(_Out):
    """A rejected input message on ``dead-letter``."""

    topic: str
    partition: int
    offset: int
    key: str | None
    raw: str | None
    raw_encoding: Literal["base64"] | None = None
    #: ``raw`` holds only the message's first 64 KiB (``too_large``); ``raw_bytes`` is its whole size
    raw_truncated: bool | None = None
    raw_bytes: int | None = None
    #: ``key`` holds only the key's first 4 KiB; ``key_bytes`` is its whole size
    key_truncated: bool | None = None
    key_bytes: int | None = None
    #: ``key`` is base64 (the key is not UTF-8)
    key_encoding: Literal["base64"] | None = None
    error: DeadLetterError
    at: str
    #: on a ``processing_error``: the agent whose handling raised (``profiles``, ``cooccurrence``)
    stage: str | None = None


class Identifiers(_Out):
    user_ids: list[str]
    anonymous_ids: list[str]
    emails: list[str]
    phones: list[str]


class Aggregates(_Out):
    event_counts: dict[str, int]
    kind_counts: dict[str, int]
    first_seen: dict[str, str]
    last_seen: dict[str, str]
    orders: int
    total_spend: float
    spend_by_currency: dict[str, float]
    first_purchase_at: str | None
    last_purchase_at: str | None


class CartLine(_Out):
    product_id: str
    quantity: int
    category: str | None = None
    price: float | None = None
    currency: str | None = None


class Cart(_Out):
    cart_id: str | None
    items: list[CartLine]
    item_count: int
    value: float
    opened_at: str | None
    updated_at: str | None


class PossibleMatch(_Out):
    profile_id: str
    score: float


class Predictions(_Out):
    churn_probability: float
    purchase_probability: float
    model_version: str
    at: str


class Profile(_Out):
    """A full profile snapshot on the compacted ``profiles`` topic (a tombstone when erased/merged)."""

    profile_id: str
    user_id: str | None
    email: str | None
    identifiers: Identifiers
    traits: dict[str, Any]
    consent: dict[str, bool]
    context: dict[str, Any]
    aggregates: Aggregates
    cart: Cart | None
    segments: list[str]
    predictions: Predictions | None
    possible_matches: list[PossibleMatch]
    created_at: str
    updated_at: str
    version: int


class SegmentChange(_Out):
    profile_id: str
    user_id: str | None
    email: str | None
    segment: str
    change: Literal["entered", "exited"]
    at: str
    emitted_at: str


class Trigger(_Out):
    trigger_id: str
    type: str
    profile_id: str
    user_id: str | None
    email: str | None
    at: str
    send_at: str
    payload: dict[str, Any]
    predictions: Predictions | None


class Score(_Out):
    profile_id: str
    user_id: str | None
    churn_probability: float
    purchase_probability: float
    model_version: str
    at: str


class DeliveryError(_Out):
    code: str
    message: str


class DeliveryFailed(_Out):
    """A trigger ``deliver`` did not deliver (v1.1), keyed by ``profile_id``.  ``error.code``:
    ``bad_trigger``, ``no_address``, ``template_error``, ``rejected``, ``retries_exhausted``,
    ``outcome_unknown``, ``interrupted``, ``expired``.  A malformed trigger's fields are passed on as
    they came, so ``trigger_id``, ``type`` and ``profile_id`` may be missing (``null``) or of another
    type there."""

    trigger_id: Any
    type: Any
    profile_id: Any
    attempts: int
    error: DeliveryError
    at: str
