"""streams.ingest: raw bytes -> Accepted | Rejected, one case per dead-letter code."""

from __future__ import annotations

import base64

import orjson
import pytest

from schemas.outputs import DeadLetter
from streams.ingest import MAX_KEY_BYTES, MAX_MESSAGE_BYTES, MAX_RAW_BYTES, Accepted, Rejected, Source, decode

SRC = Source("clicks", 3, 42, b"u-1", 1_772_359_200_000)
NOW = 1_772_359_300_000


def ok(raw: bytes | dict[str, object]) -> dict[str, object]:
    data = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    result = decode(data, SRC, NOW)
    assert isinstance(result, Accepted), result
    return result.event


def bad(raw: bytes | dict[str, object] | None) -> Rejected:
    data = raw if isinstance(raw, bytes) or raw is None else orjson.dumps(raw)
    result = decode(data, SRC, NOW)
    assert isinstance(result, Rejected), result
    DeadLetter.model_validate(result.record)
    return result


BASE = {"event_id": "e-1", "type": "product_view", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-1"}


def test_contract_examples_are_accepted_and_normalized() -> None:
    ev = ok({**BASE, "product_id": "sku-9", "context": {"timezone": "Europe/Berlin"}})
    assert ev["ts"] == 1_772_359_200_000 and ev["kind"] == "clicks" and ev["product_id"] == "sku-9"
    ev = ok({"event_id": "o-1", "type": "purchase", "timestamp": "2026-03-01T10:20:00+01:00",
             "email": "Ana@Example.com", "order_id": "o-1", "total": 199.0, "currency": "eur",
             "items": [{"product_id": "sku-9", "quantity": 1, "price": 199.0}]})
    assert ev["ts"] == 1_772_356_800_000 and ev["email"] == "ana@example.com" and ev["currency"] == "EUR"
    ev = ok({"event_id": "k-1", "type": "cart_add", "timestamp": 1772359260000, "anonymous_id": "a-5",
             "product_id": "sku-9"})
    assert ev["quantity"] == 1 and ev["currency"] == "USD" and ev["kind"] == "carts"
    ev = ok({"event_id": "i-1", "type": "identify", "timestamp": "2026-03-01T10:21:00Z", "user_id": "u-17",
             "traits": {"first_name": "Ana", "phone": "(415) 555-0123", "birthday": "1990-05-17", "vip": "yes"},
             "consent": {"email": True}})
    assert ev["traits"] == {"first_name": "Ana", "phone": "+14155550123", "birthday": "1990-05-17", "vip": "yes"}
    assert ok({"type": "tick", "timestamp": "2026-03-01T12:00:00Z"})["ts"] == 1_772_366_400_000


def test_identify_with_only_a_trait_email_is_identified() -> None:
    ev = ok({"event_id": "i-2", "type": "identify", "timestamp": 1772359260000, "traits": {"email": "X@Y.org"}})
    assert ev["traits"]["email"] == "x@y.org"


def test_source_travels_with_the_event() -> None:
    assert ok(BASE)["src"] == ["clicks", 3, 42, SRC.arrived_ms]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "not_json"),
        (b"[1, 2]", "not_object"),
        ({**BASE, "type": "teleport"}, "unknown_type"),
        ({k: v for k, v in BASE.items() if k != "type"}, "unknown_type"),
        ({**BASE, "timestamp": "yesterday"}, "bad_timestamp"),
        ({**BASE, "timestamp": "2026-03-01T10:00:00"}, "bad_timestamp"),
        ({**BASE, "timestamp": 1772359}, "bad_timestamp"),
        ({k: v for k, v in BASE.items() if k != "timestamp"}, "missing_field"),
        ({k: v for k, v in BASE.items() if k != "event_id"}, "missing_field"),
        ({**BASE, "event_id": "x" * 129}, "schema"),
        ({"event_id": "e", "type": "page_view", "timestamp": 1772359260000}, "schema"),
        ({**BASE, "email": "not-an-email"}, "invalid_identifier"),
        ({**BASE, "phone": "12"}, "invalid_identifier"),
        ({**BASE, "type": "cart_add"}, "schema"),
        ({**BASE, "type": "cart_add", "product_id": "p", "quantity": 0}, "schema"),
        ({**BASE, "type": "purchase", "order_id": "o"}, "missing_field"),
        ({**BASE, "type": "purchase", "order_id": "o", "total": -1}, "schema"),
        ({**BASE, "type": "purchase", "order_id": "o", "total": 1, "currency": "dollars"}, "schema"),
        ({**BASE, "context": {"timezone": "Mars/Olympus"}}, "schema"),
        ({**BASE, "context": {"timezone": "localtime"}}, "schema"),  # the host's zone, not an IANA name
        ({**BASE, "context": {"timezone": "posix/Europe/Berlin"}}, "schema"),
        ({**BASE, "user_id": 17}, "schema"),
        # wrong types are not read as something else: "12.5" and true are not amounts, 2.0 and "3" not
        # counts, "yes" not a consent flag
        ({**BASE, "type": "purchase", "order_id": "o", "total": "12.5"}, "schema"),
        ({**BASE, "type": "purchase", "order_id": "o", "total": True}, "schema"),
        ({**BASE, "type": "purchase", "order_id": "o", "total": 1, "items": [{"product_id": "p", "quantity": 2.0}]},
         "schema"),
        ({**BASE, "type": "cart_add", "product_id": "p", "quantity": "3"}, "schema"),
        ({**BASE, "type": "cart_add", "product_id": "p", "price": "9.99"}, "schema"),
        ({**BASE, "type": "identify", "consent": {"email": "yes"}}, "schema"),
        (None, "empty"),
    ],
)
def test_bad_input_is_rejected_with_its_code(raw: bytes | dict[str, object] | None, code: str) -> None:
    rejected = bad(raw)
    assert rejected.code == code
    assert rejected.record["error"]["code"] == code and rejected.record["error"]["message"]
    assert (rejected.record["topic"], rejected.record["partition"], rejected.record["offset"]) == ("clicks", 3, 42)
    assert rejected.record["key"] == "u-1"


