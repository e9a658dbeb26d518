"""``mailpulse generate --purchases btyd``: customers who buy as BG/NBD's buy-till-you-die process."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime

import numpy as np
import pytest

from models import bgnbd
from schemas.timeparse import parse_timestamp
from streams.tools.generate import BTYD_PARAMS, generate_history

DAY_MS = 86_400_000


def test_btyd_customers_are_deterministic_logged_in_and_buy_as_bgnbd_says() -> None:
    start, days = date(2025, 6, 1), 365
    events = generate_history(6000, days, 4, start, purchases="btyd")
    assert events == generate_history(6000, days, 4, start, purchases="btyd")
    assert {event["type"] for event in events} == {"identify", "purchase", "product_view"}
    assert all("user_id" in event and "anonymous_id" not in event for event in events)
    purchases: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if event["type"] == "purchase":
            purchases[event["user_id"]].append(parse_timestamp(event["timestamp"]))
            assert event["total"] > 0 and 1 <= len(event["items"]) <= 3
    assert len(purchases) > 5900  # every customer is acquired with a purchase (a few just before the start)
    # the customers' (x, t_x, T) at the end of the history give back about the generator's parameters
    end = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
    summary = np.array([(len(times) - 1, (max(times) - min(times)) / DAY_MS, (end - min(times)) / DAY_MS)
                        for times in purchases.values()])
    model = bgnbd.fit(summary[:, 0], summary[:, 1], summary[:, 2])
    assert model.r == pytest.approx(BTYD_PARAMS["r"], rel=0.25)
    assert model.alpha == pytest.approx(BTYD_PARAMS["alpha"], rel=0.25)
    dropout = BTYD_PARAMS["a"] / (BTYD_PARAMS["a"] + BTYD_PARAMS["b"])
    assert model.a / (model.a + model.b) == pytest.approx(dropout, rel=0.25)


def test_the_default_history_has_no_btyd_and_an_unknown_process_is_refused() -> None:
    default = generate_history(20, 10, 1, date(2026, 1, 1))
    assert default == generate_history(20, 10, 1, date(2026, 1, 1), purchases="sessions")
    assert any(event["type"] == "page_view" for event in default)
    with pytest.raises(ValueError, match="purchases must be one of"):
        generate_history(20, 10, 1, date(2026, 1, 1), purchases="poisson")
