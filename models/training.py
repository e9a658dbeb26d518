"""``mailpulse train``: the purchase-probability model (and so the churn probability) from a history.

**What is predicted (the churn definition).**  For a profile at a time ``c``: the probability of at
least one purchase in ``(c, c + horizon]``.  The person has *churned* at ``c`` (for this model) when
they make no purchase in that horizon, so the churn probability is exactly 1 minus the purchase
probability.  Purchases count after every identity merge up to as-of: an anonymous visitor who buys
after logging in counts as a buyer.

**Examples.**  Only events at or before ``--as-of`` are used.  The history is cut at several times
``c`` = as-of minus 1, 2, ... horizons (:func:`cutoffs`); at each cut every profile that exists then
gives one example: its features at ``c`` (the profile holding the events up to ``c`` only, folded as
the stream folds them) and its label, read from the person's later purchases.

**Split, in time.**  The model learns from the older cuts.  The newest cut (its labels end at as-of)
is held out: its people are split by a hash of the person (:func:`person_fraction`, :data:`TEST_SHARE`)
into a *validation* half, on which LightGBM stops adding trees (early stopping on log loss) and the
isotonic calibration is fitted, and a *test* half that nothing is fitted on, for the report.  (A
history with one cut only is split by people: a quarter test, a quarter validation, the rest to learn
from.)  So the test figures are those of a model used one horizon after the newest data it learnt
from, on people it was not calibrated on.

**Baselines, fitted in the same run on the same history** (:mod:`models.evaluation`,
:mod:`models.bgnbd`): BG/NBD, fitted by maximum likelihood to every customer's ``(x, t_x, T)`` at
the newest cut (purchases before it only; days), predicting its own P(a purchase in the horizon);
profiles without a purchase yet are outside BG/NBD and get the validation set's purchase rate of
such profiles.  And a recency-frequency heuristic: the validation set's purchase rate of the
example's (days since last purchase, orders) cell.  The report gives ROC-AUC, PR-AUC, Brier score and
expected calibration error of the three on the test set, for all its examples and for its customers
(a purchase before the cut) alone.

**Processes** (``--jobs``, default one per core): the history is read by that many processes
(:func:`streams.tools.history.read_events`), and its people are split into as many shards
(:func:`component_shards`): people who share an identifier, or whom fuzzy matching could link, are in
one shard.  No link, absorb or merge then crosses shards, so every profile folds to what it is within
the whole history (only a possible match between people of two shards is not recorded, and no
feature reads those); the examples are then put in (cut, key) order.  On a 100k-customer history
(1.04M events, 2 cores) this took ``train`` from 72 to 51 s, the same examples.

Training is deterministic (fixed seeds, LightGBM's deterministic mode with a fixed thread count,
:data:`TREE_THREADS`): the same history and arguments give the same model and version, whatever
``--jobs`` and the machine's cores.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from models import bgnbd, evaluation
from models.bundle import import_lightgbm, write_bundle
from models.features import FEATURES, feature_row
from models.report import model_card
from models.scoring import DEFAULT_RULES, StreamRules, offline_pipeline, person_after
from schemas.timeparse import format_ms
from streams.domain.dispatch import reachable_keys
from streams.domain.identity import profile_key
from streams.domain.profile import cart_view
from streams.domain.resolution.blocks import linkable_pairs
from streams.domain.timeline import advance
from streams.tools.forked import run_forked
from streams.tools.history import HistoryError, read_events

DAY_MS = 86_400_000
#: Most cuts of the history (the newest ones).
MAX_CUTOFFS = 6
#: Share of the people of the newest cut held out for the test (the rest: validation).
TEST_SHARE = 0.5
#: LightGBM's threads: a fixed number, not one per core, so that a history gives the same model on
#: any machine (deterministic mode gives the same trees for the same thread count).  Two halved the
#: time of the trees on a 100k-customer history (9.0-10.3 -> 5.2-5.3 s).
TREE_THREADS = 2
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "seed": 7,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": TREE_THREADS,
    "verbose": -1,
    "metric": ["binary_logloss", "auc"],
}
#: Most trees; early stopping on the validation log loss usually ends sooner.
MAX_ROUNDS = 1000
#: Trees without a better validation log loss before early stopping ends training.
EARLY_STOPPING_ROUNDS = 50
#: Trees when the validation set cannot stop training (one class only).
FIXED_ROUNDS = 200
#: Features whose effect has a known sign, everything else held equal (LightGBM monotone constraints):
#: the longer ago the last activity, purchase, click or cart event, the lower the probability; the
#: more purchases in a recent window, the higher.  (Not the lifetime count: a customer who bought
#: often and then stopped long ago is likelier gone than one who rarely buys, BG/NBD's classic case.)
MONOTONE: dict[str, int] = {
    "days_since_last_activity": -1,
    "days_since_last_purchase": -1,
    "days_since_last_click": -1,
    "days_since_last_cart": -1,
    "purchases_30d": 1,
    "purchases_90d": 1,
    "purchases_180d": 1,
    "purchases_365d": 1,
}
CHURN_DEFINITION = ("churned at time c: no purchase in (c, c + horizon]; purchase_probability = P(at least one "
                    "purchase in (c, c + horizon]); churn_probability = 1 - purchase_probability")


class TrainError(ValueError):
    """``train`` cannot run; one line for the user."""


@dataclass
class Examples:
    """One row per example, ordered by (cut, key): the same for any number of processes."""

    rows: np.ndarray[Any, np.dtype[np.float64]]  # (examples, features)
    labels: np.ndarray[Any, np.dtype[np.int64]]
    people: list[str]  # the live profile key at as-of (the person)
    cuts: np.ndarray[Any, np.dtype[np.int64]]  # the cut of each example
    keys: list[str]  # the live profile key at the cut


def cutoffs(first_ts: int, as_of: int, horizon_ms: int, most: int = MAX_CUTOFFS) -> list[int]:
    """as-of minus 1, 2, ... horizons, oldest first, each at least a day after the first event."""
    cuts: list[int] = []
    k = 1
    while len(cuts) < most and as_of - k * horizon_ms >= first_ts + DAY_MS:
        cuts.append(as_of - k * horizon_ms)
        k += 1
    return sorted(cuts)


def component_shards(events: list[dict[str, Any]], shards: int) -> list[list[dict[str, Any]]]:
    """``events`` split into at most ``shards`` lists of about equal size, each in the original order,
    such that events whose identifier keys meet (:func:`~streams.domain.dispatch.reachable_keys`, directly or
    through other events), or that fuzzy matching could link (:func:`linkable_pairs`), fall in the same
    list.  Each list then folds as it does within the whole history: the same events, merges and so
    profiles, except for possible matches between people of two lists, which no feature reads."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        root = key
        while (up := parent.get(root, root)) != root:
            root = up
        while key != root:  # path compression
            parent[key], key = root, parent[key]
        return root

    def union(keys: list[str]) -> None:
        top = find(keys[0])
        for other in keys[1:]:
            if (root := find(other)) != top:
                parent[root] = top

    block_messages: list[tuple[str, dict[str, Any]]] = []
    for event in events:
        keys, record = reachable_keys(event)
        union(keys)
        if record is not None:
            block_messages.append((keys[0], record))
    for pair in linkable_pairs(block_messages, joined=lambda a, b: find(a) == find(b)):
        union(list(pair))
    roots = [find(profile_key(event)) for event in events]
    sizes: dict[str, int] = {}
    for root in roots:
        sizes[root] = sizes.get(root, 0) + 1
    loads = [0] * shards
    shard_of: dict[str, int] = {}
    for root, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):  # largest first
        shard_of[root] = loads.index(min(loads))
        loads[shard_of[root]] += size
    split: list[list[dict[str, Any]]] = [[] for _ in range(shards)]
    for event, root in zip(events, roots, strict=True):
        split[shard_of[root]].append(event)
    return [shard for shard in split if shard]


