"""Input validation, Wilson intervals, threshold choice and confusion-matrix metrics.

Conventions
-----------
* ``y_true`` holds 0/1 labels (1 = positive class, e.g. HER2-positive).
* Higher ``y_score`` means "more likely positive".
* A case is *predicted positive* when ``y_score >= threshold``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = [
    "wilson_ci",
    "choose_threshold",
    "binary_metrics",
    "check_binary_inputs",
    "holm_adjust",
]


def check_binary_inputs(
    y_true, y_score, *, name: str = "y_score", probability: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert a label vector and a score vector.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Binary labels coded 0/1 (bool accepted).
    y_score : array-like of shape (n,)
        Scores or probabilities.
    name : str
        Name of the score argument, used in error messages.
    probability : bool
        If True, also require ``0 <= y_score <= 1``.

    Returns
    -------
    y_true : ndarray of int
    y_score : ndarray of float

    Raises
    ------
    ValueError
        On length mismatch, non-1-D input, NaN/inf, labels other than 0/1,
        or a single class.
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true and {name} must be 1-D arrays")
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"length mismatch: y_true has {y.shape[0]} values, {name} has {s.shape[0]}"
        )
    if y.dtype == bool:
        y = y.astype(int)
    try:
        yf = y.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError("y_true must be numeric 0/1 labels") from exc
    if np.isnan(yf).any():
        raise ValueError("y_true contains NaN")
    if not np.isin(yf, (0.0, 1.0)).all():
        raise ValueError("y_true must contain only 0 and 1")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if probability and ((s < 0).any() or (s > 1).any()):
        raise ValueError(f"{name} must be probabilities in [0, 1]")
    yi = yf.astype(int)
    n_pos = int(yi.sum())
    if n_pos == 0 or n_pos == yi.size:
        raise ValueError(
            "y_true contains a single class "
            f"({'all positive' if n_pos else 'all negative'}, n={yi.size}); "
            "both classes (0 and 1) are required"
        )
    return yi, s


def wilson_ci(k, n, alpha: float = 0.05):
    """Wilson score interval for a binomial proportion ``k / n``.

    Parameters
    ----------
    k, n : int or array-like
        Successes and trials (vectorised). ``n == 0`` gives ``(nan, nan)``.
    alpha : float
        Two-sided level; 0.05 gives a 95% interval.

    Returns
    -------
    (low, high) : tuple of float or ndarray
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    if (k < 0).any() or (k > n).any():
        raise ValueError("wilson_ci needs 0 <= k <= n")
    z = stats.norm.ppf(1 - alpha / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
        low = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        high = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    low = np.where(n > 0, low, np.nan)
    high = np.where(n > 0, high, np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def choose_threshold(y_true, y_score, method: str = "youden", value: float = 0.5) -> float:
    """Choose a classification threshold (on training data).

    Parameters
    ----------
    y_true, y_score : array-like
        Training labels (0/1) and scores.
    method : {"youden", "fixed"}
        ``"youden"`` maximises J = sensitivity + specificity - 1;
        ``"fixed"`` returns ``value`` unchanged.
    value : float
        Threshold for ``method="fixed"``.

    Returns
    -------
    float
        Threshold; predict positive when ``score >= threshold``.

    Notes
    -----
    Candidate thresholds are the midpoints between consecutive distinct
    sorted scores (as in pROC), so the returned value never coincides with an
    observed training score. If several candidates reach the maximal J
    (within 1e-12), the **lowest** threshold, i.e. the one with the highest
    sensitivity, is returned. This makes the choice deterministic.
    """
    if method == "fixed":
        value = float(value)
        if not np.isfinite(value):
            raise ValueError("fixed threshold must be finite")
        return value
    if method != "youden":
        raise ValueError(f"unknown method {method!r}; use 'youden' or 'fixed'")
    y, s = check_binary_inputs(y_true, y_score)
    uniq = np.unique(s)
    if uniq.size < 2:
        raise ValueError("y_score is constant; no Youden threshold can be chosen")
    cands = (uniq[:-1] + uniq[1:]) / 2.0
    pos = np.sort(s[y == 1])
    neg = np.sort(s[y == 0])
    sens = (pos.size - np.searchsorted(pos, cands, side="left")) / pos.size
    spec = np.searchsorted(neg, cands, side="left") / neg.size
    j = sens + spec - 1.0
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(cands[best[0]])


_RATIOS = {
    # name: (numerator key, denominator keys)
    "sensitivity": ("tp", ("tp", "fn")),
    "specificity": ("tn", ("tn", "fp")),
    "ppv": ("tp", ("tp", "fp")),
    "npv": ("tn", ("tn", "fn")),
    "accuracy": ("tp_tn", ("tp", "fp", "tn", "fn")),
}


def binary_metrics(y_true, y_score, threshold: float, alpha: float = 0.05) -> dict:
    """Confusion-matrix metrics with Wilson confidence intervals.

    Parameters
    ----------
    y_true, y_score : array-like
        Labels (0/1) and scores. A single class is allowed here (e.g. a small
        test fold); the undefined ratios are then NaN.
    threshold : float
        Predict positive when ``y_score >= threshold``.
    alpha : float
        Two-sided level of the Wilson intervals.

    Returns
    -------
    dict
        ``threshold, n, tp, fp, tn, fn`` and, for each of ``sensitivity,
        specificity, ppv, npv, accuracy``, keys ``<name>``,
        ``<name>_ci_low`` and ``<name>_ci_high``. Ratios with a zero
        denominator are NaN.
    """
    try:
        y, s = check_binary_inputs(y_true, y_score)
    except ValueError as exc:
        if "single class" not in str(exc):
            raise
        y = np.asarray(y_true).astype(int)
        s = np.asarray(y_score, dtype=float)
    if y.size == 0:
        raise ValueError("empty input")
    if not np.isfinite(threshold):
        raise ValueError("threshold must be finite")
    pred = s >= threshold
    counts = {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "tn": int(np.sum(~pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
    }
    counts["tp_tn"] = counts["tp"] + counts["tn"]
    out: dict = {"threshold": float(threshold), "n": int(y.size)}
    out.update({k: counts[k] for k in ("tp", "fp", "tn", "fn")})
    for name, (num_key, den_keys) in _RATIOS.items():
        k = counts[num_key]
        n = sum(counts[d] for d in den_keys)
        lo, hi = wilson_ci(k, n, alpha=alpha)
        out[name] = k / n if n > 0 else float("nan")
        out[f"{name}_ci_low"] = lo
        out[f"{name}_ci_high"] = hi
    return out


def holm_adjust(pvalues) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, controlling the family-wise error rate.

    Parameters
    ----------
    pvalues : array-like
        Raw p-values in [0, 1], any shape. NaN marks a comparison that could not be
        made: it stays NaN and does not count towards the number of tests ``m``.

    Returns
    -------
    ndarray of float, same shape
        With the m finite p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted value
        of ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) p_(j))``; adjusted values are
        monotone in the raw ones. Equals ``statsmodels.stats.multitest.multipletests(p,
        method="holm")[1]`` (and R ``p.adjust(p, "holm")``) on the finite values.
    """
    p = np.asarray(pvalues, dtype=float)
    flat = p.ravel()
    finite = ~np.isnan(flat)
    if ((flat[finite] < 0) | (flat[finite] > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(flat.shape, np.nan)
    vals = flat[finite]
    m = vals.size
    if m:
        order = np.argsort(vals, kind="stable")
        steps = (m - np.arange(m)) * vals[order]
        adjusted = np.minimum(np.maximum.accumulate(steps), 1.0)
        res = np.empty(m)
        res[order] = adjusted
        out[finite] = res
    return out.reshape(p.shape)
