"""`train`, `score` and `resolve` read a history as the worker would, with its settings and config:
``MAILPULSE_CONFIG``'s identity section, ``MAILPULSE_DEFAULT_PHONE_REGION`` and the dedupe retention.
They used the built-in defaults whatever the worker was told (found in review)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.bundle import SHIPPED_DIR
from streams.cli import main
from streams.config_file import load_config
from streams.domain.config import PipelineConfig
from streams.domain.dispatch import run_locally
from streams.domain.identity import profile_id_for, profile_key
from streams.domain.timeline import RuleSet
from streams.ingest import Accepted, IngestPolicy, Source, decode

LATER = 1_800_000_000_000  # past every event below


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAILPULSE_LOG_FORMAT", "MAILPULSE_CONFIG", "MAILPULSE_DEFAULT_PHONE_REGION"):
        monkeypatch.delenv(name, raising=False)


def _history(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(event) + "\n" for event in events))
    return path


def _stream_profile_ids(raw: list[dict[str, Any]], config: PipelineConfig, policy: IngestPolicy) -> list[str]:
    """The profile id each event ends up in when the worker's ingest (with ``policy``) and profile hop
    (with ``config``) take them."""
    events = []
    for n, event in enumerate(raw):
        result = decode(json.dumps(event).encode(), Source("identities", 0, n, None, 0), 0, policy)
        assert isinstance(result, Accepted), result
        events.append(result.event)
    states = run_locally(events, LATER, RuleSet.build(config, 7 * 86_400_000)).states
    ids = []
    for event in events:
        key = profile_key(event)
        while "merged_into" in (states[key] or {}):
            key = states[key]["merged_into"]  # type: ignore[index]
        ids.append(profile_id_for(key))
    return ids


def test_resolve_reads_phones_in_the_region_the_worker_reads_them_in(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILPULSE_DEFAULT_PHONE_REGION", "DE")
    raw = [{"event_id": "i1", "type": "identify", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-1",
            "phone": "030 12983476"},
           {"event_id": "i2", "type": "identify", "timestamp": "2026-03-01T10:01:00Z", "user_id": "u-2",
            "phone": "+49 30 12983476"}]
    stream = _stream_profile_ids(raw, PipelineConfig(), IngestPolicy("DE"))
    assert stream[0] == stream[1]  # one person, by the phone as the worker reads it
    out = tmp_path / "out.jsonl"
    code = main(["resolve", "--input", str(_history(tmp_path / "in.jsonl", raw)), "--out", str(out),
                 "--model", "shipped"])
    assert code == 0, capsys.readouterr().err  # it was "in.jsonl:1: invalid_identifier at phone" (US numbers)
    assert [json.loads(line)["profile_id"] for line in out.read_text().splitlines()] == stream


def test_score_keeps_apart_the_people_the_worker_keeps_apart(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A front-desk address among MAILPULSE_CONFIG's blocked values links nobody in the worker: two
    people, the purchase u-2's.  `score` merged them by that address and scored u-1 with u-2's purchase."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text("identity:\n  blocked_values: [undefined, 'null', none, '0', anonymous, unknown, "
                           "'frontdesk@shop.example']\n")
    monkeypatch.setenv("MAILPULSE_CONFIG", str(config_file))
    raw = [{"event_id": "i1", "type": "identify", "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-1",
            "email": "frontdesk@shop.example"},
           {"event_id": "i2", "type": "identify", "timestamp": "2026-03-01T10:01:00Z", "user_id": "u-2",
            "email": "frontdesk@shop.example"},
           {"event_id": "o1", "type": "purchase", "timestamp": "2026-03-01T10:02:00Z", "user_id": "u-2",
            "order_id": "o1", "total": 50.0}]
    config = load_config(config_file)
    stream = _stream_profile_ids(raw, config, IngestPolicy("US", config.identity.blocked()))
    assert len(set(stream)) == 2
    out = tmp_path / "scores.jsonl"
    code = main(["score", "--events", str(_history(tmp_path / "in.jsonl", raw)), "--as-of", "2026-03-02",
                 "--models", str(SHIPPED_DIR), "--out", str(out), "--jobs", "1"])
    assert code == 0, capsys.readouterr().err
    assert sorted(json.loads(line)["profile_id"] for line in out.read_text().splitlines()) == sorted(set(stream))


def test_a_config_that_does_not_parse_stops_train_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("identity: {max_per_profile: {emails: many}}\n")
    monkeypatch.setenv("MAILPULSE_CONFIG", str(config_file))
    history = _history(tmp_path / "in.jsonl", [{"event_id": "v", "type": "page_view",
                                                "timestamp": "2026-03-01T10:00:00Z", "user_id": "u-1"}])
    code = main(["train", "--events", str(history), "--as-of", "2026-03-02", "--horizon-days", "30",
                 "--out", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("mailpulse: error: MAILPULSE_CONFIG ")


def test_resolve_keeps_the_identity_limits_the_worker_keeps(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    """Seven accounts share one family address: the worker keeps at most five user ids in one profile
    (``identity.max_per_profile``, the first five to come), the other two each alone; `resolve` joined
    all seven."""
    raw = [{"event_id": f"i{n}", "type": "identify", "timestamp": f"2026-03-01T10:0{n}:00Z", "user_id": f"u-{n}",
            "email": "family@example.com"} for n in range(7)]
    stream = _stream_profile_ids(raw, PipelineConfig(), IngestPolicy())
    assert len(set(stream)) == 3
    out = tmp_path / "out.jsonl"
    code = main(["resolve", "--input", str(_history(tmp_path / "in.jsonl", raw[::-1])), "--out", str(out),
                 "--model", "shipped"])  # (the file's order is not what counts: the events' times are)
    assert code == 0, capsys.readouterr().err
    assert [json.loads(line)["profile_id"] for line in out.read_text().splitlines()] == stream[::-1]


def test_the_offline_fold_keeps_the_workers_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MAILPULSE_CONFIG``'s ``limits`` (the bounds of a profile's collections, dedupe's seen ids among
    them) shape the profiles the features read: the offline fold took the built-in ones (found in
    review)."""
    from models.scoring import offline_pipeline
    from streams.cli import _stream_rules

    config = tmp_path / "pipeline.yaml"
    config.write_text("limits:\n  history_per_type: 2\n  seen_ids: 64\n")
    monkeypatch.setenv("MAILPULSE_CONFIG", str(config))
    worker = RuleSet.build(load_config(config), 7 * 86_400_000)
    offline = offline_pipeline(_stream_rules()).rules
    assert (offline.limits.history_per_type, offline.limits.seen_ids) == \
        (worker.limits.history_per_type, worker.limits.seen_ids) == (2, 64)
