"""``mailpulse resolve``: batch identity resolution of a JSON-lines file of ``identify`` events.

Each line is validated and normalized exactly as the stream does it (:func:`streams.ingest.decode`);
the first line that is not a valid identify event stops the command with ``FILE:LINE: reason`` and
nothing is written. Blank lines are skipped (they are not events, so they get no output line). Then
:func:`streams.domain.resolution.resolve_batch` resolves all records at once, so the result does not depend
on the order of the lines, and one line ``{"user_id": ..., "profile_id": ...}`` is written per event,
in input order (``user_id`` is ``null`` for an event without one).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.domain.resolution import BatchResult, resolve_batch
from streams.domain.resolution.model import Model, default_model
from streams.ingest import DEFAULT_POLICY, IngestPolicy
from streams.tools.history import HistoryError, accepted_lines
from streams.tools.output_file import write_lines

#: Fewer records than this are scored with the shipped model even under ``--model fit``: EM on a
#: handful of pairs learns noise (a pair of four records is not a population).
MIN_FIT_RECORDS = 500


class ResolveError(ValueError):
    """The input file cannot be resolved (a bad line, an unreadable or unwritable file)."""


@dataclass(frozen=True, slots=True)
class ResolveStats:
    records: int
    profiles: int
    possible_matches: int      # profiles with at least one possible match
    seconds: float
    model: str = "shipped"     # what scored: fitted, shipped, or the file given


def read_identify_events(path: Path, show_progress: bool = False,
                         policy: IngestPolicy = DEFAULT_POLICY) -> list[dict[str, Any]]:
    """The accepted identify events of ``path`` (decoded as the worker's ingest with ``policy`` decodes
    them); :class:`ResolveError` at the first bad line."""
    events: list[dict[str, Any]] = []
    try:
        for number, event in accepted_lines(path, show_progress, "resolve: reading", policy=policy):
            if event.get("type") != "identify":
                raise ResolveError(f"{path}:{number}: a {event.get('type')} event, not an identify event")
            events.append(event)
    except HistoryError as exc:
        raise ResolveError(str(exc)) from None
    return events


def resolve_file(path: Path, out: Path, show_progress: bool = False, model: str = "fit",
                 save_model: Path | None = None, policy: IngestPolicy = DEFAULT_POLICY,
                 limits: Mapping[str, int] | None = None) -> ResolveStats:
    """Resolve the identify events of ``path``; write one ``{"user_id", "profile_id"}`` line each to ``out``.
    ``model``: ``fit`` (fitted on these records, unsupervised), ``shipped``, or a saved model file;
    ``save_model``: where to write the model that scored (``MAILPULSE_IDENTITY_MODEL`` of ``run``)."""
    started = time.monotonic()
    events = read_identify_events(path, show_progress, policy)
    chosen: Model | None = None
    if model not in ("fit", "shipped"):
        try:
            chosen = Model.load(Path(model))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResolveError(f"--model {model}: {exc}") from None
    fit = model == "fit" and len(events) >= MIN_FIT_RECORDS
    result: BatchResult = resolve_batch(events, model=chosen, fit=fit, limits=limits)
    if save_model is not None:
        try:
            (result.model or default_model()).save(save_model)
        except OSError as exc:
            raise ResolveError(f"--save-model {save_model}: {exc}") from None
    try:
        write_lines(out, (orjson.dumps({"user_id": event.get("user_id"), "profile_id": pid}) + b"\n"
                          for event, pid in zip(events, result.profile_ids, strict=True)))
    except OSError as exc:
        raise ResolveError(f"cannot write {out}: {exc.strerror}") from None
    return ResolveStats(records=len(events), profiles=len(set(result.profile_ids)),
                        possible_matches=len(result.possible_matches), seconds=time.monotonic() - started,
                        model="fitted on the input" if fit else model if chosen is not None else
                        f"shipped (fewer than {MIN_FIT_RECORDS} records to fit on)" if model == "fit" else "shipped")
