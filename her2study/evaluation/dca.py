"""Decision curve analysis (net benefit), following R ``dcurves::dca``.

Conventions (as dcurves)
------------------------
* Predicted positive when ``prob >= threshold``, except that a probability of
  exactly 0 is never positive and exactly 1 is always positive (dcurves nudges
  them to ``0 - eps`` / ``1 + eps``). So at threshold 0 a 0/1 test keeps its
  own positives, and "treat all" / "treat none" are exactly ``prob = 1`` / ``0``.
* ``net_benefit = tp_rate - threshold / (1 - threshold) * fp_rate - harm``,
  rates per patient (divided by n). At threshold 0 it equals ``tp_rate``.
* ``net_intervention_avoided = (nb - nb_treat_all) / (t / (1 - t)) * nper``.
  At threshold 0 this is 0/0 = NaN (R: NA) for "treat all" and -inf/+inf for
  other curves, exactly as dcurves' benchmark output.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .metrics import check_binary_inputs

__all__ = ["net_benefit", "decision_curve"]

_COLUMNS = [
    "variable",
    "label",
    "n",
    "threshold",
    "pos_rate",
    "test_pos_rate",
    "tp_rate",
    "fp_rate",
    "harm",
    "net_benefit",
    "net_intervention_avoided",
]


def _check_thresholds(thresholds) -> np.ndarray:
    t = np.atleast_1d(np.asarray(thresholds, dtype=float))
    if t.ndim != 1 or t.size == 0:
        raise ValueError("thresholds must be a non-empty 1-D array")
    if not np.isfinite(t).all() or (t < 0).any() or (t >= 1).any():
        raise ValueError("thresholds must lie in [0, 1)")
    return t


def _rates(y: np.ndarray, p: np.ndarray, t: np.ndarray) -> dict:
    """test_pos_rate, tp_rate and fp_rate per threshold (dcurves rule)."""
    q = np.where(p == 0, -np.inf, np.where(p == 1, np.inf, p))
    n = y.size
    cases = np.sort(q[y == 1])
    ctrls = np.sort(q[y == 0])
    tp = cases.size - np.searchsorted(cases, t, side="left")
    fp = ctrls.size - np.searchsorted(ctrls, t, side="left")
    return {"test_pos_rate": (tp + fp) / n, "tp_rate": tp / n, "fp_rate": fp / n}


def net_benefit(y_true, prob, thresholds, harm: float = 0.0) -> np.ndarray:
    """Net benefit of treating patients with ``prob >= threshold``.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 0/1.
    prob : array-like of shape (n,)
        Predicted probabilities in [0, 1] (a 0/1 test is allowed).
    thresholds : array-like
        Threshold probabilities in [0, 1).
    harm : float
        Harm of the test, subtracted from the net benefit.

    Returns
    -------
    ndarray
        Net benefit per threshold.
    """
    y, p = check_binary_inputs(y_true, prob, name="prob", probability=True)
    t = _check_thresholds(thresholds)
    r = _rates(y, p, t)
    return r["tp_rate"] - t / (1 - t) * r["fp_rate"] - harm


def decision_curve(
    y_true,
    prob_dict: Mapping[str, object],
    thresholds=None,
    labels: Mapping[str, str] | None = None,
    harm: Mapping[str, float] | None = None,
    nper: float = 1.0,
) -> pd.DataFrame:
    """Decision curves for several models plus "treat all" and "treat none".

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels 0/1.
    prob_dict : mapping name -> array-like of shape (n,)
        Predicted probabilities per model. Names ``"all"`` and ``"none"``
        are reserved.
    thresholds : array-like, optional
        Threshold probabilities in [0, 1); default ``np.arange(0, 1, 0.01)``.
    labels : mapping, optional
        Display labels per variable (default: the name; "Treat All",
        "Treat None").
    harm : mapping, optional
        Harm per model (default 0).
    nper : float
        Net interventions avoided are reported per ``nper`` patients
        (1 reproduces dcurves' benchmark outputs; R's
        ``net_intervention_avoided()`` uses 100).

    Returns
    -------
    pandas.DataFrame
        Long form, rows ordered ``all``, ``none``, then models, each over all
        thresholds. Columns: variable, label, n, threshold, pos_rate,
        test_pos_rate, tp_rate, fp_rate, harm, net_benefit,
        net_intervention_avoided.
    """
    if thresholds is None:
        thresholds = np.arange(0, 1, 0.01)
    t = _check_thresholds(thresholds)
    if not prob_dict:
        raise ValueError("prob_dict is empty")
    reserved = {"all", "none"} & set(prob_dict)
    if reserved:
        raise ValueError(f"model names {sorted(reserved)} are reserved")
    labels = {"all": "Treat All", "none": "Treat None", **dict(labels or {})}
    harm = dict(harm or {})
    y = None
    curves: dict[str, np.ndarray] = {}
    for name, prob in prob_dict.items():
        y, curves[name] = check_binary_inputs(
            y_true, prob, name=f"prob_dict[{name!r}]", probability=True
        )
    n = y.size
    curves = {"all": np.ones(n), "none": np.zeros(n), **curves}
    frames = []
    for name, p in curves.items():
        r = _rates(y, p, t)
        h = float(harm.get(name, 0.0))
        frames.append(
            pd.DataFrame(
                {
                    "variable": name,
                    "label": labels.get(name, name),
                    "n": n,
                    "threshold": t,
                    "pos_rate": y.mean(),
                    **r,
                    "harm": h,
                    "net_benefit": r["tp_rate"] - t / (1 - t) * r["fp_rate"] - h,
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    nb_all = np.tile(out.loc[out.variable == "all", "net_benefit"].to_numpy(), len(curves))
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = out["threshold"].to_numpy() / (1 - out["threshold"].to_numpy())
        out["net_intervention_avoided"] = (out["net_benefit"].to_numpy() - nb_all) / odds * nper
    return out[_COLUMNS]
