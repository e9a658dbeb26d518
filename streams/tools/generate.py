"""Synthetic shop traffic: ``mailpulse generate`` (history) and the ``--demo`` feed (live).

Deterministic for a seed: only ``random.Random(seed)`` is used, never the clock.
"""

from __future__ import annotations

import heapq
import pickle
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from schemas.timeparse import parse_timestamp

GENERATOR_DOC = """\
Each simulated person has latent traits: an activity rate (sessions per week, log-normal), a purchase
propensity (beta), an e-mail engagement rate, two preferred categories out of eight, a time zone, a
device, and for about a third a day on which they churn (stop all activity). People start anonymous
(`anonymous_id`); most identify through a form (`identify` with user_id, traits, consent — about 10%
refuse e-mail consent); later events carry their `user_id` and often their e-mail. Sessions are
bursts of page, category and product views and searches a minute or two apart, biased to preferred
categories; some add to cart (cart_id per cart), some remove, some check out, and whether they buy
depends on the purchase propensity: many carts are abandoned, some bought a day or two later.
Identified people open and click campaign e-mails at their engagement rate. About 30% of identified
people also appear as CRM records (`identify`, source `crm`, only an e-mail and traits) with realistic
corruption: typos, swapped name parts, nicknames, different case, a second e-mail address, missing
fields, a new address. About 10% of timestamps are epoch milliseconds and some carry a +01:00 offset.
"""

BTYD_DOC = """\
`--purchases btyd`: customers whose purchases follow the buy-till-you-die process of the BG/NBD model
(Fader, Hardie and Lee 2005). Each customer is acquired at a uniform time of the period with an
`identify` (user_id, an e-mail address of their own and consent: a sign-up at checkout) and a first
purchase. While alive they buy as a Poisson process with a rate drawn from a gamma distribution
(shape r, rate alpha per day); after each repeat purchase they drop out for good with a probability
p drawn from a beta distribution (a, b): see `BTYD_PARAMS`. Orders hold one to three catalogue
products. Customers also look at products (`product_view`) as a Poisson process at a rate
proportional to their purchase rate (a per-customer number of views per purchase, gamma
distributed); dropping out does not end the views but cuts their rate to `BTYD_VIEWS_AFTER_DROPOUT`
of it. No anonymous browsing, carts, e-mail campaigns or CRM records.
"""
#: The BG/NBD parameters of ``--purchases btyd`` (rates per day): mean rate r / alpha = 0.025 a day
#: (0.75 a month) while alive, mean drop-out probability a / (a + b) = 0.2 per repeat purchase.
BTYD_PARAMS = {"r": 0.75, "alpha": 30.0, "a": 0.8, "b": 3.2}
#: Product views per purchase while alive: gamma(shape, scale) per customer (mean shape * scale).
BTYD_VIEWS_PER_PURCHASE = (2.0, 1.0)
#: The share of their view rate that customers keep after dropping out.
BTYD_VIEWS_AFTER_DROPOUT = 0.2
#: The purchase processes ``generate`` offers (``--purchases``).
PURCHASE_PROCESSES = ("sessions", "btyd")

CATEGORIES = ("electronics", "books", "fashion", "home", "beauty", "sports", "toys", "grocery")
TIMEZONES = ("Europe/Berlin", "Europe/London", "America/New_York", "America/Los_Angeles", "Asia/Tokyo",
             "Australia/Sydney", "Europe/Paris", "America/Chicago")
DEVICES = (("mobile", "ios"), ("mobile", "android"), ("desktop", "windows"), ("desktop", "macos"),
           ("tablet", "ios"))
FIRST_NAMES = ("Robert", "William", "Elizabeth", "Katherine", "James", "Margaret", "Michael", "Jennifer",
               "Thomas", "Susan", "Daniel", "Patricia", "Anna", "Lukas", "Sofia", "Mateo", "Emma", "Noah",
               "Olivia", "Liam", "Isabella", "Lucas", "Mia", "Ethan", "Charlotte", "Alexander", "Amelia",
               "Benjamin", "Harper", "Samuel")
