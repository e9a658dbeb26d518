"""The ``mailpulse`` command line (contract section 1).

Every command prints ``--help``; a user mistake (bad flag, bad file, unreachable broker) ends with a
one-line ``mailpulse: error: ...`` on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError

from schemas.timeparse import format_ms, parse_timestamp
from streams import logs
from streams.gc_tuning import tune_garbage_collector
from streams.settings import MOST_PARTITIONS, Settings
from streams.tools.forked import ChildFailed, default_jobs

if TYPE_CHECKING:
    from models.scoring import StreamRules
    from streams.domain.config import PipelineConfig

EXIT_USAGE = 2


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


@contextmanager
def reported_as_user_error(*errors: type[Exception], prefix: str = "") -> Iterator[None]:
    """``errors`` raised inside become a :class:`UserError` with the same message (after ``prefix``)."""
    try:
        yield
    except errors as exc:
        raise UserError(f"{prefix}{exc}") from None


def _timestamp(text: str) -> int:
    """A CLI timestamp: ISO-8601 with offset/Z, a bare date (UTC midnight), or epoch ms."""
    value: object = int(text) if text.isdigit() else text
    if isinstance(value, str) and len(value) == 10:
        value = f"{value}T00:00:00Z"
    try:
        return parse_timestamp(value)
    except ValueError as exc:  # (quoting the text as typed, not with the midnight added to a bare date)
        message = str(exc).replace(repr(value), repr(text)) if isinstance(value, str) else str(exc)
        raise argparse.ArgumentTypeError(message) from None


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _bounded_int(most: int) -> Callable[[str], int]:
    """A whole number from 1 to ``most`` (a port, a number of processes)."""

    def parse(text: str) -> int:
        value = _positive_int(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"{value} must be at most {most}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):  # (nan too: a --timeout of nan never ran out)
        raise argparse.ArgumentTypeError(f"{value} must be a finite number greater than 0")
    return value


#: The most processes ``train`` and ``score`` may be told to use (``--jobs``): each reads a part of the
#: history, and more parts than this only add processes.
MOST_JOBS = 64


def _seed(text: str) -> int:
    """A seed from 0 (Python's random number generator seeds -n as it seeds n)."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more (-n gives the history of n)")
    return value


def _rate(text: str) -> float:
    """Events per second: at least one a day (a slower rate would wait past what a clock can sleep)."""
    value = _positive_float(text)
    if value < 1 / 86_400:
        raise argparse.ArgumentTypeError(f"{value} must be at least one event a day ({1 / 86_400:.6g})")
    return value


def _usable_folder(path: Path, what: str, make: bool = True) -> None:
    """``path`` is a folder, or is made one here (a file there, or on the way to it, would fail deep in a
    worker's start with a traceback); ``make=False``: one could be made there (it is made later)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: not a folder")
    existing = path
    while not existing.exists():  # (``exists`` is False below a file too) the folder it would be made in
        if existing.is_symlink():  # a link to nothing (a volume not mounted): mkdir's FileExistsError
            raise UserError(f"{what} {path}: not a folder ({existing} links to {existing.readlink()}, "
                            "which does not exist)")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: not a folder ({existing} is a file)")
    if not make:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"{what} {path}: the folder cannot be made or written ({existing}: no permission)")
        return
    try:  # (a read-only mount, no permission: mkdir's traceback at the start otherwise)
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {path}: the folder cannot be made ({exc.strerror or exc})") from None


def _bindable_host(host: str, what: str) -> None:
    import socket

    try:
        socket.getaddrinfo(host, None)
    except OSError:
        raise UserError(f"{what} {host[:80]!r}: not an address of this machine") from None


def _replaceable(path: Path) -> None:
    """``--out`` of a command that writes a temporary file and moves it there: nothing, or a regular
    file (a FIFO, a device or a symlink would be replaced by the file, not written to)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(f"--out {path}: not a regular file (the output would replace it)")


def _not_an_input(out: Path | None, what: str, *inputs: tuple[str, Path | None]) -> None:
    """``out`` (written whole at the end) is none of ``inputs``: written over one, it replaced what the
    command read (the history, the identify events, a model) with its result, and nothing said so."""
    if out is None:
        return
    for name, path in inputs:
        if path is None:
            continue
        try:
            same = out.resolve() == path.resolve() or os.path.samefile(out, path)
        except (OSError, RuntimeError):  # (one of them does not exist, a symlink loop: not the same file)
            same = False
        if same:
            raise UserError(f"{what} {out}: is {name} {path}, which it would replace; choose another file")


def _path(text: str) -> Path:
    """A path argument: "" (an unset shell variable) would be Path("."), the current folder, as an
    empty MAILPULSE_* path setting would (refused there too)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def _existing_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():  # (it exists: "no such file" sent the user looking for a typo)
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if path.exists() and not path.is_file():  # <(zcat h.jsonl.gz): the file is read twice, or from an offset
        raise argparse.ArgumentTypeError(f"{text} is not a regular file (a pipe or a device): give a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text}")
    return value


def _settings(**overrides: object) -> Settings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(x) for x in err["loc"])
        # (an override is the command's flag of that name: ``--broker``, not the variable the user did not set)
        source = f"--{field.replace('_', '-')}" if field in clean else f"MAILPULSE_{field.upper()}"
        raise UserError(f"setting {field} ({source}): {err['msg']}") from None


def _config(settings: Settings) -> PipelineConfig:
    """``MAILPULSE_CONFIG`` (a problem in it: one line)."""
    from streams.config_file import ConfigError, load_config

    with reported_as_user_error(ConfigError, prefix="MAILPULSE_CONFIG "):
        return load_config(settings.config)


def _use_identity_model(settings: Settings) -> None:
    """``MAILPULSE_IDENTITY_MODEL``: the fitted model fuzzy matching scores with, for ``run`` and for the
    folds of ``train`` and ``score`` (which merged by the shipped one, so their profiles and features
    were not the stream's).  ``resolve`` scores with what its ``--model`` says."""
    if settings.identity_model is not None:
        from streams.domain.resolution.model import Model, use_model

        with reported_as_user_error(OSError, ValueError, KeyError, TypeError, prefix="MAILPULSE_IDENTITY_MODEL "):
            use_model(Model.load(settings.identity_model))


def _stream_rules(settings: Settings | None = None) -> StreamRules:
    """What the worker's settings decide about how a history folds (``MAILPULSE_CONFIG``'s identity and
    limits sections, ``MAILPULSE_DEFAULT_PHONE_REGION``, ``MAILPULSE_DEDUPE_RETENTION_DAYS``), read as ``run``
    reads them, so that ``train``, ``score`` and ``resolve`` resolve and fold a history as the stream
    does (they used the built-in defaults whatever the worker was told)."""
    from models.scoring import StreamRules
    from streams.ingest import IngestPolicy

    settings = settings or _settings()
    config = _config(settings)
    return StreamRules(config.identity, IngestPolicy(settings.default_phone_region, config.identity.blocked()),
                       settings.dedupe_retention_ms, config.limits)


def _bootstrap(broker: str | None) -> str:
    settings = _settings(broker=broker)
    if not settings.broker:
        raise UserError("no broker: pass --broker URL or set MAILPULSE_BROKER (e.g. kafka://127.0.0.1:9092)")
    return settings.bootstrap_servers


def _check_broker(bootstrap: str) -> None:
    from streams.broker import BrokerError, wait_until_ready

    with reported_as_user_error(BrokerError):
        wait_until_ready(bootstrap, timeout=5)


def _check_e_mails(settings: Settings) -> None:
    """What every e-mail ``deliver`` writes reads (``deliver``, and ``run --demo``'s deliver thread): a
    sender every trigger would fail on, or a templates folder that is not one (every e-mail would go out
    with the shipped templates, and nothing said the folder was not read), is a one-line error."""
    from streams.deliver.service import sender_problem

    if (problem := sender_problem(settings.mail_from)) is not None:
        raise UserError(f"MAILPULSE_MAIL_FROM {settings.mail_from[:80]!r}: {problem}")
    if settings.templates_dir is not None and not settings.templates_dir.is_dir():
        raise UserError(f"MAILPULSE_TEMPLATES_DIR {settings.templates_dir}: not a folder")


# --- commands -------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from streams.broker import BrokerError
    from streams.native_memory import fix_mmap_threshold, limit_malloc_arenas
    from streams.worker import StateFolderError, run_worker

    limit_malloc_arenas()  # before the first Kafka client starts its threads (_check_broker's)
    fix_mmap_threshold()

    settings = _settings(broker=args.broker, clock=args.clock, log_level=args.log_level,
                         partitions=args.partitions)
    logs.use(settings.log_format)  # its warnings and its error line too (the worker sets it again)
    config = _config(settings)
    if args.demo:
        _check_e_mails(settings)  # (its deliver thread writes the demo's e-mails)
    models = None  # (loaded once: the worker scores with it)
    if config.scoring.enabled:
        from models.bundle import SHIPPED_DIR, ModelBundle, ModelError

        try:
            models = ModelBundle.load(settings.models_dir or SHIPPED_DIR)
        except ModelError as exc:  # profiles, segments and triggers go on; mailpulse_models_unavailable says so
            logs.warn(f"MAILPULSE_MODELS_DIR {exc}: running without scores")
    _use_identity_model(settings)
    _usable_folder(settings.data_dir, "MAILPULSE_DATA_DIR")
    _bindable_host(settings.metrics_host, "MAILPULSE_METRICS_HOST")
    if settings.broker:
        _check_broker(settings.bootstrap_servers)
    with reported_as_user_error(BrokerError, StateFolderError):
        return run_worker(settings, demo=args.demo, models=models, config=config)


def cmd_deliver(args: argparse.Namespace) -> int:
    import signal
    import threading

    from streams.deliver.ledger import LedgerError
    from streams.deliver.service import run_deliver

    settings = _settings(broker=args.broker)
    logs.use(settings.log_format)
    logs.format_root()  # its warnings, and librdkafka's lines, in that format too
    logs.quiet_repeats()  # the Kafka clients' repeated lines once per 30 s, as in the worker's log
    _check_e_mails(settings)
    if args.dry_run is None and settings.deliver_target == "smtp" and bool(settings.smtp_user) != bool(
            settings.smtp_password and settings.smtp_password.get_secret_value()):
        # (the client logs in with both only: half of them sent every e-mail unauthenticated, to be refused)
        raise UserError("MAILPULSE_SMTP_USER and MAILPULSE_SMTP_PASSWORD: set both to log in, or neither")
    _usable_folder(settings.data_dir, "MAILPULSE_DATA_DIR")
    if args.dry_run is not None:
        _usable_folder(args.dry_run, "--dry-run")
    _bindable_host(settings.metrics_host, "MAILPULSE_METRICS_HOST")
    bootstrap = _bootstrap(settings.broker)
    _check_broker(bootstrap)
    if args.dry_run is None and settings.deliver_target == "webhook" and not settings.webhook_url:
        raise UserError("MAILPULSE_DELIVER_TARGET=webhook needs MAILPULSE_WEBHOOK_URL")

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with reported_as_user_error(LedgerError):
        code = run_deliver(settings, args.dry_run, stop, logs.say)
    logs.say("deliver stopped")
    return code


def cmd_broker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from streams.broker import BrokerError, ensure_topics, start_embedded_broker
    from streams.topics import COMPACTED_TOPICS, CONTRACT_TOPICS

    with reported_as_user_error(BrokerError):
        # (a port named on the command line is that port or an error; by default a taken 9092 gives way)
        broker = start_embedded_broker(args.port or 9092, exact=args.port is not None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        ensure_topics(broker.bootstrap, args.partitions, COMPACTED_TOPICS, CONTRACT_TOPICS)
        print(f"mailpulse: embedded broker listening on {broker.url}; Ctrl-C stops it", flush=True)
        while not stop.is_set() and broker.process.poll() is None:
            stop.wait(0.5)
    finally:
        broker.stop()
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from streams.tools.generate import SpillError, history_lines
    from streams.tools.output_file import write_lines

    if args.start < date(1990, 1, 1) or (date(2199, 1, 1) - args.start).days < args.days:
        # the times an input event may carry (contract: 1990..2200); a year is left for the history's tail
        raise UserError(f"--start {args.start} with --days {args.days} is outside 1990-01-01 .. 2199-01-01")
    lines = history_lines(args.users, args.days, args.seed, args.start, args.repeats, args.erasures, args.purchases)
    written = 0

    def counted() -> Iterator[bytes]:
        nonlocal written
        for line in lines:
            written += 1
            yield line

    try:
        write_lines(args.out, counted())
    except SpillError as exc:
        raise UserError(f"cannot write the temporary files of the sort in {exc.filename}: {exc.strerror} "
                        "(TMPDIR names another folder)") from None
    except OSError as exc:
        raise UserError(f"cannot write {args.out}: {exc.strerror}") from None
    print(f"mailpulse: wrote {written} events for {args.users} users over {args.days} days to {args.out}",
          file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.tools.produce import RoutingError
    from streams.tools.replay import ReplayError, ReplayStopped, replay_file

    bootstrap = _bootstrap(args.broker)
    _check_broker(bootstrap)
    try:
        with reported_as_user_error(ReplayError, RoutingError):
            sent = replay_file(args.file, bootstrap, rate=args.rate, until=args.until,
                               show_progress=sys.stderr.isatty())
    except ReplayStopped as stopped:
        lost = (f", but {stopped.unconfirmed} of their messages were not acknowledged by the broker (not delivered, "
                "or not known to be)" if stopped.unconfirmed else "")
        print(f"mailpulse: replay stopped: {stopped.sent} events from {args.file} were sent{lost}", file=sys.stderr)
        return 130
    # (the time as ISO 8601 in UTC, whichever form --until was given in: also --until=T or --unt T)
    tick = f", then a tick at {format_ms(args.until)} on every input partition" if args.until is not None else ""
    print(f"mailpulse: replayed {sent} events from {args.file}{tick}", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from streams.tools.tail import TailError, tail

    bootstrap = _bootstrap(args.broker)
    _check_broker(bootstrap)
    try:
        with reported_as_user_error(TailError):
            tail(args.topic, bootstrap, from_beginning=args.from_beginning, count=args.count, timeout=args.timeout)
    except BrokenPipeError:  # `mailpulse tail ... | head`
        return 0
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    _replaceable(args.out)
    model_file = None if args.model in ("fit", "shipped") else Path(args.model)
    _not_an_input(args.out, "--out", ("--input", args.input), ("--model", model_file))
    _not_an_input(args.save_model, "--save-model", ("--input", args.input), ("--out", args.out))
    from streams.tools.resolve import ResolveError, resolve_file

    rules = _stream_rules()
    with reported_as_user_error(ResolveError):
        stats = resolve_file(args.input, args.out, show_progress=sys.stderr.isatty(), model=args.model,
                             save_model=args.save_model, policy=rules.policy,
                             limits=rules.identity.max_per_profile.model_dump())
    print(f"mailpulse: resolved {stats.records} identify events to {stats.profiles} profiles "
          f"({stats.possible_matches} with possible matches) in {stats.seconds:.2f} s, model {stats.model}; "
          f"wrote {args.out}",
          file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models.report import report_table
    from models.training import TrainError, train_file

    _usable_folder(args.out, "--out", make=False)  # (before the history is read and the model trained)
    settings = _settings()
    rules = _stream_rules(settings)
    _use_identity_model(settings)
    tune_garbage_collector()  # a history's events stay in memory: the default thresholds rescanned them all
    with reported_as_user_error(TrainError, ChildFailed):
        report = train_file(args.events, args.as_of, args.horizon_days, args.out, show_progress=sys.stderr.isatty(),
                            jobs=args.jobs or default_jobs(), rules=rules)
    print(report_table(report), file=sys.stderr)
    print(f"mailpulse: trained model {report['model_version']} on {report['examples']['train']} examples "
          f"in {report['seconds']:.1f} s; wrote {args.out}", file=sys.stderr)
    print(json.dumps(report, sort_keys=True))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    _replaceable(args.out)
    _not_an_input(args.out, "--out", ("--events", args.events), ("the model's", args.models / "manifest.json"))
    from models.scoring import ScoreError, score_file

    settings = _settings()
    rules = _stream_rules(settings)
    _use_identity_model(settings)
    tune_garbage_collector()

    with reported_as_user_error(ScoreError, ChildFailed):
        stats = score_file(args.events, args.as_of, args.models, args.out, show_progress=sys.stderr.isatty(),
                           jobs=args.jobs or default_jobs(), rules=rules)
    print(f"mailpulse: scored {stats.profiles} profiles from {stats.events} events with model "
          f"{stats.model_version} in {stats.seconds:.1f} s; wrote {args.out}", file=sys.stderr)
    try:
        trained_at: int | None = parse_timestamp(stats.model_as_of)
    except ValueError:  # (a manifest without a readable cut: nothing to compare)
        trained_at = None
    if trained_at is not None and args.as_of < trained_at:
        print(f"mailpulse: note: --as-of is before the model's training cut ({stats.model_as_of}): it learnt "
              "from what followed, so these scores are no test of it", file=sys.stderr)
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.export import write_schemas

    _usable_folder(args.out, "--out")  # (a file there: "cannot write to FILE: File exists")
    try:
        written = write_schemas(args.out)
    except OSError as exc:
        raise UserError(f"cannot write to {args.out}: {exc.strerror}") from None
    print(f"mailpulse: wrote {len(written)} JSON Schemas to {args.out}", file=sys.stderr)
    return 0


# --- parser ---------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line (contract section 1; argparse writes the
    usage block first), or one JSON object in a JSON log.  Its subcommands' parsers are of this class."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("mailpulse").strip()
        logs.error(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailpulse", description="Real-time personalization pipeline for email.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def broker_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--broker", help="kafka://host:port (default: MAILPULSE_BROKER)")

    p = sub.add_parser("run", help="run a pipeline worker")
    p.add_argument("--broker", help="kafka://host:port; unset: MAILPULSE_BROKER, else the embedded broker")
    p.add_argument("--demo", action="store_true", help="also feed synthetic shop traffic")
    p.add_argument("--clock", choices=("event", "wall"), help="event time only, or wall clock too (live)")
    p.add_argument("--log-level", choices=("crit", "error", "warn", "info", "debug"))
    p.add_argument("--partitions", type=_positive_int, help="partitions of topics this worker creates")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("deliver", help="the reference ESP connector: render triggers into e-mails and deliver "
                       "each once (SMTP or webhook, from MAILPULSE_* settings)")
    p.add_argument("--broker", help="kafka://host:port; unset: MAILPULSE_BROKER")
    p.add_argument("--dry-run", type=_path, metavar="DIR", help="write each e-mail to DIR/<trigger_id>.eml instead")
    p.set_defaults(func=cmd_deliver)

    p = sub.add_parser("broker", help="run the embedded broker alone, in the foreground")
    p.add_argument("--port", type=_bounded_int(65535),
                   help="the port to listen on, an error when taken (default: 9092, or a free port when it is taken)")
    p.add_argument("--partitions", type=_bounded_int(MOST_PARTITIONS), default=8,
                   help="partitions of the topics it creates")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("generate", help="write synthetic history as JSON lines of input events")
    p.add_argument("--users", type=_positive_int, required=True)
    p.add_argument("--days", type=_positive_int, required=True)
    p.add_argument("--seed", type=_seed, required=True)
    p.add_argument("--start", type=_date, default=date(2026, 1, 1), help="first day, YYYY-MM-DD")
    p.add_argument("--repeats", type=_fraction, default=0.0, help="fraction of events sent twice (0-1)")
    p.add_argument("--erasures", type=_fraction, default=0.0, help="fraction of people erased at some point (0-1)")
    p.add_argument("--purchases", choices=("sessions", "btyd"), default="sessions",
                   help="sessions: browsing sessions whose carts are bought at a personal propensity (default); "
                        "btyd: customers buying as BG/NBD's buy-till-you-die process, with product views")
    p.add_argument("--out", type=_path, required=True)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("replay", help="produce a JSON-lines file of input events to the input topics")
    p.add_argument("file", type=_existing_file)
    broker_flag(p)
    p.add_argument("--rate", type=_rate, help="events per second (default: as fast as possible)")
    p.add_argument("--until", type=_timestamp, help="afterwards, a tick at this time on every input partition")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("tail", help="print a topic's messages as JSON lines")
    p.add_argument("topic")
    broker_flag(p)
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--count", type=_positive_int)
    p.add_argument("--timeout", type=_positive_float, help="stop after S seconds without a new message")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("train", help="train churn and purchase-probability models")
    p.add_argument("--events", type=_existing_file, required=True)
    p.add_argument("--as-of", type=_timestamp, required=True)
    p.add_argument("--horizon-days", type=_positive_int, required=True)
    p.add_argument("--out", type=_path, required=True)
    p.add_argument("--jobs", type=_bounded_int(MOST_JOBS),
                   help="processes reading the history and folding it (default: one per core, at most 8); the "
                   "model is the same for any number")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="offline scoring of profiles")
    p.add_argument("--events", type=_existing_file, required=True)
    p.add_argument("--as-of", type=_timestamp, required=True)
    p.add_argument("--models", type=_path, required=True)
    p.add_argument("--out", type=_path, required=True)
    p.add_argument("--jobs", type=_bounded_int(MOST_JOBS),
                   help="processes reading the history (default: one per core, at most 8); the scores are the "
                   "same for any number")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("resolve", help="batch identity resolution of identify events")
    p.add_argument("--input", type=_existing_file, required=True, help="JSON lines of identify events")
    p.add_argument("--out", type=_path, required=True, help='one {"user_id", "profile_id"} line per event')
    p.add_argument("--model", default="fit", help="fit (default: m and u fitted on the input by EM), shipped, "
                   "or a model file written by --save-model")
    p.add_argument("--save-model", type=_path, help="write the model that scored (for MAILPULSE_IDENTITY_MODEL)")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("schemas", help="write one JSON Schema per topic message type")
    p.add_argument("--out", type=_path, required=True)
    p.set_defaults(func=cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    logs.use_environment()  # (a command that reads its settings chooses again from them)
    parser = build_parser()
    args = parser.parse_args(raw)
    logging.basicConfig(level=logging.WARNING, format="mailpulse: %(message)s")
    logs.format_root()
    try:
        code: int = args.func(args)
        return code
    except UserError as exc:
        logs.error(str(exc))  # (one JSON object where `run` was told MAILPULSE_LOG_FORMAT=json)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
