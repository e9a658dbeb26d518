"""The one metrics module: every Prometheus metric of the contract (section 7), fixed label sets.

Metrics live in a :class:`Metrics` object with its own registry (no module-level globals), built
once per worker by the app factory and handed to the agents.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from schemas.events import INPUT_TOPICS
from streams.domain.config import Triggers

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
#: The parts of the work each offset commit waits for (``mailpulse_commit_seconds{stage}``).
COMMIT_STAGES = ("write_out", "flush", "waited")
RECORD_AGENTS = ("ingest", "profiles")
#: The (agent, stage) pairs of ``mailpulse_processing_errors_total``, exported at 0 from the start: a
#: series that first appears at 1 shows no ``increase``, and the alert on it missed a first error.
PROCESSING_ERROR_STAGES = (("ingest", "decode"), ("profiles", "dispatch"), ("profiles", "advance"),
                           ("profiles", "route"), ("profiles", "record"), ("profiles", "stored_state"),
                           ("cooccurrence", "record"), ("product_recs", "record"))
#: The codes of ``mailpulse_dead_letters_total{reason}`` (the README's table), and the outcomes of
#: ``mailpulse_events_total``: exported at 0 from the start, as the processing errors are (the dead
#: letters of a first bad batch came as one increment, which the alert's ``rate`` did not see).
DEAD_LETTER_CODES = ("empty", "too_large", "not_json", "not_object", "unknown_type", "missing_field",
                     "bad_timestamp", "invalid_identifier", "schema", "future_timestamp", "processing_error")
EVENT_OUTCOMES = ("processed", "duplicate", "dead_letter")
#: A model call on one profile takes tens of microseconds.
SCORING_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total
        self._event_children: dict[tuple[str, str], Any] = {}
        self.events = Counter("mailpulse_events", "Input events handled", ["topic", "outcome"], registry=r)
        self.dead_letters = Counter("mailpulse_dead_letters", "Rejected inputs", ["reason"], registry=r)
        for code in DEAD_LETTER_CODES:
            self.dead_letters.labels(code)
        for topic in INPUT_TOPICS:
            for outcome in EVENT_OUTCOMES:
                self.event(topic, outcome)
        self.profile_merges = Counter("mailpulse_profile_merges", "Profiles merged", ["kind"], registry=r)
        self.segment_changes = Counter(
            "mailpulse_segment_changes", "Segment membership changes emitted", ["segment", "change"], registry=r
        )
        self.triggers = Counter("mailpulse_triggers", "Triggers emitted", ["type"], registry=r)
        self.triggers_suppressed = Counter(
            "mailpulse_triggers_suppressed", "Triggers held back by guardrails", ["type", "reason"], registry=r
        )
        self.triggers_deferred = Counter(
            "mailpulse_triggers_deferred", "Triggers whose send_at guardrails moved later (quiet hours, best hour)",
            ["type", "reason"], registry=r,
        )
        self.consumer_lag = Gauge(
            "mailpulse_consumer_lag", "Messages not yet processed", ["topic", "partition"], registry=r
        )
        self.event_latency = Histogram(
            "mailpulse_event_latency_seconds", "Input arrival to output sent", ["output"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.scoring_seconds = Histogram(
            "mailpulse_scoring_seconds", "Model scoring time per batch", buckets=SCORING_BUCKETS, registry=r
        )
        self.model_info = Gauge("mailpulse_model_info", "1 for each loaded model", ["model", "version"], registry=r)
        self.models_unavailable = Gauge(
            "mailpulse_models_unavailable",
            "1 when scoring is on in the config but the model directory could not be loaded: no scores", registry=r)
        self.profiles_written = Counter(
            "mailpulse_profiles_written", "Profile snapshots published", ["change"], registry=r
        )
        self.assigned_partitions = Gauge(
            "mailpulse_assigned_partitions", "Partitions this worker owns after the last rebalance", ["topic"],
            registry=r,
        )
        self.identity_blocks_skipped = Counter(
            "mailpulse_identity_blocks_skipped", "Fuzzy-matching blocks too large to score a newcomer in",
            registry=r,
        )
        self.events_applied = Counter(
            "mailpulse_events_applied", "Events folded into profiles (released by the watermark)", registry=r,
        )
        self.late_events = Counter("mailpulse_late_events", "Events older than the watermark", ["topic"], registry=r)
        self.before_dedupe = Counter(
            "mailpulse_events_before_dedupe_window",
            "Events counted as duplicates only because they are stamped before the window of event ids their "
            "profile still holds (MAILPULSE_DEDUPE_RETENTION_DAYS behind its newest event, or ids forgotten "
            "past limits.seen_ids or seen_id_bytes, or by shrinking an oversize state): a replay of old "
            "history, old history sent for the first time (which needs a longer retention), or a very "
            "busy profile's slightly late events", ["topic"], registry=r)
        self.commit_seconds = Histogram(
            "mailpulse_commit_seconds",
            "Time of each offset commit by stage. Holding the worker: write_out (the staged table values "
            "written to RocksDB and queued for the changelog; at a stop or a rebalance the outputs sent so "
            "far delivered first), flush (at a stop or a rebalance: the rest of the queue delivered). Not "
            "holding it: waited (the periodic commit waiting for the broker to acknowledge, while the "
            "agents go on)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        for stage in COMMIT_STAGES:
            self.commit_seconds.labels(stage)
        self.record_seconds = Histogram(
            "mailpulse_record_seconds",
            "Worker-side time of a record: from the fetch that brought it to its outputs handed to the "
            "producer (ingest: the batch wait included)",
            ["agent"], buckets=LATENCY_BUCKETS, registry=r,
        )
        for agent in RECORD_AGENTS:
            self.record_seconds.labels(agent)
        self.identifiers_blocked = Counter(
            "mailpulse_identifiers_blocked",
            "Placeholder identifier values dropped at ingest (identity.blocked_values)",
            ["field"], registry=r,
        )
        self.identity_limited = Counter(
            "mailpulse_identity_limited",
            "Links not merged because the profile would exceed identity.max_per_profile (kept as possible matches)",
            ["kind"], registry=r,
        )
        self.entries_dropped = Counter(
            "mailpulse_profile_entries_dropped",
            "Entries a bounded per-profile collection dropped, past its config limits.* bound "
            "(possible_matches: the lowest scores; traits, consent, context, cart_lines: new keys, traits also "
            "the largest values past limits.trait_bytes; cart_moves: oldest moves combined; "
            "purchases: the oldest past 100; seen: the oldest event ids, whose window then counts as seen; "
            "history: the oldest timestamps of an event type kept for windowed segment counts; "
            "blocks: the oldest fuzzy-matching block registrations; currencies: the codes that sort "
            "last in spend_by_currency; match_aliases: new names of possible matches' keys, those no "
            "kept match uses first)",
            ["collection"], registry=r,
        )
        for collection in ("possible_matches", "traits", "consent", "context", "cart_lines", "cart_moves",
                           "purchases", "seen", "history", "blocks", "currencies", "match_aliases"):
            self.entries_dropped.labels(collection)
        self.released_early = Counter(
            "mailpulse_events_released_early",
            "Parked events applied before the watermark reached them: a profile parks at most limits.parked_events "
            "(1,000) while an input partition holds the watermark back", registry=r,
        )
        self.states_shrunk = Counter(
            "mailpulse_profile_states_shrunk",
            "Profile states whose encoding was over the 900 KB value limit, made smaller by halving their largest "
            "collections (what went is in mailpulse_profile_entries_dropped_total)", registry=r,
        )
        self.internal_skipped = Counter(
            "mailpulse_internal_messages_skipped",
            "Internal messages of a type this version does not know (a newer worker's, in a rolling upgrade), "
            "skipped", registry=r,
        )
        self.processing_errors = Counter(
            "mailpulse_processing_errors",
            "Messages or profiles whose handling raised; the input is dead-lettered (processing_error), the rest "
            "of the batch goes on", ["agent", "stage"], registry=r,
        )
        for agent, stage in PROCESSING_ERROR_STAGES:
            self.processing_errors.labels(agent, stage)
        self.worker_state = Gauge(
            "mailpulse_worker_state", "1 for the state the worker is in (what /healthz and /readyz tell)", ["state"],
            registry=r,
        )
        self.product_recs_read = Counter(
            "mailpulse_product_recs_read",
            "Records of the product-recs topic read into this worker's replica (payload recommendations)", registry=r,
        )
        self.product_neighbours_dropped = Counter(
            "mailpulse_product_neighbours_dropped",
            "Co-occurring products dropped from a product's counts past the strongest 50 it keeps (the weakest "
            "go; a product dropped and seen again starts from its new count)", registry=r,
        )
        self.product_neighbours_evicted = Counter(
            "mailpulse_product_neighbours_evicted",
            "Products deleted from the product-neighbours table and the recommendations topic past "
            "MAILPULSE_RECS_PRODUCTS over the partitions (the least recently counted go first; one counted "
            "again starts from its new counts)", registry=r,
        )
        self.product_recs_evicted = Counter(
            "mailpulse_product_recs_evicted",
            "Products dropped from this worker's replica of the recommendations past MAILPULSE_RECS_PRODUCTS "
            "(those written longest ago): their triggers recommend nothing until their next record", registry=r,
        )
        self.output_queued = Gauge(
            "mailpulse_output_queued_messages",
            "Outputs handed to the producer that the broker has not acknowledged yet, as the health loop saw "
            "them last second (a number that stays up while the worker is idle means a partition is not "
            "taking writes)", registry=r,
        )
        self.rocksdb_memory = Gauge(
            "mailpulse_rocksdb_memory_bytes",
            "RocksDB memtables and block cache of all the worker's table partitions (MAILPULSE_ROCKSDB_MEMORY_MB)",
            registry=r,
        )

    def event(self, topic: str, outcome: str) -> Any:
        """The ``mailpulse_events_total`` child for (topic, outcome), cached: agents count per event."""
        child = self._event_children.get((topic, outcome))
        if child is None:  # (cached by label: a topic that is not an input topic adds no entry)
            label = input_topic(topic)
            child = self._event_children.get((label, outcome))
            if child is None:
                child = self._event_children[(label, outcome)] = self.events.labels(label, outcome)
        return child

    def serve(self, port: int, health: Health | None = None, host: str = "127.0.0.1") -> int:
        """Serve /metrics (and with ``health``, /healthz and /readyz) on ``host:port``; if the port is
        taken, on a free one (logged).  Returns the port."""
        try:
            return _serve(host, port, self.registry, health)
        except OSError:
            free = _serve(host, 0, self.registry, health)
            log.warning("metrics port %d is taken; serving /metrics on port %d instead", port, free)
            return free


#: Seconds without a turn of the event loop after which /healthz fails.
STALL_AFTER_S = 15.0
#: Seconds without an answer to the broker probe after which /readyz fails (probes every 5 s).
BROKER_SILENT_AFTER_S = 12.0
#: Seconds with outputs queued and none acknowledged by the broker after which /readyz fails: the
#: worker goes on consuming while what it makes goes nowhere (a partition that takes no writes).
OUTPUTS_STUCK_AFTER_S = 30.0
#: Seconds an agent may take no record while records handed to it wait, before /healthz fails: its
#: event loop turns (a handler runs inside it, so a long one stalls the loop, which fails sooner), but
#: the agent awaits something that never comes, and its partitions stop while the worker looks alive.
AGENT_STALL_AFTER_S = 120.0
#: Seconds a partition's committed offset may stay put while records wait past it, before /healthz
#: fails (:meth:`Health.watch_partitions`).  Longer than an agent's: in a long catch-up the fetch reads
#: the partitions unevenly (holds of 15-22 s were seen with 100k records waiting), and a restart
#: there would start the catch-up again.
PARTITION_STALL_AFTER_S = 300.0
WORKER_STATES = ("starting", "recovering", "running", "error")


#: The label value of what an internal record names outside a fixed label set (a damaged or foreign
#: record: its text, an address say, would have been a label value, a series of its own).
OTHER_LABEL = "other"
#: The ``kind`` labels of ``mailpulse_profile_merges_total`` (contract 7).
MERGE_KINDS = frozenset({"exact", "fuzzy"})


def fixed_label(value: object, allowed: frozenset[str] | tuple[str, ...]) -> str:
    """``value`` as a label of a fixed set: itself when ``allowed``, else :data:`OTHER_LABEL`."""
    return value if isinstance(value, str) and value in allowed else OTHER_LABEL


def input_topic(topic: object) -> str:
    """The ``topic`` label of an input event (the profile hop reads it from its internal record)."""
    return fixed_label(topic, INPUT_TOPICS)


@dataclass
class Health:
    """What /healthz and /readyz answer (contract 7, v1.1), kept up to date from the event loop
    (:func:`streams.app._health`) and read by the HTTP thread: plain values, no locks needed."""

    beat: float = field(default_factory=time.monotonic)  # the event loop's last turn
    crashed: str | None = None  # the name of an agent that crashed
    #: Threads the worker runs beside its agents (the demo's feed and deliver): one that ended fails
    #: /healthz as a crashed agent does (it ended on an error, or the worker is stopping).
    helpers: dict[str, threading.Thread] = field(default_factory=dict)
    ready: bool = False  # partitions assigned and table recovery done
    broker_answered: float | None = None  # the last time the broker answered a probe (None: never)

    def broker_reachable(self, answered: bool) -> None:
        """Called by the broker probe (:func:`streams.broker.watch_broker`) after each probe."""
        if answered:
            self.broker_answered = time.monotonic()

    def broker_silent(self, now: float) -> bool:
        """No probe answered for :data:`BROKER_SILENT_AFTER_S` (or ever)."""
        return self.broker_answered is None or now - self.broker_answered > BROKER_SILENT_AFTER_S

    #: Records (batches, runs) each agent has taken, counted by the agents (:meth:`watch_agents` reads it).
    taken: dict[str, int] = field(default_factory=dict)
    #: Why an agent is not running: it took no record for :data:`AGENT_STALL_AFTER_S` while records wait.
    wedged: str | None = None
    _idle: dict[str, tuple[int, float]] = field(default_factory=dict)  # agent -> (taken, since when)

    def took(self, agent: str) -> None:
        self.taken[agent] = self.taken.get(agent, 0) + 1

    def watch_agents(self, waiting: Mapping[str, int], now: float | None = None) -> None:
        """Called each second from the event loop with the records handed to each agent and not yet
        taken: an agent with records waiting that has taken none for :data:`AGENT_STALL_AFTER_S` while
        the worker is ready (not while its tables recover) is wedged."""
        now = time.monotonic() if now is None else now
        wedged = None
        for agent, queued in sorted(waiting.items()):
            count = self.taken.get(agent, 0)
            idle = self._idle.get(agent)
            if not queued or not self.ready or idle is None or idle[0] != count:
                self._idle[agent] = (count, now)
            elif wedged is None and now - idle[1] > AGENT_STALL_AFTER_S:
                wedged = f"agent {agent} took no record for {now - idle[1]:.0f} s while {queued} wait"
        self.wedged = wedged

    #: Why a partition is not read: the broker holds records past its committed offset, which did not
    #: move for :data:`PARTITION_STALL_AFTER_S` while the worker was ready (a fetch that stopped, a partition
    #: left paused: nothing reaches the agents, so :meth:`watch_agents` sees nothing waiting).
    unread: str | None = None
    _reading: dict[str, tuple[int, float]] = field(default_factory=dict)  # partition -> (position, since when)

    def watch_partitions(self, positions: Mapping[str, tuple[int, int]], now: float | None = None) -> None:
        """Called every few seconds with each assigned partition's (committed offset, the broker's
        end): one whose offset stayed put for :data:`PARTITION_STALL_AFTER_S` while records wait past
        it, with the worker ready, is not being read."""
        now = time.monotonic() if now is None else now
        unread = None
        for name, (position, end) in sorted(positions.items()):
            seen = self._reading.get(name)
            if position >= end or not self.ready or seen is None or seen[0] != position:
                self._reading[name] = (position, now)
            elif unread is None and now - seen[1] > PARTITION_STALL_AFTER_S:
                unread = f"partition {name} read nothing for {now - seen[1]:.0f} s while {end - position} records wait"
        for name in self._reading.keys() - positions.keys():
            del self._reading[name]
        self.unread = unread

    started: bool = False  # the event loop has reported once
    #: Since when outputs have been queued with none acknowledged (None: the producer is keeping up).
    outputs_waiting_since: float | None = None
    #: Outputs the producer gave up on: /readyz fails from then on (the next commit stops the worker;
    #: an idle worker has none, and a queue emptied by failures must not read as recovered).
    outputs_lost: int = 0
    _acknowledged: int = -1
    _stuck_told: bool = False

    def output_progress(self, queued: int, acknowledged: int, lost: int = 0,
                        now: float | None = None) -> str | None:
        """Called each second with the producer's counts.  Returns a line for the log when outputs
        become stuck or move again (once each), else None."""
        now = time.monotonic() if now is None else now
        self.outputs_lost = lost
        if lost:
            return None  # the producer logged each one
        if queued == 0 or acknowledged != self._acknowledged:
            self._acknowledged = acknowledged
            self.outputs_waiting_since = None
            if self._stuck_told:
                self._stuck_told = False
                return "outputs are acknowledged by the broker again"
            return None
        if self.outputs_waiting_since is None:
            self.outputs_waiting_since = now
        if not self._stuck_told and self.outputs_stuck_s(now):
            self._stuck_told = True
            return (f"{queued} outputs queued and none acknowledged by the broker for "
                    f"{now - self.outputs_waiting_since:.0f} s; /readyz fails until they are")
        return None

    def outputs_stuck_s(self, now: float | None = None) -> float:
        """Seconds outputs have waited with none acknowledged, past :data:`OUTPUTS_STUCK_AFTER_S` (else 0)."""
        since = self.outputs_waiting_since  # read once: the event loop's thread may clear it meanwhile
        if since is None:
            return 0.0
        waited = (time.monotonic() if now is None else now) - since
        return waited if waited > OUTPUTS_STUCK_AFTER_S else 0.0

    def failing(self, now: float | None = None) -> str | None:
        """Why the worker is not alive, as /healthz says it (None: it is): an agent crashed or is wedged,
        a partition is not read, a helper thread ended, or the event loop stalled."""
        if self.crashed is not None:
            return f"agent {self.crashed} crashed"
        if self.wedged is not None:
            return self.wedged
        if self.unread is not None:
            return self.unread
        helper = next((name for name, thread in self.helpers.items() if not thread.is_alive()), None)
        if helper is not None:
            return f"{helper} stopped"
        stalled = (time.monotonic() if now is None else now) - self.beat
        return f"event loop stalled {stalled:.0f} s" if stalled > STALL_AFTER_S else None

    def state(self, now: float | None = None) -> str:
        if self.failing(now) is not None:
            return "error"
        if not self.started:
            return "starting"
        return "running" if self.ready else "recovering"

    def answer(self, path: str) -> tuple[bool, str]:
        now = time.monotonic()
        if path == "/healthz":
            failing = self.failing(now)
            return (True, "ok\n") if failing is None else (False, failing + "\n")
        if self.broker_silent(now):
            return False, "broker unreachable\n"
        if self.outputs_lost:
            return False, f"{self.outputs_lost} outputs lost (the broker did not take them)\n"
        # counted up to the loop's last turn: a stalled loop cannot see acknowledgements (/healthz
        # tells that)
        stuck = self.outputs_stuck_s(min(now, self.beat + 2.0))
        if stuck:
            return False, f"outputs not acknowledged by the broker for {stuck:.0f} s\n"
        return (True, "ready\n") if self.ready else (False, "partitions not assigned or tables recovering\n")


class DeliverMetrics:
    """The metrics of ``mailpulse deliver`` (its own process and port)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.deliveries = Counter("mailpulse_deliveries", "Triggers handled by deliver", ["type", "outcome"],
                                  registry=r)
        # exported at 0 from the start: MailpulseDeliveriesFailing reads their rates, and a series that
        # first appears at 1 shows no increase (a type's first failure went uncounted)
        for kind in Triggers.model_fields:
            for outcome in ("sent", "failed"):
                self.deliveries.labels(kind, outcome)
        self.delay = Histogram("mailpulse_delivery_delay_seconds", "Delivery time past the trigger's send_at",
                               buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400, 86400), registry=r)
        self.retries = Counter("mailpulse_delivery_retries", "Delivery attempts after the first", ["target"],
                               registry=r)
        self.ledger_entries = Gauge("mailpulse_delivery_ledger_entries", "Trigger ids in the delivery ledger",
                                    registry=r)
        self.held = Gauge("mailpulse_deliveries_held", "Triggers held: until their send_at, their grace after they "
                          "were read, or their next round", registry=r)
        self.target_up = Gauge("mailpulse_delivery_target_up", "0 from the third trigger in a row that failed "
                               "for the target's sake (no connection, timeout, SMTP 421 or a session that cannot "
                               "start, HTTP 5xx/401/408/429) until "
                               "the target answers a later attempt or a probe, else 1", registry=r)
        self.target_up.set(1)
        self.probes = Counter("mailpulse_delivery_probes", "Probes of a down target when no trigger was due to "
                              "try it (SMTP: an envelope without a message; webhook: HEAD)", ["target", "outcome"],
                              registry=r)
        self.ledger_pruned = Counter("mailpulse_delivery_ledger_pruned",
                                     "Trigger ids forgotten past MAILPULSE_DELIVER_LEDGER_DAYS", registry=r)
        self.unsubscribes = Counter("mailpulse_unsubscribes", "Unsubscribes (one-click links and bounces)",
                                    ["source"], registry=r)
        for source in ("unsubscribe", "bounce"):
            self.unsubscribes.labels(source)
        self.withdrawals = Counter("mailpulse_delivery_withdrawals",
                                   "Consent withdrawals and erasures read from the pipeline (their triggers are "
                                   "cancelled)", ["reason"], registry=r)
        for reason in ("consent", "erased", "other", "unreadable"):
            self.withdrawals.labels(reason)
        self.records_unacknowledged = Gauge(
            "mailpulse_delivery_records_unacknowledged", "Records for Kafka (delivery-failed reports, consent "
            "withdrawals) kept in the ledger until the broker acknowledges them", registry=r)
        self.oldest_record_age = Gauge(
            "mailpulse_delivery_oldest_record_age_seconds", "How long the oldest record for Kafka kept in the "
            "ledger has waited for the broker to acknowledge it (0 when none waits)", registry=r)
        self.record_errors = Counter("mailpulse_delivery_record_errors", "Attempts to produce a kept record for "
                                     "Kafka that the broker or the producer did not take (it is produced again)",
                                     ["topic"], registry=r)
        for topic in ("delivery-failed", "identities"):
            self.record_errors.labels(topic)