def test_too_large_is_rejected_before_parsing() -> None:
    raw = orjson.dumps({**BASE, "url": "x" * MAX_MESSAGE_BYTES})
    assert bad(raw).code == "too_large"


@pytest.mark.parametrize("raw", [b"\x01" * 900_000, b'"' * 900_000, b"\xff" * 900_000,
                                 "\u00e9".encode() * 450_000, b"x" * (MAX_RAW_BYTES - 1) + "\u00e9".encode()])
def test_a_too_large_message_s_dead_letter_keeps_its_first_bytes_and_stays_under_the_producer_limit(raw: bytes) -> None:
    """Whole, the escaped text of such a message (0x01 is six characters in JSON, a non-UTF-8 byte a
    third more in base64) would pass the producer's 1,000,000-byte limit and the letter be refused."""
    record = bad(raw).record
    assert record["error"]["code"] == "too_large"
    assert record["raw_truncated"] is True and record["raw_bytes"] == len(raw)
    kept = base64.b64decode(record["raw"]) if record.get("raw_encoding") else record["raw"].encode()
    assert raw.startswith(kept) and MAX_RAW_BYTES - 3 <= len(kept) <= MAX_RAW_BYTES
    assert len(orjson.dumps(record)) < 1_000_000 // 2


@pytest.mark.parametrize("key", [b"k" * 700_000, b"\x01" * 170_000, b"\xff" * 500_000])
def test_a_long_key_is_cut_in_its_dead_letter_so_the_letter_stays_under_the_producer_limit(key: bytes) -> None:
    result = decode(b"oops", Source("clicks", 3, 42, key, 1_772_359_200_000), NOW)
    assert isinstance(result, Rejected)
    record = result.record
    assert record["key_truncated"] is True and record["key_bytes"] == len(key)
    kept = base64.b64decode(record["key"]) if record.get("key_encoding") else record["key"].encode()
    assert key.startswith(kept) and MAX_KEY_BYTES - 3 <= len(kept) <= MAX_KEY_BYTES
    assert len(orjson.dumps(record)) < 100_000


