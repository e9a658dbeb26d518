"""``bench.eval_predictions``: CDNOW's lines become the purchase events ``train`` reads."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.eval_predictions import cdnow_events, missed
from streams.ingest import Accepted, Source, decode

MASTER = """ customer_id  date number_of_cds  dollar_value
 00002 19970112  1   12.00
 00001 19970101  1   11.77
 00002 19970112  5   77.00
 00003 19970102  0    0.00
"""


def test_lines_become_valid_purchases_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "CDNOW_master.txt"
    path.write_text(MASTER)
    events = list(cdnow_events(path))
    assert [(e["user_id"], e["total"]) for e in events] == [
        ("cdnow-1", 11.77), ("cdnow-3", 0.0), ("cdnow-2", 12.0), ("cdnow-2", 77.0)]
    assert events[0]["timestamp"] == 852_120_000_000 + 1_000  # 1997-01-01 12:00:01 UTC (the file's second line)
    assert events[3]["items"] == [{"product_id": "cd", "quantity": 5, "price": 15.4}]
    assert len({e["event_id"] for e in events}) == len({e["order_id"] for e in events}) == 4
    for n, event in enumerate(events):
        assert isinstance(decode(orjson.dumps(event), Source("purchases", 0, n, None, 0), 0), Accepted), event
    assert {e["user_id"] for e in cdnow_events(path, split=2)} == {"cdnow2-1", "cdnow2-2", "cdnow2-3"}


def test_missed_names_each_baseline_ahead() -> None:
    figures = {"roc_auc": 0.80, "pr_auc": 0.50}
    row = {"horizon": 30, "model": figures, "BG/NBD": {"roc_auc": 0.81, "pr_auc": 0.40},
           "recency-frequency": {"roc_auc": 0.70, "pr_auc": 0.51}}
    assert missed([row]) == ["30d: roc_auc 0.8 < BG/NBD's 0.81", "30d: pr_auc 0.5 < recency-frequency's 0.51"]
    assert missed([{**row, "BG/NBD": figures, "recency-frequency": figures}]) == []
