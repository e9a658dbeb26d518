"""Input events (contract section 3): one model per kind, a discriminated union on ``type``.

Validation normalizes as it goes: timestamps become UTC epoch milliseconds, e-mails are validated
and lower-cased, phones become E.164, currencies upper-case ISO 4217 codes.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from schemas.identifiers import comparable, normalize_email, normalize_phone
from schemas.timeparse import parse_timestamp

CLICK_TYPES = ("page_view", "product_view", "category_view", "search", "email_open", "email_click")
CART_TYPES = ("cart_add", "cart_remove", "checkout_started")
PURCHASE_TYPES = ("purchase",)
IDENTITY_TYPES = ("identify", "erase")

#: Input topic of each event type (the contract's routing rule).
TOPIC_OF_TYPE: dict[str, str] = {
    **dict.fromkeys(CLICK_TYPES, "clicks"),
    **dict.fromkeys(CART_TYPES, "carts"),
    **dict.fromkeys(PURCHASE_TYPES, "purchases"),
    **dict.fromkeys(IDENTITY_TYPES, "identities"),
}
INPUT_TOPICS = ("clicks", "carts", "purchases", "identities")
#: Order of equal timestamps across kinds (contract section 4).
KIND_ORDER = {"identities": 0, "clicks": 1, "carts": 2, "purchases": 3}

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_BIRTHDAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
Text = Annotated[str, Field(min_length=1, max_length=512)]
#: The largest money amount accepted (``total``, ``price``): sums of many stay finite, and cents stay
#: exact in a float.  (1e9 refused real orders in currencies of small units: 1.5e9 VND is ~$57k.)
MAX_AMOUNT = 1e12
#: Numbers, flags and counts are strict: ``"12.5"``, ``true`` or ``2.0`` where a number, a flag or a
#: count belongs are wrong types (contract: dead-lettered), not read as 12.5, 1.0 or 2.
#: ``-0.0`` (which ``ge=0`` lets through) is read as ``0.0``: an amount carries no sign of zero into outputs.
Amount = Annotated[float, Strict(), Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False), AfterValidator(lambda v: v or 0.0)]
#: A purchase line's price, which a discount or coupon line gives as negative (the contract bounds
#: only the total and a cart's price); within the same bound either way.
LinePrice = Annotated[float, Strict(), Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT, allow_inf_nan=False),
                      AfterValidator(lambda v: v or 0.0)]
Count = Annotated[int, Strict(), Field(ge=1, le=100_000)]
#: Limits of the one free-form part of an event, the traits it does not know: nesting depth, values
#: (every container and leaf of all of them together) and the length of each text and key.
MAX_TRAIT_DEPTH = 8
MAX_TRAIT_VALUES = 500
MAX_TRAIT_TEXT = 4096
#: The longest consent channel name.
MAX_CONSENT_NAME = 64


def free_form_problem(values: dict[str, Any]) -> str | None:
    """Why free-form ``values`` are over the limits (None: within them).  Iterative: input nested
    deeper than the interpreter's recursion limit is met here too."""
    for key in values:
        if len(key) > MAX_TRAIT_TEXT:
            return f"traits: a key longer than {MAX_TRAIT_TEXT} characters"
    stack: list[tuple[Any, int, str]] = [(value, 1, str(key)) for key, value in values.items()]
    seen = 0
    while stack:
        value, depth, where = stack.pop()
        seen += 1
        if seen > MAX_TRAIT_VALUES:
            return f"unknown traits hold more than {MAX_TRAIT_VALUES} values"
        if depth > MAX_TRAIT_DEPTH:
            return f"traits.{where[:64]}: nested deeper than {MAX_TRAIT_DEPTH} levels"
        if isinstance(value, dict):
            for key, inner in value.items():
                if len(key) > MAX_TRAIT_TEXT:
                    return f"traits.{where[:64]}: a key longer than {MAX_TRAIT_TEXT} characters"
                stack.append((inner, depth + 1, where))
        elif isinstance(value, list):
            stack.extend((inner, depth + 1, where) for inner in value)
        elif isinstance(value, str) and len(value) > MAX_TRAIT_TEXT:
            return f"traits.{where[:64]}: text longer than {MAX_TRAIT_TEXT} characters"
        elif isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - JSON has none
            return f"traits.{where[:64]}: a number that is not finite"
    return None


