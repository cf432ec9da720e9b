"""Calibration of predicted probabilities.

Hosmer-Lemeshow grouping reproduces R ``blorr::blr_test_hosmer_lemeshow``:
cut points are the R type-7 quantiles (numpy's default ``"linear"``) of the
fitted risks at ``0, 1/g, ..., 1``; group 1 is ``prob <= q_1`` (lowest value
included), group k is ``q_{k-1} < prob <= q_k``.
"""

from __future__ import annotations

import logging
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
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HosmerLemeshowResult:
    """Hosmer-Lemeshow test result.

    Attributes
    ----------
    chi2, df, p : float, int, float
        Statistic, degrees of freedom and upper-tail p-value (NaN when ``df < 1``).
        ``df`` is ``n_groups - 2`` for predictions on the fitting data and ``n_groups``
        for validation data (see :func:`hosmer_lemeshow`).
    table : pandas.DataFrame
        One row per non-empty group: ``group, n, observed1, observed0,
        avg_prob, expected1, expected0``.
    n_groups : int
        Number of non-empty groups (the requested number unless ties collapsed some).
    min_expected : float
        Smallest expected count, events or non-events, over the non-empty groups.
    warning : str or None
        Why the chi-square approximation is doubtful (groups collapsed, expected
        counts below 5, ``df < 1``), or None.
    fitted : bool
        Whether ``df`` was computed for fitting-data (True) or validation predictions.
    """

    chi2: float
    df: int
    p: float
    table: pd.DataFrame
    n_groups: int = -1
    min_expected: float = float("nan")
    warning: str | None = None
    fitted: bool = True


def _quantile_groups(prob: np.ndarray, n_groups: int) -> np.ndarray:
    """0-based group index using (q_k, q_k+1] intervals of type-7 quantiles.

    ``prob`` may be 1-D or 2-D (one row per replicate, grouped row by row).
    """
    q = np.quantile(prob, np.linspace(0.0, 1.0, n_groups + 1), axis=-1)
    inner = np.moveaxis(q[1:-1], 0, -1)  # (..., n_groups - 1)
    if prob.ndim == 1:
        return np.searchsorted(inner, prob, side="left")
    # searchsorted(side="left") = number of cut points strictly below the value
    return (inner[:, None, :] < prob[:, :, None]).sum(axis=-1)


def _hl_batch(y: np.ndarray, prob: np.ndarray, groups: int, fitted: bool):
    """Vectorised Hosmer-Lemeshow over the rows of 2-D ``y`` and ``prob``.

    Returns per-row arrays ``(chi2, df, p, n_groups, min_expected)`` and the per-group
    counts ``(n, o1, e1)`` of shape (rows, groups). This is the one implementation,
    used by :func:`hosmer_lemeshow` for a single row.
    """
    rows, n_obs = prob.shape
    g = _quantile_groups(prob, groups) + groups * np.arange(rows)[:, None]
    size = rows * groups
    n = np.bincount(g.ravel(), minlength=size).reshape(rows, groups)
    o1 = np.bincount(g.ravel(), weights=y.ravel(), minlength=size).reshape(rows, groups)
    e1 = np.bincount(g.ravel(), weights=prob.ravel(), minlength=size).reshape(rows, groups)
    keep = n > 0
    e0 = n - e1
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (o1 - e1) ** 2 / e1 + ((n - o1) - e0) ** 2 / e0
    chi2 = np.where(keep, terms, 0.0).sum(axis=1)
    n_groups = keep.sum(axis=1)
    df = n_groups - 2 if fitted else n_groups
    min_expected = np.where(keep, np.minimum(e1, e0), np.inf).min(axis=1)
    p = np.where(df >= 1, stats.chi2.sf(chi2, np.maximum(df, 1)), np.nan)
    return chi2, df, p, n_groups, min_expected, (n, o1, e1)