class _FinishingWSGIServer(ThreadingWSGIServer):
    """prometheus-client's server, whose ``server_close`` waits for the requests in progress, up to
    :attr:`finish_within_s` in all (a client that trickles its request must not hold a stop).  Its
    request threads stay daemon threads: none holds the interpreter's exit."""

    finish_within_s = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # (before the socket: a bind that fails calls server_close, whose error then hid the bind's own,
        # and the caller's fall-back to a free port never ran)
        self._requests: list[threading.Thread] = []
        self._requests_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self._requests_lock:
            self._requests = [*(t for t in self._requests if t.is_alive()), thread]
        thread.start()

    def server_close(self) -> None:
        WSGIServer.server_close(self)  # the socket (ThreadingMixIn's own would wait without a limit)
        deadline = time.monotonic() + self.finish_within_s
        with self._requests_lock:
            requests = list(self._requests)
        for thread in requests:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr: a client that went quiet or
        away at debug level, anything else as an error naming its class (its traceback at debug)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, TimeoutError | ConnectionError):
            log.debug("http: a client went quiet or away (%s)", type(exc).__name__)
        else:
            log.error("http: a request failed: %s", type(exc).__name__)
            log.debug("http: the failed request", exc_info=exc)


class _TimedHandler(_SilentHandler):
    """A read of a request that waits longer than :attr:`timeout` for its client gives up on it.
    What wsgiref writes to stderr (the traceback of an app that raised) goes to the log instead."""

    timeout = 5

    def get_stderr(self) -> Any:
        return _LoggedTraceback()


