"""The SMTP target against a real SMTP server on loopback (aiosmtpd): a message is handed over once,
a connection lost after the hand-over is not retried (at most once), and a reply before it is."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@contextmanager
def serving_http(answer: Callable[[str], int], head: int = 501, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> Iterator[str]:
    """An HTTP e-mail API on loopback whose POSTs get ``answer(idempotency key)`` as their status (and
    ``body``, and ``headers``), and HEAD requests ``head``; the URL to send to."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(answer(self.headers["Idempotency-Key"]))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if body or headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.send_response(head)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        yield url


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on loopback answering with ``handler``; the URL to send to."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/send"
    finally:
        server.shutdown()


WELCOME = {"trigger_id": "t-1", "type": "welcome", "email": "ana@example.com"}


def test_a_webhook_409_is_tried_again_and_then_gets_the_first_requests_answer() -> None:
    """A 409 (the key's first request still in progress) is neither a delivery nor a refusal: tried
    again, the target answers with that request's outcome, and the e-mail was taken once.  The API keeps
    idempotency keys as the IETF draft says (in progress: 409; completed: that request's answer again),
    and its first request takes longer than the client waits."""
    from streams.deliver.targets import Webhook

    taken: list[str] = []
    answers: list[int] = []
    done: dict[str, int] = {}

    def answer(key: str) -> int:
        if key in done:
            status = done[key]
        elif key in taken:
            status = 409
        else:
            taken.append(key)
            time.sleep(1.0)  # past the client's timeout: this answer is lost
            status = done[key] = 200
        answers.append(status)
        return status

    with serving_http(answer) as url:
        hook = Webhook(url, None, timeout_s=0.3)
        m = message()
        waits = iter([0.05, 1.0])  # the second attempt while the first is in progress, the third after
        sent, attempts = with_retries(lambda: hook.send(m, WELCOME), 3, 0.001, lambda: None,
                                      lambda s: time.sleep(next(waits)))
    assert attempts == 3 and taken == ["t-1"] and answers == [409, 200, 200] and not sent.bounced


def test_a_webhook_answer_nested_too_deeply_is_still_a_delivery() -> None:
    """A 2xx whose JSON body nests deeper than the interpreter's recursion limit: the e-mail was taken.
    json.loads raised RecursionError, which with_retries made a Permanent refusal (delivery-failed
    "rejected", the ledger without the send) for an e-mail the target had accepted."""
    from streams.deliver.targets import Webhook

    with serving_http(lambda key: 200, body=b"[" * 100_000 + b"]" * 100_000) as url:
        sent, attempts = with_retries(lambda: Webhook(url, None, timeout_s=5).send(message(), WELCOME), 3, 0.001,
                                      lambda: None, lambda s: None)
    assert attempts == 1 and not sent.bounced


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
    from streams.deliver.targets import Webhook

    with serving_http(lambda key: status) as url, pytest.raises(Temporary) as failed:
        Webhook(url, None, timeout_s=2).send(message(), WELCOME)
    assert failed.value.target_down is down


def test_a_webhook_that_refuses_its_token_is_a_failure_of_the_target_not_a_refusal_of_the_message() -> None:
    """A 401 (the token rotated or mistyped) is the same for every message: each trigger went to
    delivery-failed as "rejected" at once, never tried again, instead of the target counting as down
    until the token is fixed.  (A 403 or 400 still refuses the message.)"""
    from streams.deliver.targets import Webhook

    with serving_http(lambda key: 401) as url, pytest.raises(Temporary) as failed:
        Webhook(url, "old-token", timeout_s=2).send(message(), WELCOME)
    assert failed.value.target_down
    with serving_http(lambda key: 403) as url, pytest.raises(Permanent):
        Webhook(url, "tok", timeout_s=2).send(message(), WELCOME)


def test_an_smtp_probe_sends_nothing_and_a_server_that_refuses_recipients_with_421_counts_as_down(
        server: tuple[SmtpInbox, int]) -> None:
    inbox, port = server
    target = Smtp("127.0.0.1", port, "none", None, None, timeout_s=0.5)
    target.probe("Shop <shop@example.com>")  # answered
    from streams.deliver.targets import _envelope_only

    target._session(lambda client: _envelope_only(client, "Bücher <news@bücher.de>"))  # (IDNA, as e-mails go)
    inbox.refuse_rcpt = "550 5.7.1 relaying denied"
    target.probe("Shop <shop@example.com>")  # a refusal is an answer
    inbox.refuse_rcpt = "421 4.3.2 service not available"
    with pytest.raises(Temporary) as raised:
        target.probe("Shop <shop@example.com>")
    assert raised.value.target_down
    assert not inbox.received


