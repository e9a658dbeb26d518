"""``MAILPULSE_CONFIG``: the YAML of guardrails, triggers and segments (contract section 6).

Every key is optional and falls back to the built-in default; an unknown key or a wrong value stops
``mailpulse run`` at start with the file, the key and the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from schemas.identifiers import comparable
from schemas.timeparse import MAX_SPAN_MS
from streams.domain.profile import DEFAULT_LIMITS

if TYPE_CHECKING:
    from streams.domain.rules.segments import Segment

#: The longest wait or window a setting may name (:data:`MAX_SPAN_MS`), in its unit.
MAX_MINUTES, MAX_HOURS, MAX_DAYS = MAX_SPAN_MS // 60_000, MAX_SPAN_MS // 3_600_000, MAX_SPAN_MS // 86_400_000


class _Strict(BaseModel):
    # (an infinite delay or threshold loaded, then failed every event it was applied to; ``strict``: a
    # ``true`` or a quoted ``'5'`` was taken as the number 1 or 5, and a quoted ``'no'`` as false)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class QuietHours(_Strict):
    """No e-mail is sent from ``start_hour`` to ``end_hour`` (local time of the profile; UTC when its
    time zone is unknown): a trigger due then gets ``send_at`` = the next ``end_hour``.  Equal hours: none."""

    enabled: bool = True
    start_hour: int = Field(default=21, ge=0, le=23)
    end_hour: int = Field(default=8, ge=0, le=23)


class Guardrails(_Strict):
    require_consent: bool = False
    per_type_per_day: int = Field(default=1, ge=0)  # 0: no cap
    per_profile_per_day: int = Field(default=3, ge=0)  # 0: no cap
    quiet_hours: QuietHours = QuietHours()
    send_time_optimization: bool = True  # send at the profile's best e-mail engagement hour when known
    min_engagements: int = Field(default=3, ge=1)  # e-mail opens/clicks before a best hour is trusted


class TriggerToggle(_Strict):
    enabled: bool = True


class CartAbandoned(TriggerToggle):
    delay_minutes: float = Field(default=30, gt=0, le=MAX_MINUTES)


class BrowseAbandoned(TriggerToggle):
    delay_minutes: float = Field(default=60, gt=0, le=MAX_MINUTES)


class PostPurchase(TriggerToggle):
    delay_hours: float = Field(default=72, ge=0, le=MAX_HOURS)


class Winback(TriggerToggle):
    after_days: float = Field(default=90, gt=0, le=MAX_DAYS)


class ChurnRiskTrigger(TriggerToggle):
    threshold: float = Field(default=0.7, ge=0, le=1)
    # purchases a profile needs before it can be at risk of churning: for someone who never bought,
    # the churn probability is only 1 - a low purchase probability (0: everyone, as before)
    min_orders: int = Field(default=1, ge=0)


class Birthday(TriggerToggle):
    hour: int = Field(default=9, ge=0, le=23)  # local hour of the birthday at which it fires


class Triggers(_Strict):
    cart_abandoned: CartAbandoned = CartAbandoned()
    browse_abandoned: BrowseAbandoned = BrowseAbandoned()
    post_purchase: PostPurchase = PostPurchase()
    winback: Winback = Winback()
    churn_risk: ChurnRiskTrigger = ChurnRiskTrigger()
    birthday: Birthday = Birthday()
    welcome: TriggerToggle = TriggerToggle()


class RecentBrowsers(_Strict):
    within_hours: float = Field(default=48, gt=0, le=MAX_HOURS)


class CartHolders(_Strict):
    min_items: int = Field(default=1, ge=1)


class WithinDays(_Strict):
    within_days: float = Field(default=30, gt=0, le=MAX_DAYS)


class LapsedCustomers(_Strict):
    after_days: float = Field(default=90, gt=0, le=MAX_DAYS)


class HighValue(_Strict):
    min_spend: float = Field(default=500, ge=0)


class ChurnRiskSegment(_Strict):
    min_probability: float = Field(default=0.7, ge=0, le=1)


class HighIntent(_Strict):
    min_probability: float = Field(default=0.6, ge=0, le=1)
    no_purchase_days: float = Field(default=7, ge=0, le=MAX_DAYS)


def _segment_error(detail: str) -> Exception:
    """An error that ``load_config`` prints as is (a plain ValueError gets 'Value error, ')."""
    from pydantic_core import PydanticCustomError

    return PydanticCustomError("segment_rule", "{detail}", {"detail": detail})


def _is_segment_name(name: Any) -> bool:
    import re

    return isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name) is not None


class CustomSegment(_Strict):
    """A segment defined in the segment rule language (docs/segments.md); its rule is compiled, and so
    checked, by :class:`PipelineConfig`, which knows the event times a profile keeps (``limits``)."""

    rule: Any
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _is_a_definition(cls, data: Any) -> Any:
        # Most often a misspelt built-in: say so rather than "rule: Field required".
        if not isinstance(data, dict) or "rule" not in data:
            builtins = ", ".join(Segments.model_fields)
            raise _segment_error(f"not a built-in segment ({builtins}) nor a custom one (needs rule:)")
        return data



class Segments(_Strict):
    """Thresholds of the built-in segments; every other key is a custom segment (docs/segments.md)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False, strict=True)
    __pydantic_extra__: dict[str, CustomSegment] = Field(init=False)

    recent_browsers: RecentBrowsers = RecentBrowsers()
    cart_holders: CartHolders = CartHolders()
    recent_buyers: WithinDays = WithinDays()
    lapsed_customers: LapsedCustomers = LapsedCustomers()
    high_value: HighValue = HighValue()
    engaged_email: WithinDays = WithinDays()
    churn_risk: ChurnRiskSegment = ChurnRiskSegment()
    high_intent: HighIntent = HighIntent()

    @model_validator(mode="before")
    @classmethod
    def _custom_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in data:
                if name not in cls.model_fields and not _is_segment_name(name):
                    raise _segment_error(f"bad segment name {name!r} (a lowercase letter, then lowercase letters, "
                                         "digits or _; at most 64 characters)")
        return data

    def custom(self) -> dict[str, dict[str, Any]]:
        """The custom segment definitions by name: ``{"rule": ..., "description": ...}``."""
        extra = self.__pydantic_extra__ or {}
        return {name: {"rule": seg.rule, "description": seg.description} for name, seg in sorted(extra.items())}


