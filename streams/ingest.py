"""Decode, validate and normalize raw input messages: ``raw bytes -> Accepted | Rejected``.

Pure functions, no I/O: errors come back as data (a :class:`Rejected` carrying the dead-letter
record), so the agent only has to route them.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.events import INPUT_EVENT_ADAPTER, KNOWN_TYPES, TOPIC_OF_TYPE
from schemas.identifiers import (
    MAX_COMPARED_CHARS,
    comparable,
    made_up_number,
    normalize_email,
    normalize_phone,
    within,
)
from schemas.timeparse import format_ms
from streams.domain.config import Identity

MAX_MESSAGE_BYTES = 64 * 1024
#: The most of a rejected message's bytes its dead letter keeps in ``raw``.  A longer message
#: (``too_large``) keeps its first ``MAX_RAW_BYTES``, marked ``"raw_truncated": true`` with its size
#: in ``raw_bytes``: whole, its escaped text could pass the producer's message limit (a byte such as
#: 0x01 becomes six characters, a non-UTF-8 one a third more in base64), the letter would be refused,
#: and the worker would stop on a bad input at every start.
MAX_RAW_BYTES = MAX_MESSAGE_BYTES
#: The UTF-8 byte-order mark.  A Windows tool may write one before a JSON text, and a parser may skip
#: it (RFC 8259, 8.1): one before a message (or a line of a file) is skipped, not dead-lettered.
UTF8_BOM = b"\xef\xbb\xbf"
#: The most of a rejected message's key its dead letter keeps in ``key`` (cut as ``raw`` is, with
#: ``key_truncated`` and ``key_bytes``).
MAX_KEY_BYTES = 4 * 1024


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    """What decoding depends on besides the message: the worker builds it from its settings and config
    (``identity.blocked_values``, ``time.max_future_minutes``).  The default has no future guard
    (``max_future_ms=None``), for tools that read history files."""

    phone_region: str = "US"
    #: Identifier values (trimmed, case-folded) that name nobody: dropped from the event, never linked.
    blocked_values: frozenset[str] = field(default_factory=lambda: Identity().blocked())
    #: An event more than this far ahead of ``now_ms`` is rejected (``future_timestamp``); None: no guard.
    max_future_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message was read: the dead-letter record and the metrics need it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    arrived_ms: int


def arrival_ms(record_ms: int | None, now_ms: int) -> int:
    """A read record's arrival (``Source.arrived_ms``): its time, which its producer sets (-1 for none, a
    device clock years ahead), only when that is in the past; else ``now_ms``.  One record stamped ahead
    hid the latency of every event released with it."""
    return record_ms if record_ms is not None and 0 < record_ms <= now_ms else now_ms


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid input event, normalized, as the dict that travels on internal topics.

    ``event["kind"]`` is the input topic its type belongs to; ``event["ts"]`` the UTC epoch ms.
    ``blocked``: the identifier fields dropped as placeholders (``identity.blocked_values``).
    """

    event: dict[str, Any]
    blocked: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A bad input message: ``record`` is the contract's dead-letter value.  ``field``: the event
    field at fault, a name the schema declares ("" when none is), never a value or a key of the input."""

    code: str
    record: dict[str, Any]
    field: str = ""

    def reason(self) -> str:
        """Why, without the input's values (a dead letter's message may quote them; a command-line
        error or a log line must not: they may be personal data)."""
        if self.code in _VALUE_FREE:
            return str(self.record["error"]["message"])
        return f"{self.code} at {self.field}" if self.field else self.code


#: Codes whose dead-letter message quotes nothing of the input.
_VALUE_FREE = frozenset(("empty", "too_large", "not_json", "not_object"))


def _text(data: bytes | None, most: int) -> tuple[str | None, bool, int | None]:
    """At most the first ``most`` bytes as text, whether base64 had to be used, and the whole size
    when they were cut (None when not): a character split by the cut is left out."""
    if data is None:
        return None, False, None
    cut = len(data) > most
    kept = data[:most]
    for end in (len(kept), *(len(kept) - n for n in (1, 2, 3) if cut)):
        try:
            return kept[:end].decode("utf-8"), False, len(data) if cut else None
        except UnicodeDecodeError:
            continue
    return base64.b64encode(kept).decode("ascii"), True, len(data) if cut else None


def reject(source: Source, raw: bytes | None, code: str, message: str, now_ms: int, field: str = "") -> Rejected:
    """Build the dead-letter record for a rejected message (``raw``: its first :data:`MAX_RAW_BYTES`)."""
    raw_text, raw_b64, raw_bytes = _text(raw, MAX_RAW_BYTES)
    key_text, key_b64, key_bytes = _text(source.key, MAX_KEY_BYTES)
    record: dict[str, Any] = {
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "key": key_text,
        "raw": raw_text,
        "error": {"code": code, "message": message},
        "at": format_ms(now_ms),
    }
    if raw_b64:
        record["raw_encoding"] = "base64"
    if raw_bytes is not None:
        record["raw_truncated"], record["raw_bytes"] = True, raw_bytes
    if key_bytes is not None:
        record["key_truncated"], record["key_bytes"] = True, key_bytes
    if key_b64:
        record["key_encoding"] = "base64"
    return Rejected(code, record, field)


#: A JSON escape: ``\\uXXXX`` of a surrogate (group 1: its hex digits), or a backslash and the character
#: it escapes (so ``\\\\u...`` is an escaped backslash and text, not an escape).
_ESCAPE = re.compile(rb"\\(?:u([dD][89a-fA-F][0-9a-fA-F]{2})|.)", re.DOTALL)


def unpaired_surrogates_replaced(raw: bytes) -> bytes:
    """``raw`` with each escaped surrogate that is not half of a pair (a high one right before a low
    one) escaped as U+FFFD."""
    found = [match for match in _ESCAPE.finditer(raw) if match[1] is not None]
    parts: list[bytes] = []
    last = i = 0
    while i < len(found):
        match = found[i]
        if (match[1][1:2] in b"89abAB" and i + 1 < len(found) and found[i + 1].start() == match.end()
                and found[i + 1][1][1:2] in b"cdefCDEF"):
            i += 2
            continue
        parts += (raw[last:match.start()], rb"\ufffd")
        last = match.end()
        i += 1
    return b"".join((*parts, raw[last:]))


def parse_json(raw: bytes) -> Any:
    """The JSON value of a message (or a line of a file): one leading byte-order mark skipped, and an
    escaped surrogate that is not half of a pair read as U+FFFD (JSON allows one; JavaScript's
    ``JSON.stringify`` writes one for a string cut in the middle of an emoji).  orjson.JSONDecodeError
    when it is no JSON."""
    raw = raw.removeprefix(UTF8_BOM)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        repaired = unpaired_surrogates_replaced(raw) if b"\\u" in raw else raw
        if repaired == raw:
            raise
        try:
            return orjson.loads(repaired)
        except orjson.JSONDecodeError:
            raise exc from None  # (the message's own error)


def _code_for(exc: ValidationError) -> tuple[str, str, str]:
    """Map the first pydantic error to a dead-letter code, a one-line message and the event field at
    fault (a declared one: the events ignore undeclared fields; what follows it may be a key of the input)."""
    err = exc.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]][1:]  # drop the union tag
    where = ".".join(loc) or "event"
    field = loc[-1] if loc else ""
    if field == "timestamp":
        code = "missing_field" if err["type"] == "missing" else "bad_timestamp"
    elif err["type"] == "missing":
        code = "missing_field"
    elif field in ("email", "phone") and loc[0] != "consent":  # consent.email is a flag, not an address
        code = "invalid_identifier"
    else:
        code = "schema"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return code, f"{where}: {msg}"[:500], loc[0] if loc else ""


DEFAULT_POLICY = IngestPolicy()


def decode(raw: bytes | None, source: Source, now_ms: int,
           policy: IngestPolicy = DEFAULT_POLICY) -> Accepted | Rejected:
    """Validate and normalize one raw input message."""
    if raw is None:
        return reject(source, raw, "empty", "message has no value (tombstone)", now_ms)
    if len(raw) > MAX_MESSAGE_BYTES:
        return reject(source, raw, "too_large", f"message is {len(raw)} bytes, limit {MAX_MESSAGE_BYTES}", now_ms)
    try:
        obj = parse_json(raw)
    except orjson.JSONDecodeError as exc:
        return reject(source, raw, "not_json", f"not JSON: {exc}"[:500], now_ms)
    if not isinstance(obj, dict):
        return reject(source, raw, "not_object", f"JSON {type(obj).__name__} is not an object", now_ms)
    etype = obj.get("type")
    if not isinstance(etype, str) or etype not in KNOWN_TYPES:
        shown = "missing" if etype is None else repr(etype)[:64] if isinstance(etype, str) else \
            f"of JSON type {_json_type(etype)}"
        return reject(source, raw, "unknown_type", f"type {shown} is not a known event type", now_ms, "type")
    obj, blocked = _without_placeholders(obj, policy.blocked_values, policy.phone_region)
    if blocked and etype != "tick" and not _has_identifier(obj, etype):
        return reject(source, raw, "invalid_identifier",
                      f"{blocked[0]}: a placeholder value names nobody, and no other identifier is given", now_ms,
                      blocked[0])
    try:
        model = INPUT_EVENT_ADAPTER.validate_python(obj, context={"phone_region": policy.phone_region})
    except ValidationError as exc:
        code, message, field = _code_for(exc)
        return reject(source, raw, code, message, now_ms, field)
    event = model.model_dump(mode="json", exclude_none=True)
    ts = event.pop("timestamp")
    if policy.max_future_ms is not None and ts > now_ms + policy.max_future_ms:
        return reject(source, raw, "future_timestamp",
                      f"timestamp {format_ms(ts)} is more than {policy.max_future_ms // 60_000} minutes ahead of "
                      f"the worker's clock ({format_ms(now_ms)})", now_ms, "timestamp")
    event["ts"] = ts
    event["kind"] = TOPIC_OF_TYPE.get(etype, source.topic)
    event["src"] = [source.topic, source.partition, source.offset, source.arrived_ms]
    return Accepted(event, blocked)


#: Identifier fields of an event and of its traits, as checked against ``identity.blocked_values``.
IDENTIFIER_FIELDS = ("user_id", "anonymous_id", "email", "phone")
TRAIT_IDENTIFIER_FIELDS = ("email", "phone")


@functools.lru_cache(maxsize=16)  # (one policy per worker; tests make a few)
def _blocked_normalized(blocked: frozenset[str], phone_region: str) -> frozenset[str]:
    """The blocked values, plus each one that is an e-mail address or a phone number as the ingest
    normalizes those (an address's domain, a number's formatting)."""
    forms = set(blocked)
    for value in blocked:
        for normalize in (normalize_email, lambda text: normalize_phone(text, phone_region)):
            with contextlib.suppress(ValueError):
                forms.add(normalize(value))
    return frozenset(forms)


def _is_placeholder(name: str, value: Any, blocked: frozenset[str], phone_region: str) -> bool:
    """Whether an identifier's value names nobody: empty or blocked as it is compared
    (:func:`comparable`), or an e-mail address or phone number that normalizes to a blocked one
    (``test@`` and ``test.com`` in full-width letters is ``test@test.com``; ``(201) 555-0123`` is
    ``+12015550123``), or a made-up phone number (:func:`made_up_number`: ``+33 6 12 34 56 78``)."""
    if not isinstance(value, str):
        return False
    try:
        value = within(value, MAX_COMPARED_CHARS, "identifier")  # (a padded address is one once trimmed)
    except ValueError:
        return False  # too long to be an identifier: the event's validation refuses it
    text = comparable(value)
    if not text or text in blocked:
        return True
    if name not in ("email", "phone") or (name == "email" and value.isascii()):
        return False  # (an ASCII address normalizes to what ``comparable`` made of it)
    try:
        normalized = normalize_email(value) if name == "email" else normalize_phone(value, phone_region)
    except ValueError:
        return False  # not one: the event's validation says so
    return normalized in _blocked_normalized(blocked, phone_region) or (name == "phone" and made_up_number(normalized))


def _without_placeholders(obj: dict[str, Any], blocked: frozenset[str],
                          phone_region: str = "US") -> tuple[dict[str, Any], tuple[str, ...]]:
    """``obj`` without identifier fields whose value names nobody, and those fields' names (a copy
    only where one is dropped: most events have none)."""
    dropped = [name for name in IDENTIFIER_FIELDS if _is_placeholder(name, obj.get(name), blocked, phone_region)]
    traits = obj.get("traits")
    dropped_traits = [name for name in TRAIT_IDENTIFIER_FIELDS if isinstance(traits, dict)
                      and _is_placeholder(name, traits.get(name), blocked, phone_region)]
    if not (dropped or dropped_traits):
        return obj, ()
    cleaned = {key: value for key, value in obj.items() if key not in dropped}
    if dropped_traits:
        assert isinstance(traits, dict)
        cleaned["traits"] = {key: value for key, value in traits.items() if key not in dropped_traits}
    return cleaned, (*dropped, *(f"traits.{name}" for name in dropped_traits))


def _has_identifier(obj: dict[str, Any], etype: str) -> bool:
    traits = obj.get("traits")
    trait_email = traits.get("email") if etype == "identify" and isinstance(traits, dict) else None
    return any(obj.get(name) for name in ("user_id", "anonymous_id", "email")) or bool(trait_email)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", bool: "boolean", int: "number", float: "number"}.get(type(value), "value")
