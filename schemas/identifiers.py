"""Normalization of identifiers: e-mails (lower-cased, validated) and phones (E.164).

Both are cached: the same few addresses come back on every event of a person.  The caches are
bounded by memory, not by the number of people: an entry costs ~300 bytes, so 65,536 of them held
~18 MiB per cache once that many distinct addresses had passed (a long-running worker's RSS grew
until they were full); 8,192 still holds everyone active in the last minutes at thousands of
events per second.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

CACHE_SIZE = 8192


#: Every address validated so far, when :func:`hold_every_address` asked for it.
_held_addresses: dict[str, str] | None = None


def hold_every_address() -> None:
    """From now on every distinct address is validated once, whatever their number: for commands
    that read a whole history (``train``, ``score``), where a history of 100k people re-validated
    most addresses once the bounded cache had let them go (~25% of the reading time)."""
    global _held_addresses
    if _held_addresses is None:
        _held_addresses = {}


#: The longest e-mail address taken, in characters, surrounding spaces left out (RFC 5321 allows 254
#: in a path; 320 is the sum of its part limits).  Checked before anything else: a 64 KiB value took
#: ~50 ms to refuse, and each distinct one stayed in the cache below (which is keyed by the trimmed
#: text when the value was that long).
MAX_EMAIL_CHARS = 320
#: The longest phone number text taken (formatting and an extension included).
MAX_PHONE_CHARS = 64


#: The longest identifier text (once trimmed) compared with the blocked values: every identifier
#: field refuses longer ones, and normalizing text of many combining marks costs time that grows
#: with the square of its length (a 64 KiB ``user_id`` took ~0.8 s).
MAX_COMPARED_CHARS = 1024


#: Characters that show nothing and are neither control nor format characters: variation selectors
#: (U+FE00..U+FE0F, U+E0100..U+E01EF, Mongolian U+180B..U+180F), the combining grapheme joiner, the Khmer
#: inherent vowels, the Hangul fillers (U+3164 and U+FFA0 are U+1160 once NFKC-normalized) and the blank
#: braille pattern.  (Unicode's default-ignorable characters outside Cc and Cf, and U+2800: an
#: identifier of nothing but these, or ``null`` followed by one, named nobody and linked strangers.)
_INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10))) + "".join(map(chr, range(0xE0100, 0xE01F0))))
#: Dashes and the minus sign NFKC leaves as they are, read as the ASCII hyphen-minus (U+2212 and 1 is ``-1``).
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2212", "-"))


def comparable(value: str) -> str:
    """An identifier as it is compared with ``identity.blocked_values`` (and those values as they are
    listed): compatibility-normalized (NFKC: full-width and other look-alike forms of letters become
    the letters; dashes and the minus sign a hyphen-minus), without invisible characters (control and
    format characters: NUL, line breaks, zero-width spaces, the byte-order mark; and the others of
    :data:`_INVISIBLE`), trimmed and case-folded.  So ``"null"`` in full-width letters, ``"null\u200b"``,
    ``"null\ufe0f"``, ``"\u200b"`` and ``"\u3164"`` (empty) name nobody either."""
    if value.isascii() and value.isprintable():  # (the common case, no character to drop: fast)
        return value.strip().casefold()
    text = unicodedata.normalize("NFKC", value).translate(_DASHES)
    return "".join(ch for ch in text if ch not in _INVISIBLE
                   and unicodedata.category(ch) not in ("Cc", "Cf")).strip().casefold()


def within(raw: str, most: int, what: str) -> str:
    """``raw``, trimmed when it is longer than ``most`` characters (padding of a fixed-width export is
    no part of it); ValueError when it is longer still."""
    if len(raw) > most:
        raw = raw.strip()
        if len(raw) > most:
            raise ValueError(f"invalid {what}: longer than {most} characters")
    return raw


def normalize_email(raw: str) -> str:
    """Validated, lower-cased e-mail address; ValueError when it is not one."""
    raw = within(raw, MAX_EMAIL_CHARS, "email")
    if _held_addresses is None:
        return _normalize_email(raw)
    normalized = _held_addresses.get(raw)
    if normalized is None:
        normalized = _held_addresses[raw] = _normalize_email(raw)
    return normalized


#: The common address, plain ASCII, that ``email_validator`` accepts and normalizes to itself (up to
#: case): a dot-atom local part of letters, digits and ``._+-`` (no leading, trailing or doubled
#: dot), then domain labels of letters, digits and inner hyphens (none doubled: ``ab--`` and
#: ``xn--`` labels take the library's IDNA rules), and an alphabetic top-level domain.  ~1 µs
#: against ~20 µs in the library, for every address not yet in the cache (a new person's); the rest
#: goes to the library.  Property-tested against it (tests/unit/test_identifiers.py).
_PLAIN_EMAIL = re.compile(
    r"(?!\.)(?!.*\.\.)[A-Za-z0-9._+-]{1,64}(?<!\.)"
    r"@(?!.*--)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63})"
)

#: Top-level names ``email_validator`` refuses as special-use: the library's own list.
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def _plain_email(address: str) -> str | None:
    """``address`` lower-cased when it is a plain address (:data:`_PLAIN_EMAIL`), else None."""
    if len(address) > 254:
        return None
    match = _PLAIN_EMAIL.fullmatch(address)
    if match is None or match.group(1).lower() in _SPECIAL_USE:
        return None
    return address.lower()


@lru_cache(maxsize=CACHE_SIZE)
def _normalize_email(raw: str) -> str:
    address = raw.strip()
    plain = _plain_email(address)
    if plain is not None:
        return plain
    try:
        info = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email: {exc}") from None
    return info.normalized.lower()


def normalize_phone(raw: str, default_region: str = "US") -> str:
    """Phone number in E.164; ValueError when it cannot be a valid number."""
    return _normalize_phone(within(raw, MAX_PHONE_CHARS, "phone"), default_region)


#: Digit runs no one's number has in practice: seven digits counting up or down as on a keypad
#: (``06 12 34 56 78``, ``0412 345 678``) or seven of one digit (``+33 6 00 00 00 00``).  Valid
#: numbers to the phone library.
_MADE_UP_NUMBER = re.compile("|".join(
    [run[start:start + 7] for run in ("01234567890", "09876543210") for start in range(5)] + [r"(\d)\1{6}"]))


@lru_cache(maxsize=CACHE_SIZE)
def made_up_number(e164: str) -> bool:
    """Whether a normalized number (E.164) has a made-up run (:data:`_MADE_UP_NUMBER`) in its national
    part (the country code left out: ``+45 67 89 01 23`` is a real Danish number): such a number names
    nobody, and linked every stranger who typed it.  The country code is read off the text (E.164's
    codes are one to three digits, none the start of another) rather than by parsing the number again,
    which :func:`normalize_phone` did (~25 µs each)."""
    digits = e164.removeprefix("+")
    length = next((n for n in (1, 2, 3) if digits[:n].isdigit()
                   and int(digits[:n]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE), None)
    if length is None:
        return False
    return _MADE_UP_NUMBER.search(digits[length:].lstrip("0")) is not None


@lru_cache(maxsize=CACHE_SIZE)
def _normalize_phone(raw: str, default_region: str) -> str:
    try:
        number = phonenumbers.parse(raw, None if raw.strip().startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"invalid phone: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"invalid phone: {raw[:32]!r} is not a valid number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