class Scoring(_Strict):
    """When the profile agent scores a profile with the loaded models (README "Predictions"):
    ``delay_minutes`` of event time after its newest event (a burst of activity is scored once, when it
    is over), then again after each of ``idle_days`` without activity, so a churn probability rises
    while a person stays away.  ``enabled: false``: no predictions (``churn_risk`` and ``high_intent``
    stay empty)."""

    enabled: bool = True
    delay_minutes: float = Field(default=60, gt=0, le=MAX_MINUTES)
    idle_days: tuple[Annotated[float, Field(gt=0, le=MAX_DAYS)], ...] = Field(
        default=(1, 3, 7, 14, 30, 60, 90, 180, 365), strict=False)  # (YAML gives a list; each item stays strict)


#: Identifier values that name nobody (tag-manager and form bugs, test data): they never link anything.
#: Compared with every identifier after trimming, case-insensitively; an empty value is always blocked.
DEFAULT_BLOCKED_VALUES: tuple[str, ...] = (
    "undefined", "null", "none", "nan", "0", "-1", "anonymous", "unknown", "guest", "n/a",
    "test@test.com", "test@example.com", "email@example.com", "user@example.com", "example@example.com",
    "noreply@example.com", "no-reply@example.com", "none@none.com", "null@null.com", "a@a.com",
    # the advertising id iOS and Android report for everyone who opted out of tracking (a common
    # anonymous id: it merged every such person who also gave a user id or an e-mail address)
    "00000000-0000-0000-0000-000000000000",
    # what a tag or form sends when it prints an object or a null it should not: JavaScript's, C's printf
    "[object object]", "(null)", "nil",
)


#: The most identifiers of all kinds together ``identity.max_per_profile`` may let one profile hold.
#: Identifiers are never dropped, and each (up to 512 characters) is kept twice in the state (its
#: identifiers and its links): ~1 KB each, so these stay well under the value limit with the rest of
#: the state (1,000 anonymous ids made a state that could not be stored, and every later event of
#: that person was dead-lettered).
MOST_IDENTIFIERS = 250


class MaxPerProfile(_Strict):
    """Most identifiers of each kind one profile may hold (contract 3, v1.1): a link past a limit does
    not merge; it becomes a possible match and is counted (``mailpulse_identity_limited_total``)."""

    user_ids: int = Field(default=5, ge=1)
    emails: int = Field(default=10, ge=1)
    phones: int = Field(default=5, ge=1)
    anonymous_ids: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _storable(self) -> MaxPerProfile:
        total = self.user_ids + self.emails + self.phones + self.anonymous_ids
        if total > MOST_IDENTIFIERS:
            raise ValueError(f"{total} identifiers in all, past the {MOST_IDENTIFIERS} "
                             "a profile can hold and still be stored")
        return self