def _currency(value: str) -> str:
    code = value.strip()
    # checked before upper-casing too: ``"ßd".upper()`` is ``"SSD"``, ``"\ufb00x".upper()`` ``"FFX"``
    code = code.upper() if code.isascii() else code
    if not _CURRENCY.fullmatch(code):
        raise ValueError(f"currency {value[:16]!r} is not an ISO 4217 code")
    return code


#: Names the system's zone files answer to that are no IANA time zone: ``localtime`` is whatever the
#: host is set to (two workers could differ), ``Factory`` and ``posixrules`` are placeholders.
_NOT_IANA = frozenset(("localtime", "Factory", "posixrules"))


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """``null`` or ``""`` in a field that may be left out is taken as left out (its default):
        ``"currency": null`` or ``"traits": null`` was dead-lettered, while ``"price": null`` was not;
        and an empty ``campaign_id`` (a tag manager's unset variable), ``source`` or item ``category``
        dead-lettered a whole page view, identify (its consent withdrawal with it) or purchase."""
        if isinstance(data, dict) and (None in data.values() or "" in data.values()):
            fields = cls.model_fields
            data = {key: value for key, value in data.items()
                    if (value is not None and value != "") or (key in fields and fields[key].is_required())}
        return data


class Context(_Model):
    device: Text | None = None
    os: Text | None = None
    timezone: Text | None = None
    locale: Text | None = None
    campaign_id: Text | None = None
    source: Text | None = None

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            if value in _NOT_IANA or value.startswith(("posix/", "right/")):
                raise ValueError(value)
            ZoneInfo(value)
        except Exception:
            raise ValueError(f"unknown IANA time zone {value[:64]!r}") from None
        return value


