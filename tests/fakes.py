"""Stand-ins shared by the test tiers."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import orjson


@dataclass
class RecordingOutput:
    """Stands in for the output producer: records what agents send, per topic."""

    sent: dict[str, list[tuple[bytes | None, Any, int | None]]] = field(default_factory=dict)
    flushes: int = 0
    log: list[str] = field(default_factory=list)  # topic of each send, "flush" for each flush, in order

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             on_delivered: Any = None) -> None:
        decoded = None if value is None or topic.endswith("-changelog") else orjson.loads(value)
        self.sent.setdefault(topic, []).append((key, decoded, partition))
        self.log.append(topic)

    def send_changelog(self, topic: str, key: bytes, value: bytes | None, partition: int,
                       on_delivered: Any = None) -> None:
        self.send(topic, key, value, partition)

    def flush(self, timeout: float = 30.0) -> int:
        self.flushes += 1
        self.log.append("flush")
        return 0

    async def delivered(self, timeout: float = 30.0) -> None:
        self.log.append("delivered")

    async def flush_soon(self, timeout: float = 30.0) -> None:
        self.flush(timeout)


class SmtpInbox:
    """An aiosmtpd handler that keeps what it was given, (mail from, recipients, message) each.
    ``refuse_rcpt``: the reply to every RCPT; ``silent_after_data``: takes the message, then answers
    only after the client's timeout."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], EmailMessage]] = []
        self.lock = threading.Lock()
        self.silent_after_data = False
        self.refuse_rcpt: str | None = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.refuse_rcpt is not None:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        if self.silent_after_data:
            await asyncio.sleep(3)
        return "250 OK"

    @property
    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [message for _, _, message in self.received]

    def trigger_ids(self) -> list[str]:
        return [str(m["X-Mailpulse-Trigger"]).split()[1] for m in self.messages]


@contextmanager
def serving_smtp(inbox: SmtpInbox) -> Iterator[int]:
    """An SMTP server on a free loopback port, handled by ``inbox``: the port."""
    from aiosmtpd.controller import Controller

    from streams.broker import free_port

    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
