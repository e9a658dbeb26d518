"""The BG/NBD model (Fader, Hardie and Lee 2005, "Counting Your Customers the Easy Way"): the baseline
``train`` compares its model with.

While alive, a customer buys as a Poisson process with rate ``lambda`` (gamma distributed across
customers: shape ``r``, rate ``alpha``); after each repeat purchase they drop out for good with
probability ``p`` (beta distributed: ``a``, ``b``).  A customer is summarised by ``x`` (repeat
purchases), ``t_x`` (time of the last purchase since the first) and ``T`` (time since the first
purchase), in one time unit (``train`` uses days).  :func:`fit` maximises the paper's log-likelihood
(its equation 6) with scipy; :func:`purchase_probability` is the model's probability of at least one
purchase in the next ``h`` time units:

    P(alive | x, t_x, T) * (1 - ((alpha + T) / (alpha + T + h)) ** (r + x))

(alive, the rate's posterior is gamma(r + x, alpha + T); a dead customer buys nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, special

Array = np.ndarray[Any, np.dtype[np.float64]]


class FitError(ValueError):
    """The model cannot be fitted (no customers, or the optimiser failed)."""


@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float  # at the fit, summed over the customers

    def params(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


def _arrays(x: Any, t_x: Any, T: Any) -> tuple[Array, Array, Array]:
    xs, txs, ts = (np.asarray(values, dtype=np.float64) for values in (x, t_x, T))
    if not (xs.shape == txs.shape == ts.shape):
        raise ValueError("x, t_x and T must have the same shape")
    return xs, txs, ts


def log_likelihoods(params: tuple[float, float, float, float], x: Array, t_x: Array, T: Array) -> Array:
    """Each customer's log-likelihood (FHL 2005, eq. 6) under ``(r, alpha, a, b)``."""
    r, alpha, a, b = params
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    a4[repeat] = (np.log(a) - np.log(b + x[repeat] - 1) - (r + x[repeat]) * np.log(alpha + t_x[repeat]))
    result: Array = a1 + a2 + np.logaddexp(a3, a4)
    return result


def _negative_and_gradient(log_params: Array, x: Array, t_x: Array, T: Array, w: Array) -> tuple[float, Array]:
    """The weighted mean negative log-likelihood and its gradient in ``log(r, alpha, a, b)``."""
    r, alpha, a, b = (float(v) for v in np.exp(log_params))
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    b_x = np.where(repeat, b + x - 1, 1.0)
    a4[repeat] = np.log(a) - np.log(b_x[repeat]) - (r + x[repeat]) * np.log(alpha + t_x[repeat])
    total = np.logaddexp(a3, a4)
    value = -float(np.dot(w, a1 + a2 + total))
    share3, share4 = np.exp(a3 - total), np.exp(a4 - total)  # the two terms' shares of the sum
    d_r = special.digamma(r + x) - special.digamma(r) + np.log(alpha) - share3 * np.log(alpha + T) \
        - share4 * np.log(alpha + t_x)
    d_alpha = r / alpha - share3 * (r + x) / (alpha + T) - share4 * (r + x) / (alpha + t_x)
    d_a = special.digamma(a + b) - special.digamma(a + b + x) + share4 / a
    d_b = special.digamma(a + b) + special.digamma(b + x) - special.digamma(b) - special.digamma(a + b + x) \
        - share4 / b_x
    gradient = -np.array([np.dot(w, d) for d in (d_r, d_alpha, d_a, d_b)]) * np.array([r, alpha, a, b])
    return value, gradient


def fit(x: Any, t_x: Any, T: Any) -> BGNBD:
    """Maximum-likelihood ``r, alpha, a, b`` for the customers ``(x[i], t_x[i], T[i])`` (L-BFGS-B on
    the log parameters with the analytic gradient)."""
    xs, txs, ts = _arrays(x, t_x, T)
    if xs.size == 0:
        raise FitError("no customers to fit BG/NBD to")
    # customers with the same summary share one term (weights): far fewer terms on coarse times
    rows, weights = np.unique(np.stack([xs, txs, ts], axis=1), axis=0, return_counts=True)
    ux, utx, ut = rows[:, 0], rows[:, 1], rows[:, 2]
    w = weights.astype(np.float64) / weights.sum()

    def objective(log_params: Array) -> tuple[float, Array]:
        with np.errstate(all="ignore"):
            value, gradient = _negative_and_gradient(log_params, ux, utx, ut, w)
        if not (np.isfinite(value) and np.all(np.isfinite(gradient))):
            return 1e300, np.zeros(4)
        return value, gradient

    start = np.log([1.0, max(float(ts.mean()), 1e-3), 1.0, 1.0])
    result = optimize.minimize(objective, start, jac=True, method="L-BFGS-B",
                               bounds=[(-20.0, 20.0)] * 4, options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000})
    if not np.all(np.isfinite(result.x)) or result.fun >= 1e300:
        raise FitError(f"BG/NBD: the optimiser did not converge ({result.message})")
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    log_likelihood = float(np.dot(weights, log_likelihoods((r, alpha, a, b), ux, utx, ut)))
    return BGNBD(r, alpha, a, b, log_likelihood)


def alive_probability(model: BGNBD, x: Any, t_x: Any, T: Any) -> Array:
    """P(alive at T | x, t_x, T); 1 for customers without a repeat purchase (BG/NBD drops out only
    after one)."""
    xs, txs, ts = _arrays(x, t_x, T)
    out = np.ones_like(xs)
    repeat = xs > 0
    r, alpha, a, b = model.r, model.alpha, model.a, model.b
    log_odds = (np.log(a) - np.log(b + xs[repeat] - 1)
                + (r + xs[repeat]) * (np.log(alpha + ts[repeat]) - np.log(alpha + txs[repeat])))
    out[repeat] = special.expit(-log_odds)
    return out


def purchase_probability(model: BGNBD, x: Any, t_x: Any, T: Any, h: float) -> Array:
    """P(at least one purchase in (T, T + h] | x, t_x, T)."""
    xs, txs, ts = _arrays(x, t_x, T)
    none_while_alive = np.exp((model.r + xs) * (np.log(model.alpha + ts) - np.log(model.alpha + ts + h)))
    result: Array = alive_probability(model, xs, txs, ts) * (1.0 - none_while_alive)
    return result
