"""models.bgnbd: the BG/NBD baseline, checked against the published CDNOW fit and against simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import bgnbd

CDNOW = Path(__file__).parent / "data" / "cdnow_customers_summary.csv"


def test_the_fit_on_cdnow_is_the_published_one() -> None:
    # Fader, Hardie and Lee (2005), section 5: r = 0.243, alpha = 4.414, a = 0.793, b = 2.426, LL = -9582.4
    data = np.genfromtxt(CDNOW, delimiter=",", names=True)
    assert len(data) == 2357
    model = bgnbd.fit(data["frequency"], data["recency"], data["T"])
    assert model.r == pytest.approx(0.243, abs=1e-3)
    assert model.alpha == pytest.approx(4.414, abs=1e-3)
    assert model.a == pytest.approx(0.793, abs=1e-3)
    assert model.b == pytest.approx(2.426, abs=1e-3)
    assert model.log_likelihood == pytest.approx(-9582.4, abs=0.1)


def test_alive_and_purchase_probabilities_follow_the_model() -> None:
    model = bgnbd.BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426, log_likelihood=0.0)
    # no repeat purchase: alive for sure (BG/NBD drops out only after a repeat purchase)
    assert bgnbd.alive_probability(model, [0], [0.0], [30.0])[0] == 1.0
    # the same purchases, the last one longer ago: less likely alive, less likely to buy
    alive = bgnbd.alive_probability(model, [4, 4], [30.0, 10.0], [39.0, 39.0])
    assert 0.0 < alive[1] < alive[0] < 1.0
    buy = bgnbd.purchase_probability(model, [4, 4, 0], [30.0, 10.0, 0.0], [39.0, 39.0, 39.0], 4.0)
    assert buy[1] < buy[0] and all(0.0 < p < 1.0 for p in buy)
    # a longer horizon: more likely to buy, never more likely than being alive
    longer = bgnbd.purchase_probability(model, [4, 4], [30.0, 10.0], [39.0, 39.0], 52.0)
    assert np.all(longer > buy[:2]) and np.all(longer < alive)


def test_the_purchase_probability_matches_simulated_customers() -> None:
    # customers drawn from the model itself: the predicted P(a purchase in the next h) must match
    # how many do buy, overall and for the frequent and rare buyers apart
    r, alpha, a, b, T, h = 0.6, 20.0, 0.7, 2.5, 120.0, 30.0
    rng = np.random.default_rng(3)
    n = 30_000
    lam, p = rng.gamma(r, 1 / alpha, n), rng.beta(a, b, n)
    x, t_x, bought = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > T + h:
                break
            if t > T:
                bought[i] = 1
                break
            x[i], t_x[i] = x[i] + 1, t
            if rng.random() < p[i]:
                break
    model = bgnbd.BGNBD(r, alpha, a, b, 0.0)
    predicted = bgnbd.purchase_probability(model, x, t_x, np.full(n, T), h)
    assert predicted.mean() == pytest.approx(bought.mean(), abs=0.01)
    for group in (x == 0, (x >= 1) & (x <= 3), x > 3):
        assert predicted[group].mean() == pytest.approx(bought[group].mean(), abs=0.02)
    # and fitting the simulated customers gives back about the parameters they were drawn with
    fitted = bgnbd.fit(x, t_x, np.full(n, T))
    assert fitted.r == pytest.approx(r, rel=0.15) and fitted.alpha == pytest.approx(alpha, rel=0.2)
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(a / (a + b), rel=0.2)


def test_no_customers_cannot_be_fitted() -> None:
    with pytest.raises(bgnbd.FitError):
        bgnbd.fit([], [], [])