NICKNAMES = {"Robert": "Bob", "William": "Bill", "Elizabeth": "Liz", "Katherine": "Kate", "James": "Jim",
             "Margaret": "Maggie", "Michael": "Mike", "Jennifer": "Jen", "Thomas": "Tom", "Susan": "Sue",
             "Daniel": "Dan", "Patricia": "Pat", "Alexander": "Alex", "Benjamin": "Ben", "Samuel": "Sam"}
LAST_NAMES = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Martinez",
              "Lopez", "Wilson", "Anderson", "Taylor", "Thomas", "Moore", "Martin", "Jackson", "White",
              "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott", "Green",
              "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell", "Roberts", "Carter", "Phillips",
              "Evans", "Turner", "Schmidt", "Müller", "Schneider", "Fischer", "Weber", "Meyer", "Wagner")
STREETS = ("Main St", "Oak Avenue", "Maple Road", "Hauptstraße", "Park Lane", "High Street", "Elm Street",
           "Cedar Court", "Lindenweg", "River Road")
CITIES = (("Berlin", "10115", "DE"), ("Hamburg", "20095", "DE"), ("London", "SW1A 1AA", "GB"),
          ("New York", "10001", "US"), ("Los Angeles", "90001", "US"), ("Chicago", "60601", "US"),
          ("Paris", "75001", "FR"), ("Munich", "80331", "DE"), ("Boston", "02108", "US"))
DOMAINS = ("example.com", "mail.example.org", "inbox.example.net", "post.example.de")
CATALOG_SIZE = 200


@dataclass(frozen=True)
class Product:
    product_id: str
    category: str
    price: float


def catalog(rng: random.Random) -> list[Product]:
    return [Product(f"sku-{n}", CATEGORIES[n % len(CATEGORIES)], round(rng.lognormvariate(3.2, 0.8), 2))
            for n in range(CATALOG_SIZE)]


@dataclass
class Person:
    index: int
    anonymous_id: str
    user_id: str
    first_name: str
    last_name: str
    email: str
    phone: str | None
    birthday: str
    street: str
    city: tuple[str, str, str]
    timezone: str
    device: tuple[str, str]
    sessions_per_week: float
    purchase_propensity: float
    engagement: float
    categories: tuple[str, str]
    consent: bool
    identifies_after_sessions: int | None
    churn_day: float | None
    in_crm: bool
    carts: int = 0
    identified: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)


def _person(index: int, rng: random.Random, days: int) -> Person:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    domain = rng.choice(DOMAINS)
    email = f"{first.lower()}.{last.lower()}{rng.randrange(100)}@{domain}".replace("ü", "u")
    born = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 55))
    churns = rng.random() < 0.35
    return Person(
        index=index,
        anonymous_id=f"a-{rng.getrandbits(48):012x}",
        user_id=f"u-{index}",
        first_name=first,
        last_name=last,
        email=email,
        phone=f"+1415555{rng.randrange(10_000):04d}" if rng.random() < 0.4 else None,
        birthday=born.isoformat(),
        street=f"{rng.randrange(1, 200)} {rng.choice(STREETS)}",
        city=rng.choice(CITIES),
        timezone=rng.choice(TIMEZONES),
        device=rng.choice(DEVICES),
        sessions_per_week=min(14.0, rng.lognormvariate(0.3, 0.8)),
        purchase_propensity=rng.betavariate(1.5, 6.0),
        engagement=rng.betavariate(2.0, 5.0),
        categories=(rng.choice(CATEGORIES), rng.choice(CATEGORIES)),
        consent=rng.random() >= 0.1,
        identifies_after_sessions=rng.randrange(0, 4) if rng.random() < 0.75 else None,
        churn_day=rng.uniform(days * 0.2, days) if churns else None,
        in_crm=rng.random() < 0.3,
    )


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 3:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + rng.choice("aeiourstnl") + word[i + 1:]
    if kind == 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + word[i + 1:]