def _shard_examples(events: list[dict[str, Any]], horizon_ms: int, cuts: list[int],
                    rules: StreamRules = DEFAULT_RULES) -> Examples:
    """The examples of one shard (or of the whole history), in the order they are found."""
    ordered = sorted(events, key=lambda event: event["ts"])
    local = offline_pipeline(rules)
    rows: list[list[float]] = []
    found: list[tuple[int, str]] = []  # (cut, key then)
    fed = 0
    for cut in cuts:
        end = fed
        while end < len(ordered) and ordered[end]["ts"] <= cut:
            end += 1
        local.feed(ordered[fed:end])
        fed = end
        for key, state in local.live():
            advance(state, cut, local.rules, 0)  # the events up to the cut folded (no snapshots wanted)
            rows.append(feature_row(state["profile"], cart_view(state["profile"]), cut))
            found.append((cut, key))
    local.feed(ordered[fed:])
    purchases: dict[str, list[int]] = {}
    for event in ordered:
        if event["type"] == "purchase":
            root = local.root_of(profile_key(event))
            if root is not None:
                purchases.setdefault(root, []).append(event["ts"])
    kept: list[int] = []
    labels: list[int] = []
    people: list[str] = []
    for index, (cut, key) in enumerate(found):
        person = person_after(local, key, cut)
        if person is None:  # erased since (also when their identifiers came back as someone new)
            continue
        kept.append(index)
        labels.append(int(any(cut < ts <= cut + horizon_ms for ts in purchases.get(person, ()))))
        people.append(person)
    return Examples(np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES))[kept],
                    np.asarray(labels, dtype=np.int64), people,
                    np.asarray([found[index][0] for index in kept], dtype=np.int64),
                    [found[index][1] for index in kept])