def test_a_message_within_the_limit_keeps_all_of_its_bytes_in_its_dead_letter() -> None:
    raw = b"not json " * 7000  # 63 KB
    record = bad(raw).record
    assert record["raw"] == raw.decode() and "raw_truncated" not in record


def test_non_utf8_raw_is_kept_as_base64() -> None:
    raw = b"\xff\xfe garbage"
    rejected = bad(raw)
    assert rejected.record["raw_encoding"] == "base64"
    assert base64.b64decode(rejected.record["raw"]) == raw


def test_utf8_raw_is_kept_as_text() -> None:
    assert bad(b"{oops").record["raw"] == "{oops"


def test_holding_every_address_gives_the_same_answers() -> None:
    import pytest

    from schemas import identifiers

    before = [identifiers.normalize_email(raw) for raw in ("Ana@Example.COM", " bo@example.org ")]
    identifiers.hold_every_address()
    assert [identifiers.normalize_email(raw) for raw in ("Ana@Example.COM", " bo@example.org ")] == before
    assert identifiers._held_addresses is not None and "Ana@Example.COM" in identifiers._held_addresses
    with pytest.raises(ValueError, match="invalid email"):
        identifiers.normalize_email("not an address")
    assert "not an address" not in identifiers._held_addresses


# --- valid input that was refused or misread (a review against contract section 3) ---------------------


@pytest.mark.parametrize("birthday", ["0", "86400", "1990-3-5", "19900305"])
def test_a_birthday_not_written_yyyy_mm_dd_is_refused_not_read_as_seconds_since_1970(birthday: str) -> None:
    assert bad({**BASE, "type": "identify", "traits": {"birthday": birthday}}).record["error"]["code"] == "schema"
    assert ok({**BASE, "type": "identify", "traits": {"birthday": "1990-03-05"}})["traits"]["birthday"] == "1990-03-05"


def test_an_empty_or_null_known_trait_is_not_given_and_the_identify_keeps_its_consent() -> None:
    """An empty last name dead-lettered the whole identify, and with it a consent withdrawal."""
    event = ok({**BASE, "type": "identify", "traits": {"first_name": "Ana", "last_name": "", "email": "",
                                                       "city": None, "note": ""}, "consent": {"email": False}})
    assert event["consent"] == {"email": False}
    assert event["traits"] == {"first_name": "Ana", "note": ""}  # (a trait of its own is kept as given)


def test_an_empty_optional_field_is_not_given_and_the_event_is_kept() -> None:
    """An empty ``campaign_id`` (a tag manager's unset variable), ``source`` or item ``category``
    dead-lettered the whole page view, identify (its consent withdrawal with it) or purchase."""
    view = ok({**BASE, "campaign_id": "", "category": "", "context": {"campaign_id": "", "device": "mobile"}})
    assert "campaign_id" not in view and "category" not in view and view["context"] == {"device": "mobile"}
    identify = ok({**BASE, "type": "identify", "source": "", "consent": {"email": False}})
    assert "source" not in identify and identify["consent"] == {"email": False}
    # an empty consent cell of another channel (a CRM export) says nothing of it: the withdrawal stays
    identify = ok({**BASE, "type": "identify", "consent": {"email": False, "sms": ""}})
    assert identify["consent"] == {"email": False}
    purchase = ok({**BASE, "type": "purchase", "order_id": "o-1", "total": 5.0, "currency": "",
                   "items": [{"product_id": "sku-1", "category": ""}]})
    assert purchase["currency"] == "USD" and purchase["items"] == [{"product_id": "sku-1", "quantity": 1}]
    # a required field stays required
    assert bad({**BASE, "type": "purchase", "order_id": "", "total": 5.0}).record["error"]["code"] == "schema"
    assert bad({**BASE, "type": "cart_add", "product_id": ""}).record["error"]["code"] == "schema"
    assert bad({**BASE, "event_id": ""}).record["error"]["code"] == "schema"


@pytest.mark.parametrize("consent", [{"Email": False}, {"EMAIL": False}, {" email ": False}, {"email\u200b": False},
                                     {"email": True, "Email": False}, {"Email": False, "email": True}])