class _Clock:
    """Renders event times: mostly ISO-8601 Z, ~10% epoch ms, ~5% with a +01:00 offset."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def stamp(self, ms: int) -> str | int:
        roll = self.rng.random()
        if roll < 0.10:
            return ms
        moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
        if roll < 0.15:
            return moment.astimezone(timezone_plus_one()).isoformat()
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def timezone_plus_one() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=1))


class _Builder:
    """Writes one person's events with unique, stable ids."""

    def __init__(self, person: Person, rng: random.Random, clock: _Clock, products: list[Product]) -> None:
        self.p, self.rng, self.clock, self.products = person, rng, clock, products
        self.n = 0

    def emit(self, etype: str, ms: int, **fields: Any) -> None:
        self.n += 1
        p = self.p
        ids: dict[str, Any] = {"anonymous_id": p.anonymous_id}
        if p.identified:
            ids = {"user_id": p.user_id}
            if self.rng.random() < 0.4:
                ids["email"] = p.email
            if self.rng.random() < 0.2:
                ids["anonymous_id"] = p.anonymous_id
        event = {"event_id": f"{etype}-{p.index}-{self.n}", "type": etype, "timestamp": self.clock.stamp(ms),
                 **ids, **fields}
        event["_ms"] = ms
        p.events.append(event)

    def context(self) -> dict[str, Any]:
        p = self.p
        return {"device": p.device[0], "os": p.device[1], "timezone": p.timezone, "locale": "en-US",
                "source": self.rng.choice(("web", "app", "email", "ads"))}

    def product(self) -> Product:
        if self.rng.random() < 0.7:
            category = self.rng.choice(self.p.categories)
            choices = [pr for pr in self.products if pr.category == category]
            return self.rng.choice(choices)
        return self.rng.choice(self.products)

    def identify(self, ms: int) -> None:
        p = self.p
        traits: dict[str, Any] = {"first_name": p.first_name, "last_name": p.last_name, "email": p.email,
                                  "birthday": p.birthday, "street": p.street, "city": p.city[0],
                                  "postcode": p.city[1], "country": p.city[2]}
        if p.phone:
            traits["phone"] = p.phone
        p.identified = True
        self.n += 1
        p.events.append({"event_id": f"identify-{p.index}-{self.n}", "type": "identify",
                         "timestamp": self.clock.stamp(ms), "user_id": p.user_id, "anonymous_id": p.anonymous_id,
                         "email": p.email, "traits": traits, "consent": {"email": p.consent}, "source": "form",
                         "_ms": ms})

    def crm_record(self, ms: int) -> None:
        p, rng = self.p, self.rng
        first, last = p.first_name, p.last_name
        roll = rng.random()
        if roll < 0.3:
            first = _typo(first, rng)
        elif roll < 0.45:
            last = _typo(last, rng)
        elif roll < 0.6:
            first = NICKNAMES.get(first, first)
        elif roll < 0.7:
            first, last = last, first
        email = p.email
        if rng.random() < 0.3:
            email = email.upper() if rng.random() < 0.5 else email.capitalize()
        if rng.random() < 0.1:
            email = f"{p.first_name[0].lower()}{p.last_name.lower()}@{rng.choice(DOMAINS)}".replace("ü", "u")
        traits: dict[str, Any] = {"first_name": first, "last_name": last, "email": email, "birthday": p.birthday,
                                  "street": p.street, "city": p.city[0], "postcode": p.city[1],
                                  "country": p.city[2]}
        if rng.random() < 0.15:
            city = rng.choice(CITIES)
            traits.update(street=f"{rng.randrange(1, 200)} {rng.choice(STREETS)}", city=city[0],
                          postcode=city[1], country=city[2])
        for optional in ("birthday", "street", "postcode"):
            if rng.random() < 0.1:
                traits.pop(optional)
        self.n += 1
        p.events.append({"event_id": f"crm-{p.index}-{self.n}", "type": "identify", "timestamp": self.clock.stamp(ms),
                         "email": email, "traits": traits, "source": "crm", "_ms": ms})

    def session(self, ms: int) -> int:
        """One browsing session from ``ms``; returns its end."""
        p, rng = self.p, self.rng
        ctx = self.context()
        t = ms
        self.emit("page_view", t, url="/", context=ctx)
        viewed: list[Product] = []
        for _ in range(rng.randint(1, 8)):
            t += rng.randint(20_000, 150_000)
            roll = rng.random()
            if roll < 0.15:
                self.emit("search", t, query=rng.choice(p.categories), context=ctx)
            elif roll < 0.3:
                self.emit("category_view", t, category=rng.choice(p.categories), url="/c", context=ctx)
            else:
                product = self.product()
                viewed.append(product)
                self.emit("product_view", t, product_id=product.product_id, category=product.category,
                          url=f"/p/{product.product_id}", context=ctx)
        if viewed and rng.random() < 0.25 + p.purchase_propensity:
            t = self._cart(t, viewed, ctx)
        return t

    def _cart(self, t: int, viewed: list[Product], ctx: dict[str, Any]) -> int:
        p, rng = self.p, self.rng
        p.carts += 1
        cart_id = f"cart-{p.index}-{p.carts}"
        lines: dict[str, tuple[Product, int]] = {}
        for product in rng.sample(viewed, k=min(len(viewed), rng.randint(1, 3))):
            t += rng.randint(10_000, 90_000)
            qty = 1 if rng.random() < 0.8 else 2
            lines[product.product_id] = (product, qty)
            self.emit("cart_add", t, product_id=product.product_id, category=product.category, quantity=qty,
                      price=product.price, currency="USD", cart_id=cart_id, context=ctx)
        if len(lines) > 1 and rng.random() < 0.2:
            gone = rng.choice(sorted(lines))
            t += rng.randint(10_000, 60_000)
            self.emit("cart_remove", t, product_id=gone, quantity=lines.pop(gone)[1], cart_id=cart_id, context=ctx)
        buys = rng.random() < p.purchase_propensity * 1.6
        if buys:
            later = rng.random() < 0.25
            t += rng.randint(86_400_000, 2 * 86_400_000) if later else rng.randint(60_000, 600_000)
            self.emit("checkout_started", t, cart_id=cart_id, context=ctx)
            t += rng.randint(30_000, 300_000)
            items = [{"product_id": pr.product_id, "category": pr.category, "quantity": q, "price": pr.price}
                     for pr, q in lines.values()]
            total = round(sum(pr.price * q for pr, q in lines.values()), 2)
            self.emit("purchase", t, order_id=f"o-{p.index}-{p.carts}", total=total, currency="USD", items=items,
                      context=ctx)
        return t

    def email(self, ms: int, campaign: str) -> None:
        if self.p.identified and self.rng.random() < self.p.engagement:
            self.emit("email_open", ms, campaign_id=campaign)
            if self.rng.random() < 0.35:
                self.emit("email_click", ms + self.rng.randint(5_000, 120_000), campaign_id=campaign,
                          url=f"/campaign/{campaign}")


