"""E-mails rendered from triggers (streams.deliver.render): every type, fallbacks, conditional blocks,
escaping, and template errors that name the template and line."""

from __future__ import annotations

import email
from pathlib import Path
from typing import Any

import pytest

from streams.deliver.render import Renderer, TemplateProblem

TYPES = ("cart_abandoned", "browse_abandoned", "post_purchase", "winback", "churn_risk", "birthday", "welcome")


def trigger(kind: str, **payload: Any) -> dict[str, Any]:
    return {"trigger_id": "t-1", "type": kind, "profile_id": "p-1", "email": "ana@example.com",
            "send_at": "2026-03-01T10:30:00.000Z", "payload": payload, "predictions": None}


CART = {"items": [{"product_id": "sku-9", "name": "Blue mug", "quantity": 2, "price": 12.5, "currency": "EUR",
                   "line_total": 25.0},
                  {"product_id": "sku-3", "name": "Tea & biscuits", "quantity": 1, "price": 4.0, "currency": "EUR",
                   "line_total": 4.0}],
        "item_count": 3, "value": 29.0, "currency": "EUR"}


def test_a_cart_e_mail_has_the_name_the_lines_the_total_and_the_recommendations() -> None:
    out = Renderer().render(trigger("cart_abandoned", first_name="Ana", cart=CART,
                                    recommendations=[{"product_id": "sku-77"}], segments=[]), "https://u/x?a=1&b=2")
    assert out.subject == "Ana, your cart is waiting"
    for part in (out.text, out.html):
        assert "Hi Ana" in part and "Blue mug" in part and "29.00 EUR" in part and "sku-77" in part
    assert "Tea &amp; biscuits" in out.html and "Tea & biscuits" in out.text  # escaped only in HTML
    assert 'href="https://u/x?a=1&amp;b=2"' in out.html and "https://u/x?a=1&b=2" in out.text
    assert 'width="600"' in out.html and "style=" in out.html  # the 600 px layout, inline CSS


@pytest.mark.parametrize("kind", [*TYPES, "a_custom_trigger"])
def test_every_type_renders_a_trigger_with_nothing_in_its_payload(kind: str) -> None:
    for payload in ({}, {"first_name": None, "cart": "odd", "recommendations": [1, None], "segments": "x"}):
        out = Renderer().render({**trigger(kind), "payload": payload}, "https://u")
        assert out.subject and "there" not in out.subject  # no "there" in a subject
        assert "Hi there" in out.text or "Happy birthday!" in out.text
        assert out.html.startswith("<!DOCTYPE html>") and "https://u" in out.html


def test_conditional_blocks_follow_the_type_the_segments_and_the_predictions() -> None:
    render = Renderer().render
    churn = render(trigger("churn_risk", first_name="Bo"), "u")
    assert "COMEBACK15" in churn.html and "COMEBACK15" in churn.text
    assert "COMEBACK15" not in render(trigger("winback", first_name="Bo"), "u").html
    likely_gone = {**trigger("winback", first_name="Bo", days_since_purchase=90), "predictions":
                   {"churn_probability": 0.8}}
    winback = render(likely_gone, "u")
    assert "WELCOMEBACK10" in winback.html and "90 days" in winback.text
    assert "WELCOMEBACK10" not in render(trigger("winback", first_name="Bo"), "u").html
    vip = render(trigger("cart_abandoned", cart=CART, segments=["high_value"]), "u")
    assert "shipping is on us" in vip.html and "shipping is on us" not in render(
        trigger("cart_abandoned", cart=CART, segments=["cart_holders"]), "u").html
    browse = render(trigger("browse_abandoned", first_name="Cy", product_id="sku-5"), "u")
    assert "still available" in browse.html and "/p/sku-5" in browse.html
    assert browse.subject == "Still thinking about sku-5, Cy?"


def test_a_name_with_markup_is_escaped_in_the_html() -> None:
    out = Renderer().render(trigger("welcome", first_name="<b>Eve</b>"), "u")
    assert "&lt;b&gt;Eve&lt;/b&gt;" in out.html and "<b>Eve</b>" not in out.html


