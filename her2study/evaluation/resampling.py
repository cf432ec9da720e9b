"""Intervals for estimates from repeated cross-validation.

Fold estimates of K-fold cross-validation are not independent: every two training sets share
(K - 2) / (K - 1) of their cases, and repeating the split R times adds no new cases. A plain
t-interval over the J = K x R fold values is far too narrow. :func:`corrected_t_interval` uses the
corrected resampled t of Nadeau & Bengio (2003, *Machine Learning* 52:239-281; Bouckaert & Frank
2004): the variance of the mean is inflated from ``s^2 / J`` to ``(1/J + n_test/n_train) s^2``.
The same applies to paired differences between two procedures evaluated on the same folds, which
is how margins (ring widths) are compared on the training cases.
"""

from __future__ import annotations

import math

import numpy as np

CI_METHOD = "nadeau_bengio_corrected_t"


def corrected_t_interval(values, n_train: int, n_test: int, alpha: float = 0.05) -> dict:
    """Mean of per-fold values with the corrected resampled t interval (and its p for mean = 0).

    Parameters
    ----------
    values : array-like of shape (J,)
        One value per (repeat, fold), e.g. fold AUCs, or paired differences of fold AUCs.
    n_train, n_test : int
        Cases in a fold's training and test part (their ratio drives the correction).
    alpha : float
        Two-sided level.

    Returns
    -------
    dict with ``mean``, ``ci_low``, ``ci_high``, ``se``, ``p`` (two-sided, of mean = 0: use it for
    differences), ``n_folds`` and ``ci_method``.
    """
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    j = v.size
    out = {
        "mean": float(v.mean()) if j else float("nan"),
        "n_folds": int(j),
        "ci_method": CI_METHOD,
    }
    if j < 2:
        return {
            **out,
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "se": float("nan"),
            "p": float("nan"),
        }
    var = float(v.var(ddof=1))
    se = math.sqrt((1.0 / j + n_test / max(n_train, 1)) * var)
    t = stats.t.ppf(1 - alpha / 2, j - 1)
    if se == 0:
        p = 0.0 if out["mean"] != 0 else 1.0
    else:
        p = float(2 * stats.t.sf(abs(out["mean"]) / se, j - 1))
    return {
        **out,
        "ci_low": out["mean"] - t * se,
        "ci_high": out["mean"] + t * se,
        "se": se,
        "p": p,
    }
