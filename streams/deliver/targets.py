"""Where an e-mail goes: an SMTP server, an HTTP webhook in the shape of transactional e-mail APIs,
or (``--dry-run``) ``.eml`` files.  Each ``send`` raises :class:`Temporary` (worth a retry) or
:class:`Permanent`; :func:`with_retries` retries with exponential backoff and full jitter.  A send of
SMTP or the webhook takes at most its timeout, whole (:class:`Deadline`)."""

from __future__ import annotations

import contextlib
import copy
import email.generator
import email.policy
import email.utils
import http.client
import io
import json
import random
import re
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import idna

#: A trigger id the dry run can use as a file name: no path separators, no leading dot.
SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class Temporary(Exception):
    """Worth another attempt (a timeout, a 4xx SMTP reply, an HTTP 5xx, 3xx, 401, 404, 405, 408, 409, 410
    or 429).  ``target_down``: the target itself failed (no connection, a timeout, SMTP 421 or a session
    that cannot start, HTTP 5xx, 3xx, 401, 404, 405, 408, 410 or 429), not this message
    (a full mailbox, greylisting, a request still in progress): only those make it count as down."""

    def __init__(self, message: str, target_down: bool = True, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.target_down = target_down
        #: the target's ``Retry-After``: no request to it before that many seconds from now
        self.retry_after_s = retry_after_s
        self.attempts: int | None = None  # how many were made (set by :func:`with_retries`)


#: The longest ``Retry-After`` taken (seconds): a longer one is taken as this (the rounds' longest wait).
LONGEST_RETRY_AFTER_S = 3600.0


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header's wait in seconds (RFC 9110: delay-seconds or an HTTP-date), at most
    :data:`LONGEST_RETRY_AFTER_S`; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(int(value[:12])), LONGEST_RETRY_AFTER_S)
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if at.tzinfo is None:  # (-0000: an HTTP-date is in GMT)
        return None
    wait = at.timestamp() - (time.time() if now is None else now)
    return min(max(wait, 0.0), LONGEST_RETRY_AFTER_S)


def longest_backoff_s(attempts: int, backoff_s: float) -> float:
    """The longest wait between two attempts of a round (:func:`with_retries`: after attempt k it waits
    up to ``backoff_s * 2 ** (k - 1)``, and not after the last); 0 for a round of one attempt."""
    return backoff_s * float(2 ** (attempts - 2)) if attempts > 1 else 0.0


class Permanent(Exception):
    """Not worth another attempt (a 5xx SMTP reply, an HTTP 4xx other than 401, 404, 405, 408, 409, 410
    and 429, a rejected address).  ``answered``: the target refused it (False: it was refused before the
    target was asked, which says nothing of whether the target is up)."""

    attempts = 1  # on which attempt it came (set by :func:`with_retries`)

    def __init__(self, message: str, answered: bool = True) -> None:
        super().__init__(message)
        self.answered = answered


class OutcomeUnknown(Exception):
    """The message was handed over, but whether it was taken is not known (the connection broke
    before the server's last reply): another attempt could send it twice, so there is none."""

    attempts = 1  # on which attempt it came (set by :func:`with_retries`)


class Sent:
    """What a target reports back: ``bounced`` when the receiving side says the address bounced."""

    def __init__(self, bounced: bool = False) -> None:
        self.bounced = bounced


class Target(Protocol):
    name: str

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent: ...

    def probe(self, sender: str) -> None:
        """Whether the target answers, sending nothing: returns when it answered (a refusal is an
        answer too), raises :class:`Temporary` when it failed for its own sake (as ``send`` would)."""


