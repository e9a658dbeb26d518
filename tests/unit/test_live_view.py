"""The live terminal view of `mailpulse run`, drawn from a worker's metrics."""

from __future__ import annotations

from rich.console import Console

from streams.metrics import Metrics
from streams.tools.live import LiveView


def _draw(view: LiveView) -> str:
    console = Console(record=True, width=120, force_terminal=False)
    console.print(view.render())
    return console.export_text()


def test_the_view_shows_rates_counts_dead_letters_lag_and_the_latest_triggers() -> None:
    metrics = Metrics()
    view = LiveView(metrics.registry, "127.0.0.1:1", console=Console(width=120))
    metrics.event("clicks", "processed").inc(100)
    first = _draw(view)
    assert "clicks" in first and "100" in first
    metrics.event("clicks", "processed").inc(250)
    metrics.dead_letters.labels("unknown_type").inc(3)
    metrics.triggers.labels("cart_abandoned").inc(2)
    metrics.consumer_lag.labels("clicks", "0").set(42)
    view.recent.append({"type": "cart_abandoned", "send_at": "2026-03-01T10:30:00.000Z",
                        "payload": {"first_name": "Ana"}})
    second = _draw(view)
    assert "350" in second  # processed so far
    assert "dead letters: unknown_type" in second and "triggers: cart_abandoned" in second
    assert "42" in second  # lag
    assert "Ana" in second and "2026-03-01T10:30:00.000Z" in second
    rate = next(line for line in second.splitlines() if "clicks" in line and "350" in line)
    assert int(rate.split("│")[2].strip().replace(",", "")) > 0  # events/s between the two draws
