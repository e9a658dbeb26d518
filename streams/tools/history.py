"""Reading a history file (JSON lines of input events) for ``train`` and ``score``.

Each line is validated and normalized exactly as the stream does it (:func:`streams.ingest.decode`);
the first bad line stops the command with ``FILE:LINE: reason``.  Blank lines and ticks are skipped
(a tick moves a clock; these commands take their cut-off time from ``--as-of``).

With ``jobs`` > 1 the file is cut into that many byte ranges at line ends, each decoded by its own
process (:mod:`streams.tools.forked`): decoding is most of the reading time, and the events come
back in file order, the same list as with one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from schemas.identifiers import hold_every_address
from streams.ingest import DEFAULT_POLICY, UTF8_BOM, Accepted, IngestPolicy, Source, decode
from streams.tools.forked import run_forked


class HistoryError(ValueError):
    """The history file cannot be used (a bad line, an unreadable file)."""


def _open(path: Path) -> tuple[int, IO[bytes]]:
    try:
        return path.stat().st_size, path.open("rb")
    except OSError as exc:
        raise HistoryError(f"cannot read {path}: {exc.strerror}") from None


#: The first bytes of compressed files (gzip, bzip2, xz, zstd, zip), by their name.
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
               (b"PK\x03\x04", "zip"))


def not_text_hint(line: bytes) -> str:
    """What to do with a line that is no JSON when it looks like a compressed file's start or UTF-16
    text (a byte-order mark, or NUL bytes, which UTF-8 JSON never holds): ``"; it looks ..."``, else ""."""
    for magic, name in _COMPRESSED:
        if line.startswith(magic):
            return f"; it looks {name}-compressed: decompress it first"
    if line.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in line:
        return "; it looks UTF-16-encoded: save it as UTF-8"
    return ""


def _accepted(path: Path, line: bytes, number: int, policy: IngestPolicy = DEFAULT_POLICY) -> dict[str, Any] | None:
    """The accepted event of one line (None: a blank line); :class:`HistoryError` if it is not one."""
    raw = line.rstrip(b"\r\n").removeprefix(UTF8_BOM)  # (a line of only a byte-order mark is blank too)
    if not raw.strip():
        return None
    result = decode(raw, Source("history", 0, number, None, 0), 0, policy)
    if not isinstance(result, Accepted):
        hint = not_text_hint(raw) if result.code == "not_json" else ""
        raise HistoryError(f"{path}:{number}: {result.reason()}{hint}")
    return result.event


def accepted_lines(path: Path, show_progress: bool = False, label: str = "reading", start: int = 0,
                   end: int | None = None,
                   policy: IngestPolicy = DEFAULT_POLICY) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, accepted event) of each non-blank line of ``path`` that starts in the byte range
    ``[start, end)`` (``start``: 0 or just after a newline; all the file by default), decoded as the
    worker's ingest with ``policy`` decodes it; :class:`HistoryError` at the first line that is not a
    valid input event."""
    hold_every_address()
    size, handle = _open(path)
    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), disable=not show_progress,
                        transient=True)
    with progress, handle:
        task = progress.add_task(label, total=(size if end is None else end) - start)
        number = _lines_before(handle, start)
        handle.seek(start)
        position = start
        while end is None or position < end:
            line = handle.readline()
            if not line:
                break
            position += len(line)
            number += 1
            event = _accepted(path, line, number, policy)
            if event is not None:
                yield number, event
            if number % 5000 == 0:
                progress.update(task, completed=position - start)


def _wanted(event: dict[str, Any], until: int | None) -> bool:
    return event["type"] != "tick" and (until is None or event["ts"] <= until)


def _lines_before(handle: IO[bytes], start: int) -> int:
    """Newlines in the first ``start`` bytes (so the line number of the line at ``start`` is one more)."""
    handle.seek(0)
    count = 0
    while handle.tell() < start:
        count += handle.read(min(1 << 24, start - handle.tell())).count(b"\n")
    return count


def _read_range(path: Path, start: int, end: int, until: int | None, show_progress: bool = False,
                label: str = "reading", policy: IngestPolicy = DEFAULT_POLICY
                ) -> tuple[list[dict[str, Any]], HistoryError | None]:
    """The wanted events of the lines that start in ``[start, end)``, and the error of the first bad
    one (returned, not raised: the events before it came from another process's range)."""
    events: list[dict[str, Any]] = []
    try:
        for _, event in accepted_lines(path, show_progress, label, start, end, policy):
            if _wanted(event, until):
                events.append(event)
    except HistoryError as exc:
        return events, exc
    return events, None


def _byte_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` consecutive ``[start, end)`` ranges covering the file, each starting a line."""
    size, handle = _open(path)
    starts = [0]
    with handle:
        for k in range(1, parts):
            target = size * k // parts
            if target < 1:
                continue
            handle.seek(target - 1)
            handle.readline()  # past the line holding the byte before the target: a line start
            offset = handle.tell()
            if starts[-1] < offset < size:
                starts.append(offset)
    return list(zip(starts, [*starts[1:], size], strict=True))


def read_events(path: Path, until: int | None = None, show_progress: bool = False,
                label: str = "reading", jobs: int = 1, policy: IngestPolicy = DEFAULT_POLICY) -> list[dict[str, Any]]:
    """The accepted events of ``path`` (no ticks) stamped at or before ``until`` (all: None), in file
    order, read by ``jobs`` processes."""
    if jobs <= 1:
        return [event for _, event in accepted_lines(path, show_progress, label, policy=policy)
                if _wanted(event, until)]
    parts = run_forked([partial(_read_range, path, start, end, until, show_progress and start == 0, label, policy)
                        for start, end in _byte_ranges(path, jobs)])
    events: list[dict[str, Any]] = []
    for part, error in parts:
        if error is not None:
            raise error
        events += part
    return events
