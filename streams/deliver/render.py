"""A trigger rendered into an e-mail: subject, HTML and plain text, from the trigger type's Jinja2
template (sandboxed), which the user may override by file name (``MAILPULSE_TEMPLATES_DIR``).

A template ``<type>.j2`` defines three macros, ``subject()``, ``html()`` and ``text()``; shared
pieces (the 600 px layout with inline CSS, cart lines, recommendations) are macros of
``_blocks.j2``.  The HTML is rendered with autoescape, the subject and the text without, from the
same file.  A type without a template of its own uses ``default.j2``."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

SHIPPED = Path(__file__).with_name("templates")
FALLBACK_FIRST_NAME = "there"


class TemplateProblem(Exception):
    """A template that does not load or render; the message names the template and the line."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def _money(value: Any, currency: Any = None) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    return f"{value:,.2f}" + (f" {currency}" if isinstance(currency, str) and currency else "")


class Renderer:
    def __init__(self, templates_dir: Path | None = None, brand: str = "Our shop",
                 shop_url: str = "https://shop.example.com") -> None:
        folders = [str(templates_dir)] if templates_dir is not None else []
        loader = jinja2.FileSystemLoader([*folders, str(SHIPPED)])
        self.globals = {"brand": brand, "shop_url": shop_url.rstrip("/")}
        self._html = SandboxedEnvironment(loader=loader, autoescape=True, undefined=jinja2.ChainableUndefined,
                                          trim_blocks=True, lstrip_blocks=True)
        self._text = SandboxedEnvironment(loader=loader, autoescape=False, undefined=jinja2.ChainableUndefined,
                                          trim_blocks=True, lstrip_blocks=True)
        for env in (self._html, self._text):
            env.filters["money"] = _money
            env.globals.update(self.globals)

    def template_name(self, trigger_type: str) -> str:
        if trigger_type.startswith("_"):  # (``_blocks.j2`` and a user's ``_*.j2`` are partials, not e-mails)
            return "default.j2"
        name = f"{trigger_type}.j2"
        try:
            self._text.loader.get_source(self._text, name)  # type: ignore[union-attr]
            return name
        except jinja2.TemplateNotFound:
            return "default.j2"

    @staticmethod
    def _where(exc: BaseException, name: str) -> str:
        """``<template>, line N`` of the innermost traceback frame in a template (the compiled code's
        line mapped back to the template's), else ``name``."""
        found = None
        tb = exc.__traceback__
        while tb is not None:
            template_name = tb.tb_frame.f_globals.get("__jinja_template__")
            if template_name is not None:
                found = (template_name, tb.tb_lineno)
            tb = tb.tb_next
        if found is None:
            return name
        template, python_line = found
        return f"{template.name}, line {template.get_corresponding_lineno(python_line)}"

    def render(self, trigger: Mapping[str, Any], unsubscribe_url: str) -> Rendered:
        name = self.template_name(str(trigger.get("type")))
        context = _context(trigger, unsubscribe_url)
        try:
            subject = self._text.get_template(name).make_module(context).subject()  # type: ignore[attr-defined]
            text = self._text.get_template(name).make_module(context).text()  # type: ignore[attr-defined]
            html = self._html.get_template(name).make_module(context).html()  # type: ignore[attr-defined]
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(f"template {exc.name or name}, line {exc.lineno}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise TemplateProblem(f"template {self._where(exc, name)}: {exc}") from None
        except Exception as exc:  # a template is user code: whatever it raises is its problem, named
            raise TemplateProblem(f"template {self._where(exc, name)}: {type(exc).__name__}: {exc}") from None
        return Rendered(_one_line(str(subject)), str(html).strip() + "\n", _tidy(str(text)))


def _one_line(subject: str) -> str:
    """A subject as a header carries it: on one line, without control characters (a name with a NUL
    or an ESC from a form would otherwise go into the header as it is, which RFC 5322 does not allow)."""
    return " ".join("".join(c for c in subject if c.isspace() or unicodedata.category(c) != "Cc").split())


def _tidy(text: str) -> str:
    """At most one empty line in a row, no trailing spaces."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.rstrip()
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"


#: The explicit bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), which a name
#: does not need (its letters give its direction) and which, left open, turn the text after it: the rest
#: of the subject's line or the body's paragraph.  (Right-to-left and left-to-right marks stay.)
_BIDI_CONTROLS = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def _context(trigger: Mapping[str, Any], unsubscribe_url: str) -> dict[str, Any]:
    """What a template sees; every part present (empty when the trigger lacks it)."""
    payload = trigger.get("payload") if isinstance(trigger.get("payload"), Mapping) else {}
    assert isinstance(payload, Mapping)
    predictions = trigger.get("predictions") if isinstance(trigger.get("predictions"), Mapping) else {}
    first = payload.get("first_name")
    if isinstance(first, str):
        first = first.translate(_BIDI_CONTROLS)
    known = first.strip() if isinstance(first, str) and first.strip() and first.strip() != FALLBACK_FIRST_NAME \
        else None
    cart = payload.get("cart") if isinstance(payload.get("cart"), Mapping) else None
    items = [item for item in (cart or {}).get("items") or () if isinstance(item, Mapping)]
    recommendations = [rec for rec in payload.get("recommendations") or () if isinstance(rec, Mapping)]
    segments = [s for s in payload.get("segments") or () if isinstance(s, str)]
    return {
        "trigger": trigger,
        "type": trigger.get("type"),
        "payload": payload,
        "first_name": first.strip() if isinstance(first, str) and first.strip() else FALLBACK_FIRST_NAME,
        "known_name": known,  # None when the payload only has the fallback ("Hi there")
        "cart": cart,
        "cart_items": items,
        "recommendations": recommendations,
        "segments": segments,
        "predictions": predictions or {},
        "unsubscribe_url": unsubscribe_url,
    }