class _LoggedTraceback:
    """wsgiref's stderr for one request: the traceback it prints when the app raised becomes one
    error line, the text itself at debug level (an exception's text can hold a request's values)."""

    def __init__(self) -> None:
        self._text: list[str] = []

    def write(self, text: str) -> int:
        self._text.append(text)
        return len(text)

    def flush(self) -> None:
        if self._text:
            text, self._text = "".join(self._text), []
            last = text.strip().splitlines()[-1] if text.strip() else ""
            log.error("http: a request's app raised %s; answered 500", last.split(":", 1)[0][:100])
            log.debug("http: the app's traceback: %s", text)


def serve_wsgi(host: str, port: int, app: Any, name: str = "metrics-http", finish_requests: bool = False) -> WSGIServer:
    """Serves a WSGI ``app`` in a daemon thread with prometheus-client's server; returns the server
    (its ``server_port`` a free one when ``port`` is 0; ``shutdown`` stops it).  ``finish_requests``:
    its ``server_close`` waits for the requests in progress (whose app writes what must outlive them:
    ``deliver``'s unsubscribes, to a ledger closed after the server)."""
    # every request's read gives up after ``_TimedHandler.timeout``: a client that connects and sends
    # nothing (a half-open probe, a port scan) held a request thread of the worker's server for good
    server: WSGIServer = make_server(host, port, app, _FinishingWSGIServer if finish_requests else ThreadingWSGIServer,
                                     handler_class=_TimedHandler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def _serve(host: str, port: int, registry: CollectorRegistry, health: Health | None) -> int:
    """prometheus-client's own WSGI server, with /healthz and /readyz beside /metrics."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if health is not None and path in ("/healthz", "/readyz"):
            ok, body = health.answer(path)
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [body.encode()]
        return metrics_app(environ, start_response)

    return int(serve_wsgi(host, port, app).server_port)


def observe_many(histogram: Any, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts``, with one increment per bucket hit and one of
    the sum.  Why: ``observe`` takes two locks per call, ~2.4 µs; the profile agent observes a latency
    per output message (~3 µs per event), and now does so once per record.  Uses the bucket and sum
    values of prometheus-client's ``Histogram`` (a test checks the exposition equals ``observe``'s)."""
    if not amounts:
        return
    bounds: Sequence[float] = histogram._upper_bounds
    counts: dict[int, int] = {}
    for amount in amounts:
        index = bisect_left(bounds, amount)  # the first bound >= amount, as observe's "amount <= bound"
        counts[index] = counts.get(index, 0) + 1
    for index, count in counts.items():
        histogram._buckets[index].inc(count)
    histogram._sum.inc(sum(amounts))