def with_retries(send: Callable[[], Sent], attempts: int, backoff_s: float, on_retry: Callable[[], None],
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> tuple[Sent, int]:
    """(result, attempts made); re-raises the last error once ``attempts`` are used up.  An error a
    target does not classify is :class:`Permanent` (not retried, never raised past here)."""
    rng = rng or random.Random()
    for attempt in range(1, attempts + 1):
        try:
            return send(), attempt
        except Temporary as exc:
            exc.attempts = attempt
            if attempt == attempts:
                raise
            wait = rng.uniform(0, backoff_s * 2 ** (attempt - 1))  # "full jitter"
            if exc.retry_after_s is not None:  # the target said when: not sooner, and not here if it is
                if exc.retry_after_s > longest_backoff_s(attempts, backoff_s):  # past the longest backoff: the
                    raise  # caller holds the trigger (and the target) until then
                wait = max(wait, exc.retry_after_s)
        except (Permanent, OutcomeUnknown) as exc:
            exc.attempts = attempt
            raise
        except Exception as exc:
            unclassified = Permanent(f"{type(exc).__name__}: {exc}"[:300], answered=False)
            unclassified.attempts = attempt
            raise unclassified from None
        on_retry()
        sleep(wait)
    raise AssertionError("unreachable")


class Deadline:
    """The time a send may take, whole: connect, request and answer.  A socket's timeout bounds each
    read alone, so a target (or a proxy) that sends a byte a little more often than that would hold a
    send, and the deliver loop with it, for as long as it goes on.  When the deadline passes, a timer
    shuts down the connections it watches: a read blocked on one returns at once (the end of the
    stream) and the send fails.  Used with ``with``: the timer is stopped and joined when the block
    ends, so no thread outlives the send."""

    def __init__(self, seconds: float) -> None:
        self.passed = False
        self._watched: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._pass)
        self._timer.name, self._timer.daemon = "deliver-send-deadline", True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._timer.cancel()
        self._timer.join()
        for watched in self._watched:
            watched.close()

    def watch(self, connection: socket.socket) -> None:
        """Shuts ``connection`` down when the deadline passes (at once if it has).  Through a copy of
        its descriptor, which is the same connection: TLS, which takes the descriptor of the socket it
        wraps, changes nothing, and what the send closes is never shut down here."""
        watched = connection.dup()
        with self._lock:
            self._watched.append(watched)
            if self.passed:
                _shut_down(watched)

    def _pass(self) -> None:
        with self._lock:
            self.passed = True  # (before the shutdown: whoever sees a read cut short sees this too)
            for watched in self._watched:
                _shut_down(watched)


