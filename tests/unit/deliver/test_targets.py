"""The SMTP target against a real SMTP server on loopback (aiosmtpd): a message is handed over once,
a connection lost after the hand-over is not retried (at most once), and a reply before it is."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from streams.deliver.service import POLICY
from streams.deliver.targets import DryRun, OutcomeUnknown, Permanent, Smtp, Temporary, with_retries
from tests.fakes import SmtpInbox, serving_smtp


@pytest.fixture
def server() -> Iterator[tuple[SmtpInbox, int]]:
    inbox = SmtpInbox()
    with serving_smtp(inbox) as port:
        yield inbox, port


def message(to: str = "ana@example.com") -> EmailMessage:
    m = EmailMessage(policy=POLICY)
    m["From"] = "Shop <shop@example.com>"
    m["To"] = to
    m["Subject"] = "Hello"
    m.set_content(".a line that starts with a dot\nand another\n")
    return m


def send_with(port: int, m: EmailMessage, attempts: int = 3) -> tuple[Any, int]:
    target = Smtp("127.0.0.1", port, "none", None, None, timeout_s=0.5)
    return with_retries(lambda: target.send(m, {"trigger_id": "t-1"}), attempts, 0.001, lambda: None,
                        lambda s: None)


def test_a_message_is_handed_over_once_with_its_envelope(server: tuple[SmtpInbox, int]) -> None:
    handler, port = server
    _, attempts = send_with(port, message())
    [(sender, recipients, got)] = handler.received
    assert attempts == 1 and sender == "shop@example.com" and recipients == ["ana@example.com"]
    assert got["Subject"] == "Hello"
    assert got.get_content().replace("\r\n", "\n") == ".a line that starts with a dot\nand another\n"


def test_an_international_address_goes_with_smtputf8(server: tuple[SmtpInbox, int]) -> None:
    handler, port = server
    send_with(port, message("zoë@example.com"))
    [(_, recipients, got)] = handler.received
    assert recipients == ["zoë@example.com"] and got["To"] == "zoë@example.com"


def test_a_connection_lost_after_the_hand_over_is_not_tried_again(server: tuple[SmtpInbox, int]) -> None:
    """The server took the message and its reply never came: another attempt could send it twice."""
    handler, port = server
    handler.silent_after_data = True
    with pytest.raises(OutcomeUnknown):
        send_with(port, message(), attempts=3)
    assert len(handler.received) == 1


def test_a_message_that_could_not_be_written_whole_is_tried_again(server: tuple[SmtpInbox, int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails before the final dot went out leaves the server nothing to accept."""
    import smtplib

    handler, port = server
    real_send, broken = smtplib.SMTP.send, [True]

    def send(self: smtplib.SMTP, data: Any) -> None:
        if isinstance(data, bytes) and data.endswith(b"\r\n.\r\n") and broken:
            broken.clear()
            raise smtplib.SMTPServerDisconnected("timed out writing the message")
        real_send(self, data)

    monkeypatch.setattr(smtplib.SMTP, "send", send)
    _, attempts = send_with(port, message())
    assert attempts == 2 and len(handler.received) == 1


def test_a_refusal_before_the_hand_over_is_classified_by_its_code(server: tuple[SmtpInbox, int]) -> None:
    handler, port = server
    handler.refuse_rcpt = "451 try again later"
    with pytest.raises(Temporary):
        send_with(port, message(), attempts=2)
    handler.refuse_rcpt = "550 no such user"
    with pytest.raises(Permanent):
        send_with(port, message(), attempts=2)
    assert handler.received == []


def test_the_dry_run_writes_only_file_names_inside_its_folder(tmp_path: Any) -> None:
    target = DryRun(tmp_path / "out")
    for bad in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(Permanent):
            target.send(message(), {"trigger_id": bad})
    target.send(message(), {"trigger_id": "0f3a-x_y.1"})
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["0f3a-x_y.1.eml"]
    assert not (tmp_path / "escape.eml").exists()


class _Idempotent:
    """An HTTP e-mail API on loopback that keeps idempotency keys as the IETF draft says: a request whose
    key is in progress gets 409, one whose key completed gets that request's answer again.  Its first
    request takes longer than the client waits."""

    def __init__(self) -> None:
        self.taken: list[str] = []
        self.answers: list[int] = []
        self.done: dict[str, int] = {}


def _serving(api: _Idempotent) -> Any:
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            key = self.headers["Idempotency-Key"]
            if key in api.done:
                status = api.done[key]
            elif key in api.taken:
                status = 409
            else:
                api.taken.append(key)
                time.sleep(1.0)  # past the client's timeout: this answer is lost
                status = api.done[key] = 200
            api.answers.append(status)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_webhook_409_is_tried_again_and_then_gets_the_first_requests_answer() -> None:
    """A 409 (the key's first request still in progress) is neither a delivery nor a refusal: tried
    again, the target answers with that request's outcome, and the e-mail was taken once."""
    from streams.deliver.targets import Webhook

    api = _Idempotent()
    server = _serving(api)
    try:
        hook = Webhook(f"http://127.0.0.1:{server.server_port}/send", None, timeout_s=0.3)
        m = message()
        waits = iter([0.05, 1.0])  # the second attempt while the first is in progress, the third after
        sent, attempts = with_retries(lambda: hook.send(m, {"trigger_id": "t-1", "type": "welcome",
                                                            "email": "ana@example.com"}), 3, 0.001, lambda: None,
                                      lambda s: time.sleep(next(waits)))
        assert attempts == 3 and api.taken == ["t-1"] and api.answers == [409, 200, 200] and not sent.bounced
    finally:
        server.shutdown()


@pytest.mark.parametrize("reply,down", [("452 4.2.2 Mailbox full", False), ("450 4.7.1 Greylisted", False),
                                        ("421 4.3.2 Service shutting down", True)])
def test_a_refused_recipient_is_a_failure_of_the_target_only_when_it_says_so(
        server: tuple[SmtpInbox, int], reply: str, down: bool) -> None:
    handler, port = server
    handler.refuse_rcpt = reply
    with pytest.raises(Temporary) as failed:
        send_with(port, message(), attempts=1)
    assert failed.value.target_down is down


@pytest.mark.parametrize("status,down", [(409, False), (503, True), (429, True)])
def test_a_webhook_answer_is_a_failure_of_the_target_only_for_5xx_408_and_429(status: int, down: bool) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from streams.deliver.targets import Webhook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    web = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        hook = Webhook(f"http://127.0.0.1:{web.server_port}/send", None, timeout_s=2)
        with pytest.raises(Temporary) as failed:
            hook.send(message(), {"trigger_id": "t-1", "type": "welcome", "email": "ana@example.com"})
        assert failed.value.target_down is down
    finally:
        web.shutdown()
