"""``mailpulse train``: the purchase-probability model (and so the churn probability) from a history.

Only events at or before ``--as-of`` are used.  The history is cut at several times ``c`` = as-of minus
1, 2, ... horizons (:func:`cutoffs`); at each cut every profile that exists then gives one example:
its features at ``c`` (the profile holding the events up to ``c`` only, folded as the stream folds
them) and the label "at least one purchase in (c, c + horizon]", read from the person's later
purchases (after every identity merge up to as-of).  So the model learns exactly what it is asked at
scoring time: from a profile now, a purchase in the next ``horizon`` days.

About a fifth of the people (by a hash of their profile key, so every cut of one person falls on the
same side) are held out; the report gives the model's AUC, log loss and Brier score on them, and the
log loss of always predicting the training purchase rate for comparison.  Training is deterministic
(one thread, fixed seeds): the same history and arguments give the same model and version.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import write_bundle
from models.features import FEATURES, feature_row
from models.scoring import offline_pipeline
from schemas.timeparse import format_ms
from streams.identity import profile_key
from streams.profile import cart_view
from streams.tools.history import HistoryError, read_events

DAY_MS = 86_400_000
#: Most cuts of the history (the newest ones).
MAX_CUTOFFS = 6
#: Share of people held out for the report.
VALIDATION_SHARE = 0.2
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "seed": 7,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "verbose": -1,
    "metric": ["auc", "binary_logloss"],
}
ROUNDS = 200


class TrainError(ValueError):
    """``train`` cannot run; one line for the user."""


@dataclass
class Examples:
    rows: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    people: list[str] = field(default_factory=list)  # the live profile key at as-of (the person)


def cutoffs(first_ts: int, as_of: int, horizon_ms: int, most: int = MAX_CUTOFFS) -> list[int]:
    """as-of minus 1, 2, ... horizons, oldest first, each at least a day after the first event."""
    cuts: list[int] = []
    k = 1
    while len(cuts) < most and as_of - k * horizon_ms >= first_ts + DAY_MS:
        cuts.append(as_of - k * horizon_ms)
        k += 1
    return sorted(cuts)


def build_examples(events: list[dict[str, Any]], as_of: int, horizon_ms: int, cuts: list[int]) -> Examples:
    """One example per profile per cut (module docstring).  ``events``: accepted, none after ``as_of``."""
    ordered = sorted(events, key=lambda event: event["ts"])
    local = offline_pipeline()
    pending: list[tuple[int, str, list[float]]] = []  # (cut, key then, features)
    fed = 0
    for cut in cuts:
        end = fed
        while end < len(ordered) and ordered[end]["ts"] <= cut:
            end += 1
        local.feed(ordered[fed:end])
        fed = end
        local.advance(cut)
        pending += [(cut, key, feature_row(state["profile"], cart_view(state["profile"]), cut))
                    for key, state in local.live()]
    local.feed(ordered[fed:])
    purchases: dict[str, list[int]] = {}
    for event in ordered:
        if event["type"] == "purchase":
            root = local.root_of(profile_key(event))
            if root is not None:
                purchases.setdefault(root, []).append(event["ts"])
    examples = Examples()
    for cut, key, row in pending:
        person = local.root_of(key)
        if person is None:  # erased since
            continue
        examples.rows.append(row)
        examples.labels.append(int(any(cut < ts <= cut + horizon_ms for ts in purchases.get(person, ()))))
        examples.people.append(person)
    return examples


def held_out(person: str) -> bool:
    return hashlib.blake2b(person.encode(), digest_size=2).digest()[0] < VALIDATION_SHARE * 256


def _log_loss(labels: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def _quality(labels: np.ndarray, p: np.ndarray, auc: float | None) -> dict[str, Any]:
    return {"auc": None if auc is None else round(auc, 4), "log_loss": round(_log_loss(labels, p), 4),
            "brier": round(float(np.mean((p - labels) ** 2)), 4)}


def train(events: list[dict[str, Any]], as_of: int, horizon_days: int) -> tuple[Any, dict[str, Any]]:
    """The booster and its report (the metrics ``train`` prints)."""
    import lightgbm

    started = time.monotonic()
    if not events:
        raise TrainError("no events at or before --as-of")
    horizon_ms = horizon_days * DAY_MS
    cuts = cutoffs(min(event["ts"] for event in events), as_of, horizon_ms)
    if not cuts:
        raise TrainError(f"the history before --as-of is too short for a {horizon_days}-day horizon: it needs "
                         "events more than one horizon and a day before --as-of")
    examples = build_examples(events, as_of, horizon_ms, cuts)
    X = np.asarray(examples.rows, dtype=np.float64).reshape(-1, len(FEATURES))
    y = np.asarray(examples.labels, dtype=np.float64)
    holdout = np.asarray([held_out(person) for person in examples.people], dtype=bool)
    train_x, train_y, valid_x, valid_y = X[~holdout], y[~holdout], X[holdout], y[holdout]
    if len(set(train_y.tolist())) < 2:
        raise TrainError(f"cannot train: all {len(train_y)} training examples have the same label "
                         "(purchase or not in the horizon); use a longer history or another horizon")
    train_set = lightgbm.Dataset(train_x, train_y, feature_name=list(FEATURES), free_raw_data=False)
    evals: dict[str, Any] = {}
    two_classes = len(set(valid_y.tolist())) == 2
    valid_sets = [lightgbm.Dataset(valid_x, valid_y, reference=train_set)] if two_classes else []
    booster = lightgbm.train(PARAMS, train_set, num_boost_round=ROUNDS, valid_sets=valid_sets,
                             valid_names=["validation"] if two_classes else None,
                             callbacks=[lightgbm.record_evaluation(evals)])
    version = f"{format_ms(as_of)[:10].replace('-', '')}-" + \
        hashlib.sha256(booster.model_to_string().encode()).hexdigest()[:8]
    base_rate = float(train_y.mean())
    report: dict[str, Any] = {
        "model_version": version,
        "as_of": format_ms(as_of),
        "horizon_days": horizon_days,
        "cutoffs": [format_ms(cut) for cut in cuts],
        "examples": {"train": len(train_y), "validation": len(valid_y)},
        "people": {"train": len({p for p, h in zip(examples.people, holdout, strict=True) if not h}),
                   "validation": len({p for p, h in zip(examples.people, holdout, strict=True) if h})},
        "purchase_rate": {"train": round(base_rate, 4),
                          "validation": round(float(valid_y.mean()), 4) if len(valid_y) else None},
        "trees": booster.num_trees(),
        "features": len(FEATURES),
    }
    if len(valid_y):
        p = np.asarray(booster.predict(valid_x, num_threads=1))
        auc = float(evals["validation"]["auc"][-1]) if two_classes else None
        purchase = _quality(valid_y, p, auc)
        purchase["baseline_log_loss"] = round(_log_loss(valid_y, np.full_like(p, base_rate)), 4)
        report["validation"] = {"purchase_probability": purchase,
                                # the complement: the same ranking and errors, labels flipped
                                "churn_probability": _quality(1 - valid_y, 1 - p, auc)}
    else:
        report["validation"] = None
    report["seconds"] = round(time.monotonic() - started, 2)
    return booster, report


def train_file(events_path: Path, as_of: int, horizon_days: int, out: Path,
               show_progress: bool = False) -> dict[str, Any]:
    """``mailpulse train``: trains and writes the model directory ``out``; returns the report."""
    try:
        events = read_events(events_path, until=as_of, show_progress=show_progress, label="train: reading")
    except HistoryError as exc:
        raise TrainError(str(exc)) from None
    booster, report = train(events, as_of, horizon_days)
    try:
        write_bundle(out, booster, report["model_version"], horizon_days, report["as_of"], report)
    except OSError as exc:
        raise TrainError(f"cannot write {out}: {exc.strerror}") from None
    return report
