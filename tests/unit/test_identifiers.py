"""The e-mail fast path (``schemas.identifiers._plain_email``) against ``email_validator`` itself."""

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas import identifiers
from schemas.identifiers import _plain_email

LOCAL = st.text(alphabet="aZ09._+-", min_size=1, max_size=70)
LABEL = st.text(alphabet="aZ09-", min_size=0, max_size=66)
TOP = st.one_of(st.sampled_from(["com", "IO", "c", "c0m", "x1", "test", "Local", "onion", "arpa", "example"]),
                st.text(alphabet="aZ9-", min_size=0, max_size=66))
STRUCTURED = st.builds(lambda local, labels, top: f"{local}@{'.'.join([*labels, top])}",
                       LOCAL, st.lists(LABEL, min_size=0, max_size=4), TOP)
ANYTHING = st.text(alphabet="ab.@-_+Z9 ", max_size=30)


def _library(address: str) -> str | None:
    try:
        return validate_email(address, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


@settings(max_examples=3000, deadline=None)
@given(st.one_of(STRUCTURED, ANYTHING))
@example("Ana.Lima+news@Example.COM")
@example("a@ab--cd.com")
@example("a@b-.com")
@example("a@" + "b" * 63 + ".com")
@example("a@" + "b" * 64 + ".com")
@example("x@" + ".".join(["a" * 63] * 4) + ".com")
def test_the_fast_path_gives_what_the_library_gives_or_leaves_the_address_to_it(address: str) -> None:
    fast = _plain_email(address)
    if fast is not None:
        assert _library(address) == fast


@pytest.mark.parametrize("address", ["user1@example.com", "Ana.Lima+news@Example.COM", "a_b-c@mail.co.uk"])
def test_the_common_address_takes_the_fast_path(address: str) -> None:
    assert _plain_email(address) == address.lower()


@pytest.mark.parametrize("address", ["ana@bücher.de", "a@xn--bcher-kva.de", "ANA@Bücher.de"])
def test_an_address_the_fast_path_leaves_is_normalized_by_the_library(address: str) -> None:
    assert _plain_email(address) is None
    expected = _library(address)
    assert expected is not None and identifiers._normalize_email.__wrapped__(address) == expected


@pytest.mark.parametrize("address", ["a@b.local", "a..b@c.com", "a@b.c1", "a@ab--cd.com"])
def test_an_address_the_fast_path_leaves_is_refused_by_the_library(address: str) -> None:
    assert _plain_email(address) is None
    with pytest.raises(ValueError, match="invalid email"):
        identifiers._normalize_email.__wrapped__(address)
