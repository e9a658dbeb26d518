from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson
import pytest

from streams.tools.generate import generate_history

#: The small history the model tests train on: 400 people over 100 days from 2026-01-01.
AS_OF = "2026-04-10"
#: The small buy-till-you-die history (``--purchases btyd``): 3,000 customers over 365 days to this day.
BTYD_AS_OF = "2026-06-01"


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in generate_history(400, 100, 5, date(2026, 1, 1))))
    return path


@pytest.fixture(scope="session")
def btyd_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("btyd") / "btyd.jsonl"
    events = generate_history(3000, 365, 9, date(2025, 6, 1), purchases="btyd")
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path
