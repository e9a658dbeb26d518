"""Signed one-click unsubscribe links (RFC 8058) and the ``identify`` event an unsubscribe becomes."""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from typing import Any


def token(secret: bytes, profile_id: str, email: str) -> str:
    return hmac.new(secret, f"{profile_id}\n{email}".encode(), hashlib.sha256).hexdigest()[:32]


def link(base_url: str, secret: bytes, profile_id: str, email: str) -> str:
    query = urllib.parse.urlencode({"p": profile_id, "e": email, "t": token(secret, profile_id, email)})
    return f"{base_url.rstrip('/')}/unsubscribe?{query}"


def verify(secret: bytes, query: str) -> tuple[str, str] | None:
    """(profile_id, email) of a genuine link's query string; None when it was not signed by us."""
    fields = urllib.parse.parse_qs(query)
    try:
        [profile_id], [email], [given] = fields["p"], fields["e"], fields["t"]
    except (KeyError, ValueError):
        return None
    # compared as bytes: compare_digest refuses str with non-ASCII characters (a forged link's ``t``)
    genuine = hmac.compare_digest(token(secret, profile_id, email).encode(), given.encode(errors="replace"))
    return (profile_id, email) if genuine else None


def headers(url: str) -> dict[str, str]:
    """The headers of RFC 2369 and RFC 8058 (one-click: a POST to the URL unsubscribes)."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def consent_withdrawn(email: str, now_ms: int, why: str) -> dict[str, Any]:
    """The input event that tells the pipeline: no more e-mail to this address (its guardrails then
    hold back the person's next triggers)."""
    digest = hashlib.sha256(f"{email}\n{now_ms}".encode()).hexdigest()[:16]
    return {"event_id": f"{why}-{digest}", "type": "identify", "timestamp": now_ms, "email": email,
            "consent": {"email": False}, "source": why}