def test_a_consent_channel_is_named_in_any_case_and_a_withdrawal_wins(consent: dict[str, bool]) -> None:
    """``{"Email": false}`` (a CRM export's spelling) was kept under ``"Email"``: the guardrails read
    ``"email"``, so the person who withdrew went on getting e-mails."""
    assert ok({**BASE, "type": "identify", "consent": consent})["consent"] == {"email": False}
    assert ok({**BASE, "type": "identify", "consent": {"SMS": True, "": True}})["consent"] == {"sms": True}
    assert bad({**BASE, "type": "identify", "consent": {"Email": True, "email": "yes"}}).record["error"]["code"] == \
        "schema"  # (a wrong type is not hidden by another spelling)


def test_null_in_a_field_that_may_be_left_out_takes_its_default() -> None:
    cart = ok({**BASE, "type": "cart_add", "product_id": "sku-1", "price": None, "currency": None, "quantity": None})
    assert (cart["currency"], cart["quantity"]) == ("USD", 1)
    purchase = ok({**BASE, "type": "purchase", "order_id": "o-1", "total": 5.0, "items": None, "currency": None})
    assert (purchase["currency"], purchase.get("items") or []) == ("USD", [])
    identify = ok({**BASE, "type": "identify", "traits": None, "consent": {"email": None, "sms": True}})
    assert identify["consent"] == {"sms": True}
    assert bad({**BASE, "event_id": None}).record["error"]["code"] == "schema"  # (a required field stays required)


def test_an_order_in_a_currency_of_small_units_is_taken() -> None:
    """1.5e9 VND is about $57k: the amount bound refused it."""
    assert ok({**BASE, "type": "purchase", "order_id": "o-1", "total": 1_500_000_000, "currency": "VND"})["total"] \
        == 1.5e9


def test_the_dead_letter_schema_declares_every_field_a_letter_can_carry() -> None:
    """``mailpulse schemas`` writes the dead-letter schema: a field the worker writes (``key_encoding`` for a
    key that is not UTF-8, ``stage`` on a ``processing_error``) is declared there, with its type."""
    from schemas.export import SCHEMAS, json_schema

    declared = json_schema(SCHEMAS["dead-letter"])["properties"]
    record = decode(b"\xff" * (MAX_MESSAGE_BYTES + 1), Source("clicks", 3, 42, b"\xfe" * 5000, 0), NOW).record
    assert {"raw_encoding", "raw_truncated", "key_encoding", "key_truncated"} <= record.keys()
    assert sorted(set(record) - set(declared)) == []
    assert "stage" in declared
    DeadLetter.model_validate({**record, "stage": "profiles"})


