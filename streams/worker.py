"""Running a pipeline worker: embedded broker (if none is configured), topics, metrics, Faust worker.

Ctrl-C / SIGTERM: Faust's worker stops the agents, commits offsets and closes the tables; then the
demo feed and the embedded broker are stopped, in that order.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import faust
from mode.utils.logging import redirect_stdouts

from models.bundle import ModelBundle
from models.scoring import Predictor
from schemas.events import INPUT_TOPICS
from streams import logs
from streams import topics as names
from streams.app import create_app
from streams.broker import (
    EmbeddedBroker,
    check_partitions,
    ensure_topics,
    start_embedded_broker,
    topic_partitions,
    watch_broker,
)
from streams.consumer import offsets_committed
from streams.domain.config import PipelineConfig
from streams.gc_tuning import tune_garbage_collector
from streams.logs import say
from streams.metrics import Health, Metrics
from streams.settings import Settings
from streams.tables import stamp_text, stamped_time

log = logging.getLogger(__name__)


class StateFolderError(Exception):
    """The worker's state folder cannot be used (a one-line error at start)."""


@contextlib.contextmanager
def locked_data_dir(base: Path) -> Iterator[Path]:
    """A per-worker state folder under ``base``: ``worker-0``, or the next one not locked by a live
    process, so several workers on one machine never share a RocksDB folder."""
    index = 0
    while True:
        folder = base / f"worker-{index}"
        try:  # (a file there, another user's folder or lock file, a read-only mount: a traceback otherwise)
            folder.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # (another user's: the lock file's open says so)
                folder.chmod(0o700)  # its owner's alone: its tables hold the profiles (personal data)
            # (appended to, not emptied: the worker holding it keeps its process id there)
            handle: IO[str] = open(folder / ".lock", "a")  # noqa: SIM115 - held for the worker's life
        except OSError as exc:
            raise StateFolderError(f"MAILPULSE_DATA_DIR {base}: {folder} cannot be used "
                                   f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                # not held by another worker: the filesystem cannot lock at all (NFS without its lock
                # service, some FUSE mounts).  Taken for "held", the start tried worker-1, worker-2, ...
                # for ever, with no word.
                raise StateFolderError(f"MAILPULSE_DATA_DIR {base}: cannot lock a state folder there "
                                       f"({os.strerror(exc.errno or 0)}); use a local filesystem") from None
            index += 1
            continue
        try:
            if (stuck := _unwritable(folder)) is not None:
                raise StateFolderError(f"MAILPULSE_DATA_DIR {base}: {stuck} cannot be read and written by this "
                                       "process (another user's, or a read-only mount): give the folder to the user "
                                       "the worker runs as")
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            yield folder
        finally:
            handle.close()
        return


def _unwritable(folder: Path) -> Path | None:
    """The first folder or file in ``folder`` (itself too) this process cannot read and write, or None.
    Left by a worker run as another user (``sudo``), its tables failed to open deep in Faust's start,
    with a traceback; a stale folder failed to be emptied."""
    every, each_file = os.R_OK | os.W_OK | os.X_OK, os.R_OK | os.W_OK
    if not os.access(folder, every):
        return folder
    for root, folders, files in os.walk(folder):  # (a folder is checked before it is read)
        for name, needs in [*((name, every) for name in folders), *((name, each_file) for name in files)]:
            if not os.access(path := os.path.join(root, name), needs):
                return Path(path)
    return None


#: Written when a worker stops cleanly.  Without it the local RocksDB state may hold writes whose
#: changelog records and offset commits never happened (kill -9, power loss): re-read events would
#: then be dropped as duplicates and their outputs lost.  So such a folder starts empty and the
#: tables are rebuilt from their changelog topics.
CLEAN_STOP_MARKER = ".clean-stop"
#: A folder stopped cleanly longer ago than this is rebuilt too.  A changelog keeps a deletion (a
#: tombstone: an erasure, a block emptied, a key absorbed) only ``delete.retention.ms`` after
#: compaction (Kafka's default: 24 h); a folder older than that, whose partitions another worker held
#: meanwhile, would keep what was deleted there, an erased person's state or block record among it.
STATE_MAX_AGE_S = 12 * 3600


def stale_state(data_dir: Path, now: float) -> str | None:
    """Why the state in ``data_dir`` cannot be used as it is (then it is emptied and rebuilt from the
    changelogs), or None.  An empty folder needs no reason."""
    if not any(p.name not in (".lock", CLEAN_STOP_MARKER) for p in data_dir.iterdir()):
        return None
    marker = data_dir / CLEAN_STOP_MARKER
    try:
        stopped = marker.stat().st_mtime
        stamped = stamped_time(marker.read_text(errors="replace"))
    except OSError:  # (none, or none that can be read: as the marker's ``exists()`` read it before)
        return "the last worker on this state folder did not stop cleanly"
    if stamped is not None:  # the stop time it holds (a copy without file times, ``cp -r``, made an old
        stopped = min(stopped, stamped)  # folder look fresh); an empty marker, an older version's: its file time
    if now - stopped > STATE_MAX_AGE_S:
        return (f"the last worker on this state folder stopped more than {STATE_MAX_AGE_S // 3600} hours ago "
                "(deletions older than the changelogs' delete.retention.ms would not reach it)")
    return None


def _empty_folder(folder: Path) -> None:
    for child in folder.iterdir():
        if child.name == ".lock":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


class StoppedBeforeStart(Exception):
    """A stop signal (SIGTERM) came before Faust took the stop signals over."""


def _stop_before_start(signum: int, frame: Any) -> None:
    raise StoppedBeforeStart


def run_worker(settings: Settings, demo: bool = False, models: ModelBundle | None = None,
               config: PipelineConfig | None = None) -> int:
    """Run one worker until it is stopped.  Returns the exit code.  ``models``: the bundle already
    loaded (else the app loads it); ``config``: ``MAILPULSE_CONFIG`` as already read and checked (else
    the app reads it: a pipe read twice was empty the second time).  A SIGTERM before Faust starts
    (it then handles the stop signals itself) ends the start with a line and exit status 0: nothing
    was read yet."""
    previous = signal.signal(signal.SIGTERM, _stop_before_start)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        return _run_worker(settings, demo, models, config)
    except StoppedBeforeStart:
        say("stopped before the worker started: nothing was read, the state folder is as it was")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:  # (None: set outside Python)
            signal.signal(signal.SIGINT, previous_int)


def _run_worker(settings: Settings, demo: bool, models: ModelBundle | None, config: PipelineConfig | None) -> int:
    logs.use(settings.log_format)
    logs.log_thread_crashes()
    broker: EmbeddedBroker | None = None
    if not settings.broker:
        broker = start_embedded_broker(settings.embedded_broker_port)
        say(f"embedded broker on {broker.url} (set MAILPULSE_BROKER to use another)")
        # The embedded broker keeps everything in memory: table state of an earlier run would
        # describe topics that no longer exist, so it lives apart and starts empty.
        settings = settings.model_copy(update={"broker": broker.url, "data_dir": settings.data_dir / "embedded"})
    demo_stop = threading.Event()
    helpers: list[threading.Thread] = []  # stopped with demo_stop, before the embedded broker
    try:
        ensure_topics(settings.bootstrap_servers, settings.partitions, names.COMPACTED_TOPICS,
                      names.CONTRACT_TOPICS, settings.replication_factor)
        for warning in check_partitions(settings.bootstrap_servers, settings.partitions,
                                        names.partitioned_internal_topics(settings.app_id), names.OUTPUT_TOPICS):
            say(f"note: {warning}")
        with locked_data_dir(settings.data_dir) as data_dir:
            clean_stop = data_dir / CLEAN_STOP_MARKER
            stale = stale_state(data_dir, time.time())
            if broker is None and stale is not None:
                say(f"{stale}; rebuilding table state from the changelog topics")
            if broker is not None or stale is not None:  # (stale_state: no marker, or an old one)
                _empty_folder(data_dir)
            settings = settings.model_copy(update={"data_dir": data_dir})
            metrics = Metrics()
            health = Health()
            helpers.append(watch_broker(settings.bootstrap_servers, health.broker_reachable, demo_stop))
            port = metrics.serve(settings.metrics_port, health, settings.metrics_host)
            say(f"metrics, /healthz and /readyz on http://{settings.metrics_host}:{port} (bound there: "
                f"MAILPULSE_METRICS_HOST), state in {data_dir}")
            # the watermark waits for every partition the input topics really have
            inputs = topic_partitions(settings.bootstrap_servers, INPUT_TOPICS)
            pipeline = create_app(settings, metrics, config=config, input_partitions=inputs, models=models)
            pipeline.health = health
            scorer = pipeline.rules.scorer
            if isinstance(scorer, Predictor):
                say(f"scoring profiles with model {scorer.version} from {scorer.bundle.directory}")
            recs_topic = names.product_recs_topic(settings.app_id)
            ensure_topics(settings.bootstrap_servers, settings.partitions, [recs_topic],
                          [recs_topic, names.withdrawals_topic(settings.app_id)], settings.replication_factor)
            pipeline.product_recs.start(settings.bootstrap_servers, recs_topic)
            if demo:
                from streams.deliver.service import run_deliver
                from streams.tools.demo import start_demo_feed

                health.helpers["demo feed"] = start_demo_feed(settings.bootstrap_servers, demo_stop)
                deliver = threading.Thread(target=run_deliver, args=(settings, data_dir / "outbox", demo_stop, say),
                                           name="deliver", daemon=True)
                deliver.start()
                helpers.append(deliver)
                health.helpers["deliver"] = deliver  # (its end fails /healthz: the demo's e-mails stopped)
                say("demo traffic is flowing (its shop clock runs 60x: a cart is abandoned after "
                    "30 s); watch it with `.venv/bin/mailpulse tail triggers --broker "
                    f"{settings.broker}` (or segment-changes, profiles); `mailpulse deliver --dry-run` writes their "
                    f"e-mails to {data_dir / 'outbox'}")
            view = None
            if settings.live_view == "on" or (
                    settings.live_view == "auto" and settings.log_format == "text" and sys.stdout.isatty()):
                from streams.tools.live import LiveView

                view = LiveView(metrics.registry, settings.bootstrap_servers)
                view.start()
            tune_garbage_collector()
            try:
                # the marker goes only once Faust handles the stop signals, before it opens the tables: a
                # stop before left the state folder as it was, and removing the marker at the check made
                # the next start rebuild it
                code = _run_faust(pipeline.app, settings, lambda: clean_stop.unlink(missing_ok=True))
            finally:
                if view is not None:
                    view.stop()
                pipeline.product_recs.stop()
                close = getattr(pipeline.output, "close", None)
                if close is not None:
                    close()
            if code == 0:
                unmarked = mark_clean_stop(clean_stop)
                if unmarked is not None:
                    say(unmarked)
                say(stop_line(offsets_committed(pipeline.app), health.broker_silent(time.monotonic())))
            return code
    finally:
        demo_stop.set()
        for helper in helpers:
            helper.join(15)
        if broker is not None:
            broker.stop()


def mark_clean_stop(marker: Path) -> str | None:
    """Writes the clean-stop marker; a line saying what the next start does without it when it cannot be
    written (a full disk), instead of a traceback as the stop ends."""
    try:
        marker.write_text(stamp_text(time.time()))
    except OSError as exc:
        return (f"note: {marker} could not be written ({exc.strerror or exc}): the next start rebuilds "
                "the table state from the changelog topics")
    return None


def stop_line(committed: bool, broker_silent: bool) -> str:
    """The last line of a clean stop.  ``committed``: the last offset commit reached the broker (or
    there was none to make); the outputs were delivered, or the producer's close would have raised."""
    if committed:
        if broker_silent:
            return ("stopped while the broker was unreachable: offsets committed before it went away, "
                    "outputs delivered, tables closed")
        return "stopped: offsets committed, outputs delivered, tables closed"
    why = "while the broker was unreachable" if broker_silent else "after the last offset commit failed"
    return (f"stopped {why}: outputs delivered, tables closed; the offsets read since the last commit are "
            "not committed: those events are read again at the next start, and each is applied once")


class QuietWorker(faust.Worker):
    """Faust's worker, with three changes."""

    #: Called as soon as the worker handles the stop signals itself, before the app (and its tables) starts.
    on_signals_taken: Callable[[], None] | None = None

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        if self.on_signals_taken is not None:
            self.on_signals_taken()

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """No spinner: Faust's terminal spinner sets the root logger to DEBUG so it can spin on every
        record, and every debug line of aiokafka then builds a LogRecord (10-20% of a busy worker's CPU)."""
        self.spinner = None
        logger.setLevel(level)
        logs.format_root()
        logs.quiet_repeats()

    def _redirect_stdouts(self) -> None:
        """stderr only goes to the log, as ``mode.redirect`` warnings, line by line (a Python warning,
        whatever else is written there; a thread that raises is logged by ``logs.log_thread_crashes``);
        stdout stays where ``logs.say`` writes the lines a person reads (redirected, the demo's deliver
        announced itself as a warning, in the JSON format as a JSON line inside another's)."""
        self.add_context(redirect_stdouts(severity=self.redirect_stdouts_level, stdout=False))


def mode_level(settings: Settings) -> str:
    """``MAILPULSE_LOG_LEVEL`` as the worker's logging library names it (it knows no ``crit``)."""
    return {"crit": "critical", "warn": "warning"}.get(settings.log_level, settings.log_level)


def _run_faust(app: faust.App, settings: Settings, on_signals_taken: Callable[[], None] | None = None) -> int:
    """Runs Faust's worker; ``on_signals_taken``: called once it handles the stop signals itself."""
    worker = QuietWorker(app, loglevel=mode_level(settings), quiet=True)
    worker.on_signals_taken = on_signals_taken
    # A SIGTERM from here until Faust handles the stop signals (its worker's first steps) stops it as
    # Faust would: raised inside its start, it ended the process with a traceback and exit status 1
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.loop.call_soon(worker._on_sigterm))
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        # Faust's loop, closed, left the stop signals at their defaults: another SIGTERM or Ctrl-C while
        # the producer closes and the clean-stop marker is written killed the worker there (no marker:
        # the next start rebuilt every table).  The stop is under way; it is ignored, as Faust does.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0