def _shut_down(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # (not connected any more)
        connection.shutdown(socket.SHUT_RDWR)


class MailPolicy(email.policy.EmailPolicy):
    """How e-mails are written: CRLF line ends, header lines folded (so that an encoded word, a subject's
    non-ASCII name, is at most the 75 characters of RFC 2047), but the headers of
    :data:`UNFOLDED` on one line up to RFC 5322's 998: the unsubscribe URL is one unbreakable token that
    78 would fold into RFC 2047 encoded words mail clients cannot use."""

    def fold(self, name: str, value: str) -> str:
        folded: str = email.policy.EmailPolicy.fold(self._for(name), name, value)
        return folded

    def fold_binary(self, name: str, value: str) -> bytes:
        return email.policy.EmailPolicy.fold_binary(self._for(name), name, value)

    def _for(self, name: str) -> email.policy.EmailPolicy:
        return self.clone(max_line_length=998) if name.lower() in UNFOLDED else self


#: Headers written on one line however long (machine-read tokens: a URL, a trigger id).
UNFOLDED = frozenset({"list-unsubscribe", "x-mailpulse-trigger"})
#: The service's policy (streams.deliver.service.POLICY), folding at 76: the e-mail library fills a
#: continuation line, its leading space included, with one encoded word up to the line's length.
POLICY = MailPolicy(linesep="\r\n", max_line_length=76)
#: The same as SMTPUTF8 writes it: 8-bit headers.
SMTPUTF8_POLICY = POLICY.clone(utf8=True)


class DryRun:
    """Writes each e-mail to ``folder/<trigger_id>.eml`` (RFC 5322)."""

    name = "dry-run"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def probe(self, sender: str) -> None:
        """A folder always answers."""

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        trigger_id = trigger["trigger_id"]
        if not SAFE_FILE_NAME.fullmatch(trigger_id):  # "../x" would write outside the folder
            raise Permanent("the trigger id cannot be a file name", answered=False)
        path = self.folder / f"{trigger_id}.eml"
        part = path.with_suffix(".eml.part")
        policy = message.policy
        if _international(message):  # an international address is written as it is (as SMTPUTF8 sends
            policy = SMTPUTF8_POLICY  # it): an encoded word is no part of an address
        part.write_bytes(message.as_bytes(policy=policy))
        part.replace(path)
        return Sent()


def _international(message: EmailMessage) -> bool:
    """Whether an address of From: or To: (not only a display name, which encoded words carry) is
    international."""
    return any(not address.addr_spec.isascii() for name in ("From", "To") if (header := message[name]) is not None
               for address in header.addresses)


class Smtp:
    name = "smtp"

    def __init__(self, host: str, port: int, security: str, user: str | None, password: str | None,
                 timeout_s: float) -> None:
        self.host, self.port, self.security = host, port, security
        self.user, self.password, self.timeout_s = user, password, timeout_s

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        """Connects, says who from and to whom, then hands the message over (DATA).  Anything that
        fails before the message is handed over is worth another attempt (or not, by the reply's
        code); a connection that breaks after it, before the server's reply, is
        :class:`OutcomeUnknown`; and once the server has taken it, nothing after (QUIT) counts."""
        self._session(lambda client: _hand_over(client, message))
        return Sent()

    def probe(self, sender: str) -> None:
        """The envelope of a message from ``sender`` to itself, without one (MAIL, RCPT, RSET): the
        path a send takes up to DATA, so a server that refuses recipients with 421 still counts as
        down, as it would for a trigger."""
        try:
            self._session(lambda client: _envelope_only(client, sender))
        except Temporary as exc:
            if exc.target_down:
                raise
        except Permanent:
            pass  # a refusal is an answer

    def _session(self, talk: Callable[[_Smtp], None]) -> None:
        """Connects (TLS, STARTTLS, login as configured), runs ``talk`` and says goodbye, all within the
        timeout (:class:`Deadline`); SMTP's failures as :class:`Temporary` or :class:`Permanent` by their
        reply, and any once the deadline passed as :class:`Temporary` (a reply it cut short may read as
        another code)."""
        with Deadline(self.timeout_s) as deadline:
            try:
                self._talk(deadline, talk)
            except (Temporary, Permanent):
                if deadline.passed:
                    raise Temporary(f"SMTP: not done within the send's timeout ({self.timeout_s:g} s)") from None
                raise

    def _talk(self, deadline: Deadline, talk: Callable[[_Smtp], None]) -> None:
        client: _Smtp | None = None
        try:
            try:
                if self.security == "tls":
                    client = _SmtpTls(deadline, self.host, self.port, self.timeout_s)
                else:
                    client = _Smtp(deadline, self.host, self.port, self.timeout_s)
                if self.security == "starttls":
                    client.starttls(context=ssl.create_default_context())
                if self.user and self.password:
                    client.login(self.user, self.password)
                client.ehlo_or_helo_if_needed()
            except (smtplib.SMTPConnectError, smtplib.SMTPHeloError, smtplib.SMTPAuthenticationError,
                    smtplib.SMTPNotSupportedError) as exc:
                # the session cannot start (a greeting or EHLO refused, a login refused, STARTTLS not
                # offered): the target's set-up, not this message's fault, so it counts as down rather
                # than refusing every message
                code = getattr(exc, "smtp_code", None)
                raise Temporary(f"SMTP{f' {code}' if code else ''}: the session could not start "
                                f"({type(exc).__name__})") from None
            talk(client)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = f"recipient refused: {_codes(exc.recipients)}"
            if all(400 <= code < 500 for code, _ in exc.recipients.values()):  # e.g. a full mailbox, greylisting
                raise Temporary(refused, target_down=any(code == 421 for code, _ in exc.recipients.values())) \
                    from None
            raise Permanent(refused) from None
        except _SenderRefused as exc:  # MAILPULSE_MAIL_FROM, the same in every message: the set-up's fault
            error = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            raise Temporary(f"SMTP {exc.smtp_code}: the sender refused ({error[:200]})") from None
        except smtplib.SMTPNotSupportedError as exc:  # the address needs what the server does not offer
            raise Permanent(f"SMTP: {exc}"[:300]) from None
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            if 400 <= exc.smtp_code < 500:  # 421: the service is not available; others: this message, for now
                raise Temporary(f"SMTP {exc.smtp_code}: {error[:200]}", target_down=exc.smtp_code == 421) from None
            raise Permanent(f"SMTP {exc.smtp_code}: {error[:200]}") from None
        except (OSError, smtplib.SMTPException) as exc:  # connection refused, timeouts, disconnects
            raise Temporary(f"SMTP {type(exc).__name__}: {exc}"[:300]) from None
        finally:
            if client is not None:
                _close_quietly(client)


class _Smtp(smtplib.SMTP):
    """smtplib's client, its connection watched by a send's :class:`Deadline` from the start (the
    greeting is read while connecting)."""

    def __init__(self, deadline: Deadline, host: str, port: int, timeout_s: float) -> None:
        self.deadline = deadline
        super().__init__(host, port, timeout=timeout_s)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        connection = socket.create_connection((host, port), timeout, self.source_address)
        self.deadline.watch(connection)
        return connection


class _SmtpTls(smtplib.SMTP_SSL, _Smtp):
    """The same over TLS: ``SMTP_SSL._get_socket`` wraps what ``_Smtp._get_socket`` connected, so
    the handshake is watched too."""

    def __init__(self, deadline: Deadline, host: str, port: int, timeout_s: float) -> None:
        self.deadline = deadline
        smtplib.SMTP_SSL.__init__(self, host, port, timeout=timeout_s, context=ssl.create_default_context())


def _hand_over(client: _Smtp, message: EmailMessage) -> None:
    """What ``client.send_message`` does for our one-recipient messages, with DATA's end apart: once
    the message's last line went out, a broken connection is :class:`OutcomeUnknown`, not worth
    another attempt, and so is a reply other than 250 once the send's deadline passed (it may be a
    250 cut short)."""
    sender = _ascii_domain(email.utils.getaddresses([str(message["From"])])[0][1])
    recipient = _ascii_domain(email.utils.getaddresses([str(message["To"])])[0][1])
    international = _envelope(client, sender, recipient)
    with io.BytesIO() as flat:
        policy: Any = message.policy
        if international:
            policy = policy.clone(utf8=True)
        else:  # (an address header written with encoded words would name no mailbox)
            message = _with_ascii_domains(message)
        email.generator.BytesGenerator(flat, policy=policy).flatten(message, linesep="\r\n")
        data = re.sub(rb"(?m)^\.", b"..", flat.getvalue())
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    client.putcmd("data")
    code, reply = client.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    client.send(data + b".\r\n")  # raises before the last line is out: the server has nothing to take
    try:
        code, reply = client.getreply()
    except (OSError, smtplib.SMTPException) as exc:
        raise OutcomeUnknown(f"SMTP connection lost after the message was handed over ({type(exc).__name__})") \
            from None
    if code != 250 and client.deadline.passed:
        raise OutcomeUnknown("SMTP: the send's timeout passed while the server replied to the message")
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)