def test_the_readme_names_every_size_bound_of_an_input_event() -> None:
    """Each length, count and amount bound of the input events (past which an event is dead-lettered as
    ``schema``) is stated in the README's "Input validation and dead letters" section."""
    from pathlib import Path

    from schemas.export import SCHEMAS, json_schema

    bounds: set[float] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            bounds.update(value for key, value in node.items()
                          if key in ("maxLength", "maximum", "maxItems", "maxProperties"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json_schema(SCHEMAS["input-event"]))
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Input validation"):readme.index("## Profiles")]
    shown = {bound: f"10^{len(str(int(bound))) - 1}" if bound >= 10**9 else f"{int(bound):,}" for bound in bounds}
    assert sorted(bound for bound, text in shown.items() if text not in section) == []


@pytest.mark.parametrize("currency", ["\u00dfd", "\ufb00x", "\u01c6xy"])
def test_a_currency_that_is_no_code_is_not_upper_cased_into_one(currency: str) -> None:
    """``"ßd".upper()`` is ``"SSD"``: such a value was taken as a made-up code, not refused."""
    assert bad({**BASE, "type": "purchase", "order_id": "o", "total": 1, "currency": currency}).code == "schema"
    assert ok({**BASE, "type": "purchase", "order_id": "o", "total": 1, "currency": " gbp "})["currency"] == "GBP"


def test_an_amount_of_minus_zero_is_zero() -> None:
    """``-0.0`` passes ``>= 0``; it was kept, and published as a cart item's ``"price": -0.0``."""
    import math

    ev = ok({**BASE, "type": "purchase", "order_id": "o", "total": -0.0, "items": [{"product_id": "p", "price": -0.0}]})
    assert math.copysign(1, ev["total"]) == 1 and math.copysign(1, ev["items"][0]["price"]) == 1
    ev = ok({**BASE, "type": "cart_add", "product_id": "p", "price": -0.0})
    assert math.copysign(1, ev["price"]) == 1


def test_one_byte_order_mark_before_a_message_is_skipped() -> None:
    """A Windows tool may write a UTF-8 byte-order mark before the JSON (RFC 8259 lets a parser skip
    it): the event is read as without it (it was dead-lettered ``not_json``); a second one is no JSON."""
    assert ok(b"\xef\xbb\xbf" + orjson.dumps(BASE)) == ok(BASE)
    assert bad(b"\xef\xbb\xbf\xef\xbb\xbf" + orjson.dumps(BASE)).code == "not_json"
    assert bad(b"\xef\xbb\xbf").code == "not_json"


@pytest.mark.parametrize("line", [{"category": "shipping", "price": 4.9}, {"product_id": None, "price": 4.9},
                                  {"product_id": "", "price": 4.9}])
def test_a_purchase_with_a_line_that_names_no_product_counts(line: dict[str, object]) -> None:
    """A shipping or fee line has no product (contract 3 marks no item field required): the order and
    its total count, and the line is kept as a line of no product (the whole purchase was dead-lettered
    ``missing_field``)."""
    ev = ok({**BASE, "type": "purchase", "order_id": "o-1", "total": 24.9,
             "items": [{"product_id": "sku-1", "price": 20.0}, line]})
    assert ev["total"] == 24.9 and ev["items"][0]["product_id"] == "sku-1"
    assert "product_id" not in ev["items"][1] and ev["items"][1]["price"] == 4.9


@pytest.mark.parametrize(("text", "read"), [
    (rb"caf\ud83d", "caf\ufffd"), (rb"\ude00x", "\ufffdx"), (rb"\ud83d\ude00", "\U0001f600"),
    (rb"\ud83d\ud83d\ude00", "\ufffd\U0001f600"), (rb"\ud83d\ude00\ude00", "\U0001f600\ufffd"),
    (rb"\\ud83d", "\\ud83d"), (rb"\\\ud83d", "\\\ufffd"), (rb"\ud83d\u0041", "\ufffdA"),
    (rb"\ud83d x\ude00", "\ufffd x\ufffd")])  # (a high and a low apart are no pair)
def test_an_unpaired_surrogate_escape_is_read_as_the_replacement_character(text: bytes, read: str) -> None:
    """JSON text may escape half of a surrogate pair: JavaScript's ``JSON.stringify`` writes one for a
    string cut in the middle of an emoji (a query, a page title).  The event is read with U+FFFD in its
    place (it was dead-lettered ``not_json``); a pair, and an escaped backslash before ``u``, are read
    as they are."""
    assert ok(b'{"event_id": "e-1", "type": "search", "timestamp": 1772359260000, "user_id": "u-1", '
              b'"query": "' + text + b'"}')["query"] == read
    assert bad(b'{"event_id": "e-1", "type": "search", "query": "\\ud83d", "timestamp": }').code == "not_json"


@pytest.mark.parametrize("price", [-5.0, -0.01, -1e12])
def test_a_purchase_with_a_discount_line_counts(price: float) -> None:
    """A discount or coupon line carries a negative price (contract 3 bounds only the total and a cart's
    price): the order counts with its lines as given (the whole purchase was dead-lettered ``schema``);
    a line's price stays a finite number within the amount bound, and a cart's price stays >= 0."""
    ev = ok({**BASE, "type": "purchase", "order_id": "o-1", "total": 15.0,
             "items": [{"product_id": "sku-1", "price": 20.0}, {"category": "coupon", "price": price}]})
    assert ev["total"] == 15.0 and ev["items"][1]["price"] == price
    for wrong in (-1.1e12, "-5"):
        assert bad({**BASE, "type": "purchase", "order_id": "o-1", "total": 15.0,
                    "items": [{"product_id": "sku-1", "price": wrong}]}).code == "schema"
    assert bad({**BASE, "type": "cart_add", "product_id": "p", "price": price}).code == "schema"
