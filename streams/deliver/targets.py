"""Where an e-mail goes: an SMTP server, an HTTP webhook in the shape of transactional e-mail APIs,
or (``--dry-run``) ``.eml`` files.  Each ``send`` raises :class:`Temporary` (worth a retry) or
:class:`Permanent`; :func:`with_retries` retries with exponential backoff and full jitter."""

from __future__ import annotations

import json
import random
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol


class Temporary(Exception):
    """Worth another attempt (a timeout, a 4xx SMTP reply, an HTTP 5xx or 429)."""


class Permanent(Exception):
    """Not worth another attempt (a 5xx SMTP reply, an HTTP 4xx, a rejected address)."""


class Sent:
    """What a target reports back: ``bounced`` when the receiving side says the address bounced."""

    def __init__(self, bounced: bool = False) -> None:
        self.bounced = bounced


class Target(Protocol):
    name: str

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent: ...


def with_retries(send: Callable[[], Sent], attempts: int, backoff_s: float, on_retry: Callable[[], None],
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> tuple[Sent, int]:
    """(result, attempts made); re-raises the last error once ``attempts`` are used up.  An error a
    target does not classify is :class:`Permanent` (not retried, never raised past here)."""
    rng = rng or random.Random()
    for attempt in range(1, attempts + 1):
        try:
            return send(), attempt
        except Temporary:
            if attempt == attempts:
                raise
        except Permanent:
            raise
        except Exception as exc:
            raise Permanent(f"{type(exc).__name__}: {exc}"[:300]) from None
        on_retry()
        sleep(rng.uniform(0, backoff_s * 2 ** (attempt - 1)))  # "full jitter"
    raise AssertionError("unreachable")


class DryRun:
    """Writes each e-mail to ``folder/<trigger_id>.eml`` (RFC 5322)."""

    name = "dry-run"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        path = self.folder / f"{trigger['trigger_id']}.eml"
        part = path.with_suffix(".eml.part")
        part.write_bytes(message.as_bytes())
        part.replace(path)
        return Sent()


class Smtp:
    name = "smtp"

    def __init__(self, host: str, port: int, security: str, user: str | None, password: str | None,
                 timeout_s: float) -> None:
        self.host, self.port, self.security = host, port, security
        self.user, self.password, self.timeout_s = user, password, timeout_s

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        try:
            client: smtplib.SMTP
            if self.security == "tls":
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s,
                                          context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            with client:
                if self.security == "starttls":
                    client.starttls(context=ssl.create_default_context())
                if self.user and self.password:
                    client.login(self.user, self.password)
                client.send_message(message)
            return Sent()
        except smtplib.SMTPRecipientsRefused as exc:
            raise Permanent(f"recipient refused: {_codes(exc.recipients)}") from None
        except smtplib.SMTPResponseException as exc:
            kind = Temporary if 400 <= exc.smtp_code < 500 else Permanent
            error = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            raise kind(f"SMTP {exc.smtp_code}: {error[:200]}") from None
        except (OSError, smtplib.SMTPException) as exc:  # connection refused, timeouts, disconnects
            raise Temporary(f"SMTP {type(exc).__name__}: {exc}"[:300]) from None


def _codes(recipients: Any) -> str:
    return ", ".join(str(code) for code, _ in recipients.values()) if isinstance(recipients, dict) else "?"


class Webhook:
    """POSTs ``{"idempotency_key", "from", "to", "subject", "html", "text", "headers", "metadata"}``
    with an ``Idempotency-Key`` header (the trigger id, the same on every attempt).  A 2xx answer
    whose JSON says ``{"bounced": true}`` (or ``"status": "bounced"``) reports a bounce."""

    name = "webhook"

    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        self.url, self.token, self.timeout_s = url, token, timeout_s

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        html = message.get_body(("html",))
        text = message.get_body(("plain",))
        body = {
            "idempotency_key": trigger["trigger_id"],
            "from": message["From"],
            "to": [{"email": trigger["email"]}],
            "subject": message["Subject"],
            "html": html.get_content() if html is not None else None,
            "text": text.get_content() if text is not None else None,
            "headers": {name: message[name] for name in ("List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID")},
            "metadata": {"trigger_id": trigger["trigger_id"], "type": trigger["type"],
                         "profile_id": trigger.get("profile_id")},
        }
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": trigger["trigger_id"],
            **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = response.read()
        except urllib.error.HTTPError as exc:
            kind = Temporary if exc.code >= 500 or exc.code in (408, 429) else Permanent
            raise kind(f"HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise Temporary(f"HTTP {type(exc).__name__}: {exc}"[:300]) from None
        try:
            reply = json.loads(answer) if answer else {}
        except ValueError:
            reply = {}
        bounced = isinstance(reply, dict) and (reply.get("bounced") is True or reply.get("status") == "bounced")
        return Sent(bounced=bounced)