class Identity(_Strict):
    blocked_values: tuple[str, ...] = Field(default=DEFAULT_BLOCKED_VALUES, strict=False)  # (as ``idle_days``)
    max_per_profile: MaxPerProfile = MaxPerProfile()

    @field_validator("blocked_values", mode="before")
    @classmethod
    def _as_text(cls, values: Any) -> Any:
        """YAML reads ``null``, ``0`` and ``-1`` of the contract's example list as None and numbers."""
        if not isinstance(values, list | tuple):
            return values
        return [("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                if v is None or isinstance(v, bool | int | float) else v for v in values]

    def blocked(self) -> frozenset[str]:
        """The blocked values as compared (:func:`schemas.identifiers.comparable`)."""
        return frozenset(comparable(value) for value in self.blocked_values)


class TimeGuard(_Strict):
    #: An event more than this far ahead of the worker's wall clock is dead-lettered (``future_timestamp``).
    max_future_minutes: float = Field(default=1440, gt=0, le=MAX_MINUTES)


class Limits(_Strict):
    """The bounds of each profile's collections (:class:`streams.domain.profile.Limits`, whose defaults these
    are; README, `MAILPULSE_CONFIG`, `limits`).  Every worker of a deployment needs the same values: a merge or a replay
    then trims as the first fold did."""

    traits: int = Field(default=DEFAULT_LIMITS.traits, ge=1)
    trait_bytes: int = Field(default=DEFAULT_LIMITS.trait_bytes, ge=1024, le=512 * 1024)
    # (consent, blocks, currencies: not made smaller in a state too big to store; these fit with the rest)
    consent: int = Field(default=DEFAULT_LIMITS.consent, ge=1, le=256)
    context: int = Field(default=DEFAULT_LIMITS.context, ge=1)
    cart_lines: int = Field(default=DEFAULT_LIMITS.cart_lines, ge=1)
    cart_moves: int = Field(default=DEFAULT_LIMITS.cart_moves, ge=2)
    seen_ids: int = Field(default=DEFAULT_LIMITS.seen_ids, ge=64)
    seen_id_bytes: int = Field(default=DEFAULT_LIMITS.seen_id_bytes, ge=4096, le=512 * 1024)
    parked_events: int = Field(default=DEFAULT_LIMITS.parked_events, ge=1)
    history_per_type: int = Field(default=DEFAULT_LIMITS.history_per_type, ge=1)
    possible_matches: int = Field(default=DEFAULT_LIMITS.possible_matches, ge=1)
    blocks: int = Field(default=DEFAULT_LIMITS.blocks, ge=10, le=256)  # an identify registers up to 10
    currencies: int = Field(default=DEFAULT_LIMITS.currencies, ge=1, le=1000)
    match_aliases: int = Field(default=DEFAULT_LIMITS.match_aliases, ge=1)


class PipelineConfig(_Strict):
    guardrails: Guardrails = Guardrails()
    triggers: Triggers = Triggers()
    segments: Segments = Segments()
    scoring: Scoring = Scoring()
    identity: Identity = Identity()
    time: TimeGuard = TimeGuard()
    limits: Limits = Limits()

    # The custom segments compiled as the config was checked, with the ``segments`` they were compiled from.
    _custom: tuple[Segments, tuple[Segment, ...]] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _rules_compile(self) -> PipelineConfig:
        """Each custom rule compiles, its event counts within the event times a profile keeps (``limits``).
        Compiled once, here: :meth:`custom_segments` keeps the result for the worker's rules."""
        self._custom = (self.segments, self._compile_custom())
        return self

    def _compile_custom(self) -> tuple[Segment, ...]:
        from streams.domain.rules.segments import RuleError, Segment, compile_rule

        compiled = []
        for name, definition in self.segments.custom().items():
            try:
                compiled.append(Segment(name, compile_rule(definition["rule"], "rule", self.limits.history_per_type)))
            except RuleError as exc:
                raise _segment_error(f"segments.{name}: {exc}") from None
        return tuple(compiled)

    def custom_segments(self) -> tuple[Segment, ...]:
        """The custom segments by name, compiled (:func:`streams.domain.rules.segments.compile_rule`)."""
        if self._custom is None or self._custom[0] is not self.segments:  # (built unchecked: model_construct, or
            self._custom = (self.segments, self._compile_custom())  # a model_copy given other segments)
        return self._custom[1]
