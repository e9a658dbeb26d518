"""The command line: help, exit codes, one-line errors for user mistakes (no broker needed)."""

from __future__ import annotations

import json
import os
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
                                     "schemas", "deliver"])
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
        (("replay", "/", "--broker", "kafka://127.0.0.1:1"), "/ is a folder, not a file"),
        (("resolve", "--input", "/dev/null", "--out", "x"), "/dev/null is not a regular file (a pipe or a device)"),
        (("train", "--events", "/", "--as-of", "2026-01-01", "--horizon-days", "1", "--out", "x"),
         "/ is a folder, not a file"),
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


@pytest.mark.parametrize("env", [{"MAILPULSE_SMTP_USER": "shop"}, {"MAILPULSE_SMTP_PASSWORD": "secret-pw"}])
def test_deliver_with_half_an_smtp_login_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             env: dict[str, str]) -> None:
    """A user without a password (or a password without a user) was taken as no login at all: every
    e-mail went to the relay unauthenticated, which refuses to relay it (each trigger "rejected")."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAILPULSE_DATA_DIR", str(tmp_path / "state"))
    code, _, err = run(capsys, "deliver", "--broker", "kafka://127.0.0.1:1")
    assert code == 2 and err.count("\n") == 1 and err.startswith("mailpulse: error: MAILPULSE_SMTP_")
    assert "secret-pw" not in err
    code, _, err = run(capsys, "deliver", "--broker", "kafka://127.0.0.1:1", "--dry-run", str(tmp_path / "out"))
    assert "MAILPULSE_SMTP_" not in err  # (a dry run sends nothing)


@pytest.mark.parametrize("command", [("deliver", "--dry-run", "out"), ("run", "--demo")])
@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_deliver_with_a_templates_folder_that_is_none_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path, kind: str,
                                                                          command: tuple[str, ...]) -> None:
    """A mistyped MAILPULSE_TEMPLATES_DIR was not read, without a word: every e-mail went out with the
    shipped templates (``run --demo`` runs deliver too)."""
    folder = tmp_path / "templates"
    if kind == "a file":
        folder.write_text("x")
    monkeypatch.setenv("MAILPULSE_TEMPLATES_DIR", str(folder))
    monkeypatch.setenv("MAILPULSE_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *command, "--broker", "kafka://127.0.0.1:1")
    assert code == 2 and err.count("\n") == 1 and err.startswith("mailpulse: error: MAILPULSE_TEMPLATES_DIR ")
    assert "not a folder" in err


def test_unreachable_broker_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "tail", "profiles", "--broker", "kafka://127.0.0.1:1")
    assert code == 2 and err.startswith("mailpulse: error: broker at 127.0.0.1:1 did not answer")
    assert "Traceback" not in err


@pytest.mark.parametrize("url", ["kafka://", "kafka://host:notaport", "kafka://127.0.0.1:99999",
                                 "kafka://127.0.0.1:9092,", "kafka://:9092"])
def test_a_broker_url_without_a_host_or_with_a_bad_port_says_so(capsys: pytest.CaptureFixture[str], url: str) -> None:
    """Such a URL was tried for 5 s and reported as a broker that "did not answer" (``broker at  did
    not answer``), as if the address were right and the broker down.  It names where the URL was given:
    the flag (it named MAILPULSE_BROKER, which the user had not set), or the variable."""
    for command in (("tail", "profiles"), ("replay", __file__), ("run",)):
        code, _, err = run(capsys, *command, "--broker", url)
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("mailpulse: error: setting broker (--broker): ") and "answer" not in err, err
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MAILPULSE_BROKER", url)
            code, _, err = run(capsys, *command)
        assert code == 2 and err.startswith("mailpulse: error: setting broker (MAILPULSE_BROKER): "), err


@pytest.mark.parametrize("url", ["kafka://127.0.0.1:1", "127.0.0.1:1", "kafka://a:1,kafka://b:2", "kafka://a:1,b:2",
                                 "kafka://kafka", "kafka://[::1]:1", "kafka://[::1]"])
def test_a_broker_url_of_hosts_with_or_without_ports_is_taken(url: str) -> None:
    from streams.settings import Settings

    assert Settings(broker=url).broker == url


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


@pytest.mark.parametrize(("env", "value"), [
    ("MAILPULSE_LOG_LEVEL", "bogus"),
    ("MAILPULSE_SESSION_TIMEOUT_S", "120"),  # past the client's request timeout: the worker's consumer died
    ("MAILPULSE_METRICS_PORT", "99999"),
    ("MAILPULSE_WEB_PORT", "-5"),
    ("MAILPULSE_EMBEDDED_BROKER_PORT", "70000"),
    ("MAILPULSE_APP_ID", ""),
    ("MAILPULSE_APP_ID", "a b/c"),  # it names topics and folders
    ("MAILPULSE_ROCKSDB_MEMORY_MB", "99999999999999"),
    ("MAILPULSE_DEFAULT_PHONE_REGION", "us"),  # else every national-format phone is dead-lettered
    ("MAILPULSE_WALL_CLOCK_DELAY_S", "-3600"),  # the watermark an hour ahead of the wall clock
    ("MAILPULSE_SHOP_URL", "not a url"),
    ("MAILPULSE_UNSUBSCRIBE_URL", "shop.example.com/unsub"),  # broke the one-click unsubscribe header
    # each of these made every webhook send fail as "target down" until the retries ran out
    ("MAILPULSE_WEBHOOK_URL", "https://user:secret@api.example.com/send"),
    ("MAILPULSE_WEBHOOK_URL", "https://api.example.com/send mail"),
    ("MAILPULSE_WEBHOOK_URL", "https://api.example.com:99999/send"),
    ("MAILPULSE_WEBHOOK_TOKEN", "tok\u20ac"),
    # and these every SMTP send, each trigger held in rounds for a day before delivery-failed
    ("MAILPULSE_SMTP_HOST", "smtp.example.com:587"),
    ("MAILPULSE_SMTP_HOST", "smtp://smtp.example.com"),
    ("MAILPULSE_SMTP_HOST", ""),
    ("MAILPULSE_SMTP_HOST", " smtp.example.com"),
    ("MAILPULSE_SMTP_HOST", "[::1]"),
    ("MAILPULSE_DELIVER_TIMEOUT_S", "1e10"),
    # an empty path was the current folder: the tables kept there, no scores, templates read from it
    ("MAILPULSE_DATA_DIR", ""),
    ("MAILPULSE_MODELS_DIR", ""),
    ("MAILPULSE_TEMPLATES_DIR", " "),
    ("MAILPULSE_CONFIG", ""),
    ("MAILPULSE_IDENTITY_MODEL", ""),
    ("MAILPULSE_REPLICATION_FACTOR", "99999999999"),  # an OverflowError (a traceback) creating the topics
])
def test_a_setting_out_of_its_range_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    """Each of these was accepted and then failed with a traceback, or ran wrong (found in review)."""
    monkeypatch.setenv(env, value)
    code, _, err = run(capsys, "run", "--broker", "kafka://127.0.0.1:1")
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"mailpulse: error: setting {env[10:].lower()} ")
    assert "Traceback" not in err


def test_every_documented_log_level_is_one_the_worker_can_set() -> None:
    from mode.utils.logging import level_number

    from streams.settings import Settings
    from streams.worker import mode_level

    for name in ("crit", "error", "warn", "info", "debug"):
        assert level_number(mode_level(Settings(log_level=name)))  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [
    ("replay", __file__, "--broker", "kafka://127.0.0.1:1", "--rate", "1e-300"),
    ("train", "--events", __file__, "--as-of", "2026-03-01", "--horizon-days", "30", "--out", "x", "--jobs", "100000"),
    ("broker", "--port", "70000"),
])
def test_numbers_past_what_a_command_can_use_are_refused(capsys: pytest.CaptureFixture[str],
                                                         args: tuple[str, ...]) -> None:
    code, _, err = run(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


def _started_with_folder(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                         setting: str, folder: Path) -> str:
    """``run`` with ``folder`` as its state folder, or ``deliver`` as its dry-run folder: the one-line
    error it ends with (exit code 2)."""
    if setting == "MAILPULSE_DATA_DIR":
        monkeypatch.setenv(setting, str(folder))
        code, _, err = run(capsys, "run", "--broker", "kafka://127.0.0.1:1")
    else:
        monkeypatch.setenv("MAILPULSE_DATA_DIR", str(tmp_path / "state"))
        code, _, err = run(capsys, "deliver", "--broker", "kafka://127.0.0.1:1", "--dry-run", str(folder))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"mailpulse: error: {setting} ")
    return err


@pytest.mark.parametrize("place", ["a file", "below a file", "a link to nothing", "below a link to nothing"])
@pytest.mark.parametrize("setting", ["MAILPULSE_DATA_DIR", "--dry-run"])
def test_a_folder_that_is_a_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      setting: str, place: str) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "unmounted" / "state")  # (a volume not mounted: mkdir's FileExistsError)
    # (below a file: a traceback from mkdir at the start)
    folder = {"a file": afile, "below a file": afile / "state" / "x", "a link to nothing": tmp_path / "link",
              "below a link to nothing": tmp_path / "link" / "x"}[place]
    err = _started_with_folder(capsys, monkeypatch, tmp_path, setting, folder)
    assert "not a folder" in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs procfs, where no folder can be made")
@pytest.mark.parametrize("setting", ["MAILPULSE_DATA_DIR", "--dry-run"])
def test_a_folder_that_cannot_be_made_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          setting: str) -> None:
    """A folder whose parent is a folder but takes no new one (a read-only mount, no permission; here
    procfs) ended ``run`` and ``deliver`` with mkdir's traceback and exit status 1."""
    folder = Path("/proc/mailpulse-no-such-folder/state")
    err = _started_with_folder(capsys, monkeypatch, tmp_path, setting, folder)
    assert "cannot be made" in err and "Traceback" not in err


