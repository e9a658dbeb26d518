"""The command line: help, exit codes, one-line errors for user mistakes (no broker needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.cli import main


@pytest.fixture(autouse=True)
def _text_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-line errors below are text unless a test asks for JSON (a shell may export it)."""
    monkeypatch.delenv("MAILPULSE_LOG_FORMAT", raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse: --help and usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["run", "broker", "generate", "replay", "tail", "train", "score", "resolve",
                                     "schemas"])
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: mailpulse {command}")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("generate", "--users", "0", "--days", "1", "--seed", "1", "--out", "x"), "must be at least 1"),
        (("generate", "--users", "5", "--days", "1", "--seed", "1", "--start", "2026-13-01", "--out", "x"),
         "is not a date"),
        (("replay", "/no/such/file.jsonl", "--broker", "kafka://127.0.0.1:1"), "no such file"),
        (("replay", __file__, "--broker", "kafka://127.0.0.1:1", "--until", "tomorrow"), "cannot parse timestamp"),
        (("tail", "profiles", "--timeout", "-1"), "must be a finite number greater than 0"),
        (("tail", "profiles", "--timeout", "nan"), "must be a finite number greater than 0"),
        (("generate", "--users", "5", "--days", "1", "--seed", "1", "--start", "9999-12-30", "--out", "x"),
         "is outside 1990-01-01 .. 2199-01-01"),
        (("generate", "--users", "5", "--days", "3", "--seed", "1", "--start", "1970-01-01", "--out", "x"),
         "is outside 1990-01-01 .. 2199-01-01"),
        (("run", "--clock", "sundial"), "invalid choice"),
    ],
)
def test_bad_arguments_end_with_one_line(capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                         fragment: str) -> None:
    code, _, err = run(capsys, *args)
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("mailpulse: error: ")  # one line (contract section 1)


def test_no_broker_is_a_one_line_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILPULSE_BROKER", raising=False)
    code, _, err = run(capsys, "tail", "profiles")
    assert code == 2 and err.count("\n") == 1 and err.startswith("mailpulse: error: no broker")


def test_deliver_with_a_sender_that_is_not_an_address_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILPULSE_MAIL_FROM", "Shop <shop@[1.2.3.4>")
    code, _, err = run(capsys, "deliver", "--broker", "kafka://127.0.0.1:1")
    assert code == 2 and err.count("\n") == 1 and err.startswith("mailpulse: error: MAILPULSE_MAIL_FROM")


def test_unreachable_broker_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tail", "profiles", "--broker", "kafka://127.0.0.1:1")
    assert code == 2 and err.startswith("mailpulse: error: broker at 127.0.0.1:1 did not answer")
    assert "Traceback" not in err


def test_schemas_writes_one_file_per_message_type(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, _ = run(capsys, "schemas", "--out", str(tmp_path))
    assert code == 0
    names = {p.name for p in tmp_path.iterdir()}
    for topic in ("clicks", "carts", "purchases", "profiles", "segment-changes", "triggers", "scores",
                  "dead-letter", "delivery-failed"):
        assert f"{topic}.schema.json" in names
    profile = json.loads((tmp_path / "profiles.schema.json").read_text())
    assert "aggregates" in profile["properties"]


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (("run", "--clock", "sundial"), {}, "run: argument --clock: invalid choice"),
        (("run",), {"MAILPULSE_PARTITIONS": "many"}, "setting partitions (MAILPULSE_PARTITIONS)"),
        (("deliver", "--broker", "kafka://127.0.0.1:1"), {}, "broker at 127.0.0.1:1 did not answer"),
        (("tail", "profiles"), {"MAILPULSE_BROKER": ""}, "no broker"),
    ],
)
def test_in_a_json_log_a_commands_error_is_one_json_object(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...],
                                                           env: dict[str, str], fragment: str) -> None:
    """``MAILPULSE_LOG_FORMAT=json`` holds for a usage error and a setting that cannot be read too,
    which come before any command has read its settings, and for ``deliver``."""
    from streams import logs

    monkeypatch.setattr(logs, "_format", "text")  # (main chooses; put back after the test)
    monkeypatch.setenv("MAILPULSE_LOG_FORMAT", "json")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    [line] = err.splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and fragment in record["message"], record
