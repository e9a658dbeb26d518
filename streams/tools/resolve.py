"""``mailpulse resolve``: batch identity resolution of a JSON-lines file of ``identify`` events.

Each line is validated and normalized exactly as the stream does it (:func:`streams.ingest.decode`);
the first line that is not a valid identify event stops the command with ``FILE:LINE: reason`` and
nothing is written. Blank lines are skipped (they are not events, so they get no output line). Then
:func:`streams.resolution.resolve_batch` resolves all records at once, so the result does not depend
on the order of the lines, and one line ``{"user_id": ..., "profile_id": ...}`` is written per event,
in input order (``user_id`` is ``null`` for an event without one).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.resolution import BatchResult, resolve_batch
from streams.tools.history import HistoryError, accepted_lines


class ResolveError(ValueError):
    """The input file cannot be resolved (a bad line, an unreadable or unwritable file)."""


@dataclass(frozen=True, slots=True)
class ResolveStats:
    records: int
    profiles: int
    possible_matches: int      # profiles with at least one possible match
    seconds: float


def read_identify_events(path: Path, show_progress: bool = False) -> list[dict[str, Any]]:
    """The accepted identify events of ``path``; :class:`ResolveError` at the first bad line."""
    events: list[dict[str, Any]] = []
    try:
        for number, event in accepted_lines(path, show_progress, "resolve: reading"):
            if event.get("type") != "identify":
                raise ResolveError(f"{path}:{number}: a {event.get('type')} event, not an identify event")
            events.append(event)
    except HistoryError as exc:
        raise ResolveError(str(exc)) from None
    return events


def resolve_file(path: Path, out: Path, show_progress: bool = False) -> ResolveStats:
    """Resolve the identify events of ``path``; write one ``{"user_id", "profile_id"}`` line each to ``out``."""
    started = time.monotonic()
    events = read_identify_events(path, show_progress)
    result: BatchResult = resolve_batch(events)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.writelines(orjson.dumps({"user_id": event.get("user_id"), "profile_id": pid}) + b"\n"
                              for event, pid in zip(events, result.profile_ids, strict=True))
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ResolveError(f"cannot write {out}: {exc.strerror}") from None
    return ResolveStats(records=len(events), profiles=len(set(result.profile_ids)),
                        possible_matches=len(result.possible_matches), seconds=time.monotonic() - started)