def hosmer_lemeshow(y_true, prob, groups: int = 10, *, fitted: bool = True) -> HosmerLemeshowResult:
    """Hosmer-Lemeshow goodness-of-fit test (blorr grouping).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 0/1.
    prob : array-like of shape (n,)
        Predicted probabilities.
    groups : int
        Number of risk groups requested (deciles by default).
    fitted : bool, default=True
        True when ``prob`` was predicted for the data the model was fitted on:
        ``df = n_groups - 2`` (Hosmer & Lemeshow's fitting-sample test, as R
        ``blorr`` and ``ResourceSelection``). False for predictions on data not used
        in fitting (a test set, out-of-fold predictions): nothing was estimated
        from these cases, so the statistic is referred to chi-square with
        ``df = n_groups`` (Hosmer, Lemeshow & Sturdivant 2013, *Applied Logistic
        Regression*, 3rd ed., section 5.2.2 and the assessment of fit via external
        validation in chapter 5; Hosmer, Lemeshow & Klar 1988, *Biometrical Journal*
        30:911-924). Using ``g - 2`` on validation data makes the test
        anti-conservative: about 10% rejections at the 5% level for perfectly
        calibrated sets of 54 (see ``tests/test_evaluation_calibration.py``).

    Returns
    -------
    HosmerLemeshowResult
        ``chi2, df, p, table, n_groups, min_expected, warning, fitted``.

    Notes
    -----
    ``chi2 = sum over groups of (O1-E1)^2/E1 + (O0-E0)^2/E0`` with
    ``E1 = n_g * mean(prob_g)``. Ties at a cut point can leave a group empty;
    empty groups are dropped from the table and the sum and reduce ``df``
    (``n_groups`` counts the non-empty groups only; blorr keeps ``groups - 2``).
    If fewer than ``groups`` groups remain, or an expected count (events or
    non-events) is below 5, the chi-square approximation is doubtful: the result
    carries a ``warning`` and the same text is logged. ``df < 1`` gives ``p = NaN``.
    """
    y, p = check_binary_inputs(y_true, prob, name="prob", probability=True)
    if groups < 3:
        raise ValueError("groups must be >= 3")
    chi2, df, pval, n_groups, min_exp, (n, o1, e1) = _hl_batch(
        y[None, :].astype(float), p[None, :], groups, fitted
    )
    n, o1, e1 = n[0], o1[0], e1[0]
    keep = n > 0
    table = pd.DataFrame(
        {
            "group": np.arange(1, groups + 1)[keep],
            "n": n[keep],
            "observed1": np.rint(o1[keep]).astype(int),
            "observed0": np.rint((n - o1)[keep]).astype(int),
            "avg_prob": e1[keep] / n[keep],
            "expected1": e1[keep],
            "expected0": (n - e1)[keep],
        }
    )
    n_groups, df, min_exp = int(n_groups[0]), int(df[0]), float(min_exp[0])
    problems = []
    if n_groups < groups:
        problems.append(f"only {n_groups} of {groups} risk groups are non-empty (tied predictions)")
    if min_exp < 5:
        problems.append(f"smallest expected count is {min_exp:.2g} (< 5)")
    if df < 1:
        problems.append(f"df = {df}: no p-value")
    warning = None
    if problems:
        warning = "Hosmer-Lemeshow chi-square approximation doubtful: " + "; ".join(problems)
        log.warning("%s (n=%d, df=%d)", warning, y.size, df)
    return HosmerLemeshowResult(
        float(chi2[0]), df, float(pval[0]), table, n_groups, min_exp, warning, fitted
    )


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
        and ``*_ci_low`` / ``*_ci_high`` Wald intervals (statsmodels GLM, binomial,
        logit link). Perfect calibration gives slope 1, intercept 0. A constant
        prediction has no slope (NaN) but a calibration-in-the-large.
    """
    import statsmodels.api as sm

    y, p = check_binary_inputs(y_true, prob, name="prob", probability=True)
    lp = _logit(p)
    fam = sm.families.Binomial()
    citl_fit = sm.GLM(y, np.ones((y.size, 1)), family=fam, offset=lp).fit()
    i_ci = np.asarray(citl_fit.conf_int(alpha))[0]
    if np.ptp(lp) > 0:
        slope_fit = sm.GLM(y, np.column_stack([np.ones(y.size), lp]), family=fam).fit()
        slope = float(slope_fit.params[1])
        s_ci = np.asarray(slope_fit.conf_int(alpha))[1]
    else:  # a constant prediction has no slope
        slope, s_ci = float("nan"), (float("nan"), float("nan"))
    return {
        "intercept": float(citl_fit.params[0]),
        "intercept_ci_low": float(i_ci[0]),
        "intercept_ci_high": float(i_ci[1]),
        "slope": slope,
        "slope_ci_low": float(s_ci[0]),
        "slope_ci_high": float(s_ci[1]),
    }


def brier_score(y_true, prob) -> float:
    """Brier score, ``mean((prob - y)^2)`` (lower is better)."""
    y, p = check_binary_inputs(y_true, prob, name="prob", probability=True)
    return float(np.mean((p - y) ** 2))
