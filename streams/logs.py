"""The worker's log lines: text for a terminal, or with ``MAILPULSE_LOG_FORMAT=json`` one JSON object
per line (``ts``, ``level``, ``logger``, ``message``, and ``exc`` with a traceback) for a log
collector.  The start-up lines the worker prints go through :func:`say`, so a JSON log holds only
JSON.  Nothing the worker logs at info level or above names a person: profiles by their
``profile_id``, events by nothing (``tests/integration/test_operations.py`` greps a run for them)."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import Literal, TextIO

import orjson

LogFormat = Literal["text", "json"]
_format: LogFormat = "text"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


#: Taken for every line this process writes, by :func:`say` and the root logger's handlers alike.  A
#: line longer than a pipe takes at once (4 KiB is all POSIX promises) is written in parts, and where
#: stdout and stderr go to one pipe (``2>&1``, a container's log) a line from another thread could
#: land between them: two half lines that are not JSON.
_WRITE_LOCK = threading.RLock()


def use(log_format: LogFormat) -> None:
    """Chooses the format of :func:`say` and of :func:`format_root`."""
    global _format
    _format = log_format


def use_environment() -> None:
    """The format ``MAILPULSE_LOG_FORMAT`` names, before a command reads its settings: so that a
    command's first line (a usage error, a setting it cannot read) is in it too.  Anything but
    ``json`` is text here; the settings then say what is wrong with it.  (Its name in any case, as
    the settings read it.)"""
    named = [value for name, value in os.environ.items() if name.upper() == "MAILPULSE_LOG_FORMAT"]
    use("json" if named == ["json"] else "text")


class _LockedStream:
    """A handler's stream whose writes take :data:`_WRITE_LOCK` (``StreamHandler.emit`` writes a
    line with its newline in one call).  The stream is wrapped, not the handler's own lock replaced: a
    thread inside the handler while the lock changed would let go of a lock it never took."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        with _WRITE_LOCK:
            written = self.stream.write(text)
            self.stream.flush()
        return written

    def flush(self) -> None:
        with _WRITE_LOCK:
            self.stream.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def format_root() -> None:
    """Gives the root logger's handlers (set up by Faust's worker, or ``logging.basicConfig``) the
    chosen format, and their streams :data:`_WRITE_LOCK`."""
    for handler in logging.getLogger().handlers:
        if _format == "json":
            handler.setFormatter(JsonFormatter())
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler.stream, _LockedStream):
            handler.setStream(_LockedStream(handler.stream))  # (under the handler's lock)


_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets one warning or error line of each message of the Kafka client libraries through per
    ``window_s``, and says how many it held back with the next one.  With the broker unreachable
    aiokafka logs the same handful of errors every 50 ms (~70 lines a second), which buries everything
    else in the log.  Info lines (a rebalance's assignment, the group generation) all pass."""

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka", "kafka"), window_s: float = 30.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.window_s = window_s
        self._held: dict[tuple[str, str], tuple[float, int]] = {}  # (logger, line) -> (let through at, held)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefixes):
            return True
        # the line as written, its numbers left out (ports, node ids, offsets, milliseconds): librdkafka's
        # lines all share one template ("%s [%s] %s"), so keyed by template, a connection failure held
        # back every other librdkafka warning or error of every client (an authorization failure) too
        key = (record.name, _DIGITS.sub("#", record.getMessage())[:200])
        now = record.created
        let_at, held = self._held.get(key, (float("-inf"), 0))
        if now - let_at < self.window_s:
            self._held[key] = (let_at, held + 1)
            return False
        if len(self._held) > 1_000:  # one key per kind of line (numbers left out): emptied when past the bound
            self._held.clear()
        self._held[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in the last {now - let_at:.0f} s)"
            record.args = None
        return True


#: Where librdkafka's own lines go (the ``logger`` of every confluent-kafka client): through Python
#: logging, so they take the worker's format and :class:`RepeatFilter`, instead of raw ``%3|...|FAIL|``
#: lines on stderr.  They are handed over when the client is polled.
LIBRDKAFKA = logging.getLogger("kafka.librdkafka")


def quiet_repeats() -> None:
    """Puts a :class:`RepeatFilter` on the root logger's handlers (set up by Faust's worker)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter())


_TEXT_LEVEL = {logging.WARNING: "warning: ", logging.ERROR: "error: "}


def say(message: str) -> None:
    """A start-up line of the worker, on stdout: ``mailpulse: message``, or one JSON object."""
    _write(sys.stdout, logging.INFO, message)


def warn(message: str) -> None:
    """A warning before the worker's logging is set up, on stderr: ``mailpulse: warning: message``,
    or one JSON object."""
    _write(sys.stderr, logging.WARNING, message)


def error(message: str) -> None:
    """The one line a command that cannot go on ends with, on stderr: ``mailpulse: error: message``,
    or one JSON object."""
    _write(sys.stderr, logging.ERROR, message)


def _write(stream: TextIO, level: int, message: str) -> None:
    if _format == "json":
        record = logging.LogRecord("mailpulse", level, __file__, 0, message, None, None)
        line = JsonFormatter().format(record)
    else:
        line = f"mailpulse: {_TEXT_LEVEL.get(level, '')}{message}"
    # One write with its newline: the demo's deliver says its line from its own thread while Faust's
    # root handler logs to stderr, and where both go to one file (``2>&1``, a container's log) with
    # stdout unbuffered (``PYTHONUNBUFFERED``), ``print``'s second write, the newline, let another
    # thread's line land between them.
    with _WRITE_LOCK:
        stream.write(line + "\n")
        stream.flush()


def log_thread_crashes() -> None:
    """A helper thread (the demo's deliver, the product recommendations reader, the live view) that
    raises ends with one error line naming the thread and the exception's class, its traceback at
    debug level.  Python's default writes the traceback to stderr, which the worker's log takes line
    by line, a warning each, with the exception's text, which can hold an input's values."""
    def log_crash(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        log = logging.getLogger("mailpulse")
        log.error("thread %s stopped: %s", name, args.exc_type.__name__)
        if args.exc_value is not None:
            log.debug("thread %s stopped", name, exc_info=args.exc_value)

    threading.excepthook = log_crash