def _ascii_domain(address: str) -> str:
    """``address`` with its domain in IDNA when only the domain is international (``ana@bücher.de`` is
    ``ana@xn--bcher-kva.de``, the same mailbox): it then needs no SMTPUTF8, which many relays do not
    offer.  As it is when its local part is international too, or its domain is no IDNA name."""
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii() or domain.isascii():
        return address
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        return address


def _with_ascii_domains(message: EmailMessage) -> EmailMessage:
    """``message`` with the addresses of From: and To: as :func:`_ascii_domain` writes them (a copy, when
    one changes: the next attempt sends the message it was given)."""
    changed: EmailMessage | None = None
    for name in ("From", "To"):
        header = message[name]
        if header is None or str(header).isascii():
            continue
        addresses = [Address(a.display_name, addr_spec=_ascii_domain(a.addr_spec)) for a in header.addresses]
        changed = changed or copy.deepcopy(message)
        changed.replace_header(name, ", ".join(str(a) for a in addresses))
    return changed or message


class _SenderRefused(smtplib.SMTPSenderRefused):
    """MAIL FROM refused without options of a message's own: the sender is refused, whatever the message
    (a relay that does not let the login send as MAILPULSE_MAIL_FROM), so the target counts as down
    until it is set right, rather than every trigger being refused."""


