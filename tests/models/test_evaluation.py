"""models.evaluation: the report's metrics, the isotonic calibration and the recency-frequency baseline."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation import (
    Isotonic,
    RecencyFrequency,
    average_precision,
    brier,
    expected_calibration_error,
    plots,
    roc_auc,
)


def test_metrics_agree_with_their_definitions() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.3).astype(float)
    p = np.round(rng.random(400) * 0.6 + 0.3 * y, 2)  # ties on purpose
    positives, negatives = p[y == 1], p[y == 0]
    pairs = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    assert roc_auc(y, p) == pytest.approx(float(pairs.mean()))
    expected_ap, recall_before = 0.0, 0.0
    for threshold in np.unique(p)[::-1]:
        chosen = p >= threshold
        recall = y[chosen].sum() / y.sum()
        expected_ap += (recall - recall_before) * y[chosen].mean()
        recall_before = recall
    assert average_precision(y, p) == pytest.approx(expected_ap)
    assert brier(y, p) == pytest.approx(float(np.mean((p - y) ** 2)))
    assert roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])) is None
    # ECE: two bins, each off by 0.1
    assert expected_calibration_error(np.array([0.0, 1.0, 1.0, 1.0]), np.array([0.05, 0.05, 0.85, 0.85])) == \
        pytest.approx((2 * 0.45 + 2 * 0.15) / 4)


def test_isotonic_calibration_makes_miscalibrated_scores_calibrated_and_keeps_their_order() -> None:
    rng = np.random.default_rng(7)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        truth = rng.beta(1.5, 3.0, n)
        labels = (rng.random(n) < truth).astype(float)
        return truth ** 0.4, labels  # an overconfident, shifted score of the true probability

    scores, labels = draw(20_000)
    assert expected_calibration_error(labels, scores) > 0.2
    calibration = Isotonic.fit(scores, labels)
    fresh_scores, fresh_labels = draw(20_000)  # calibrated on one sample, checked on another
    calibrated = calibration(fresh_scores)
    assert expected_calibration_error(fresh_labels, calibrated) < 0.015
    assert brier(fresh_labels, calibrated) < brier(fresh_labels, fresh_scores)
    # increasing: the ranking (and so ROC-AUC) of distinct scores is kept
    grid = np.linspace(0.0, 1.0, 1001)
    assert np.all(np.diff(calibration(grid)) > 0)
    assert roc_auc(fresh_labels, calibrated) == pytest.approx(roc_auc(fresh_labels, fresh_scores))
    assert calibration(np.array([0.0001]))[0] > 0.0 and calibration(np.array([0.9999]))[0] < 1.0
    stored = Isotonic.from_json(calibration.to_json())  # as a manifest holds it
    np.testing.assert_allclose(stored(grid), calibration(grid), atol=1e-9)


def test_the_recency_frequency_heuristic_is_the_purchase_rate_of_the_cell() -> None:
    recency = np.array([np.nan, np.nan, 3.0, 3.0, 3.0, 400.0, 400.0])
    orders = np.array([0.0, 0.0, 4.0, 4.0, 4.0, 1.0, 1.0])
    labels = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    heuristic = RecencyFrequency.fit(recency, orders, labels)
    rate = 3 / 7
    p = heuristic(np.array([np.nan, 2.0, 500.0, 100.0]), np.array([0.0, 4.0, 1.0, 1.0]))
    assert p[0] == pytest.approx((1 + 10 * rate) / 12)
    assert p[1] == pytest.approx((2 + 10 * rate) / 13)
    assert p[2] == pytest.approx((0 + 10 * rate) / 12)
    assert p[3] == pytest.approx(rate)  # a cell the labelled set does not have: the overall rate


def test_the_plots_are_png_images() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(200) < 0.4).astype(float)
    images = plots(y, [("a", np.clip(0.4 + 0.3 * (y - 0.4) + rng.normal(0, 0.1, 200), 0, 1)),
                       ("b", rng.random(200))], "test")
    assert set(images) == {"roc", "calibration"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000 for png in images.values())


@pytest.mark.parametrize("y", [[5.0, 7.0], [0.1, float("nan")], [-0.2, 0.5]])
def test_a_calibration_whose_knots_are_not_probabilities_is_refused(y: list[float]) -> None:
    """Such a manifest was read, and scoring then wrote probabilities of -5.2 and 6.2 (found in review)."""
    with pytest.raises(ValueError, match="probabilities"):
        Isotonic.from_json({"method": "isotonic", "x": [0.2, 0.8], "y": y})
