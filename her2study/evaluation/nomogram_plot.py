"""The nomogram figure: an rms-style nomogram of a fitted logistic model (points, total points,
linear predictor, probability), drawn without pyplot."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["plot_nomogram"]

# 0.01, 0.02, 0.05, 0.1, 0.2, ..., 0.9, 0.95, 0.98, 0.99
_PROBABILITY_TICKS = (0.01, 0.02, 0.05, *(k / 10 for k in range(1, 10)), 0.95, 0.98, 0.99)


def _linear_params(fitted):
    """(intercept, Series of coefficients) of a fitted linear logistic model."""
    params = getattr(fitted, "params_", None)
    if isinstance(fitted, pd.Series):
        params = fitted
    if params is not None:
        return float(params["const"]), params.drop("const").astype(np.float64)
    if hasattr(fitted, "coef_") and hasattr(fitted, "intercept_"):
        coef = np.ravel(fitted.coef_)
        names = getattr(fitted, "feature_names_in_", [f"x{i}" for i in range(coef.size)])
        return float(np.ravel(fitted.intercept_)[0]), pd.Series(coef, index=list(names))
    raise TypeError(f"cannot read linear coefficients from {type(fitted).__name__}")


def _axis_spec(name, spec):
    """(low, high, tick values, tick labels) for one predictor."""
    from matplotlib.ticker import MaxNLocator

    if isinstance(spec, dict):
        values = np.asarray(list(spec), dtype=np.float64)
        return values.min(), values.max(), values, [str(v) for v in spec.values()]
    values = list(spec)
    if len(values) < 2:
        raise ValueError(f"feature_ranges[{name!r}] needs (low, high) or >= 2 tick values")
    if len(values) > 2:
        ticks = np.asarray(values, dtype=np.float64)
        return ticks.min(), ticks.max(), ticks, [_fmt(v) for v in ticks]
    lo, hi = float(min(values)), float(max(values))
    if lo == hi:
        raise ValueError(f"feature_ranges[{name!r}] is empty: {spec!r}")
    if all(float(v).is_integer() for v in values) and hi - lo <= 10:
        ticks = np.arange(lo, hi + 1)
    else:
        ticks = MaxNLocator(nbins=6).tick_values(lo, hi)
        ticks = ticks[(ticks >= lo - 1e-12) & (ticks <= hi + 1e-12)]
    return lo, hi, ticks, [_fmt(v) for v in ticks]


def _fmt(v):
    return f"{v:g}"


def _thin(positions, labels, char_width=0.9):
    """Drop ticks whose labels would touch the previous kept one.

    Positions are on the 0-100 axis scale; an 8-pt character is about 0.9 units wide on the
    default 10-inch figure.
    """
    kept_p, kept_l = [], []
    for pos, lab in sorted(zip(positions, labels, strict=True)):
        if kept_p:
            needed = char_width * (len(kept_l[-1]) + len(lab)) / 2 + 1.0
            if pos - kept_p[-1] < needed:
                continue
        kept_p.append(pos)
        kept_l.append(lab)
    return kept_p, kept_l


def plot_nomogram(fitted_combined, feature_ranges, title=None, note=None):
    """Draw an rms-style nomogram of a fitted logistic model.

    Each predictor gets an axis whose length is its coefficient times its range; the one
    with the largest effect spans 0-100 points. Points add up on the total-points axis,
    which maps to the linear predictor and the predicted probability.

    Parameters
    ----------
    fitted_combined : CombinedModel, ClinicalModel, fitted LogisticRegression or Series
        Anything with ``params_`` (including ``const``), or ``coef_``/``intercept_``.
    feature_ranges : dict
        For every predictor: ``(low, high)`` (integer ranges of width <= 10 get a tick per
        integer, others "nice" ticks), a list of tick values, or ``{value: label}`` for
        coded categories, e.g. ``{0: "ER-", 1: "ER+"}``.
    title, note : str, optional
        Figure title and a footnote.

    Returns
    -------
    matplotlib.figure.Figure
        Built without pyplot (no global backend state); save it with ``fig.savefig``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    intercept, coefs = _linear_params(fitted_combined)
    missing = [n for n in coefs.index if n not in feature_ranges]
    if missing:
        raise ValueError(f"feature_ranges lacks {missing}")
    specs = {n: _axis_spec(n, feature_ranges[n]) for n in coefs.index}
    effects = {n: abs(coefs[n]) * (specs[n][1] - specs[n][0]) for n in coefs.index}
    top = max(effects.values())
    if not np.isfinite(top) or top <= 0:
        raise ValueError("every predictor has zero effect over its range; nothing to draw")
    scale = 100.0 / top  # points per unit of linear predictor
    low_lp = {n: min(coefs[n] * specs[n][0], coefs[n] * specs[n][1]) for n in coefs.index}
    total_max = sum(effects.values()) * scale
    lp0 = intercept + sum(low_lp.values())

    def total_x(points):
        return np.asarray(points, dtype=float) * 100.0 / total_max

    rows = ["Points", *coefs.index, "Total points", "Linear predictor", "Probability"]
    fig = Figure(figsize=(10, 0.62 * len(rows) + 1.4))
    ax = fig.add_axes((0.2, 0.1 if note else 0.04, 0.76, 0.82 if title else 0.9))
    ax.set_xlim(-2, 104)
    ax.set_ylim(-len(rows) + 0.4, 0.8)
    ax.axis("off")

    def draw(row, positions, labels, x_from, x_to):
        y = -row
        ax.plot([x_from, x_to], [y, y], color="black", lw=1)
        positions, labels = _thin(positions, labels)
        for pos, lab in zip(positions, labels, strict=True):
            ax.plot([pos, pos], [y, y + 0.12], color="black", lw=1)
            ax.text(pos, y + 0.17, lab, ha="center", va="bottom", fontsize=8)
        ax.text(-4, y, rows[row], ha="right", va="center", fontsize=10, transform=ax.transData)

    # Guides on the 0-100 scale only: the total-points rows below have their own scale.
    ax.vlines(range(0, 101, 10), -len(coefs) - 0.3, 0.3, color="0.9", lw=0.6, zorder=0)
    draw(0, list(range(0, 101, 10)), [str(v) for v in range(0, 101, 10)], 0, 100)

    for row, name in enumerate(coefs.index, start=1):
        lo, hi, ticks, labels = specs[name]
        pts = (coefs[name] * np.asarray(ticks) - low_lp[name]) * scale
        ends = (coefs[name] * np.array([lo, hi]) - low_lp[name]) * scale
        draw(row, list(pts), labels, ends.min(), ends.max())

    row = len(coefs) + 1
    totals = MaxNLocator(nbins=10).tick_values(0, total_max)
    totals = totals[(totals >= 0) & (totals <= total_max + 1e-9)]
    draw(row, list(total_x(totals)), [_fmt(t) for t in totals], 0, 100)

    lp_ticks = MaxNLocator(nbins=8).tick_values(lp0, lp0 + total_max / scale)
    lp_ticks = lp_ticks[(lp_ticks >= lp0 - 1e-9) & (lp_ticks <= lp0 + total_max / scale + 1e-9)]
    draw(row + 1, list(total_x((lp_ticks - lp0) * scale)), [_fmt(t) for t in lp_ticks], 0, 100)

    probs = np.array(_PROBABILITY_TICKS)
    lp_p = np.log(probs / (1 - probs))
    inside = (lp_p >= lp0) & (lp_p <= lp0 + total_max / scale)
    p_from, p_to = total_x((np.array([lp0, lp0 + total_max / scale]) - lp0) * scale)
    draw(
        row + 2,
        list(total_x((lp_p[inside] - lp0) * scale)),
        [_fmt(p) for p in probs[inside]],
        p_from,
        p_to,
    )

    if title:
        fig.suptitle(title, fontsize=12)
    if note:
        fig.text(0.02, 0.02, note, fontsize=8, ha="left", va="bottom")
    return fig
