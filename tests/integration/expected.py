"""What the pure functions say a replay must produce: the yardstick of the broker tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from models.bundle import SHIPPED_DIR, ModelBundle
from models.scoring import Predictor
from schemas.timeparse import parse_timestamp
from streams.domain.config import PipelineConfig
from streams.domain.dispatch import run_locally
from streams.domain.timeline import RuleSet
from streams.ingest import Accepted, Source, decode

#: Where the broker tests' ``replay --until`` moves the watermark (after every generated event).
UNTIL = "2026-03-05T00:00:00Z"


@dataclass
class Expected:
    profiles: dict[bytes, dict[str, Any]]  # profile_id -> snapshot
    changes: list[tuple[str, str, str, str]]  # sorted (profile_id, segment, change, at)
    triggers: dict[str, dict[str, Any]]  # trigger_id -> trigger (emitted ones)
    scores: list[tuple[str, str, float]] = field(default_factory=list)  # sorted (profile_id, at, churn)


def expected_run(events: list[dict[str, Any]], until: str = UNTIL,
                 config: PipelineConfig | None = None) -> Expected:
    """Every event (and every identity message it causes) delivered, then the watermark moved to
    ``until`` once: :func:`streams.domain.dispatch.run_locally`."""
    # the models the workers score with (the shipped ones: the tests do not set MAILPULSE_MODELS_DIR)
    rules = RuleSet.build(config or PipelineConfig(), 7 * 86_400_000, Predictor(ModelBundle.load(SHIPPED_DIR)))
    run = run_locally(accepted_events(events), parse_timestamp(until), rules)
    changes = sorted((c["profile_id"], c["segment"], c["change"], c["at"]) for c in run.segment_changes)
    return Expected({pid.encode(): snap for pid, snap in run.profiles.items()}, changes,
                    {t["trigger_id"]: t for t in run.triggers}, scores_of([(None, s) for s in run.scores]))


def accepted_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input events as the ingest agent accepts and normalizes them; ticks and rejects left out."""
    accepted = []
    for n, raw in enumerate(events):
        result = decode(orjson.dumps(raw), Source("t", 0, n, None, 0), 0)
        if isinstance(result, Accepted) and result.event["type"] != "tick":
            accepted.append(result.event)
    return accepted


def scores_of(messages: list[tuple[bytes | None, Any]]) -> list[tuple[str, str, float]]:
    return sorted((v["profile_id"], v["at"], v["churn_probability"]) for _, v in messages)


def changes_of(messages: list[tuple[bytes | None, Any]]) -> list[tuple[str, str, str, str]]:
    return sorted((v["profile_id"], v["segment"], v["change"], v["at"]) for _, v in messages)