@pytest.mark.parametrize("security,user", [("none", "shop"), ("starttls", None)])
def test_an_smtp_session_that_cannot_start_is_a_failure_of_the_target_not_a_refusal(
        security: str, user: str | None) -> None:
    """A login refused (535: a password rotated, a typo) or STARTTLS not offered is the target's set-up,
    the same for every message: each trigger went to delivery-failed as "rejected" at once, never tried
    again, instead of the target counting as down until it is fixed."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from streams.broker import free_port

    inbox, port = SmtpInbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, auth_require_tls=False,
                            authenticator=lambda *args: AuthResult(success=False, handled=False))
    controller.start()
    try:
        target = Smtp("127.0.0.1", port, security, user, "wrong" if user else None, timeout_s=2)
        with pytest.raises(Temporary) as failed:
            target.send(message(), {"trigger_id": "t-1"})
        assert failed.value.target_down
        with pytest.raises(Temporary):
            target.probe("shop@example.com")
    finally:
        controller.stop()
    assert not inbox.received


@pytest.mark.parametrize("greeting,ehlo", [(b"554 5.7.1 no service for you", b""),
                                           (b"220 mx ready", b"550 5.7.1 EHLO refused"),
                                           (b"220 mx ready", b"501 5.5.4 syntax")])
def test_an_smtp_greeting_or_ehlo_refused_is_a_failure_of_the_target_not_a_refusal(greeting: bytes,
                                                                                   ehlo: bytes) -> None:
    """A 5xx greeting (the sending host blocked) or a refused EHLO and HELO say nothing of a message yet:
    each trigger went to delivery-failed as "rejected" at once instead of waiting for the server."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve() -> None:
            for _ in range(2):  # a send, then a probe
                connection, _ = listener.accept()
                with connection, connection.makefile("rb") as lines:
                    connection.sendall(greeting + b"\r\n")
                    for line in lines:
                        if line.upper().startswith(b"QUIT"):
                            connection.sendall(b"221 bye\r\n")
                            break
                        connection.sendall((ehlo or b"500 no") + b"\r\n")

        threading.Thread(target=serve, daemon=True).start()
        target = Smtp("127.0.0.1", listener.getsockname()[1], "none", None, None, timeout_s=2)
        with pytest.raises(Temporary) as failed:
            target.send(message(), {"trigger_id": "t-1"})
        assert failed.value.target_down and "could not start" in str(failed.value)
        with pytest.raises(Temporary):
            target.probe("shop@example.com")


def test_an_smtp_probe_of_a_closed_port_fails() -> None:
    from streams.broker import free_port

    with pytest.raises(Temporary):
        Smtp("127.0.0.1", free_port(), "none", None, None, timeout_s=0.5).probe("shop@example.com")


@pytest.mark.parametrize("status,down", [(200, False), (405, False), (401, False), (501, False), (500, False),
                                         (502, True), (503, True), (504, True), (429, True)])
def test_a_webhook_probe_is_a_head_and_only_gateway_and_availability_answers_count_as_down(
        status: int, down: bool) -> None:
    from streams.deliver.targets import Webhook

    posted: list[str] = []
    with serving_http(lambda key: posted.append(key) or 500, head=status) as url:
        target = Webhook(url, "tok", timeout_s=2)
        if down:
            with pytest.raises(Temporary):
                target.probe("shop@example.com")
        else:
            target.probe("shop@example.com")
    assert not posted


def test_a_webhook_probe_of_a_server_that_does_not_speak_http_fails() -> None:
    import socket

    from streams.deliver.targets import Webhook

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer() -> None:
            connection, _ = listener.accept()
            connection.recv(1024)
            connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            connection.close()

        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(Temporary):
            Webhook(f"http://127.0.0.1:{listener.getsockname()[1]}/send", None, timeout_s=2).probe("a@b.c")


