"""What ``train`` measures and fits besides the model: metrics, isotonic calibration, the
recency-frequency baseline and the report's plots.  numpy only (matplotlib for the plots).

Metrics, for predicted probabilities ``p`` of labels ``y`` (1: a purchase in the horizon):

* ROC-AUC: the probability that a random positive is ranked above a random negative (ties count a
  half), from the ranks (Mann-Whitney).
* PR-AUC: average precision, the precision at each positive's threshold averaged over the positives
  (ties broken pessimistically: every example with the same score counts at once).
* Brier score: the mean of ``(p - y) ** 2``.
* Expected calibration error (ECE): the predictions cut into :data:`ECE_BINS` equal-width bins of
  ``p``; the mean over examples of ``|mean p - mean y|`` of their bin.
"""

from __future__ import annotations

import bisect
import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, np.dtype[np.float64]]

ECE_BINS = 10
#: The lowest (and 1 - the highest) probability a calibration knot gives.
FLOOR = 1e-3


def _ranks(values: Array) -> Array:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def roc_auc(y: Array, p: Array) -> float | None:
    """None with one class only."""
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = _ranks(p)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(y: Array, p: Array) -> float | None:
    """PR-AUC as average precision; None without positives."""
    positives = int(y.sum())
    if positives == 0:
        return None
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last_of_tie = np.r_[ps[1:] != ps[:-1], True]
    hits = np.cumsum(ys)[last_of_tie]
    seen = np.flatnonzero(last_of_tie) + 1.0
    precision = hits / seen
    recall_step = np.diff(np.r_[0.0, hits]) / positives
    return float(np.sum(precision * recall_step))


def brier(y: Array, p: Array) -> float:
    return float(np.mean((p - y) ** 2))


def log_loss(y: Array, p: Array) -> float:
    clipped = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))


def _bins(p: Array, bins: int) -> Array:
    return np.minimum((p * bins).astype(np.int64), bins - 1).astype(np.float64)


def reliability(y: Array, p: Array, bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """(mean p, mean y, examples) of each non-empty equal-width bin of ``p``."""
    which = _bins(p, bins)
    out = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            out.append((float(p[inside].mean()), float(y[inside].mean()), count))
    return out


def expected_calibration_error(y: Array, p: Array, bins: int = ECE_BINS) -> float:
    return float(sum(count * abs(mean_p - mean_y) for mean_p, mean_y, count in reliability(y, p, bins)) / len(y))


def ece_noise_floor(p: Array, draws: int = 50, seed: int = 0) -> float:
    """The mean ECE of labels drawn from ``p`` itself: what a perfectly calibrated model with these
    predictions scores on this many examples (the sampling noise of the ECE)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([expected_calibration_error((rng.random(len(p)) < p).astype(np.float64), p)
                          for _ in range(draws)]))


def quality(y: Array, p: Array) -> dict[str, float | None]:
    """The report's metrics of one model on one set, rounded to 4 places."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {"roc_auc": rounded(roc_auc(y, p)), "pr_auc": rounded(average_precision(y, p)),
            "brier": rounded(brier(y, p)), "ece": rounded(expected_calibration_error(y, p)),
            "log_loss": rounded(log_loss(y, p))}


