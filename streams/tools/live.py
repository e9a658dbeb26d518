"""The live terminal view of ``mailpulse run`` (on when stdout is a terminal): events/s per topic,
dead letters by code, profiles, segment changes, triggers by type, the last triggers and the lag,
redrawn in place each second from the worker's own metrics and the ``triggers`` topic."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from prometheus_client import CollectorRegistry
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streams.topics import TRIGGERS

#: Most recent triggers shown.
RECENT = 6


def totals(registry: CollectorRegistry, sample_name: str, label: str | None = None,
           **match: str) -> dict[str, float]:
    """Sum of a metric's samples by one label's value ("" without ``label``), with ``match`` labels."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name != sample_name or any(sample.labels.get(k) != v for k, v in match.items()):
                continue
            key = sample.labels.get(label, "") if label else ""
            out[key] = out.get(key, 0.0) + sample.value
    return out


class LiveView:
    """Draws the view until :meth:`stop`; reads the triggers topic from its end with its own consumer
    (no group joined)."""

    def __init__(self, registry: CollectorRegistry, bootstrap: str, console: Console | None = None) -> None:
        self.registry = registry
        self.bootstrap = bootstrap
        # the terminal as it is now (whatever replaces sys.stdout later)
        self.console = console or Console(file=sys.stdout)
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last: tuple[float, dict[str, float]] | None = None

    def start(self) -> None:
        for target, name in ((self._draw, "live-view"), (self._read_triggers, "live-view-triggers")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _read_triggers(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"mailpulse-live-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "log_level": 0})
        try:
            info = consumer.list_topics(TRIGGERS, timeout=10).topics.get(TRIGGERS)
            if info is None or not info.partitions:
                return
            consumer.assign([TopicPartition(TRIGGERS, p, OFFSET_END) for p in info.partitions])
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=100, timeout=0.5):
                    value = message.value()
                    if message.error() is None and value:
                        try:
                            self.recent.append(orjson.loads(value))
                        except orjson.JSONDecodeError:
                            continue
        finally:
            consumer.close()

    def _draw(self) -> None:
        with Live(self.render(), console=self.console, refresh_per_second=2, transient=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while not self._stop.wait(1.0):
                live.update(self.render())

    def render(self) -> Group:
        registry = self.registry
        now = time.monotonic()
        processed = totals(registry, "mailpulse_events_total", "topic", outcome="processed")
        rates: dict[str, float] = {}
        if self._last is not None:
            then, before = self._last
            rates = {topic: max(0.0, (n - before.get(topic, 0.0)) / max(now - then, 1e-6))
                     for topic, n in processed.items()}
        self._last = (now, processed)
        lag = totals(registry, "mailpulse_consumer_lag", "topic")

        flow = Table(title="mailpulse, live (Ctrl-C stops)", title_justify="left", expand=False)
        for column in ("input topic", "events/s", "processed", "lag"):
            flow.add_column(column, justify="right" if column != "input topic" else "left")
        for topic in sorted(processed):
            flow.add_row(topic, f"{rates.get(topic, 0.0):,.0f}", f"{processed[topic]:,.0f}",
                         f"{lag.get(topic, 0.0):,.0f}")

        counts = Table(show_header=True, expand=False)
        counts.add_column("outputs")
        counts.add_column("count", justify="right")
        profiles = sum(totals(registry, "mailpulse_profiles_written_total").values())
        counts.add_row("profiles written", f"{profiles:,.0f}")
        counts.add_row("segment changes", f"{sum(totals(registry, 'mailpulse_segment_changes_total').values()):,.0f}")
        for kind, n in _sorted(totals(registry, "mailpulse_triggers_total", "type")):
            counts.add_row(f"triggers: {kind}", f"{n:,.0f}")
        for reason, n in _sorted(totals(registry, "mailpulse_dead_letters_total", "reason")):
            counts.add_row(Text(f"dead letters: {reason}", style="yellow"), f"{n:,.0f}")

        recent = Table(title="latest triggers", title_justify="left", expand=False)
        for column in ("type", "first name", "send at"):
            recent.add_column(column)
        for trigger in reversed(self.recent):
            payload = trigger.get("payload") or {}
            recent.add_row(str(trigger.get("type")), str(payload.get("first_name") or ""),
                           str(trigger.get("send_at") or ""))
        return Group(flow, counts, recent)


def _sorted(values: dict[str, float]) -> Iterable[tuple[str, float]]:
    return sorted(((k, v) for k, v in values.items() if v), key=lambda kv: (-kv[1], kv[0]))
