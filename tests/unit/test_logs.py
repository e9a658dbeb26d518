"""The worker's log stays readable when the broker is gone: the Kafka client's repeated lines are held back."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from pathlib import Path

import pytest

from streams import logs
from streams.logs import RepeatFilter


def _record(name: str, msg: str, args: tuple[object, ...], at: float) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.ERROR, __file__, 0, msg, args, None)
    record.created = at
    return record


def test_one_line_of_each_client_message_per_window_then_how_many_were_held() -> None:
    quiet = RepeatFilter(window_s=30.0)
    connect = "Unable connect to node with id %s: %s"
    let = [quiet.filter(_record("aiokafka.conn", connect, (111, "refused"), 100.0 + i * 0.05)) for i in range(200)]
    assert let == [True] + [False] * 199  # 10 s of a line every 50 ms
    # another message of the client is its own line
    assert quiet.filter(_record("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", (111, "x"), 101.0))
    later = _record("aiokafka.conn", connect, (111, "refused"), 131.0)
    assert quiet.filter(later)
    assert later.getMessage() == ("Unable connect to node with id 111: refused "
                                  "(and 199 more like it in the last 31 s)")
    after = _record("aiokafka.conn", connect, (111, "refused"), 200.0)
    assert quiet.filter(after) and after.getMessage() == "Unable connect to node with id 111: refused"


def test_a_different_librdkafka_line_is_not_held_back_as_a_repeat_of_another() -> None:
    """confluent-kafka hands every librdkafka line over with one template, ``"%s [%s] %s"`` (facility,
    client, text).  Held back by template, a connection failure's repeats hid every other librdkafka
    warning or error of every client for the window (an authorization failure here); repeats of the
    same failure, with other numbers in them, are still held back."""
    from streams.logs import LIBRDKAFKA

    def line(facility: str, text: str, at: float) -> logging.LogRecord:
        return _record(LIBRDKAFKA.name, "%s [%s] %s", (facility, "rdkafka#producer-1", text), at)

    failed = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed (after %dms)"
    quiet = RepeatFilter()
    assert quiet.filter(line("FAIL", failed % 0, 100))
    assert quiet.filter(line("ERROR", "Topic mailpulse-profile-events: Broker: Topic authorization failed", 101))
    assert not quiet.filter(line("FAIL", failed % 3, 102))


def test_the_workers_own_lines_all_pass() -> None:
    quiet = RepeatFilter()
    assert all(quiet.filter(_record("streams.app", "Forgot %d offsets", (3,), 100.0)) for _ in range(50))
    assert all(quiet.filter(_record("faust.worker", "Ready", (), 100.0)) for _ in range(5))


def test_info_lines_of_the_client_all_pass() -> None:
    """A rebalance's assignment and generation lines are info: each of them is kept."""
    quiet = RepeatFilter()
    joined = "Joined group '%s' (generation %s) with member_id %s"
    assert all(quiet.filter(logging.LogRecord("aiokafka.consumer.group_coordinator", logging.INFO, __file__, 0,
                                              joined, ("g", n, "m"), None)) for n in range(5))


def test_the_worker_sends_stderr_to_the_log_and_leaves_stdout_to_its_own_lines(tmp_path: Path) -> None:
    """Faust's worker redirects both stdout and stderr into its log by default; ``QuietWorker`` only
    stderr (a Python warning, whatever else is written there), so ``logs.say``'s lines, also those the demo's deliver
    writes from its thread, stay one line of the chosen format each.  Also fails if mode renames the
    hook it overrides."""
    import faust
    from mode.utils.logging import FileLogProxy

    from streams.worker import QuietWorker

    assert hasattr(faust.Worker, "_redirect_stdouts")  # the hook QuietWorker overrides, still called so
    app = faust.App("test-quiet-worker", broker="memory://", datadir=str(tmp_path), autodiscover=False)
    worker = QuietWorker(app, quiet=True)
    stdout, stderr = sys.stdout, sys.stderr
    try:
        worker._redirect_stdouts()
        assert sys.stdout is stdout and isinstance(sys.stderr, FileLogProxy)
    finally:
        worker.exit_stack.close()
        sys.stdout, sys.stderr = stdout, stderr


def test_a_helper_thread_that_raises_ends_with_one_error_line_without_the_exceptions_text(
        caplog: pytest.LogCaptureFixture) -> None:
    def crash() -> None:
        raise ValueError("ana@example.com is not a number")

    before = threading.excepthook
    try:
        logs.log_thread_crashes()
        with caplog.at_level(logging.DEBUG, logger="mailpulse"):
            thread = threading.Thread(target=crash, name="helper")
            thread.start()
            thread.join()
    finally:
        threading.excepthook = before
    errors = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert [record.getMessage() for record in errors] == ["thread helper stopped: ValueError"]
    assert not [record for record in errors if record.exc_info]
    [detail] = [record for record in caplog.records if record.levelno == logging.DEBUG]
    assert detail.exc_info is not None and "ana@example.com" in str(detail.exc_info[1])  # at debug only


def test_a_line_said_from_one_thread_is_never_split_by_a_log_line_from_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's deliver says its start-up line from its own thread while Faust's main thread logs.
    Where stdout and stderr go to one file (the broker tests, ``2>&1``) and stdout is unbuffered
    (``PYTHONUNBUFFERED``), ``print`` wrote a line and its newline in two writes, so a log line could
    land between them: two JSON objects on one line.  One stream stands in for that file here."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test.interleave")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(logs, "_format", "json")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # let the threads change places as often as they can
    try:
        sayer = threading.Thread(target=lambda: [logs.say("deliver: dry-run") for _ in range(3_000)])
        sayer.start()
        for _ in range(3_000):
            logger.info("[^--Consumer]: Starting...")
        sayer.join()
    finally:
        sys.setswitchinterval(interval)
        logger.removeHandler(handler)
    out.flush()
    lines = out.buffer.getvalue().decode().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 6_000
    assert {json.loads(line)["message"] for line in lines} == {"deliver: dry-run", "[^--Consumer]: Starting..."}


def test_lines_longer_than_a_pipe_takes_at_once_are_not_split_by_another_threads_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout and stderr on one pipe (``2>&1``, a container's log): a line past the pipe's capacity
    goes in several writes, and without one lock for both streams a line from another thread (here a
    log handler's on stderr) could land between them."""
    import os

    read_end, write_end = os.pipe()
    out = os.fdopen(os.dup(write_end), "w", encoding="utf-8")
    err = os.fdopen(os.dup(write_end), "w", encoding="utf-8")
    os.close(write_end)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(logs, "_format", "json")
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    logs.format_root()
    logger = logging.getLogger("test.long_lines")
    logger.setLevel(logging.INFO)
    received = bytearray()
    reader = threading.Thread(target=lambda: [received.extend(chunk) for chunk in iter(
        lambda: os.read(read_end, 4096), b"")])
    reader.start()
    long = "x" * 200_000  # past a pipe's 64 KiB
    sayer = threading.Thread(target=lambda: [logs.say(f"said {long}") for _ in range(20)])
    sayer.start()
    for _ in range(20):
        logger.info("logged %s", long)
    sayer.join()
    out.close()
    err.close()
    reader.join()
    os.close(read_end)
    lines = received.decode().splitlines()
    assert len(lines) == 40
    assert sorted(json.loads(line)["message"][:6] for line in lines) == ["logged"] * 20 + ["said x"] * 20