def build_examples(events: list[dict[str, Any]], as_of: int, horizon_ms: int, cuts: list[int],
                   jobs: int = 1, rules: StreamRules = DEFAULT_RULES) -> Examples:
    """One example per profile per cut (module docstring).  ``events``: accepted, none after ``as_of``.
    With ``jobs`` > 1 the people are split into that many shards (:func:`component_shards`), folded
    by as many processes; the examples are the same."""
    shards = component_shards(events, jobs) if jobs > 1 else [events]
    parts = run_forked([partial(_shard_examples, shard, horizon_ms, cuts, rules) for shard in shards or [[]]])
    keys = [key for part in parts for key in part.keys]
    cut_of = np.concatenate([part.cuts for part in parts])
    order = sorted(range(len(keys)), key=lambda index: (int(cut_of[index]), keys[index]))
    people = [person for part in parts for person in part.people]
    return Examples(np.concatenate([part.rows for part in parts])[order],
                    np.concatenate([part.labels for part in parts])[order],
                    [people[index] for index in order], cut_of[order], [keys[index] for index in order])


def person_fraction(person: str) -> float:
    """A fixed number in [0, 1) per person (a hash): every cut of one person falls on the same side."""
    return int.from_bytes(hashlib.blake2b(person.encode(), digest_size=4).digest(), "big") / 2**32


@dataclass
class Split:
    kind: str  # "time" or "people"
    train: np.ndarray[Any, np.dtype[np.bool_]]
    validation: np.ndarray[Any, np.dtype[np.bool_]]
    test: np.ndarray[Any, np.dtype[np.bool_]]


def split_examples(examples: Examples, cuts: list[int]) -> Split:
    """Older cuts to learn from, the newest cut's people into validation and test (module docstring)."""
    fraction = np.asarray([person_fraction(person) for person in examples.people], dtype=np.float64)
    cut = np.asarray(examples.cuts, dtype=np.int64)
    if len(cuts) >= 2:
        newest = cut == cuts[-1]
        return Split("time", ~newest, newest & (fraction >= TEST_SHARE), newest & (fraction < TEST_SHARE))
    quarter = TEST_SHARE / 2
    return Split("people", fraction >= TEST_SHARE, (fraction >= quarter) & (fraction < TEST_SHARE),
                 fraction < quarter)


def _column(X: np.ndarray[Any, np.dtype[np.float64]], name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    column: np.ndarray[Any, np.dtype[np.float64]] = X[:, FEATURES.index(name)]
    return column


@dataclass
class Trained:
    booster: Any  # lightgbm.Booster, holding the trees up to the best iteration only
    calibration: evaluation.Isotonic | None
    best_iteration: int

    def predict(self, X: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        raw = np.asarray(self.booster.predict(X, num_threads=1), dtype=np.float64)
        return raw if self.calibration is None else self.calibration(raw)


def fit_model(train_x: np.ndarray[Any, np.dtype[np.float64]], train_y: np.ndarray[Any, np.dtype[np.float64]],
              valid_x: np.ndarray[Any, np.dtype[np.float64]],
              valid_y: np.ndarray[Any, np.dtype[np.float64]]) -> Trained:
    """LightGBM with early stopping on the validation set, then isotonic calibration on it."""
    lightgbm = import_lightgbm()
    params = dict(PARAMS, monotone_constraints=[MONOTONE.get(name, 0) for name in FEATURES],
                  monotone_constraints_method="advanced")
    train_set = lightgbm.Dataset(train_x, train_y, feature_name=list(FEATURES), free_raw_data=False)
    if len(set(valid_y.tolist())) == 2:
        valid_set = lightgbm.Dataset(valid_x, valid_y, reference=train_set)
        booster = lightgbm.train(params, train_set, num_boost_round=MAX_ROUNDS, valid_sets=[valid_set],
                                 valid_names=["validation"],
                                 callbacks=[lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True,
                                                                    verbose=False)])
        best = booster.best_iteration or booster.current_iteration()
        booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=best))
        raw = np.asarray(booster.predict(valid_x, num_threads=1), dtype=np.float64)
        return Trained(booster, evaluation.Isotonic.fit(raw, valid_y), best)
    booster = lightgbm.train(params, train_set, num_boost_round=FIXED_ROUNDS)
    return Trained(booster, None, FIXED_ROUNDS)