def test_a_users_template_overrides_the_shipped_one_and_its_errors_name_the_template_and_line(tmp_path: Path) -> None:
    (tmp_path / "welcome.j2").write_text(
        '{% macro subject() %}Hello {{ first_name }}{% endmacro %}\n'
        '{% macro html() %}<p>{{ first_name }}</p>{% endmacro %}\n'
        '{% macro text() %}{{ first_name }}{% endmacro %}\n')
    out = Renderer(tmp_path).render(trigger("welcome", first_name="Ana"), "u")
    assert (out.subject, out.text.strip()) == ("Hello Ana", "Ana")
    (tmp_path / "birthday.j2").write_text('{% macro subject() %}x{% endmacro %}\n\n{% macro html() %}{{ 1 / 0 }}'
                                          '{% endmacro %}\n{% macro text() %}{% endmacro %}\n')
    with pytest.raises(TemplateProblem, match=r"template birthday.j2, line 3: ZeroDivisionError"):
        Renderer(tmp_path).render(trigger("birthday"), "u")
    (tmp_path / "winback.j2").write_text('{% macro subject() %}\n{% if %}{% endmacro %}\n')
    with pytest.raises(TemplateProblem, match=r"template winback.j2, line 2"):
        Renderer(tmp_path).render(trigger("winback"), "u")


def test_the_sandbox_keeps_templates_from_python_internals(tmp_path: Path) -> None:
    (tmp_path / "welcome.j2").write_text(
        "{% macro subject() %}{{ ''.__class__.__mro__[1].__subclasses__() }}{% endmacro %}"
        "{% macro html() %}{% endmacro %}{% macro text() %}{% endmacro %}")
    with pytest.raises(TemplateProblem, match=r"welcome\.j2, line 1: access to attribute .__class__. .* unsafe"):
        Renderer(tmp_path).render(trigger("welcome"), "u")


def test_the_message_is_rfc_5322_with_one_click_unsubscribe_headers() -> None:
    from streams.deliver.service import POLICY

    assert POLICY.clone(max_line_length=78).fold("List-Unsubscribe", "<" + "x" * 900 + ">").count("\r\n") == 1
    parsed = email.message_from_string("List-Unsubscribe: <https://x/u?p=1>\r\n\r\n")
    assert parsed["List-Unsubscribe"] == "<https://x/u?p=1>"


def test_the_examples_under_docs_are_what_the_templates_render(tmp_path: Path) -> None:
    from streams.deliver.examples import write

    docs = Path(__file__).resolve().parents[3] / "docs" / "emails"
    for path in write(tmp_path):
        assert (docs / path.name).read_text() == path.read_text(), f"run: python -m streams.deliver.examples {docs}"


def test_a_trigger_type_named_like_a_partial_gets_the_default_template() -> None:
    """A type ``_blocks`` (a producer other than the pipeline) rendered the shared partial as its
    e-mail, and ended as ``template_error`` instead of the default e-mail."""
    assert Renderer().template_name("_blocks") == "default.j2"
    out = Renderer().render(trigger("_blocks", first_name="Ana"), "https://u")
    assert "Ana" in str(out)


@pytest.mark.parametrize("name", ["\u202eAna", "Ana\u202b", "\u2067Ana", "A\u202dna\u2069"])
def test_a_name_with_bidi_controls_does_not_turn_the_text_after_it(name: str) -> None:
    """A right-to-left override typed into a name was written into the subject and the body as it was:
    the rest of the line after the name displayed reversed (``Ana‮, your cart is waiting`` reads
    "gnitiaw si trac ruoy ,"), text of the shop's that whoever typed the name could turn.  The name's
    letters stay; the embedding, override and isolate controls, which no name needs, go."""
    controls = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
    out = Renderer().render(trigger("cart_abandoned", first_name=name, cart=CART), "https://u/x")
    assert out.subject == "Ana, your cart is waiting"
    assert not controls & set(out.subject + out.text + out.html)
    assert "Hi Ana," in out.text and "Hi Ana," in out.html
    hebrew = Renderer().render(trigger("cart_abandoned", first_name="\u05d3\u05e0\u05d4\u200f", cart=CART), "u")
    assert hebrew.subject == "\u05d3\u05e0\u05d4\u200f, your cart is waiting"  # (a right-to-left mark is kept)