class _Timed(_Model):
    timestamp: Annotated[
        int,
        WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"},
                                  {"type": "integer", "description": "epoch milliseconds"}]}),
    ]

    @field_validator("timestamp", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> int:
        return parse_timestamp(value)


class _Identified(_Timed):
    event_id: Annotated[str, Field(min_length=1, max_length=128)]
    user_id: Text | None = None
    anonymous_id: Text | None = None
    email: str | None = None
    phone: str | None = None
    context: Context | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        region = (info.context or {}).get("phone_region", "US")
        return None if value is None else normalize_phone(value, region)

    @model_validator(mode="after")
    def _has_identifier(self) -> _Identified:
        if not (self.user_id or self.anonymous_id or self.email or self._extra_email()):
            raise ValueError("at least one of user_id, anonymous_id, email is required")
        return self

    def _extra_email(self) -> str | None:
        return None


class ClickEvent(_Identified):
    type: Literal["page_view", "product_view", "category_view", "search", "email_open", "email_click"]
    url: Annotated[str, Field(max_length=4096)] | None = None
    product_id: Text | None = None
    category: Text | None = None
    query: Annotated[str, Field(max_length=1024)] | None = None
    campaign_id: Text | None = None


class CartEvent(_Identified):
    type: Literal["cart_add", "cart_remove", "checkout_started"]
    product_id: Text | None = None
    cart_id: Text | None = None
    category: Text | None = None
    quantity: Count = 1
    price: Amount | None = None
    currency: str = "USD"

    _cur = field_validator("currency")(classmethod(lambda cls, v: _currency(v)))

    @model_validator(mode="after")
    def _product_required(self) -> CartEvent:
        if self.type in ("cart_add", "cart_remove") and not self.product_id:
            raise ValueError(f"product_id is required for {self.type}")
        return self


class LineItem(_Model):
    #: A line may name no product (shipping, a fee): the contract marks no item field required, and
    #: the order and its total count all the same (such a line is no product bought).  A discount
    #: line's price is negative.
    product_id: Text | None = None
    category: Text | None = None
    quantity: Count = 1
    price: LinePrice | None = None


class PurchaseEvent(_Identified):
    type: Literal["purchase"]
    order_id: Text
    total: Amount
    currency: str = "USD"
    items: list[LineItem] = Field(default_factory=list, max_length=1000)

    _cur = field_validator("currency")(classmethod(lambda cls, v: _currency(v)))


class Traits(BaseModel):
    """Known traits are typed and normalized; other traits are kept as given."""

    model_config = ConfigDict(extra="allow", frozen=True)

    first_name: Text | None = None
    last_name: Text | None = None
    email: str | None = None
    phone: str | None = None
    birthday: date | None = None
    street: Text | None = None
    city: Text | None = None
    postcode: Text | None = None
    state: Text | None = None
    country: Text | None = None
    gender: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # a known trait given as null or "" is not given (the fold keeps no empty value): an empty
            # last name dead-lettered the whole identify, its consent withdrawal with it
            if any((value is None or value == "") and key in cls.model_fields for key, value in data.items()):
                data = {key: value for key, value in data.items()
                        if not ((value is None or value == "") and key in cls.model_fields)}
            extra = {key: value for key, value in data.items() if key not in cls.model_fields}
            problem = free_form_problem(extra) if extra else None
            if problem is not None:
                raise ValueError(problem)
        return data

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @field_validator("birthday", mode="before")
    @classmethod
    def _birthday_text(cls, value: Any) -> Any:
        """YYYY-MM-DD text (contract 3): a number is a wrong type, not a day since 1970 (``0`` read as
        1970-01-01 fed fuzzy matching a made-up date)."""
        if value is not None and not (isinstance(value, str) and _BIRTHDAY.fullmatch(value)):
            raise ValueError("birthday must be text, YYYY-MM-DD")  # ("0" was read as 1970-01-01 too)
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        region = (info.context or {}).get("phone_region", "US")
        return None if value is None else normalize_phone(value, region)


class IdentifyEvent(_Identified):
    type: Literal["identify"]
    traits: Traits = Field(default_factory=Traits)
    consent: dict[Annotated[str, Field(max_length=MAX_CONSENT_NAME)], Annotated[bool, Strict()]] = Field(
        default_factory=dict, max_length=32)
    source: Text | None = None

    @field_validator("consent", mode="before")
    @classmethod
    def _consent_channels(cls, value: Any) -> Any:
        """A channel given as ``null`` or ``""`` (a CRM export's empty cell) says nothing of it (its other
        channels still count, a withdrawal among them: ``""`` dead-lettered the whole identify).  A
        channel's name is read as identifiers are compared (:func:`comparable`: trimmed, case-folded, without
        invisible characters): ``{"Email": false}`` from a CRM export withdraws the e-mail consent the
        guardrails read (it was kept under ``"Email"``, and triggers went on).  Two spellings of one
        channel that disagree: a withdrawal wins."""
        if not isinstance(value, dict):
            return value
        channels: dict[Any, Any] = {}
        for channel, given in value.items():
            if given is None or given == "":
                continue
            # (a name past the limit is left as it is, for the validation to refuse: normalizing a long
            # text of combining marks takes time)
            name = comparable(channel) if isinstance(channel, str) and len(channel) <= MAX_CONSENT_NAME else channel
            if name == "":
                continue  # (names no channel)
            held = channels.get(name)
            if name not in channels or (type(held) is bool and (given is False or type(given) is not bool)):
                channels[name] = given  # a withdrawal, or a wrong type the validation refuses, wins
        return channels

    def _extra_email(self) -> str | None:
        # A CRM or form record may carry its address only in traits: that identifies it too.
        return self.traits.email


class EraseEvent(_Identified):
    type: Literal["erase"]


class TickEvent(_Timed):
    type: Literal["tick"]


InputEvent = Annotated[
    ClickEvent | CartEvent | PurchaseEvent | IdentifyEvent | EraseEvent | TickEvent,
    Field(discriminator="type"),
]
INPUT_EVENT_ADAPTER: TypeAdapter[InputEvent] = TypeAdapter(InputEvent)
KNOWN_TYPES = frozenset((*TOPIC_OF_TYPE, "tick"))
