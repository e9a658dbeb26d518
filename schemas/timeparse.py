"""Event timestamps: ISO-8601 with an offset (or ``Z``) or epoch milliseconds, stored as UTC ms."""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

# Epoch-ms bounds we accept: 1990-01-01 .. 2200-01-01.  Outside: almost surely seconds or garbage.
MIN_EPOCH_MS = 631_152_000_000
MAX_EPOCH_MS = 7_258_118_400_000
#: The longest wait or window a setting or a rule may name: a century (a due time far past it could
#: not be held by the due index, and failed every profile the rule was applied to).
MAX_SPAN_MS = 100 * 366 * 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

#: The ISO-8601 forms we read: a date (calendar, week or ordinal: Python's ``fromisoformat`` reads no
#: ordinal date, it is read here as the calendar date it names), ``T`` (``t``) or one space, a time,
#: and ``Z`` (``z``, as RFC 3339 allows) or an offset in hours and minutes.  ``datetime.fromisoformat``
#: alone also reads a NUL or a space before the ``Z``, a NUL after it and offsets with seconds, which
#: no ISO-8601 writer makes.  (Groups: ``year`` and ``day`` of an ordinal date, ``time`` of day,
#: ``second``.)
_ISO_FORM = re.compile(
    r"(?:\d{4}-?(?:\d{2}-?\d{2}|W\d{2}-?\d)|(?P<year>\d{4})-?(?P<day>\d{3}))"
    r"[Tt ](?P<time>\d{2}(?::?\d{2}(?::?(?P<second>\d{2})(?:[.,]\d+)?)?)?)"
    r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)", re.ASCII)
#: Milliseconds in a day, and the start of a day's last second.
_DAY_MS = 86_400_000
_LAST_SECOND_MS = _DAY_MS - 1000


def parse_timestamp(value: object) -> int:
    """Return UTC epoch milliseconds, or raise ValueError with a one-line reason."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be ISO-8601 text or epoch milliseconds, not a boolean")
    if isinstance(value, int):
        if not MIN_EPOCH_MS <= value <= MAX_EPOCH_MS:
            raise ValueError(f"epoch milliseconds {value} out of range (1990..2200)")
        return value
    if isinstance(value, str):
        leap = end_of_day = False
        try:
            form = _ISO_FORM.fullmatch(value)
            if form is None:
                raise ValueError
            text = value[:-1] + "Z" if value[-1] == "z" else value
            if form["time"].startswith("24"):  # the end of a day (ISO 8601's 24:00): the next day's 00:00
                if form["time"][2:].strip("0:.,"):  # (24:00:01 is no time of day)
                    raise ValueError
                end_of_day = True
                text = text[:form.start("time")] + "00" + text[form.start("time") + 2:]
            if form["second"] == "60":  # a leap second (ISO 8601 and RFC 3339 write it so): read after :59
                leap = True
                text = text[:form.start("second")] + "59" + text[form.end("second"):]
            if form["day"] is not None:  # an ordinal date (``2026-060``): the calendar date it names
                year, day = int(form["year"]), int(form["day"])
                if not 1 <= day <= (366 if calendar.isleap(year) else 365):
                    raise ValueError
                text = (date(year, 1, 1) + timedelta(days=day - 1)).isoformat() + text[form.end("day"):]
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"cannot parse timestamp {value[:64]!r}") from None
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {value[:64]!r} has no UTC offset")
        ms = (parsed - _EPOCH) // _MS  # exact (``timestamp() * 1000`` in floating point read some a millisecond early)
        if leap:
            # only the last minute of a UTC day has one; it counts as the next day's first second, as
            # epoch time (POSIX) counts it
            if ms % _DAY_MS // 1000 * 1000 != _LAST_SECOND_MS:
                raise ValueError(f"timestamp {value[:64]!r}: second 60 outside the last minute of a UTC day")
            ms += 1000
        if end_of_day:
            ms += _DAY_MS
        if not MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS:
            raise ValueError(f"timestamp {value[:64]!r} out of range (1990..2200)")
        return ms
    raise ValueError("timestamp must be ISO-8601 text or epoch milliseconds")


@lru_cache(maxsize=8192)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_ms(ms: int) -> str:
    """UTC ISO-8601 with milliseconds and ``Z`` (hot: every time field of every snapshot)."""
    seconds, millis = divmod(ms, 1000)
    return f"{_utc_second(seconds)}.{millis:03d}Z"