def _envelope(client: smtplib.SMTP, sender: str, recipient: str) -> bool:
    """EHLO, MAIL and RCPT of one recipient, with SMTPUTF8 when an address needs it; whether it did."""
    international = not (sender.isascii() and recipient.isascii())
    options: list[str] = []
    client.ehlo_or_helo_if_needed()
    if international:
        if not client.has_extn("smtputf8"):
            raise smtplib.SMTPNotSupportedError("the address needs SMTPUTF8, which the server does not offer")
        options = ["SMTPUTF8", "BODY=8BITMIME"]
    code, reply = client.mail(sender, options)
    if code != 250:  # (with SMTPUTF8's options, this message's; else any message's)
        raise (smtplib.SMTPSenderRefused if international else _SenderRefused)(code, reply, sender)
    code, reply = client.rcpt(recipient)
    if code not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
    return international


def _envelope_only(client: _Smtp, sender: str) -> None:
    address = _ascii_domain(email.utils.getaddresses([sender])[0][1] or sender)  # (as e-mails go)
    _envelope(client, address, address)
    client.rset()


def _close_quietly(client: smtplib.SMTP) -> None:
    """QUIT, and the connection closed: its reply changes nothing about the message."""
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


def _codes(recipients: Any) -> str:
    return ", ".join(str(code) for code, _ in recipients.values()) if isinstance(recipients, dict) else "?"


#: What an HTTP request that got no (whole) answer raises: no connection, a timeout, a reply cut
#: short or not HTTP at all.
NO_ANSWER = (OSError, ValueError, http.client.HTTPException)


class _WatchedHttp(http.client.HTTPConnection):
    """http.client's connection, watched by a send's :class:`Deadline` once connected."""

    deadline: Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _WatchedHttps(http.client.HTTPSConnection, _WatchedHttp):
    """The same over TLS: ``HTTPSConnection.connect`` wraps what ``_WatchedHttp.connect`` connected, so
    the handshake is watched too."""