def _simulate(person: Person, rng: random.Random, clock: _Clock, products: list[Product], start_ms: int,
              days: int) -> None:
    b = _Builder(person, rng, clock, products)
    end_ms = start_ms + days * 86_400_000
    last_ms = end_ms if person.churn_day is None else start_ms + int(person.churn_day * 86_400_000)
    t = start_ms + rng.randrange(0, 3 * 86_400_000)
    sessions = 0
    rate_ms = 7 * 86_400_000 / max(person.sessions_per_week, 0.05)
    while t < last_ms:
        if person.identifies_after_sessions is not None and sessions == person.identifies_after_sessions:
            b.identify(t)
            if person.in_crm:
                b.crm_record(t + rng.randrange(86_400_000, 10 * 86_400_000))
        t = b.session(t)
        sessions += 1
        t += int(rng.expovariate(1.0) * rate_ms) + 60_000
    # weekly campaigns: Tuesdays 09:00 UTC
    week = start_ms + ((1 - datetime.fromtimestamp(start_ms / 1000, tz=UTC).weekday()) % 7) * 86_400_000
    while week < min(end_ms, last_ms + 30 * 86_400_000):
        b.email(week + 9 * 3_600_000 + rng.randrange(0, 8 * 3_600_000), f"cmp-{week // 86_400_000}")
        week += 7 * 86_400_000