# --- calibration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Isotonic:
    """An increasing map of raw scores (probabilities) to calibrated probabilities: the
    pool-adjacent-violators fit of the labels on the scores, one knot per pooled block at its mean
    score and mean label (kept within [:data:`FLOOR`, 1 - :data:`FLOOR`]), linear between knots and,
    outside them, linear to (0, 0) below the first and to (1, 1) above the last.  So different scores
    keep their order (no ties that the raw model did not have) and the mean of each block is right."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    @classmethod
    def fit(cls, scores: Array, labels: Array) -> Isotonic:
        order = np.argsort(scores, kind="mergesort")
        s, t = scores[order], labels[order].astype(np.float64)
        # equal scores first become one point (they must map to one value)
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        weights = np.diff(np.r_[starts, len(s)]).astype(np.float64)
        sums_s = np.add.reduceat(s, starts)
        sums_t = np.add.reduceat(t, starts)
        blocks: list[list[float]] = []  # [score sum, label sum, weight]
        for ss, tt, ww in zip(sums_s.tolist(), sums_t.tolist(), weights.tolist(), strict=True):
            blocks.append([ss, tt, ww])
            while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
                last = blocks.pop()
                for i in range(3):
                    blocks[-1][i] += last[i]
        return cls(tuple(block[0] / block[2] for block in blocks),
                   tuple(min(max(block[1] / block[2], FLOOR), 1 - FLOOR) for block in blocks))

    def one(self, score: float) -> float:
        """The calibrated probability of one raw score (plain Python: the stream scores one profile a
        call, and every caller goes through here, so all give the same numbers)."""
        x, y = self.x, self.y
        score = min(max(score, 0.0), 1.0)
        if score <= x[0]:
            return y[0] * score / x[0] if x[0] > 0 else y[0]
        if score >= x[-1]:
            return 1.0 - (1.0 - y[-1]) * (1.0 - score) / (1.0 - x[-1]) if x[-1] < 1 else y[-1]
        i = bisect.bisect_right(x, score)  # x[i - 1] <= score < x[i]
        return y[i - 1] + (y[i] - y[i - 1]) * (score - x[i - 1]) / (x[i] - x[i - 1])

    def __call__(self, scores: Array) -> Array:
        return np.fromiter((self.one(score) for score in np.asarray(scores, dtype=np.float64).tolist()),
                           dtype=np.float64, count=len(scores))

    def to_json(self) -> dict[str, Any]:
        return {"method": "isotonic", "x": [round(v, 12) for v in self.x], "y": [round(v, 12) for v in self.y]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Isotonic:
        if data.get("method") != "isotonic":
            raise ValueError(f"unknown calibration method {data.get('method')!r}")
        x, y = tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"])
        if not x or len(x) != len(y) or any(b < a for a, b in itertools.pairwise(x)):
            raise ValueError("calibration knots must be non-empty, paired and ascending")
        if not all(0.0 <= v <= 1.0 for v in (*x, *y)):  # (NaN fails too) else scores outside [0, 1] went out
            raise ValueError("calibration knots must be probabilities, from 0 to 1")
        return cls(x, y)


# --- the recency-frequency baseline -----------------------------------------------------------------

#: Upper edges (days since the last purchase) of the recency cells; older ones share one more cell.
RECENCY_EDGES = (7.0, 14.0, 30.0, 60.0, 90.0, 180.0, 365.0)
#: Upper edges (orders) of the frequency cells; more orders share one more cell.
FREQUENCY_EDGES = (1.0, 2.0, 3.0, 5.0, 9.0)
#: Pseudo-examples at the overall rate added to every cell (shrinks sparse cells towards it).
PRIOR_WEIGHT = 10.0


def rf_cell(days_since_last_purchase: Array, orders: Array) -> Array:
    """The cell of each example: 0 without a purchase, else recency cell x frequency cell + 1."""
    recency = np.searchsorted(np.asarray(RECENCY_EDGES), np.nan_to_num(days_since_last_purchase), side="left")
    frequency = np.searchsorted(np.asarray(FREQUENCY_EDGES), orders, side="left")
    cells = 1 + recency * (len(FREQUENCY_EDGES) + 1) + frequency
    result: Array = np.where(orders > 0, cells, 0).astype(np.float64)
    return result


@dataclass(frozen=True)
class RecencyFrequency:
    """The classic RF-cell heuristic: the purchase rate of the examples in the same (recency,
    frequency) cell of a labelled set, shrunk towards that set's rate."""

    rates: dict[int, float]
    overall: float

    @classmethod
    def fit(cls, days_since_last_purchase: Array, orders: Array, labels: Array) -> RecencyFrequency:
        cells = rf_cell(days_since_last_purchase, orders)
        overall = float(labels.mean())
        rates = {}
        for cell in np.unique(cells).tolist():
            inside = cells == cell
            rates[int(cell)] = (float(labels[inside].sum()) + PRIOR_WEIGHT * overall) / (inside.sum() + PRIOR_WEIGHT)
        return cls(rates, overall)

    def __call__(self, days_since_last_purchase: Array, orders: Array) -> Array:
        cells = rf_cell(days_since_last_purchase, orders)
        return np.asarray([self.rates.get(int(cell), self.overall) for cell in cells.tolist()], dtype=np.float64)


# --- plots ------------------------------------------------------------------------------------------


def roc_points(y: Array, p: Array) -> tuple[Array, Array]:
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0)."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last_of_tie = np.r_[ps[1:] != ps[:-1], True]
    tp = np.cumsum(ys)[last_of_tie]
    fp = np.cumsum(1 - ys)[last_of_tie]
    positives, negatives = max(ys.sum(), 1.0), max(len(ys) - ys.sum(), 1.0)
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def plots(y: Array, predictions: Sequence[tuple[str, Array]], title: str) -> dict[str, bytes]:
    """``{"roc": png, "calibration": png}`` of the named predictions of the labels ``y``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    roc = Figure(figsize=(5.5, 5))
    ax = roc.subplots()
    for name, p in predictions:
        fpr, tpr = roc_points(y, p)
        auc = roc_auc(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}", xlim=(0, 1),
           ylim=(0, 1))
    ax.legend(loc="lower right")
    roc.tight_layout()
    calibration = Figure(figsize=(5.5, 5))
    ax = calibration.subplots()
    for name, p in predictions:
        points = reliability(y, p)
        ax.plot([m for m, _, _ in points], [o for _, o, _ in points], marker="o",
                label=f"{name} (ECE {expected_calibration_error(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="mean predicted probability", ylabel="observed purchase rate",
           title=f"Calibration ({ECE_BINS} bins): {title}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    calibration.tight_layout()
    return {"roc": _png(roc), "calibration": _png(calibration)}
