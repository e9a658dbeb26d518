"""The worker's log lines: text for a terminal, or with ``MAILPULSE_LOG_FORMAT=json`` one JSON object
per line (``ts``, ``level``, ``logger``, ``message``, and ``exc`` with a traceback) for a log
collector.  The start-up lines the worker prints go through :func:`say`, so a JSON log holds only
JSON.  Nothing the worker logs at info level or above names a person: profiles by their
``profile_id``, events by nothing (``tests/integration/test_operations.py`` greps a run for them)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal

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


def use(log_format: LogFormat) -> None:
    """Chooses the format of :func:`say` and of :func:`format_root`."""
    global _format
    _format = log_format


def format_root() -> None:
    """Gives the root logger's handlers (set up by Faust's worker) the chosen format."""
    if _format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


def say(message: str) -> None:
    """A start-up line of the worker, on stdout: ``mailpulse: message``, or one JSON object."""
    if _format == "json":
        record = logging.LogRecord("mailpulse", logging.INFO, __file__, 0, message, None, None)
        print(JsonFormatter().format(record), file=sys.stdout, flush=True)
    else:
        print(f"mailpulse: {message}", flush=True)
