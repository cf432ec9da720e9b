"""Intervals for cross-validated estimates, and the permutation p-value of a whole procedure.

The J = K x R outer-fold AUCs of a repeated K-fold are not independent: every two folds share
most of their training cases (a fraction ``(K-2)/(K-1)`` of them within a repeat, about as many
across repeats), and R repeats reshuffle the same cases without adding any. A t-interval that
treats them as J independent draws (:func:`naive_t_interval`) is too narrow, and repeats narrow
it further (as ``1/sqrt(R)``) without new information.

:func:`corrected_t_interval` is the *corrected resampled t* of Nadeau & Bengio (2003, Machine
Learning 52:239-281): the variance of the mean of the J fold estimates is taken as

    (1/J + n_test/n_train) * s^2

(``s^2`` the sample variance of the J estimates) instead of ``s^2 / J``, with a t quantile on
J - 1 degrees of freedom. The ``n_test/n_train`` term accounts for the correlation between folds
that share training cases; it does not shrink with J, so repeats no longer make the interval
arbitrarily narrow. It is a heuristic (derived for a random train/test resampling design), known
to be conservative-to-about-right for K-fold CV; its coverage for the nested search is measured in
``experiments/search/README.md``. It applies as well to the mean of paired per-fold differences
of two procedures scored on the same outer test folds (what it was designed for).

Bates, Hastie & Tibshirani (2021, "Cross-validation: what does it estimate and how well does it
do it?") give a nested-CV interval for the mean of a *per-case* loss; an AUC is not a mean of
per-case losses, so it is not implemented here.
"""

from __future__ import annotations

import math

import numpy as np

NADEAU_BENGIO = "nadeau_bengio_corrected_t"
NAIVE_T = "naive_t_across_folds"

CI_METHOD = NADEAU_BENGIO  # the default interval for cross-validated estimates

__all__ = [
    "CI_METHOD",
    "NADEAU_BENGIO",
    "NAIVE_T",
    "corrected_t_interval",
    "difference_p",
    "naive_t_interval",
    "permutation_p",
]


def _t_interval(values, var_factor: float, alpha: float, bounds, method: str) -> dict:
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else float("nan")
    out = {"mean": mean, "sd": float("nan"), "se": float("nan"), "n": n, "method": method}
    out.update(ci_low=float("nan"), ci_high=float("nan"))
    if n < 2:
        return out
    sd = float(v.std(ddof=1))
    se = math.sqrt(var_factor) * sd
    h = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    lo, hi = mean - h, mean + h
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    out.update(sd=sd, se=se, ci_low=lo, ci_high=hi)
    return out


def corrected_t_interval(
    values, n_train: float, n_test: float, alpha: float = 0.05, bounds=(0.0, 1.0)
) -> dict:
    """Nadeau-Bengio corrected resampled t interval of the mean of per-fold estimates.

    ``values``: one estimate per outer fold (J = K x R of them); ``n_train``/``n_test``: the
    (mean) sizes of the outer training and test folds. Returns ``mean``, ``sd`` (across folds),
    ``se`` (corrected standard error of the mean), ``ci_low``, ``ci_high``, ``n`` (J) and
    ``method``; the interval is NaN with fewer than two folds and is clipped to ``bounds``
    (``None``: not clipped, e.g. for differences).
    """
    if not (n_train > 0 and n_test > 0):
        raise ValueError(f"n_train ({n_train}) and n_test ({n_test}) must be positive")
    j = int(np.isfinite(np.asarray(values, dtype=float)).sum())
    factor = (1.0 / j + float(n_test) / float(n_train)) if j else float("nan")
    return _t_interval(values, factor, alpha, bounds, NADEAU_BENGIO)


def naive_t_interval(values, alpha: float = 0.05, bounds=(0.0, 1.0)) -> dict:
    """The t-interval that treats the per-fold estimates as independent (too narrow: for
    comparison only)."""
    j = int(np.isfinite(np.asarray(values, dtype=float)).sum())
    return _t_interval(values, 1.0 / j if j else float("nan"), alpha, bounds, NAIVE_T)


def permutation_p(observed: float, null) -> float:
    """``(1 + #{null >= observed}) / (1 + P)``: the p-value of a permutation test with P
    permuted runs (valid at any P; its smallest value is ``1/(1 + P)``)."""
    null = np.asarray(null, dtype=float)
    return float((1 + int(np.sum(null >= observed))) / (1 + null.size))


def difference_p(ci: dict) -> float:
    """Two-sided p of ``mean = 0`` for a paired difference's interval dict (its ``se``, ``n``)."""
    from scipy import stats

    if not (ci.get("n", 0) >= 2 and np.isfinite(ci.get("se", np.nan))):
        return float("nan")
    if ci["se"] == 0:
        return 0.0 if ci["mean"] != 0 else 1.0
    return float(2 * stats.t.sf(abs(ci["mean"]) / ci["se"], ci["n"] - 1))