def test_a_webhook_answer_cut_short_is_tried_again_with_the_same_key_not_rejected() -> None:
    """The request may have been taken: a retry with its idempotency key gets that request's outcome."""
    from streams.deliver.targets import Webhook

    keys: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            keys.append(self.headers["Idempotency-Key"])
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            if len(keys) == 1:
                self.wfile.write(b'{"status": ')  # and the connection closes: 11 bytes of 100
                self.close_connection = True
            else:
                self.wfile.write(b" " * 100)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        hook = Webhook(url, None, timeout_s=2)
        _, attempts = with_retries(lambda: hook.send(message(), WELCOME), 3, 0.001, lambda: None, lambda s: None)
    assert attempts == 2 and keys == ["t-1", "t-1"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_webhook_redirect_is_not_followed_and_counts_the_target_down(status: int) -> None:
    """A 3xx (an API moved, an http:// URL sent on to https://, a login page) is not a delivery: urllib
    followed 301, 302 and 303 by a GET without the body, whose 200 made the e-mail "sent" though the API
    never got it, and passed the bearer token on to the ``Location``.  Nor is it a refusal of the
    message: it is the URL's, the same for every message, and each trigger went to delivery-failed as
    "rejected" at once, never tried again; the target now counts as down (a probe's HEAD too) until
    MAILPULSE_WEBHOOK_URL is set to the final URL."""
    from streams.deliver.targets import Webhook

    requests: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            requests.append(("POST", self.headers.get("Authorization")))
            self.send_response(status)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            requests.append(("GET", self.headers.get("Authorization")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self.send_response(status)
            self.send_header("Location", "/elsewhere")
            self.end_headers()

    with serving(Handler) as url:
        hook = Webhook(url, "tok", timeout_s=2)
        with pytest.raises(Temporary, match=f"HTTP {status}") as failed:
            with_retries(lambda: hook.send(message(), WELCOME), 3, 0.001, lambda: None, lambda s: None)
        assert failed.value.target_down
        with pytest.raises(Temporary):
            hook.probe("shop@example.com")
    assert requests == [("POST", "Bearer tok")] * 3


def test_a_webhook_2xx_whose_body_does_not_end_is_a_delivery() -> None:
    """The status is the answer: the whole body was read, so one without end (a proxy streaming, a
    Content-Length far too large) held the send until its timeout and then read as no answer, tried
    again and again for an e-mail the API had taken."""
    from streams.deliver.targets import Webhook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b" " * 65536)
            except OSError:
                pass

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        started = time.monotonic()
        sent = Webhook(url, None, timeout_s=3).send(message(), WELCOME)
        assert not sent.bounced and time.monotonic() - started < 3


def test_a_trigger_id_that_cannot_be_an_http_header_is_refused_not_a_failure_of_the_webhook() -> None:
    """The id is the Idempotency-Key header, which http.client writes in Latin-1: an id beyond it
    failed before anything was sent and read as no answer, a failure of the target, so it was tried
    for the whole retry window and three such triggers made the webhook count as down for everyone's."""
    from streams.deliver.targets import Webhook

    posted: list[str] = []
    with serving_http(lambda key: posted.append(key) or 200) as url:
        hook = Webhook(url, None, timeout_s=2)
        with pytest.raises(Permanent, match="cannot be an HTTP header"):
            with_retries(lambda: hook.send(message(), {**WELCOME, "trigger_id": "t-€"}), 3, 0.001, lambda: None,
                         lambda s: None)
        hook.send(message(), {**WELCOME, "trigger_id": "t-é"})  # (Latin-1: as before)
    assert posted == ["t-é"]


def test_an_address_whose_domain_alone_is_international_goes_in_idna_to_a_server_without_smtputf8() -> None:
    """``ana@bücher.de`` is ``ana@xn--bcher-kva.de``: no SMTPUTF8 needed (relays such as Amazon SES
    do not offer it), and no encoded word in an address header."""
    from aiosmtpd.controller import Controller

    from streams.broker import free_port

    inbox, port = SmtpInbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    controller.start()
    try:
        m = message("ana@bücher.de")
        m.replace_header("From", "Bücher <news@bücher.de>")
        send_with(port, m)
    finally:
        controller.stop()
    [(sender, recipients, got)] = inbox.received
    assert sender == "news@xn--bcher-kva.de" and recipients == ["ana@xn--bcher-kva.de"]
    assert got["To"].addresses[0].addr_spec == "ana@xn--bcher-kva.de"
    assert got["From"].addresses[0].addr_spec == "news@xn--bcher-kva.de"
    assert got["From"].addresses[0].display_name == "Bücher"
    assert m["To"] == "ana@bücher.de"  # (the message of the next attempt is unchanged)


def test_a_retry_after_is_read_as_seconds_or_an_http_date_and_bounded() -> None:
    from streams.deliver.targets import LONGEST_RETRY_AFTER_S, retry_after_s

    now = 1_800_000_000.0
    assert retry_after_s("120", now) == 120.0 and retry_after_s(" 0 ", now) == 0.0
    assert retry_after_s(email.utils.formatdate(now + 90, usegmt=True), now) == 90.0
    assert retry_after_s(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0  # past: at once
    assert retry_after_s("9" * 40, now) == LONGEST_RETRY_AFTER_S
    assert retry_after_s(email.utils.formatdate(now + 86_400, usegmt=True), now) == LONGEST_RETRY_AFTER_S
    assert [retry_after_s(value, now) for value in (None, "soon", "-5", "1.5", "٣")] == [None] * 5
    # a date of no known zone (-0000) is no HTTP-date, which is in GMT
    assert retry_after_s(email.utils.formatdate(now + 90).rsplit(" ", 1)[0] + " -0000", now) is None


def test_a_webhook_429_or_503_that_says_when_is_tried_again_no_sooner_and_not_at_once_when_that_is_far() -> None:
    """``Retry-After`` was not read: each attempt came after the backoff's jitter (milliseconds to
    seconds), however long the target asked to wait, and every one was refused again."""
    from streams.deliver.targets import Webhook

    asked: list[str] = []

    def limited(status: int) -> Callable[[str], int]:
        return lambda key: asked.append(key) or (status if len(asked) == 1 else 200)

    slept: list[float] = []
    with serving_http(limited(429), headers={"Retry-After": "2"}) as url:
        target = Webhook(url, None, timeout_s=2)
        _, attempts = with_retries(lambda: target.send(message(), WELCOME), 3, 1.0, lambda: None, slept.append)
    assert attempts == 2 and slept and slept[0] >= 2.0  # the second attempt no sooner than asked
    asked.clear()
    with serving_http(limited(503), headers={"Retry-After": "60"}) as url, pytest.raises(Temporary) as failed:
        target = Webhook(url, None, timeout_s=2)
        with_retries(lambda: target.send(message(), WELCOME), 3, 1.0, lambda: None, slept.append)
    assert failed.value.retry_after_s == 60.0 and failed.value.attempts == 1 and len(asked) == 1


class RefusesSender(SmtpInbox):
    """A relay that refuses the sender (MAIL FROM) with ``reply``."""

    def __init__(self, reply: str) -> None:
        super().__init__()
        self.reply = reply

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        return self.reply


@pytest.mark.parametrize("reply", ["553 5.7.1 <shop@example.com>: Sender address rejected: not owned by user",
                                   "550 5.7.60 SMTP; Client does not have permissions to send as this sender"])
def test_a_sender_the_smtp_server_refuses_is_a_failure_of_the_target_not_a_refusal_of_the_message(
        reply: str) -> None:
    """The sender is MAILPULSE_MAIL_FROM, the same in every message: a relay that does not let the login
    send as it (a From: of another domain, a typo) refused each message alike, and each trigger went
    to delivery-failed as "rejected" at once, never tried again, instead of the target counting as down
    until it is set right.  A probe (the same envelope) does not count it as up either."""
    inbox = RefusesSender(reply)
    with serving_smtp(inbox) as port:
        target = Smtp("127.0.0.1", port, "none", None, None, timeout_s=2)
        with pytest.raises(Temporary) as failed:
            target.send(message(), {"trigger_id": "t-1"})
        assert failed.value.target_down and "sender refused" in str(failed.value)
        with pytest.raises(Temporary):
            target.probe("shop@example.com")
    assert not inbox.received


@pytest.mark.parametrize("status", [404, 405, 410])
def test_a_webhook_url_that_takes_no_e_mail_is_a_failure_of_the_target_not_a_refusal(status: int) -> None:
    """A mistyped MAILPULSE_WEBHOOK_URL path (404), a page that takes no POST (405) or an endpoint
    retired (410) answers every message alike: each trigger went to delivery-failed as "rejected" at
    once, never tried again.  The target counts as down until the URL is set right; a 400 or 422 still
    refuses the message."""
    from streams.deliver.targets import Webhook

    with serving_http(lambda key: status) as url, pytest.raises(Temporary, match=f"HTTP {status}") as failed:
        Webhook(url, None, timeout_s=2).send(message(), WELCOME)
    assert failed.value.target_down and "MAILPULSE_WEBHOOK_URL" in str(failed.value)
    for refused in (400, 422):
        with serving_http(lambda key, refused=refused: refused) as url, pytest.raises(Permanent):
            Webhook(url, None, timeout_s=2).send(message(), WELCOME)