class _Watching(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's HTTP and HTTPS handlers (in place of the defaults), their connections watched by
    ``deadline``."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(lambda host, **options: self._watched(_WatchedHttp(host, **options)), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(lambda host, **options: self._watched(_WatchedHttps(host, **options)), req)

    def _watched(self, connection: _WatchedHttp) -> _WatchedHttp:
        connection.deadline = self.deadline
        return connection


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (an :class:`urllib.error.HTTPError` of its 3xx), not followed: urllib
    would repeat a POST as a GET without its body (an e-mail "sent" that the API never got) and pass the
    bearer token on to wherever the ``Location`` points."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


def _open(request: urllib.request.Request, deadline: Deadline, timeout_s: float) -> http.client.HTTPResponse:
    """``urllib.request.urlopen`` with the connection watched by ``deadline``, redirects not followed."""
    opener = urllib.request.build_opener(_Watching(deadline), _NoRedirects())
    response: http.client.HTTPResponse = opener.open(request, timeout=timeout_s)
    return response


def _addressee(message: EmailMessage, given: str) -> str:
    """The one address of ``message``'s To: (``given`` stripped when it names none)."""
    header = message["To"]
    addresses: tuple[Address, ...] = header.addresses if header is not None else ()
    return addresses[0].addr_spec if len(addresses) == 1 and addresses[0].addr_spec else given.strip()


#: The most of a webhook's 2xx body read (for a bounce it may report); a longer one is not read on.
MOST_ANSWER = 1 << 20


class Webhook:
    """POSTs ``{"idempotency_key", "from", "to", "subject", "html", "text", "headers", "metadata"}``
    with an ``Idempotency-Key`` header (the trigger id, the same on every attempt).  A 2xx answer
    whose JSON says ``{"bounced": true}`` (or ``"status": "bounced"``) reports a bounce."""

    name = "webhook"

    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        self.url, self.token, self.timeout_s = url, token, timeout_s

    def _authorization(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    #: HEAD answers that say the service is not there: any other (405 and 501 from a server that
    #: takes only POST, 500 from one that fails on HEAD) is an answer.
    DOWN_STATUSES = frozenset({502, 503, 504, 408, 429, 300, 301, 302, 303, 305, 307, 308})  # (3xx: sends fail too)

    def probe(self, sender: str) -> None:
        """A HEAD request, which sends nothing."""
        request = urllib.request.Request(self.url, method="HEAD", headers=self._authorization())
        with Deadline(self.timeout_s) as deadline:
            try:
                with _open(request, deadline, self.timeout_s):
                    pass
            except urllib.error.HTTPError as exc:
                if exc.code in self.DOWN_STATUSES:
                    raise Temporary(f"HTTP {exc.code}") from None
            except NO_ANSWER as exc:
                raise Temporary(self._no_answer(exc, deadline)) from None

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        try:  # http.client writes header values in Latin-1: failing there, it read as no answer
            trigger["trigger_id"].encode("latin-1")
        except UnicodeEncodeError:
            raise Permanent("the trigger id cannot be an HTTP header (Idempotency-Key)", answered=False) from None
        html = message.get_body(("html",))
        text = message.get_body(("plain",))
        body = {
            "idempotency_key": trigger["trigger_id"],
            "from": message["From"],
            # the address To: names: the trigger's email may be padded, which To: carries harmlessly and
            # an e-mail API refuses as no address
            "to": [{"email": _addressee(message, trigger["email"])}],
            "subject": message["Subject"],
            "html": html.get_content() if html is not None else None,
            "text": text.get_content() if text is not None else None,
            "headers": {name: message[name] for name in ("List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID")},
            "metadata": {"trigger_id": trigger["trigger_id"], "type": trigger["type"],
                         "profile_id": trigger.get("profile_id")},
        }
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": trigger["trigger_id"], **self._authorization()})
        with Deadline(self.timeout_s) as deadline:  # (the whole request: a socket's timeout is per read)
            try:
                with _open(request, deadline, self.timeout_s) as response:
                    answer = response.read(MOST_ANSWER + 1)  # (the status is the answer; past this, the
                    # rest is not read: a body without end held the send until its timeout, then a retry)
                    if len(answer) <= MOST_ANSWER and response.length:  # ended before its Content-Length
                        raise http.client.IncompleteRead(answer, response.length)
            except urllib.error.HTTPError as exc:
                if exc.code == 409:  # the request with this idempotency key is still in progress (its answer
                    # was lost): asked again later, the target answers with that request's outcome
                    raise Temporary("HTTP 409: a request with this idempotency key is in progress", False) from None
                if exc.code == 401:  # the token refused (rotated, mistyped): the target's set-up, the same
                    # for every message, so it counts as down rather than refusing each
                    raise Temporary("HTTP 401: the token was refused") from None
                if 300 <= exc.code < 400:  # the URL's (moved, http:// sent on to https://), the same for every
                    # message: the target counts as down until it is set to the final URL, none is refused
                    raise Temporary(f"HTTP {exc.code}: a redirect, not followed (set MAILPULSE_WEBHOOK_URL to "
                                    "the final URL)") from None
                if exc.code in (404, 405, 410):  # the URL takes no e-mail (a mistyped path, a page, an endpoint
                    # retired): the same for every message, so the target counts as down until it is set right
                    raise Temporary(f"HTTP {exc.code}: the URL takes no e-mail (check MAILPULSE_WEBHOOK_URL)") \
                        from None
                if exc.code >= 500 or exc.code in (408, 429):
                    raise Temporary(f"HTTP {exc.code}", retry_after_s=retry_after_s(exc.headers.get("Retry-After"))
                                    if exc.code in (429, 503) else None) from None
                raise Permanent(f"HTTP {exc.code}") from None
            except NO_ANSWER as exc:  # (an answer cut short too: sent again with the same idempotency
                # key, the API answers with the first request's outcome)
                raise Temporary(self._no_answer(exc, deadline)) from None
        try:
            reply = json.loads(answer) if answer and len(answer) <= MOST_ANSWER else {}
        except (ValueError, RecursionError):  # (a 2xx all the same: taken; RecursionError: nested too deeply)
            reply = {}
        bounced = isinstance(reply, dict) and (reply.get("bounced") is True or reply.get("status") == "bounced")
        return Sent(bounced=bounced)

    def _no_answer(self, exc: Exception, deadline: Deadline) -> str:
        if deadline.passed:
            return f"HTTP: no whole answer within the send's timeout ({self.timeout_s:g} s)"
        return f"HTTP {type(exc).__name__}: {exc}"[:300]
