"""No personal data in the worker's log at info level or above, nor in a metric label: events full of
it driven through the dead-letter and error paths of the real agents (ingest and profile hop), and
every log line and every metric sample checked for it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.events import INPUT_TOPICS
from streams.app import Pipeline, create_app
from streams.routing import partition_for
from streams.settings import Settings
from tests.agents.test_agents import agent, failures, sent  # noqa: F401  (failures: the autouse fixture)
from tests.fakes import RecordingOutput

EMAIL, USER, ANON, PHONE, IP = "ana.berg@example.com", "ana-user-77", "anon-ana-77", "+12024561177", "203.0.113.77"
NAME = "Anastasia"
#: what no log line at info level or above, and no metric label, may hold
PERSONAL = (EMAIL, "ana.berg", USER, ANON, PHONE, "2024561177", IP, NAME, "Bergström")
T = 1772359200000


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    settings = Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path, partitions=4)
    return create_app(settings, output=RecordingOutput())


def _person(**extra: Any) -> dict[str, Any]:
    return {"event_id": f"ev-{EMAIL}", "type": "identify", "timestamp": "2026-03-01T10:00:00Z", "user_id": USER,
            "anonymous_id": ANON, "email": EMAIL, "phone": PHONE,
            "traits": {"first_name": NAME, "last_name": "Bergström", "ip": IP, "email": EMAIL}, **extra}


def _internal(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "ts": T, "kind": "identities", "src": ["identities", 0, 0, T]}


def _leaks(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = []
    for record in caplog.records:
        if record.levelno < logging.INFO:
            continue
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        if any(value.lower() in text.lower() for value in PERSONAL):
            lines.append(f"{record.levelname} {record.name}: {text[:300]}")
    return lines


def _labels(p: Pipeline) -> list[str]:
    return [f"{sample.name}{sample.labels}" for metric in p.metrics.registry.collect() for sample in metric.samples
            if any(value.lower() in str(label).lower() for label in sample.labels.values() for value in PERSONAL)]


async def test_the_ingest_dead_letters_log_and_label_no_personal_data(
        pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        _person(email=f"{EMAIL}@"),  # not an address
        _person(phone=f"call {PHONE} {NAME}"),  # not a phone
        _person(timestamp=f"{EMAIL} yesterday"),  # not a time
        _person(traits={"first_name": NAME, "ip": IP * 2000}),  # a trait too long
        _person(type=f"{NAME}_{EMAIL}"),  # no such type
        _person(consent={EMAIL: "yes"}),  # a consent that is no flag
        {**_person(), "user_id": None, "email": None, "anonymous_id": None, "traits": {"email": "null"}},
    ]
    with caplog.at_level(logging.DEBUG):
        async with agent(pipeline, "ingest").test_context() as ingest:
            for event in bad:
                await ingest.put(orjson.dumps(event), key=EMAIL.encode())
            await ingest.put(f'{{"email": "{EMAIL}", '.encode(), key=USER.encode())  # not JSON
            await ingest.put(orjson.dumps(_person()), key=EMAIL.encode())  # a good one
    letters = sent(pipeline, "dead-letter")
    assert len(letters) == len(bad) + 1  # (each carries its input, as the contract has it)
    assert _leaks(caplog) == [] and _labels(pipeline) == []


async def test_the_profile_hops_errors_log_and_label_no_personal_data(
        pipeline: Pipeline, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.record_step as record_step

    real_dispatch, real_advance = record_step.dispatch, record_step.advance

    def dispatch(states: Any, blocks: Any, key: str, message: dict[str, Any], *args: Any) -> Any:
        if message.get("event_id") == "bad-dispatch":
            raise KeyError(f"{EMAIL} {NAME} {IP}")  # a bug whose text quotes the input
        return real_dispatch(states, blocks, key, message, *args)

    def advance(state: Any, *args: Any, **kwargs: Any) -> Any:
        if any(entry[2] == "bad-advance" for entry in state.get("pending", ())):
            raise ValueError(f"cannot fold {state['profile']['email']} of {USER}")
        return real_advance(state, *args, **kwargs)

    monkeypatch.setattr(record_step, "dispatch", dispatch)
    monkeypatch.setattr(record_step, "advance", advance)
    key = f"u:{USER}"
    partition = partition_for(key, 4)
    clocks = [None, {"clocks": [[topic, n, T + 1] for topic in INPUT_TOPICS for n in range(4)]}]
    with caplog.at_level(logging.DEBUG):
        async with agent(pipeline, "profiles").test_context() as profiles:
            await profiles.put(orjson.dumps([[key, _internal(_person())]]), partition=partition)
            await profiles.put(orjson.dumps([[key, _internal({**_person(), "event_id": "bad-dispatch"})]]),
                               partition=partition)
            other = f"e:{EMAIL}x"
            await profiles.put(orjson.dumps([[other, _internal({**_person(), "user_id": None, "email": EMAIL + "x",
                                                                "event_id": "bad-advance"})], clocks]),
                               partition=partition_for(other, 4))
            await profiles.put(f'[["{key}", {{"email": "{EMAIL}"'.encode(), partition=partition)  # not a record
            await profiles.put(orjson.dumps([[key, {"type": f"_{EMAIL}"}], [key, {"type": "_ana_berg"}]]),
                               partition=partition)  # internal types this version does not know
            pipeline.profile_state.stage(f"u:{EMAIL}".encode(), b"\x00 not a state", partition)
            pipeline.due_index.reset()  # rebuilt from the table: the unreadable state is named
            await profiles.put(orjson.dumps([clocks]), partition=partition)
    assert len(sent(pipeline, "dead-letter")) >= 3
    assert _leaks(caplog) == [] and _labels(pipeline) == []
