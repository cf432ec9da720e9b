"""ROC AUC with DeLong variance (fast midrank algorithm) and bootstrap intervals.

The variance follows DeLong, DeLong & Clarke-Pearson (1988), computed with the
O(n log n) midrank algorithm of Sun & Xu (2014). Results match R ``pROC``
(``ci.auc(method = "delong")``, ``roc.test(method = "delong", paired = TRUE)``)
when pROC's direction is ``controls < cases``, i.e. higher score = positive.
No automatic direction flipping is done here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

from .metrics import check_binary_inputs

__all__ = [
    "AUCResult",
    "DeLongTestResult",
    "auc_delong",
    "delong_test",
    "auc_bootstrap_ci",
    "delong_covariance",
]


class AUCResult(NamedTuple):
    """AUC with a confidence interval and standard error."""

    auc: float
    ci_low: float
    ci_high: float
    se: float


class DeLongTestResult(NamedTuple):
    """Paired two-sided DeLong test of AUC(a) == AUC(b).

    ``diff = auc_a - auc_b`` with the Wald interval ``diff +/- z_(1-alpha/2) * se_diff``
    from the DeLong variance of the difference (pROC ``roc.test``'s ``conf.int``); the
    interval is not clipped. The four leading fields are unchanged from earlier versions.
    """

    z: float
    p: float
    auc_a: float
    auc_b: float
    diff: float = float("nan")
    diff_ci_low: float = float("nan")
    diff_ci_high: float = float("nan")
    se_diff: float = float("nan")


def _midranks(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties averaged) along the last axis."""
    return stats.rankdata(x, method="average", axis=-1)


def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for k score vectors.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 0/1.
    scores : array-like of shape (k, n) or (n,)
        One row per classifier, evaluated on the same cases.

    Returns
    -------
    aucs : ndarray of shape (k,)
    cov : ndarray of shape (k, k)
    """
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    for row in s:
        y, _ = check_binary_inputs(y_true, row)
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = _midranks(pos)
    ty = _midranks(neg)
    tz = _midranks(np.concatenate([pos, neg], axis=1))
    # structural components: V10 (per case), V01 (per control)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def auc_delong(y_true, y_score, alpha: float = 0.05) -> AUCResult:
    """AUC with a DeLong confidence interval.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 0/1.
    y_score : array-like of shape (n,)
        Scores; higher means more likely positive.
    alpha : float
        Two-sided level (0.05 -> 95% CI).

    Returns
    -------
    AUCResult
        ``auc, ci_low, ci_high, se``; the normal-approximation interval
        ``auc +/- z * se`` is clipped to [0, 1] as in pROC.
    """
    aucs, cov = delong_covariance(y_true, y_score)
    auc = float(aucs[0])
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    z = stats.norm.ppf(1 - alpha / 2)
    return AUCResult(auc, float(max(auc - z * se, 0.0)), float(min(auc + z * se, 1.0)), se)


def delong_test(y_true, score_a, score_b, *, alpha: float = 0.05) -> DeLongTestResult:
    """Paired two-sided DeLong test for two correlated AUCs.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 0/1.
    score_a, score_b : array-like of shape (n,)
        Scores of the two models on the same cases.
    alpha : float, default=0.05
        Two-sided level of the interval for the difference (0.05 -> 95% CI).

    Returns
    -------
    DeLongTestResult
        ``(z, p, auc_a, auc_b, diff, diff_ci_low, diff_ci_high, se_diff)`` with
        ``diff = auc_a - auc_b``, ``se_diff = sqrt(var_a + var_b - 2 cov_ab)`` and
        ``z = diff / se_diff``. If the difference has zero variance, ``z`` is 0
        (equal AUCs, p = 1) or +/-inf (p = 0) and the interval is ``[diff, diff]``.
    """
    a = np.asarray(score_a, dtype=float)
    b = np.asarray(score_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"score_a and score_b differ in shape: {a.shape} vs {b.shape}")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    aucs, cov = delong_covariance(y_true, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-12 else float(np.sign(diff) * np.inf)
        se = 0.0
    else:
        se = float(np.sqrt(var))
        z = float(diff / se)
    p = float(2 * stats.norm.sf(abs(z)))
    half = float(stats.norm.ppf(1 - alpha / 2)) * se
    return DeLongTestResult(
        z, p, float(aucs[0]), float(aucs[1]), diff, diff - half, diff + half, se
    )


def _batch_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of each row (Mann-Whitney via midranks); NaN if a row lacks a class."""
    ranks = _midranks(scores)
    m = labels.sum(axis=1)
    n = labels.shape[1] - m
    r1 = np.where(labels == 1, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (r1 - m * (m + 1) / 2.0) / (m * n)
    return np.where((m > 0) & (n > 0), auc, np.nan)


def auc_bootstrap_ci(
    y_true,
    y_score,
    n_boot: int = 2000,
    stratified: bool = True,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> AUCResult:
    """AUC with a percentile bootstrap confidence interval.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels 0/1 and scores.
    n_boot : int
        Number of bootstrap replicates.
    stratified : bool
        Resample cases and controls separately (keeps class counts fixed,
        as pROC's default). Otherwise, replicates lacking a class are dropped.
    seed : int or None
        Seed for ``numpy.random.default_rng``.
    alpha : float
        Two-sided level.

    Returns
    -------
    AUCResult
        Point AUC on the full data, percentile interval, and ``se`` = the
        standard deviation of the bootstrap AUCs.
    """
    y, s = check_binary_inputs(y_true, y_score)
    if n_boot < 2:
        raise ValueError("n_boot must be >= 2")
    rng = np.random.default_rng(seed)
    auc = float(_batch_auc(s[None, :], y[None, :])[0])
    pos_idx, neg_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    chunk = max(1, int(4_000_000 // y.size))
    boots = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        if stratified:
            idx = np.concatenate(
                [
                    rng.choice(pos_idx, size=(b, pos_idx.size)),
                    rng.choice(neg_idx, size=(b, neg_idx.size)),
                ],
                axis=1,
            )
        else:
            idx = rng.integers(0, y.size, size=(b, y.size))
        boots.append(_batch_auc(s[idx], y[idx]))
    boot = np.concatenate(boots)
    boot = boot[np.isfinite(boot)]
    if boot.size < 2:
        raise ValueError("too few valid bootstrap replicates (each needs both classes)")
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return AUCResult(auc, float(lo), float(hi), float(boot.std(ddof=1)))
