"""deliver keeps doing its work, and says so when it does not: a target that trickles its answer cannot
hold a send past its timeout, /healthz fails once the loop stops turning (and not while a slow target
answers), and a profile with many triggers held does not make each of its next ones cost more."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import streams.deliver.service as service
from streams.deliver.service import POLICY, Deliverer, Heartbeat, unsubscribe_app
from streams.deliver.targets import DryRun, Sent, Smtp, Target, Temporary, Webhook
from streams.metrics import STALL_AFTER_S
from streams.settings import Settings

from .test_service import deliverer, trigger

TRIGGER = {"trigger_id": "t-1", "type": "welcome", "profile_id": "p-1", "email": "ana@example.com"}
TIMEOUT_S = 0.5


def message() -> EmailMessage:
    m = EmailMessage(policy=POLICY)
    m["From"] = "shop@example.com"
    m["To"] = "ana@example.com"
    m["Subject"] = "Hello"
    m.set_content("hi\n")
    return m


@contextmanager
def trickling(first: bytes, drip: bytes, every_s: float = 0.2, for_s: float = 8.0) -> Iterator[int]:
    """A loopback server that answers a connection with ``first``, then a byte of ``drip`` every
    ``every_s`` (more often than the client's timeout) for ``for_s`` seconds; its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    done = threading.Event()

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(0.2)
                with suppress(OSError):  # the request, if it comes
                    conn.recv(65536)
                conn.sendall(first)
                until = time.monotonic() + for_s
                while time.monotonic() < until and not done.is_set():
                    try:
                        conn.sendall(drip)
                    except OSError:
                        return
                    time.sleep(every_s)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        server.join(5)


def sends_within_its_timeout(target: Target) -> None:
    """``target.send`` fails as :class:`Temporary` within a few times its timeout, and leaves no
    thread of its own behind."""
    started = time.monotonic()
    with pytest.raises(Temporary):
        target.send(message(), dict(TRIGGER))
    took = time.monotonic() - started
    assert took < 3 * TIMEOUT_S, f"the send took {took:.1f} s with a {TIMEOUT_S} s timeout"
    assert not [thread for thread in threading.enumerate() if thread.name == "deliver-send-deadline"]


def test_a_webhook_that_trickles_its_answer_does_not_hold_a_send_past_its_timeout() -> None:
    """The timeout bounded each socket read only: a target (or a proxy) that sent a byte a little more
    often than that held the send, and the whole deliver loop, for as long as it went on."""
    with trickling(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", b"{") as port:
        sends_within_its_timeout(Webhook(f"http://127.0.0.1:{port}/send", None, timeout_s=TIMEOUT_S))


def test_an_smtp_server_that_trickles_its_greeting_does_not_hold_a_send_past_its_timeout() -> None:
    """The same for SMTP: a greeting line that never ends, a byte at a time, held the send."""
    with trickling(b"220-", b"x") as port:
        sends_within_its_timeout(Smtp("127.0.0.1", port, "none", None, None, timeout_s=TIMEOUT_S))



def test_handling_a_trigger_does_not_read_more_the_more_its_profile_has_held(tmp_path: Path) -> None:
    """Whether a trigger read is already held (asked for every trigger) was a scan of every trigger
    held for its profile: a profile with many held (another producer's, or a long outage's rounds)
    made each new trigger of it cost O(held), and a burst of them O(held^2).  Counted in ledger keys
    scanned while the next 200 triggers are handled: those of one profile with 4,000 held scan no more
    than those of 200 fresh profiles (before: ~800,000 against 0)."""

    def scanned(same_profile: bool, folder: Path) -> int:
        step, _ = deliverer(folder, DryRun(folder / "out"))

        def handle(numbers: range) -> None:
            for n in numbers:
                step.handle(trigger(trigger_id=f"t-{n}", profile_id="p-1" if same_profile else f"p-{n}",
                                    send_at="2030-01-01T00:00:00Z"))

        handle(range(4000))
        keys = step.ledger._keys
        count = 0

        def counted(prefix: bytes) -> Any:
            nonlocal count
            for key in keys(prefix):
                count += 1
                yield key

        step.ledger._keys = counted  # type: ignore[method-assign]
        handle(range(4000, 4200))
        return count

    spread, piled = scanned(False, tmp_path / "spread"), scanned(True, tmp_path / "piled")
    assert piled <= spread, f"{piled} keys scanned for one profile's 200 against {spread} spread"


def healthz(step: Deliverer) -> tuple[str, bytes]:
    """What deliver's /healthz answers now (its status line, its body)."""
    answered: list[str] = []
    body = unsubscribe_app(step, None)({"PATH_INFO": "/healthz"}, lambda status, headers: answered.append(status))
    return answered[0], b"".join(body)


def test_deliver_healthz_fails_once_its_loop_stops_turning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deliver's /healthz answered 200 whatever its loop did: a loop held in one call (as a trickling
    target held a send) still read as healthy, so a liveness probe never restarted a connector that
    delivered nothing.  Now it fails after STALL_AFTER_S without a turn, as the worker's does."""
    stuck, release = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        stuck.set()
        release.wait(60)
        raise service.BrokerError("released")

    monkeypatch.setattr(service, "_read_withdrawals", held)
    settings = Settings(broker="kafka://127.0.0.1:1", data_dir=tmp_path, deliver_port=0,
                        unsubscribe_url="http://example.com")
    lines: list[str] = []
    stop = threading.Event()
    loop = threading.Thread(target=service.run_deliver, args=(settings, tmp_path / "out", stop, lines.append),
                            daemon=True)
    loop.start()
    try:
        assert stuck.wait(20)
        port = int(re.search(r":(\d+);", lines[0]).group(1))  # type: ignore[union-attr]
        deadline = time.monotonic() + STALL_AFTER_S + 5
        status, body = 200, b""
        while time.monotonic() < deadline and status == 200:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
        assert status == 503 and body.startswith(b"deliver's loop stalled"), "still ok with its loop held"
    finally:
        stop.set()
        release.set()
        loop.join(20)


class Slow:
    """A target whose sends take ``took_s`` on ``clock`` (longer than STALL_AFTER_S, within the send's
    timeout), and that asks deliver's /healthz while it sends."""

    name = "slow"

    def __init__(self, clock: list[float], took_s: float) -> None:
        self.clock, self.took_s = clock, took_s
        self.step: Deliverer | None = None
        self.answers: list[str] = []

    def send(self, message: EmailMessage, trigger: dict[str, Any]) -> Sent:
        self.clock[0] += self.took_s
        assert self.step is not None
        self.answers.append(healthz(self.step)[0])
        return Sent()


def test_a_slow_target_that_answers_within_the_send_timeout_is_no_stall(tmp_path: Path) -> None:
    """The loop beats between sends and says how long the next may take: sends of 20 s each (the
    timeout is 30 s) keep /healthz at 200, one past the timeout and STALL_AFTER_S does not."""
    clock = [0.0]
    target = Slow(clock, took_s=20.0)
    step, _ = deliverer(tmp_path, target)
    step.settings = step.settings.model_copy(update={"deliver_timeout_s": 30.0})
    step.heartbeat = Heartbeat(lambda: clock[0])
    target.step = step
    for n in range(3):
        step.handle(trigger(trigger_id=f"t-{n}", profile_id=f"p-{n}"))
    assert target.answers == ["200 OK"] * 3
    target.took_s = 30.0 + STALL_AFTER_S + 1
    step.handle(trigger(trigger_id="t-late", profile_id="p-late"))
    assert target.answers[-1] == "503 Service Unavailable"
    step.heartbeat.beat()
    assert healthz(step) == ("200 OK", b"ok\n")


def test_the_start_reading_a_large_ledger_for_interrupted_sends_is_no_stall(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """At start every id of the ledger is read (millions at 30 days of a large shop: ~6 µs each):
    /healthz must not answer 503 meanwhile (a liveness probe would restart it, and the next start
    read them again).  Here each id read takes 1 ms of the heartbeat's clock."""
    import orjson

    import streams.deliver.ledger as ledger_module
    from streams.deliver.ledger import SENT

    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    for n in range(20_000):
        step.ledger.mark(f"t-{n}", SENT, 1_800_000_000_000)
    clock = [0.0]
    step.heartbeat = Heartbeat(lambda: clock[0])
    stalled: list[float] = []

    class SlowJson:
        @staticmethod
        def loads(raw: bytes) -> object:
            clock[0] += 0.001
            stalled.append(step.heartbeat.stalled_s())
            return orjson.loads(raw)

    monkeypatch.setattr(ledger_module, "orjson", SlowJson)
    step.fail_interrupted()
    assert clock[0] >= 20 and max(stalled) == 0


def test_a_prune_of_many_ids_after_a_long_stop_is_no_stall(tmp_path: Path) -> None:
    """The first turn after a stop longer than the retention forgets every id at once (millions, ~10 µs
    each): the ledger's scans and deletes call its ``progress`` (deliver's heartbeat) along."""
    from streams.deliver.ledger import PROGRESS_EVERY, SENT

    step, _ = deliverer(tmp_path, DryRun(tmp_path / "out"))
    for n in range(5 * PROGRESS_EVERY):
        step.ledger.mark(f"t-{n}", SENT, 1_700_000_000_000)
    beats = [0]
    step.ledger.progress = lambda: beats.__setitem__(0, beats[0] + 1)
    assert step.ledger.prune(1_800_000_000_000) == 5 * PROGRESS_EVERY
    assert beats[0] >= 3 * 5  # the scan of the ages, their deletes and the ids' deletes
    assert step.ledger.entries == 0
