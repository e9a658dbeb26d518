"""What the pure functions say a replay must produce: the yardstick of the broker tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from schemas.timeparse import parse_timestamp
from streams.config import PipelineConfig
from streams.identity import profile_key
from streams.ingest import Accepted, Source, decode
from streams.profile import snapshot
from streams.timeline import RuleSet, advance, receive

#: Where the broker tests' ``replay --until`` moves the watermark (after every generated event).
UNTIL = "2026-03-05T00:00:00Z"


@dataclass
class Expected:
    profiles: dict[bytes, dict[str, Any]]  # profile_id -> snapshot
    changes: list[tuple[str, str, str, str]]  # sorted (profile_id, segment, change, at)
    triggers: dict[str, dict[str, Any]]  # trigger_id -> trigger (emitted ones)


def expected_run(events: list[dict[str, Any]], until: str = UNTIL,
                 config: PipelineConfig | None = None) -> Expected:
    """Every event received, then the watermark moved to ``until`` once."""
    rules = RuleSet.build(config or PipelineConfig(), 7 * 86_400_000)
    states: dict[str, Any] = {}
    for n, raw in enumerate(events):
        result = decode(orjson.dumps(raw), Source("t", 0, n, None, 0), 0)
        if not isinstance(result, Accepted) or result.event["type"] == "tick":
            continue
        key = profile_key(result.event)
        states[key] = receive(states.get(key), key, result.event, None, rules).state
    changes: list[tuple[str, str, str, str]] = []
    triggers: dict[str, dict[str, Any]] = {}
    for state in states.values():
        if state is None:
            continue
        out = advance(state, parse_timestamp(until), rules, 0)
        changes += [(c["profile_id"], c["segment"], c["change"], c["at"]) for c in out.segment_changes]
        triggers.update((t["trigger_id"], t) for t in out.triggers)
    profiles = {s["profile"]["profile_id"].encode(): snapshot(s) for s in states.values() if s is not None}
    return Expected(profiles, sorted(changes), triggers)


def changes_of(messages: list[tuple[bytes | None, Any]]) -> list[tuple[str, str, str, str]]:
    return sorted((v["profile_id"], v["segment"], v["change"], v["at"]) for _, v in messages)