def test_a_deliver_state_folder_that_cannot_be_used_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """``$MAILPULSE_DATA_DIR/deliver`` a file (or another user's, or its RocksDB's): a traceback."""
    from streams import cli

    monkeypatch.setattr(cli, "_check_broker", lambda bootstrap: None)
    monkeypatch.setenv("MAILPULSE_DATA_DIR", str(tmp_path))
    (tmp_path / "deliver").write_text("x")
    code, _, err = run(capsys, "deliver", "--broker", "kafka://127.0.0.1:1", "--dry-run", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"mailpulse: error: {tmp_path / 'deliver'}: the deliver state folder cannot be made")


def test_a_metrics_host_that_is_no_address_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILPULSE_METRICS_HOST", "not.a.host.invalid")
    code, _, err = run(capsys, "run", "--broker", "kafka://127.0.0.1:1")
    assert code == 2 and err.startswith("mailpulse: error: MAILPULSE_METRICS_HOST") and "Traceback" not in err


@pytest.mark.parametrize("content", ["[]", '"x"', "5"])
def test_an_identity_model_that_is_not_a_json_object_is_a_one_line_error(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str) -> None:
    model = tmp_path / "model.json"
    model.write_text(content)
    monkeypatch.setenv("MAILPULSE_IDENTITY_MODEL", str(model))
    code, _, err = run(capsys, "run", "--broker", "kafka://127.0.0.1:1")
    assert code == 2 and err.count("\n") == 1 and err.startswith("mailpulse: error: MAILPULSE_IDENTITY_MODEL")