def _btyd_customer(index: int, rng: random.Random, clock: _Clock, products: list[Product], start_ms: int,
                   days: int) -> list[dict[str, Any]]:
    """One customer of ``--purchases btyd`` (:data:`BTYD_DOC`): their events, each with ``_ms``."""
    day = 86_400_000
    end_ms = start_ms + days * day
    person = _person(index, rng, days)
    # one address per customer: the default's name-based ones repeat among tens of thousands of people,
    # and a shared address links two customers into one profile
    person.email = f"{person.email.split('@')[0]}.{index}@{person.email.split('@')[1]}"
    person.identified = True
    b = _Builder(person, rng, clock, products)
    rate = max(rng.gammavariate(BTYD_PARAMS["r"], 1.0 / BTYD_PARAMS["alpha"]), 1e-9)  # purchases a day
    dropout = rng.betavariate(BTYD_PARAMS["a"], BTYD_PARAMS["b"])
    views = rate * rng.gammavariate(*BTYD_VIEWS_PER_PURCHASE)  # views a day while alive
    acquired = start_ms + int(rng.random() * days * day)
    signed_up = acquired - rng.randint(60_000, 600_000)
    b.n += 1  # a sign-up at checkout: e-mail and consent only (no name, so no fuzzy matching)
    person.events.append({"event_id": f"identify-{index}-{b.n}", "type": "identify",
                          "timestamp": clock.stamp(signed_up), "user_id": person.user_id, "email": person.email,
                          "traits": {"email": person.email}, "consent": {"email": person.consent}, "source": "form",
                          "_ms": signed_up})

    def purchase(ms: int) -> None:
        person.carts += 1
        lines = [(b.product(), 1 if rng.random() < 0.8 else 2) for _ in range(rng.randint(1, 3))]
        items = [{"product_id": pr.product_id, "category": pr.category, "quantity": q, "price": pr.price}
                 for pr, q in lines]
        total = round(sum(pr.price * q for pr, q in lines), 2)
        b.emit("purchase", ms, order_id=f"o-{index}-{person.carts}", total=total, currency="USD", items=items)

    purchase(acquired)
    t, died = acquired, end_ms
    while True:  # repeat purchases while alive; drop-out after each with probability `dropout`
        t += int(rng.expovariate(rate) * day) + 1
        if t >= end_ms:
            break
        purchase(t)
        if rng.random() < dropout:
            died = t
            break
    t = acquired
    while views > 0:
        current = views if t < died else views * BTYD_VIEWS_AFTER_DROPOUT
        step = int(rng.expovariate(current) * day) + 1
        if t < died < t + step:  # the rate changes at the drop-out: draw again from there (memoryless)
            t = died
            continue
        t += step
        if t >= end_ms:
            break
        product = b.product()
        b.emit("product_view", t, product_id=product.product_id, category=product.category,
               url=f"/p/{product.product_id}")
    for event in person.events:  # logged in: their user_id (and now and then their e-mail), no cookie id
        event.pop("anonymous_id", None)
    return person.events


def _people(users: int, days: int, seed: int, start: date, purchases: str) -> Iterator[list[dict[str, Any]]]:
    """Each person's events in the period, with ``_ms``, person by person (one ``Random(seed)`` for all)."""
    if purchases not in PURCHASE_PROCESSES:
        raise ValueError(f"purchases must be one of {', '.join(PURCHASE_PROCESSES)}, not {purchases!r}")
    rng = random.Random(seed)
    products = catalog(rng)
    clock = _Clock(rng)
    start_ms = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() * 1000)
    end_ms = start_ms + days * 86_400_000
    for index in range(users):
        if purchases == "btyd":
            customer = _btyd_customer(index, rng, clock, products, start_ms, days)
            yield [e for e in customer if start_ms <= e["_ms"] < end_ms]
            continue
        person = _person(index, rng, days)
        _simulate(person, rng, clock, products, start_ms, days)
        yield [e for e in person.events if e["_ms"] < end_ms]


