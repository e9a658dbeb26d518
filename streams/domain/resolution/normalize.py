"""Canonical forms of person traits for matching: names, nicknames, streets, postcodes, a phonetic key.

Pure functions; the only state is immutable tables and ``lru_cache``s of pure functions (the same few
names and streets come back on every record, so folding them once is most of the speed).  Each cache
keeps the last :data:`CACHE_SIZE` distinct values: at 65,536 the street cache and the fold cache
behind it held ~36 MiB once full, and a long-running worker's RSS grew until all were.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

CACHE_SIZE = 8192
#: The most characters :func:`fold` reads of a text's compatibility decomposition: twice the longest
#: text a trait takes (512), room for a letter and its accent each.  Some characters decompose into many
#: (U+FDFA into 18): a name of 512 of them folded to 9,216 letters, which took ~34 ms and stayed in
#: the caches of this module, ~77 KB per identify of such names.
FOLD_READ = 1024

# Nickname -> canonical given name. Small and built in on purpose: the common English/German forms.
NICKNAMES: dict[str, str] = {
    "bob": "robert", "bobby": "robert", "rob": "robert", "robbie": "robert", "bert": "robert",
    "bill": "william", "billy": "william", "will": "william", "willy": "william",
    "liz": "elizabeth", "lizzy": "elizabeth", "beth": "elizabeth", "betty": "elizabeth", "eliza": "elizabeth",
    "elisabeth": "elizabeth", "libby": "elizabeth",
    "kate": "katherine", "katie": "katherine", "kathy": "katherine", "cathy": "katherine",
    "catherine": "katherine", "kathryn": "katherine", "kat": "katherine", "katharina": "katherine",
    "jim": "james", "jimmy": "james", "jamie": "james",
    "maggie": "margaret", "meg": "margaret", "peggy": "margaret", "greta": "margaret", "margarete": "margaret",
    "mike": "michael", "mikey": "michael", "mick": "michael", "micha": "michael",
    "jen": "jennifer", "jenny": "jennifer", "jenn": "jennifer",
    "tom": "thomas", "tommy": "thomas",
    "sue": "susan", "susie": "susan", "suzy": "susan", "susanne": "susan",
    "dan": "daniel", "danny": "daniel",
    "pat": "patricia", "patty": "patricia", "trish": "patricia",
    "alex": "alexander", "sasha": "alexander", "xander": "alexander",
    "ben": "benjamin", "benny": "benjamin",
    "sam": "samuel", "sammy": "samuel",
    "chris": "christopher", "kit": "christopher",
    "dave": "david", "davy": "david",
    "joe": "joseph", "joey": "joseph", "sepp": "joseph", "josef": "joseph",
    "nick": "nicholas", "nicky": "nicholas", "niklas": "nicholas", "nico": "nicholas",
    "tony": "anthony", "ant": "anthony",
    "andy": "andrew", "drew": "andrew",
    "rick": "richard", "dick": "richard", "rich": "richard", "richie": "richard",
    "ed": "edward", "eddie": "edward", "ted": "edward", "ned": "edward",
    "steve": "steven", "stephen": "steven",
    "matt": "matthew", "matthias": "matthew",
    "jon": "jonathan", "johnny": "john", "jack": "john", "hans": "johannes",
    "charlie": "charles", "chuck": "charles",
    "fred": "frederick", "freddie": "frederick", "fritz": "friedrich",
    "greg": "gregory", "larry": "lawrence", "jerry": "gerald", "gerry": "gerald",
    "ken": "kenneth", "kenny": "kenneth", "ron": "ronald", "ronnie": "ronald",
    "tim": "timothy", "timmy": "timothy", "vicky": "victoria", "tori": "victoria",
    "abby": "abigail", "becky": "rebecca", "becca": "rebecca", "debbie": "deborah", "deb": "deborah",
    "jess": "jessica", "jessie": "jessica", "mandy": "amanda", "manda": "amanda",
    "sandy": "sandra", "cindy": "cynthia", "annie": "anne", "ann": "anne",
    "chrissy": "christina", "tina": "christina", "christine": "christina", "kristina": "christina",
    "sophie": "sofia", "sophia": "sofia", "emmy": "emma", "millie": "amelia",
    "lou": "louis", "lu": "lucas", "luke": "lucas", "lukas": "lucas",
    "bella": "isabella", "izzy": "isabella", "isabel": "isabella",
    "lotte": "charlotte", "lottie": "charlotte", "ollie": "olivia", "liv": "olivia",
    "mo": "maurice", "max": "maximilian", "leni": "helene",
}

# Street-type abbreviations -> full word (after folding: lower case, no accents, ß -> ss).
STREET_WORDS: dict[str, str] = {
    "st": "street", "str": "strasse", "ave": "avenue", "av": "avenue", "rd": "road", "ln": "lane",
    "ct": "court", "dr": "drive", "blvd": "boulevard", "pl": "place", "sq": "square", "hwy": "highway",
    "pkwy": "parkway", "ter": "terrace", "cres": "crescent", "n": "north", "s": "south", "e": "east",
    "w": "west", "mt": "mount", "apt": "apartment", "ste": "suite",
}

#: ASCII that is no letter, digit or space (the letters of other scripts that :func:`fold` keeps are not ASCII).
_NOT_LETTERS = re.compile(r"[^a-z0-9 \u0080-\U0010ffff]+")
_SPACES = re.compile(r"\s+")
_DIGITS = re.compile(r"\d")
_PLACEHOLDER_CODE = re.compile(r"0{3,}|9{3,}|X{3,}")


#: Combining marks that are accents, left out in writing as often as not, which :func:`fold` drops as it
#: does Latin's: the combining diacritics (Latin, Greek and Cyrillic letters' after NFKD), Cyrillic's
#: titlo, Hebrew's points, Arabic's harakat and the nukta of Indic scripts.  The other marks are letters:
#: the vowel signs of Indic and South-East Asian scripts (मधु, Madhu, is not मेधा, Medha) and the kana
#: voicing marks (ガク is not カク).
_ACCENTS = re.compile("[\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670"
                      "\u06d6-\u06ed\u093c\u09bc\u0a3c\u0abc\u0b3c\u0c3c\u0cbc\u1ab0-\u1aff\u1dc0-\u1dff"
                      "\u20d0-\u20ff\ufe20-\ufe2f]")


def _kept(ch: str) -> bool:
    """Whether :func:`fold` keeps a character of the NFKD form of a name: ASCII, and the letters, digits
    and vowel signs of scripts other than Latin (Cyrillic, Greek, Arabic, Han, Devanagari, ...), which
    have no ASCII form; not accents (:data:`_ACCENTS`), modifier letters (U+02BC) nor Latin letters
    without an ASCII base (``đ``), as before."""
    if ch.isascii():
        return True
    category = unicodedata.category(ch)
    if category[0] == "M":  # a combining mark: a letter's part, unless an accent
        return _ACCENTS.match(ch) is None
    return (ch.isalnum() and category != "Lm"
            and not unicodedata.name(ch, "LATIN").startswith("LATIN"))


@lru_cache(maxsize=CACHE_SIZE)
def fold(text: str) -> str:
    """Lower case ASCII letters, digits and single spaces: ``"  Müller-Lüdenscheidt "`` -> ``"muller ludenscheidt"``;
    the letters of other scripts stay (``"Иван Петров"`` -> ``"иван петров"``): dropping them made every name
    in Cyrillic, Greek, Arabic or Chinese a missing one, so such records were never compared."""
    text = text.strip().lower().replace("ß", "ss").replace("æ", "ae").replace("ø", "o").replace("ł", "l")
    if not text.isascii():
        # (lowered again: a compatibility form can bring capitals the first lowering did not see, as
        # U+210C's H or U+3250's PTE, which were dropped as not letters)
        text = "".join(ch for ch in unicodedata.normalize("NFKD", text)[:FOLD_READ].lower() if _kept(ch))
    text = _NOT_LETTERS.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


#: What forms and tag managers fill in where a person gave nothing, folded (:func:`fold`): no one's
#: name, street or city, so fuzzy matching reads them as missing.  ``"n/a"`` folds to ``"n a"``; the
#: given name Na is kept.  (Without this, strangers named "Unknown Unknown" born 1900-01-01 merged.)
PLACEHOLDER_WORDS = frozenset({
    "unknown", "n a", "none", "null", "undefined", "anonymous", "tbd", "noname", "no name", "not provided",
    "not given", "first name", "last name", "firstname", "lastname", "xxx", "xx",
})
#: Words that are placeholders as both parts of a name, or as a name given twice ("Guest Guest", "Test
#: User"), and real names otherwise (Nan, Nil, the surnames Guest, Test and Street).
PLACEHOLDER_NAME_PARTS = frozenset({
    "guest", "test", "user", "customer", "name", "sample", "dummy", "nan", "nil", "x", *PLACEHOLDER_WORDS,
})
#: Birthdays that forms and systems fill in by default (the year 1900, the Unix epoch).
PLACEHOLDER_BIRTHDAYS = frozenset({"0001-01-01", "1800-01-01", "1900-01-01", "1901-01-01", "1970-01-01"})


def names(first: str | None, last: str | None) -> tuple[str, str]:
    """(:func:`name` of each part), both ``""`` when both parts are given and both are placeholders
    (:data:`PLACEHOLDER_NAME_PARTS`: "Guest Guest", "Test User")."""
    folded = (fold(first) if first else "", fold(last) if last else "")
    if all(folded) and all(part in PLACEHOLDER_NAME_PARTS for part in folded):
        return "", ""
    return name(first), name(last)


@lru_cache(maxsize=CACHE_SIZE)
def name(text: str | None) -> str:
    """A folded name with inner spaces removed (``"Mc Donald"`` and ``"McDonald"`` are one name);
    ``""`` for a placeholder (:data:`PLACEHOLDER_WORDS`)."""
    if not text:
        return ""
    folded = fold(text)
    return "" if folded in PLACEHOLDER_WORDS else folded.replace(" ", "")


@lru_cache(maxsize=CACHE_SIZE)
def given_name(text: str | None) -> str:
    """The canonical form of a given name: nickname -> full name (``Bob`` -> ``robert``)."""
    folded = name(text)
    return NICKNAMES.get(folded, folded)


_SOUNDEX = str.maketrans("bfpvcgjkqsxzdtlmnr", "111122222222334556")


@lru_cache(maxsize=CACHE_SIZE)
def phonetic(text: str) -> str:
    """A 4-character Soundex-style key of a folded name: ``"robert"`` and ``"rupert"`` -> ``"R163"``.

    American Soundex with German ``sch`` folded to ``s``; h/w do not separate equal codes, vowels do.
    Typo-tolerant for dropped, doubled or swapped vowels and for many consonant slips; the first letter is
    kept as is, so blocking on it assumes first letters are mostly right (other keys catch the rest).
    A name without a Latin letter (another script) keys on its first four letters.
    """
    letters = "".join(ch for ch in text if "a" <= ch <= "z").replace("sch", "s")
    if not letters:  # another script (:func:`fold`): its first four letters
        return "".join(ch for ch in text if ch.isalpha())[:4].upper()
    codes = letters.translate(_SOUNDEX)
    out = [letters[0].upper()]
    last = codes[0] if codes[0].isdigit() else ""
    for ch, code in zip(letters[1:], codes[1:], strict=True):
        if code.isdigit():
            if code != last:
                out.append(code)
                if len(out) == 4:
                    break
            last = code
        elif ch not in "hw":  # a vowel separates equal codes, h/w do not
            last = ""
    return "".join(out).ljust(4, "0")


@lru_cache(maxsize=CACHE_SIZE)
def street(text: str | None) -> tuple[str, str]:
    """``(house_number, street_name)`` with abbreviations spelled out: ``"12a Main St."`` -> ``("12a", "main street")``.

    German compounds ending in ``str``/``straße`` become ``...strasse``.
    """
    if not text:
        return "", ""
    folded = fold(text)
    if folded in PLACEHOLDER_WORDS or folded in ("street", "address"):
        return "", ""
    numbers: list[str] = []
    words: list[str] = []
    for token in folded.split(" "):
        if _DIGITS.search(token):
            numbers.append(token)
            continue
        token = STREET_WORDS.get(token, token)
        if token.endswith("str") and len(token) > 5:
            token += "asse"
        words.append(token)
    return " ".join(numbers), " ".join(words)


@lru_cache(maxsize=CACHE_SIZE)
def postcode(text: str | None) -> str:
    """Upper case, no spaces or dashes: ``"sw1a 1aa"`` -> ``"SW1A1AA"``; ``""`` for a placeholder:
    a run of at least three 0s, 9s or Xs (``00000``; 1111 and 55555 are real codes), or a placeholder word."""
    if not text:
        return ""
    code = "".join(ch for ch in text.upper() if ch.isalnum())
    return "" if _PLACEHOLDER_CODE.fullmatch(code) or fold(text) in PLACEHOLDER_WORDS else code


def birthday(text: str | None) -> str:
    """``YYYY-MM-DD`` (what ingest already made of it), or ``""`` (also for a placeholder date,
    :data:`PLACEHOLDER_BIRTHDAYS`)."""
    day = text[:10] if text and len(text) >= 10 else ""
    return "" if day in PLACEHOLDER_BIRTHDAYS else day