def test_a_server_whose_port_is_taken_raises_the_bind_error_so_callers_fall_back() -> None:
    """A failed bind called server_close before the server's own fields existed: an AttributeError
    hid the OSError, and deliver's fall-back to a free port never ran (found in review)."""
    import socket

    from streams.metrics import serve_wsgi

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError):
            serve_wsgi("127.0.0.1", taken.getsockname()[1], lambda environ, start: [], finish_requests=True)
    finally:
        taken.close()


@pytest.mark.parametrize("command", ["resolve", "score"])
def test_an_output_that_is_not_a_regular_file_is_refused_not_replaced(capsys: pytest.CaptureFixture[str],
                                                                       tmp_path: Path, command: str) -> None:
    """Both write a temporary file and move it onto ``--out``: a FIFO or a symlink there was replaced."""
    import os

    target = tmp_path / "kept.jsonl"
    target.write_text("mine\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for out in (link, fifo):
        args = (("resolve", "--input", __file__) if command == "resolve" else
                ("score", "--events", __file__, "--as-of", "2026-03-01", "--models", str(tmp_path)))
        code, _, err = run(capsys, *args, "--out", str(out))
        assert code == 2 and err.startswith(f"mailpulse: error: --out {out}: not a regular file")
    assert target.read_text() == "mine\n" and link.is_symlink() and fifo.exists() and not fifo.is_file()


def test_a_negative_seed_is_refused_as_python_seeds_it_as_its_absolute_value(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "generate", "--users", "5", "--days", "1", "--seed", "-1", "--out", "x")
    assert code == 2 and "must be 0 or more" in err


def test_a_state_folder_that_cannot_be_locked_stops_the_start_with_an_error(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker locks its state folder, and one held by another worker sends it on to the next
    (worker-1).  Every other lock error was taken for "held" too: on a filesystem that cannot lock
    (NFS without its lock service: ENOLCK) the start made worker-0, worker-1, ... for ever, without a
    word.  Now it stops with one line."""
    import errno
    import fcntl

    from streams import worker

    with worker.locked_data_dir(tmp_path) as first, worker.locked_data_dir(tmp_path) as second:
        assert (first.name, second.name) == ("worker-0", "worker-1")  # held: the next one
        # the second start's look at worker-0 left its holder's process id there
        assert (first / ".lock").read_text() == (second / ".lock").read_text() == str(os.getpid())

    def no_locks(handle: object, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(worker.StateFolderError, match="cannot lock a state folder there"), \
            worker.locked_data_dir(tmp_path / "nfs"):
        pytest.fail("no folder can be locked here")
    assert [child.name for child in (tmp_path / "nfs").iterdir()] == ["worker-0"]


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    events = tmp_path / "id.jsonl"
    text = (json.dumps({"event_id": "e1", "type": "identify", "timestamp": "2026-01-01T00:00:00Z",
                        "user_id": "u-1", "email": "a@example.com"}) + "\n")
    events.write_text(text)
    link = tmp_path / "link.jsonl"
    link.hardlink_to(events)
    for args in (("resolve", "--input", str(events), "--out", str(events)),
                 ("resolve", "--input", str(events), "--out", str(link)),
                 ("resolve", "--input", str(events), "--out", str(tmp_path / "o.jsonl"), "--save-model", str(events)),
                 ("score", "--events", str(events), "--as-of", "2026-02-01", "--models", str(tmp_path),
                  "--out", str(events))):
        code, _, err = run(capsys, *args)
        assert code == 2 and "which it would replace" in err and len(err.strip().splitlines()) == 1, (args, err)
        assert events.read_text() == text
    code, _, err = run(capsys, "resolve", "--input", str(events), "--out", str(tmp_path / "o.jsonl"),
                       "--save-model", str(tmp_path / "o.jsonl"))
    assert code == 2 and "--save-model" in err and "is --out" in err
    code, _, err = run(capsys, "resolve", "--input", str(events), "--out", str(tmp_path / "o.jsonl"))
    assert code == 0 and json.loads((tmp_path / "o.jsonl").read_text())["user_id"] == "u-1"


def test_a_killed_worker_process_of_score_is_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked reader killed (the OOM killer, kill -9): ChildFailed was a traceback."""
    import os
    import signal

    from models.bundle import SHIPPED_DIR
    from streams.tools import history

    events = tmp_path / "h.jsonl"
    assert run(capsys, "generate", "--users", "5", "--days", "5", "--seed", "1", "--out", str(events))[0] == 0
    real = history._read_range

    def killed_past_the_first(path: Path, start: int, *args: object) -> object:
        if start:  # (a child: the first range is read in this process)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, start, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(history, "_read_range", killed_past_the_first)
    code, _, err = run(capsys, "score", "--events", str(events), "--as-of", "2026-02-01", "--models", str(SHIPPED_DIR),
                       "--out", str(tmp_path / "s.jsonl"), "--jobs", "2")
    assert code == 2 and err.count("\n") == 1 and "worker process ended without a result (status -9)" in err, err
    assert not (tmp_path / "s.jsonl").exists()


def test_broker_partitions_past_the_settings_bound_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`mailpulse broker --partitions` is bounded as MAILPULSE_PARTITIONS is (an OverflowError creating the
    topics, a traceback, past Kafka's INT32; up to it, topics of more partitions than a worker accepts)."""
    from streams.broker import free_port
    from streams.settings import Settings

    most = max(m.le for m in Settings.model_fields["partitions"].metadata if hasattr(m, "le"))
    for text in ("99999999999", str(most + 1)):
        # (a free port, not 1: the code before started a broker first, and on port 1 it answered the other
        # tests' "no broker at 127.0.0.1:1" for as long as it ran)
        code, _, err = run(capsys, "broker", "--port", str(free_port()), "--partitions", text)
        assert code == 2 and err.count("\n") == 1 and "--partitions" in err, err


@pytest.mark.parametrize("args", [
    ("train", "--as-of", "2026-02-01", "--horizon-days", "30", "--out", ""),
    ("schemas", "--out", " "),
    ("score", "--as-of", "2026-02-01", "--models", "", "--out", "s.jsonl"),
    ("resolve", "--out", "r.jsonl", "--save-model", ""),
])
def test_an_empty_path_argument_is_a_usage_error_not_the_current_folder(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        args: tuple[str, ...]) -> None:
    """As an empty MAILPULSE_* path is: `--out ""` (an unset shell variable) was Path("."): train wrote its
    model files and schemas its schemas into the current folder."""
    monkeypatch.chdir(tmp_path)
    events = tmp_path / "h.jsonl"
    events.write_text("")
    flag = "--input" if args[0] == "resolve" else "--events"
    extra = () if args[0] == "schemas" else (flag, str(events))
    code, _, err = run(capsys, *args, *extra)
    assert code == 2 and err.count("\n") == 1 and "empty path" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["h.jsonl"]


@pytest.mark.parametrize("command", ["train", "score"])
def test_train_and_score_fold_with_the_identity_model_the_workers_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """``MAILPULSE_IDENTITY_MODEL`` decides fuzzy merges in ``run``; ``train`` and ``score`` fold a history
    into the stream's profiles, so they read it too (they ignored it and merged by the shipped model)."""
    from streams.domain.resolution.model import Model, default_model, shipped_model, use_model

    history = tmp_path / "history.jsonl"
    history.write_text('{"event_id": "e-1", "type": "product_view", "timestamp": "2026-01-01T00:00:00Z", '
                       '"user_id": "u-1", "product_id": "p"}\n')
    fitted = Model(shipped_model().m, shipped_model().u, shipped_model().h, (0.1, 0.1, 0.1, 0.7))
    fitted.save(tmp_path / "model.json")
    monkeypatch.setenv("MAILPULSE_IDENTITY_MODEL", str(tmp_path / "model.json"))
    args = {"train": ("train", "--events", str(history), "--as-of", "2026-01-02", "--horizon-days", "30",
                      "--out", str(tmp_path / "models")),
            "score": ("score", "--events", str(history), "--as-of", "2026-01-02", "--models", "models/shipped",
                      "--out", str(tmp_path / "scores.jsonl"))}[command]
    try:
        run(capsys, *args)  # (train stops: a day of history is too short; the model is read before)
        assert default_model() == fitted
    finally:
        use_model(None)
    (tmp_path / "model.json").write_text("{}")
    code, _, err = run(capsys, *args)
    use_model(None)
    assert code == 2 and err.startswith("mailpulse: error: MAILPULSE_IDENTITY_MODEL") and err.count("\n") == 1


def test_every_option_of_every_command_is_named_in_the_readme() -> None:
    """The README's "Commands" section names each command's options (contract section 1's and the
    project's own), as each setting is named by its variable."""
    import argparse

    from streams.cli import build_parser

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    missing = [f"{name} {option}" for name, parser in commands.choices.items() for action in parser._actions
               for option in action.option_strings if option.startswith("--") and option != "--help"
               and f"{option}" not in readme[readme.index("## Commands"):readme.index("## Input validation")]]
    assert missing == []


def test_broker_on_a_taken_port_is_a_one_line_error_not_another_port(capsys: pytest.CaptureFixture[str]) -> None:
    """`mailpulse broker --port P` with P taken started on some free port with a warning, so the clients
    the user pointed at P reached whatever else listened there."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run(capsys, "broker", "--port", str(port))
    assert code == 2 and err.count("\n") == 1 and f"port {port} is taken" in err, err
    assert "listening" not in out


def test_score_notes_an_as_of_before_the_models_training_cut(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Scores of a time the model's training labels came after look like a test of the model and are
    none: the note says so (the shipped model's cut is 2026-05-31)."""
    from models.bundle import SHIPPED_DIR

    events = tmp_path / "h.jsonl"
    assert run(capsys, "generate", "--users", "5", "--days", "5", "--seed", "1", "--out", str(events))[0] == 0
    for as_of, noted in (("2026-02-01", True), ("2026-06-01", False)):
        code, _, err = run(capsys, "score", "--events", str(events), "--as-of", as_of, "--models", str(SHIPPED_DIR),
                           "--out", str(tmp_path / "s.jsonl"), "--jobs", "1")
        assert code == 0 and ("before the model's training cut (2026-05-31T00:00:00.000Z)" in err) is noted, err


def test_a_full_temporary_folder_is_named_as_what_generate_cannot_write(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``generate`` sorts a large history in temporary files: a full temporary folder (a small /tmp
    tmpfs) was reported as ``cannot write <--out>``, a file on a disk that may have room."""
    import errno
    import tempfile
    from collections.abc import Iterator

    import streams.tools.generate as generate

    def no_room(*_: object) -> Iterator[bytes]:
        raise OSError(errno.ENOSPC, "No space left on device")
        yield b""

    monkeypatch.setattr(generate, "_sorted_externally", no_room)
    out = tmp_path / "history.jsonl"
    code, _, err = run(capsys, "generate", "--users", "5", "--days", "1", "--seed", "1", "--out", str(out))
    assert code == 2 and not out.exists()
    assert err.strip() == ("mailpulse: error: cannot write the temporary files of the sort in "
                           f"{tempfile.gettempdir()}: No space left on device (TMPDIR names another folder)")


@pytest.mark.parametrize("url", ["kafka://host:0", "kafka://host:", "kafka://[::1]x", "kafka://[::1]:", "kafka://host/x",
                                 "kafka://host:+1", "kafka://host:\uff11\uff12"])
def test_a_broker_url_whose_port_is_no_port_is_refused(url: str) -> None:
    from pydantic import ValidationError

    from streams.settings import Settings

    with pytest.raises(ValidationError, match="each address a host"):
        Settings(broker=url)


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_train_refuses_an_out_that_cannot_be_its_folder_before_it_reads_the_history(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str) -> None:
    """``train --out`` was first tried once the history was read and the model trained (minutes on a large
    history), and a file there was reported as "File exists" (found in review)."""
    import models.training

    def not_reached(*_: object, **__: object) -> None:
        raise AssertionError("the history was read")

    monkeypatch.setattr(models.training, "train_file", not_reached)
    history = tmp_path / "history.jsonl"
    history.write_text("")
    out = history if where == "a file" else history / "models"
    code, _, err = run(capsys, "train", "--events", str(history), "--as-of", "2026-01-02", "--horizon-days", "30",
                       "--out", str(out))
    assert code == 2 and err.startswith(f"mailpulse: error: --out {out}: not a folder") and err.count("\n") == 1
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(("text", "fragment"), [("2026-13-01", "cannot parse timestamp '2026-13-01' "),
                                                ("2026/01/01", "cannot parse timestamp '2026/01/01' "),
                                                ("2299-01-01", "timestamp '2299-01-01' out of range")])
def test_a_bad_as_of_is_quoted_as_typed(capsys: pytest.CaptureFixture[str], text: str, fragment: str) -> None:
    """A ten-character ``--as-of`` (``--until``) is read as a date at UTC midnight; one that is no date was
    quoted with the ``T00:00:00Z`` the parser had added (``'2026-13-01T00:00:00Z'``), which the user never
    typed (found in review)."""
    code, _, err = run(capsys, "score", "--events", __file__, "--as-of", text, "--models", "m", "--out", "s.jsonl")
    assert code == 2 and fragment in err and "T00:00:00Z" not in err, err


def test_run_reads_mailpulse_config_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``run`` checked ``MAILPULSE_CONFIG``, then the worker read it again: a config given as a pipe
    (``MAILPULSE_CONFIG=<(envsubst < config.yaml)``) was empty the second time, and the worker ran with
    the built-in defaults without a word (found in review)."""
    import streams.worker
    from streams.config_file import load_config

    seen = {}

    def worker(settings: object, demo: bool = False, models: object = None, config: object = None) -> int:
        # (as the worker does: the config it is given, else the file read)
        seen["config"] = config if config is not None else load_config(settings.config)  # type: ignore[attr-defined]
        return 0

    monkeypatch.setattr(streams.worker, "run_worker", worker)
    read, write = os.pipe()
    os.write(write, b"limits:\n  traits: 10\n")
    os.close(write)
    monkeypatch.setenv("MAILPULSE_CONFIG", f"/dev/fd/{read}")
    monkeypatch.setenv("MAILPULSE_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MAILPULSE_BROKER", raising=False)
    try:
        code, _, err = run(capsys, "run")
    finally:
        os.close(read)
    assert code == 0, err
    assert seen["config"].limits.traits == 10  # type: ignore[attr-defined]


def test_schemas_to_an_out_that_is_a_file_says_it_is_not_a_folder(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    """``schemas --out FILE`` said "cannot write to FILE: File exists" (found in review)."""
    out = tmp_path / "schemas"
    out.write_text("")
    code, _, err = run(capsys, "schemas", "--out", str(out))
    assert code == 2 and err == f"mailpulse: error: --out {out}: not a folder\n", err