def generate_history(users: int, days: int, seed: int, start: date, repeats: float = 0.0,
                     erasures: float = 0.0, purchases: str = "sessions") -> list[dict[str, Any]]:
    """Input events of ``users`` people over ``days`` days from ``start``, sorted by time.  With
    ``repeats``, that fraction of events comes twice (the same event again, as an at-least-once
    producer sends it); with ``erasures``, that fraction of people gets an ``erase`` at a random time
    of their history.  Both off: the same history as without them.  ``purchases``: ``sessions`` (the
    default: :data:`GENERATOR_DOC`) or ``btyd`` (:data:`BTYD_DOC`).  :func:`history_lines` gives the
    same history as JSON lines without holding it in memory; this is those lines read back."""
    return [orjson.loads(line) for line in history_lines(users, days, seed, start, repeats, erasures, purchases)]


#: Events :func:`history_lines` holds in memory before it writes a sorted run to a temporary file.
LINES_IN_MEMORY = 200_000


class SpillError(OSError):
    """The temporary files :func:`history_lines` sorts in cannot be written (``filename``: their folder)."""


def history_lines(users: int, days: int, seed: int, start: date, repeats: float = 0.0, erasures: float = 0.0,
                  purchases: str = "sessions", in_memory: int = LINES_IN_MEMORY) -> Iterator[bytes]:
    """:func:`generate_history`'s events as JSON lines (each ending in a newline), byte for byte, with
    at most ~``in_memory`` events held at a time: sorted runs go to temporary files and are merged
    (a history of millions of events took gigabytes as a list of dicts)."""
    def keyed() -> Iterator[tuple[Any, bytes]]:
        for own in _people(users, days, seed, start, purchases):
            for event in own:
                key = (event.pop("_ms"), event["event_id"])
                yield key, orjson.dumps(event) + b"\n"

    try:  # (a full temporary folder, such as a small /tmp in memory, is not the output's disk)
        with tempfile.TemporaryDirectory(prefix="mailpulse-generate-") as spill:
            ordered = _sorted_externally(keyed(), in_memory, Path(spill))
            if not erasures:
                draw = random.Random(seed + 1).random
                for line in ordered:
                    yield line
                    if repeats and draw() < repeats:
                        yield line
                return
            yield from _damaged_lines(ordered, random.Random(seed + 1), repeats, erasures, in_memory, Path(spill))
    except OSError as exc:
        raise SpillError(exc.errno, exc.strerror or str(exc), tempfile.gettempdir()) from None


def _who(event: dict[str, Any]) -> str:
    """The person an event of the history is of, for its erasures."""
    return str(event.get("user_id") or event.get("anonymous_id") or event.get("email"))