def _bgnbd_inputs(X: np.ndarray[Any, np.dtype[np.float64]]) -> tuple[Any, Any, Any]:
    return (_column(X, "repeat_purchases"), _column(X, "purchase_span_days"),
            _column(X, "days_since_first_purchase"))


def train(events: list[dict[str, Any]], as_of: int, horizon_days: int,
          jobs: int = 1, rules: StreamRules = DEFAULT_RULES) -> tuple[Trained, dict[str, Any], dict[str, bytes]]:
    """The model, its report (what ``train`` prints) and the report's plots (file stem -> PNG).  The
    same for any number of processes ``jobs``."""
    started = time.monotonic()
    if not events:
        raise TrainError("no events at or before --as-of")
    horizon_ms = horizon_days * DAY_MS
    cuts = cutoffs(min(event["ts"] for event in events), as_of, horizon_ms)
    if not cuts:
        raise TrainError(f"the history before --as-of is too short for a {horizon_days}-day horizon: it needs "
                         "events more than one horizon and a day before --as-of")
    examples = build_examples(events, as_of, horizon_ms, cuts, jobs, rules)
    timing = {"examples": time.monotonic() - started}
    X = examples.rows
    y = examples.labels.astype(np.float64)
    split = split_examples(examples, cuts)
    train_y = y[split.train]
    if len(set(train_y.tolist())) < 2:
        raise TrainError(f"cannot train: all {len(train_y)} training examples have the same label "
                         "(purchase or not in the horizon); use a longer history or another horizon")
    mark = time.monotonic()
    trained = fit_model(X[split.train], train_y, X[split.validation], y[split.validation])
    timing["model"] = time.monotonic() - mark
    mark = time.monotonic()
    calibration = trained.calibration.to_json() if trained.calibration is not None else None
    digest = hashlib.sha256(trained.booster.model_to_string().encode())
    digest.update(json.dumps(calibration, sort_keys=True).encode())
    version = f"{format_ms(as_of)[:10].replace('-', '')}-{digest.hexdigest()[:8]}"

    # the baselines, fitted on the same history
    newest = np.asarray(examples.cuts, dtype=np.int64) == cuts[-1]
    orders = _column(X, "orders")
    customers = orders > 0
    bg_model: bgnbd.BGNBD | None = None
    if (newest & customers).any():
        try:
            bg_model = bgnbd.fit(*(values[newest & customers] for values in _bgnbd_inputs(X)))
        except bgnbd.FitError:
            bg_model = None
    valid_y = y[split.validation]
    prospects = split.validation & ~customers
    prospect_rate = float(y[prospects].mean()) if prospects.any() else float(train_y.mean())
    heuristic = evaluation.RecencyFrequency.fit(_column(X, "days_since_last_purchase")[split.validation],
                                                orders[split.validation], valid_y) \
        if len(valid_y) else evaluation.RecencyFrequency.fit(_column(X, "days_since_last_purchase")[split.train],
                                                             orders[split.train], train_y)

    def predictions(mask: np.ndarray[Any, np.dtype[np.bool_]]) -> list[tuple[str, Any]]:
        xs = X[mask]
        bg = np.full(len(xs), prospect_rate)
        if bg_model is not None:
            buyers = _column(xs, "orders") > 0
            x, t_x, T = (values[buyers] for values in _bgnbd_inputs(xs))
            bg[buyers] = bgnbd.purchase_probability(bg_model, x, t_x, T, float(horizon_days))
        return [("model", trained.predict(xs)), ("BG/NBD", bg),
                ("heuristic", heuristic(_column(xs, "days_since_last_purchase"), _column(xs, "orders")))]

    test_y = y[split.test]
    tested = predictions(split.test)
    test_customers = customers[split.test]

    def evaluated(within: np.ndarray[Any, np.dtype[np.bool_]]) -> dict[str, Any] | None:
        """The metrics of the three on the test examples ``within`` selects."""
        if not within.any():
            return None
        labels = test_y[within]
        out: dict[str, Any] = {"examples": int(within.sum()), "purchase_rate": round(float(labels.mean()), 4)}
        for name, p in tested:
            out[name] = evaluation.quality(labels, p[within])
        out["base_rate_log_loss"] = round(evaluation.log_loss(labels, np.full(len(labels), float(train_y.mean()))), 4)
        # the ECE a perfectly calibrated model with the model's predictions would show on this many examples
        out["ece_noise_floor"] = round(evaluation.ece_noise_floor(tested[0][1][within]), 4)
        return out

    test_metrics = {"all": evaluated(np.ones(len(test_y), dtype=bool)), "customers": evaluated(test_customers)}
    people = np.asarray(examples.people)
    timing["baselines"] = time.monotonic() - mark  # with the test predictions of all three
    mark = time.monotonic()
    report: dict[str, Any] = {
        "model_version": version,
        "as_of": format_ms(as_of),
        "horizon_days": horizon_days,
        "churn_definition": CHURN_DEFINITION,
        "cutoffs": [format_ms(cut) for cut in cuts],
        "split": {"kind": split.kind, "test_share": TEST_SHARE,
                  "validation_and_test_cut": format_ms(cuts[-1]) if split.kind == "time" else None},
        "examples": {name: int(mask.sum()) for name, mask in
                     (("train", split.train), ("validation", split.validation), ("test", split.test))},
        "people": {name: len(set(people[mask].tolist())) for name, mask in
                   (("train", split.train), ("validation", split.validation), ("test", split.test))},
        "purchase_rate": {name: round(float(y[mask].mean()), 4) if mask.any() else None for name, mask in
                          (("train", split.train), ("validation", split.validation), ("test", split.test))},
        "features": len(FEATURES),
        "monotone": MONOTONE,
        "trees": trained.booster.num_trees(),
        "best_iteration": trained.best_iteration,
        "calibration": None if calibration is None else {"method": "isotonic", "knots": len(calibration["x"])},
        "bgnbd": None if bg_model is None else {
            **{name: round(value, 6) for name, value in bg_model.params().items()},
            "log_likelihood": round(bg_model.log_likelihood, 3),
            "customers": int((newest & customers).sum()), "time_unit": "days",
            "prospect_rate": round(prospect_rate, 4)},
        "test": test_metrics,
    }
    plots = evaluation.plots(test_y, tested, f"test set, {len(test_y):,} examples") if len(test_y) else {}
    timing["report"] = time.monotonic() - mark
    report["seconds"] = round(time.monotonic() - started, 2)
    # where the time went: folding the history into examples, LightGBM and its calibration, fitting
    # and evaluating the baselines, the report and its plots (``train_file`` adds reading the file)
    report["timing"] = {name: round(value, 2) for name, value in timing.items()}
    return trained, report, plots


def train_file(events_path: Path, as_of: int, horizon_days: int, out: Path,
               show_progress: bool = False, jobs: int = 1, rules: StreamRules = DEFAULT_RULES) -> dict[str, Any]:
    """``mailpulse train``: trains and writes the model directory ``out``; returns the report."""
    started = time.monotonic()
    try:
        events = read_events(events_path, until=as_of, show_progress=show_progress, label="train: reading",
                             jobs=jobs, policy=rules.policy)
    except HistoryError as exc:
        raise TrainError(str(exc)) from None
    read_seconds = time.monotonic() - started
    trained, report, plots = train(events, as_of, horizon_days, jobs, rules)
    report["timing"]["reading"] = round(read_seconds, 2)
    report["seconds"] = round(time.monotonic() - started, 2)  # the whole command but writing its files
    documents = {"card": ("MODEL_CARD.md", model_card(report).encode())}
    documents.update({name: (f"{name}.png", png) for name, png in plots.items()})
    try:
        write_bundle(out, trained.booster, trained.calibration, report["model_version"], horizon_days,
                     report["as_of"], report, documents)
    except OSError as exc:
        raise TrainError(f"cannot write {out}: {exc.strerror}") from None
    return report
