"""One evaluation entry point and one vocabulary of metric names, used by every task.

:func:`evaluate` judges one set of predictions. Its keys are the names every table, report,
JSON file and MLflow metric uses: ``n``, ``auc``, ``auc_ci_low``/``_high``, ``threshold``,
``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``accuracy`` (each with ``_ci_low``/``_high``,
Wilson), ``hl_chi2``, ``hl_df``, ``hl_p``, ``cal_slope``, ``cal_intercept`` (each with
``_ci_low``/``_high``), ``brier`` and ``net_benefit_<t>``. Where a caller needs a context it
prefixes the keys (:func:`prefixed`, e.g. ``cv_auc``, ``pooled_auc``) or puts the kind of
estimate in a column (``set``), never a new name for the same number.

The kind of estimate (:data:`KINDS`) says what the numbers are: ``apparent`` (predictions on the
cases the model was fitted on), ``optimism_corrected`` (apparent minus the bootstrap optimism),
``out_of_fold`` (cross-validated predictions of cases not used for fitting), ``test`` (a held-out
set scored once) and ``nested`` (outer folds of a nested search).
"""

from __future__ import annotations

import numpy as np

from .calibration import (
    brier_score,
    calibration_slope_intercept,
    clip_probabilities,
    hosmer_lemeshow,
)
from .dca import net_benefit
from .delong import auc_bootstrap_ci, auc_delong
from .metrics import binary_metrics

KINDS = ("apparent", "optimism_corrected", "out_of_fold", "test", "nested")
THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def auc_with_ci(y, p, ci: str = "delong", n_boot: int = 2000, seed: int = 0):
    """AUC with its 95 % CI: DeLong, or a stratified bootstrap (``ci="bootstrap"``)."""
    if str(ci) == "bootstrap":
        return auc_bootstrap_ci(y, p, n_boot=n_boot, seed=seed)
    return auc_delong(y, p)


def evaluate(
    y,
    prob,
    *,
    kind: str,
    threshold: float | None = None,
    ci: str = "delong",
    n_boot: int = 2000,
    seed: int = 0,
    hl_groups: int = 10,
    net_benefit_at=(),
) -> dict:
    """Every metric of one set of predictions, in the one vocabulary (see the module docstring).

    Parameters
    ----------
    y, prob : array-like
        Labels 0/1 and predicted probabilities of label 1.
    kind : one of :data:`KINDS`
        What these predictions are; recorded as ``kind``.
    threshold : float, optional
        Classify positive at ``prob >= threshold``; no threshold metrics without it.
    ci : {"delong", "bootstrap"}
        The AUC interval.
    hl_groups : int
        Hosmer-Lemeshow groups.
    net_benefit_at : sequence of float
        Thresholds whose net benefit is reported as ``net_benefit_<t>``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    y = np.asarray(y).astype(int)
    p = np.asarray(prob, dtype=float)
    auc = auc_with_ci(y, p, ci=ci, n_boot=n_boot, seed=seed)
    out: dict = {
        "kind": kind,
        "n": int(y.size),
        "auc": float(auc.auc),
        "auc_ci_low": float(auc.ci_low),
        "auc_ci_high": float(auc.ci_high),
    }
    if threshold is not None:
        m = binary_metrics(y, p, threshold)
        out["threshold"] = float(threshold)
        for name in THRESHOLD_METRICS:
            for suffix in ("", "_ci_low", "_ci_high"):
                out[name + suffix] = float(m[name + suffix])
    clipped = clip_probabilities(p)  # finite logits for HL and recalibration
    # df = non-empty groups - 2 on the fitting data (apparent), = groups on data not fitted on
    hl = hosmer_lemeshow(y, clipped, groups=int(hl_groups), fitted=kind == "apparent")
    cal = calibration_slope_intercept(y, clipped)
    out.update(
        {
            "hl_chi2": float(hl.chi2),
            "hl_df": int(hl.df),
            "hl_p": float(hl.p),
            "cal_slope": cal["slope"],
            "cal_slope_ci_low": cal["slope_ci_low"],
            "cal_slope_ci_high": cal["slope_ci_high"],
            "cal_intercept": cal["intercept"],
            "cal_intercept_ci_low": cal["intercept_ci_low"],
            "cal_intercept_ci_high": cal["intercept_ci_high"],
            "brier": brier_score(y, p),
        }
    )
    at = [float(t) for t in net_benefit_at]
    if at:
        nb = net_benefit(y, p, np.asarray(at, dtype=float))
        out.update({f"net_benefit_{t:g}": float(v) for t, v in zip(at, nb, strict=True)})
    return out


def prefixed(prefix: str, metrics: dict, drop=("kind",)) -> dict:
    """``metrics`` with every key prefixed (``cv_auc``, ``pooled_auc``), ``drop`` keys left out."""
    return {f"{prefix}{k}": v for k, v in metrics.items() if k not in drop}