def _damaged_lines(ordered: Iterator[bytes], rng: random.Random, repeats: float, erasures: float, in_memory: int,
                   spill: Path) -> Iterator[bytes]:
    """Repeats (right after their original) and erasures of whole people (an ``erase`` at the time of
    one of their events, drawn) added to sorted lines, in three passes over a copy on disk: the repeats
    drawn and each person's events counted; the erased people and their events drawn; the lines and
    the erasures sorted by their times (whole seconds where a time is ISO text; the erasures after the
    events of their second)."""
    copy = spill / "ordered.jsonl"
    again = bytearray()  # one flag per event: it comes twice
    by_person: dict[str, list[Any]] = {}  # who -> [events, the first one's user_id]
    with copy.open("wb") as written:
        for line in ordered:
            written.write(line)
            again.append(rng.random() < repeats)
            event = orjson.loads(line)
            who = _who(event)
            seen = by_person.get(who)
            if seen is None:
                by_person[who] = [1, event.get("user_id")]
            else:
                seen[0] += 1
    chosen: dict[str, dict[int, int]] = {}  # who -> the index of the event whose time it is erased at -> n
    for n, (who, (count, user_id)) in enumerate(sorted(by_person.items())):
        if rng.random() >= erasures or not user_id:
            continue
        chosen.setdefault(who, {})[rng.randrange(count)] = n  # (as ``rng.choice`` of the events draws)
    erases: list[tuple[int, dict[str, Any]]] = []  # (n, the erase event)
    ranks: dict[str, int] = {}
    with copy.open("rb") as reading:
        for line in reading:
            event = orjson.loads(line)
            who = _who(event)
            rank = ranks[who] = ranks.get(who, -1) + 1
            erased = chosen.get(who, {}).get(rank)
            if erased is not None:
                erases.append((erased, {"event_id": f"erase-{erased}", "type": "erase",
                                        "timestamp": event["timestamp"], "user_id": by_person[who][1]}))
    erases.sort(key=lambda entry: entry[0])

    def timed() -> Iterator[tuple[Any, bytes]]:
        order = 0
        with copy.open("rb") as handle:
            for line, twice in zip(handle, again, strict=True):
                at = parse_timestamp(orjson.loads(line)["timestamp"])
                for _ in range(1 + twice):
                    yield (at, order), line
                    order += 1
        for _, erase in erases:
            yield (parse_timestamp(erase["timestamp"]), order), orjson.dumps(erase) + b"\n"
            order += 1

    yield from _sorted_externally(timed(), in_memory, spill)


def _sorted_externally(items: Iterator[tuple[Any, bytes]], in_memory: int, spill: Path) -> Iterator[bytes]:
    """The lines of ``(key, line)`` items in the order of their (distinct) keys: runs of ``in_memory``
    items sorted and written to files in ``spill``, then merged."""
    runs: list[Path] = []
    chunk: list[tuple[Any, bytes]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= in_memory:
            runs.append(_write_run(sorted(chunk), spill, max(1, min(1000, in_memory // 100))))
            chunk = []
    chunk.sort()
    if not runs:
        yield from (line for _, line in chunk)
        return
    yield from (line for _, line in heapq.merge(*(_read_run(run) for run in runs), iter(chunk)))


def _write_run(items: list[tuple[Any, bytes]], spill: Path, block: int) -> Path:
    """``items`` into a new file of ``spill``, in pickled blocks (the merge holds one block of each run)."""
    handle_no, name = tempfile.mkstemp(dir=spill, suffix=".run")
    path = Path(name)
    with open(handle_no, "wb") as handle:
        for start in range(0, len(items), block):
            pickle.dump(items[start:start + block], handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _read_run(path: Path) -> Iterator[tuple[Any, bytes]]:
    with path.open("rb") as handle:
        while True:
            try:
                block = pickle.load(handle)
            except EOFError:
                return
            yield from block


def live_events(seed: int, now_ms: Callable[[], int], users: int = 200) -> Iterator[dict[str, Any]]:
    """An endless stream of events stamped ``now_ms()``: sessions of a fixed population, interleaved."""
    rng = random.Random(seed)
    products = catalog(rng)
    clock = _Clock(random.Random(seed + 1))
    people = [_person(i, rng, 365) for i in range(users)]
    run_id = now_ms()  # event ids differ between runs, so a restarted demo is not deduplicated away
    round_no = count = 0
    while True:
        round_no += 1
        person = rng.choice(people)
        person.events.clear()
        b = _Builder(person, rng, clock, products)
        now = now_ms()
        if not person.identified and rng.random() < 0.3:
            b.identify(now)
        elif person.identified and rng.random() < 0.1:
            b.email(now, f"live-{round_no // 50}")
        else:
            b.session(now)
        for event in person.events:
            del event["_ms"]
            count += 1
            event["event_id"] = f"live-{run_id}-{count}"
            event["timestamp"] = clock.stamp(now_ms())
            yield event
