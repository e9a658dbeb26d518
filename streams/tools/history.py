"""Reading a history file (JSON lines of input events) for ``train`` and ``score``.

Each line is validated and normalized exactly as the stream does it (:func:`streams.ingest.decode`);
the first bad line stops the command with ``FILE:LINE: reason``.  Blank lines and ticks are skipped
(a tick moves a clock; these commands take their cut-off time from ``--as-of``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from schemas.identifiers import hold_every_address
from streams.ingest import Accepted, Source, decode


class HistoryError(ValueError):
    """The history file cannot be used (a bad line, an unreadable file)."""


def accepted_lines(path: Path, show_progress: bool = False,
                   label: str = "reading") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, accepted event) of each non-blank line of ``path``; :class:`HistoryError` at the
    first line that is not a valid input event."""
    hold_every_address()
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        raise HistoryError(f"cannot read {path}: {exc.strerror}") from None
    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), disable=not show_progress,
                        transient=True)
    with progress, handle:
        task = progress.add_task(label, total=size)
        done = 0
        for number, line in enumerate(handle, start=1):
            done += len(line)
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            result = decode(raw, Source("history", 0, number, None, 0), 0)
            if not isinstance(result, Accepted):
                raise HistoryError(f"{path}:{number}: {result.record['error']['message']}")
            yield number, result.event
            if number % 5000 == 0:
                progress.update(task, completed=done)


def read_events(path: Path, until: int | None = None, show_progress: bool = False,
                label: str = "reading") -> list[dict[str, Any]]:
    """The accepted events of ``path`` (no ticks) stamped at or before ``until`` (all: None)."""
    return [event for _, event in accepted_lines(path, show_progress, label)
            if event["type"] != "tick" and (until is None or event["ts"] <= until)]
