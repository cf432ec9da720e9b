"""Calibration of predicted probabilities.

Hosmer-Lemeshow grouping reproduces R ``blorr::blr_test_hosmer_lemeshow``:
cut points are the R type-7 quantiles (numpy's default ``"linear"``) of the
fitted risks at ``0, 1/g, ..., 1``; group 1 is ``prob <= q_1`` (lowest value
included), group k is ``q_{k-1} < prob <= q_k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .metrics import check_binary_inputs, wilson_ci

__all__ = [
    "HosmerLemeshowResult",
    "hosmer_lemeshow",
    "calibration_curve_binned",
    "calibration_smoothed",
    "calibration_slope_intercept",
    "brier_score",
    "clip_probabilities",
]

_EPS = 1e-12


@dataclass(frozen=True)
class HosmerLemeshowResult:
    """Hosmer-Lemeshow test result.

    Attributes
    ----------
    chi2, df, p : float, int, float
        Statistic, degrees of freedom (``groups - 2``) and upper-tail p-value.
    table : pandas.DataFrame
        One row per non-empty group: ``group, n, observed1, observed0,
        avg_prob, expected1, expected0``.
    """

    chi2: float
    df: int
    p: float
    table: pd.DataFrame


def _quantile_groups(prob: np.ndarray, n_groups: int) -> np.ndarray:
    """0-based group index using (q_k, q_k+1] intervals of type-7 quantiles."""
    q = np.quantile(prob, np.linspace(0.0, 1.0, n_groups + 1))
    return np.searchsorted(q[1:-1], prob, side="left")


def hosmer_lemeshow(y_true, prob, groups: int = 10) -> HosmerLemeshowResult:
    """Hosmer-Lemeshow goodness-of-fit test (blorr grouping).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 0/1.
    prob : array-like of shape (n,)
        Predicted probabilities.
    groups : int
        Number of risk groups (deciles by default).

    Returns
    -------
    HosmerLemeshowResult

    Notes
    -----
    ``chi2 = sum over groups of (O1-E1)^2/E1 + (O0-E0)^2/E0`` with
    ``E1 = n_g * mean(prob_g)``. Ties at a cut point can leave a group empty;
    empty groups are dropped from the table and the sum, but ``df`` stays
    ``groups - 2`` (as blorr does).
    """
    y, p = check_binary_inputs(y_true, prob, name="prob", probability=True)
    if groups < 3:
        raise ValueError("groups must be >= 3")
    g = _quantile_groups(p, groups)
    n = np.bincount(g, minlength=groups)
    o1 = np.bincount(g, weights=y, minlength=groups)
    e1 = np.bincount(g, weights=p, minlength=groups)
    keep = n > 0
    table = pd.DataFrame(
        {
            "group": np.arange(1, groups + 1)[keep],
            "n": n[keep],
            "observed1": o1[keep].astype(int),
            "observed0": (n - o1)[keep].astype(int),
            "avg_prob": e1[keep] / n[keep],
            "expected1": e1[keep],
            "expected0": (n - e1)[keep],
        }
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (table.observed1 - table.expected1) ** 2 / table.expected1 + (
            table.observed0 - table.expected0
        ) ** 2 / table.expected0
    chi2 = float(terms.sum())
    df = groups - 2
    return HosmerLemeshowResult(chi2, df, float(stats.chi2.sf(chi2, df)), table)


def calibration_curve_binned(
    y_true, prob, n_bins: int = 10, strategy: str = "quantile", alpha: float = 0.05
) -> pd.DataFrame:
    """Observed event rate per bin of predicted probability.

    Parameters
    ----------
    y_true, prob : array-like of shape (n,)
        Labels 0/1 and predicted probabilities.
    n_bins : int
        Number of bins.
    strategy : {"quantile", "uniform"}
        Quantile bins use the Hosmer-Lemeshow (blorr) rule; uniform bins split
        [0, 1] into equal widths with the same ``(lo, hi]`` rule.
    alpha : float
        Level of the Wilson interval of the observed rate.

    Returns
    -------
    pandas.DataFrame
        ``bin, n, mean_predicted, observed, ci_low, ci_high`` for non-empty bins.
    """
    y, p = check_binary_inputs(y_true, prob, name="prob", probability=True)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if strategy == "quantile":
        g = _quantile_groups(p, n_bins)
    elif strategy == "uniform":
        g = np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], p, side="left")
    else:
        raise ValueError(f"unknown strategy {strategy!r}; use 'quantile' or 'uniform'")
    n = np.bincount(g, minlength=n_bins)
    k = np.bincount(g, weights=y, minlength=n_bins)
    sp = np.bincount(g, weights=p, minlength=n_bins)
    keep = n > 0
    lo, hi = wilson_ci(k[keep], n[keep], alpha=alpha)
    return pd.DataFrame(
        {
            "bin": np.arange(1, n_bins + 1)[keep],
            "n": n[keep],
            "mean_predicted": sp[keep] / n[keep],
            "observed": k[keep] / n[keep],
            "ci_low": lo,
            "ci_high": hi,
        }
    )


def calibration_smoothed(y_true, prob, frac: float = 2 / 3, it: int = 0) -> pd.DataFrame:
    """LOWESS-smoothed calibration curve (as R ``lowess(p, y, iter = 0)``).

    Parameters
    ----------
    y_true, prob : array-like of shape (n,)
        Labels 0/1 and predicted probabilities.
    frac : float
        Smoother span (R default 2/3).
    it : int
        Robustifying iterations; 0 is appropriate for binary outcomes.

    Returns
    -------
    pandas.DataFrame
        ``predicted, observed`` sorted by predicted probability, with the
        smoothed observed rate clipped to [0, 1].
    """
    from statsmodels.nonparametric.smoothers_lowess import lowess

    y, p = check_binary_inputs(y_true, prob, name="prob", probability=True)
    fit = lowess(y.astype(float), p, frac=frac, it=it, return_sorted=True)
    return pd.DataFrame({"predicted": fit[:, 0], "observed": np.clip(fit[:, 1], 0, 1)})


def clip_probabilities(prob, eps: float = 1e-9) -> np.ndarray:
    """``prob`` kept within ``[eps, 1 - eps]``, so that its logits are finite (as before the
    Hosmer-Lemeshow test and logistic recalibration of predictions)."""
    return np.clip(prob, eps, 1 - eps)


def _logit(p: np.ndarray) -> np.ndarray:
    p = clip_probabilities(p, _EPS)
    return np.log(p / (1 - p))


def calibration_slope_intercept(y_true, prob, alpha: float = 0.05) -> dict:
    """Logistic recalibration: calibration slope and calibration-in-the-large.

    Parameters
    ----------
    y_true, prob : array-like of shape (n,)
        Labels 0/1 and predicted probabilities (clipped to [1e-12, 1 - 1e-12]
        before taking the logit).
    alpha : float
        Level of the Wald intervals.

    Returns
    -------
    dict
        ``slope`` (coefficient of logit(p) in ``y ~ logit(p)``), ``intercept``
        (calibration-in-the-large: intercept of ``y ~ 1 + offset(logit(p))``),
        and ``*_ci_low`` / ``*_ci_high`` Wald intervals. Perfect calibration
        gives slope 1, intercept 0.
    """
    import statsmodels.api as sm

    y, p = check_binary_inputs(y_true, prob, name="prob", probability=True)
    lp = _logit(p)
    fam = sm.families.Binomial()
    slope_fit = sm.GLM(y, sm.add_constant(lp), family=fam).fit()
    citl_fit = sm.GLM(y, np.ones((y.size, 1)), family=fam, offset=lp).fit()
    s_ci = np.asarray(slope_fit.conf_int(alpha))[1]
    i_ci = np.asarray(citl_fit.conf_int(alpha))[0]
    return {
        "intercept": float(citl_fit.params[0]),
        "intercept_ci_low": float(i_ci[0]),
        "intercept_ci_high": float(i_ci[1]),
        "slope": float(slope_fit.params[1]),
        "slope_ci_low": float(s_ci[0]),
        "slope_ci_high": float(s_ci[1]),
    }


def brier_score(y_true, prob) -> float:
    """Brier score, ``mean((prob - y)^2)`` (lower is better)."""
    y, p = check_binary_inputs(y_true, prob, name="prob", probability=True)
    return float(np.mean((p - y) ** 2))
