"""Publication figures: ROC, calibration, decision curves, LASSO path, coefficients.

Figures are built with the object-oriented API on an Agg canvas
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): nothing is registered
with ``pyplot``, no global backend is switched, ``plt.show`` is never called.
Each function returns the ``Figure`` (save it with ``fig.savefig``). Pass
``ax`` to draw into an existing axes instead; its figure is returned.

Every function accepts ``title`` and ``note``; the note (e.g. "SYNTHETIC
DATA") is printed in small grey text in the lower-right corner of the figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .calibration import brier_score, calibration_curve_binned, calibration_smoothed
from .delong import auc_delong
from .metrics import check_binary_inputs

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn (a warm run draws none)
    from matplotlib.figure import Figure

__all__ = [
    "plot_roc",
    "plot_calibration",
    "plot_dca",
    "plot_lasso_path",
    "plot_coefficient_paths",
    "plot_coefficients",
]


def _setup(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish(fig, ax, title, note):
    if title:
        ax.set_title(title)
    if note:
        engine = fig.get_layout_engine()
        if engine is not None and hasattr(engine, "set"):  # constrained: keep a strip below
            engine.set(rect=(0, 0.04, 1, 0.96))
        fig.text(
            0.995,
            0.005,
            str(note),
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.45",
            gid="note",
        )
    return fig


def _roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical ROC vertices (fpr, tpr), one per distinct threshold, from (0, 0)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def _roc_band(y, s, grid, n_boot, alpha, rng):
    """Pointwise stratified-bootstrap band of max TPR at each FPR in ``grid``."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    tpr_boot = np.empty((n_boot, grid.size))
    for b in range(n_boot):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        fpr, tpr = _roc_points(y[idx], s[idx])
        tpr_boot[b] = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    return np.quantile(tpr_boot, [alpha / 2, 1 - alpha / 2], axis=0)


def plot_roc(
    curves: Mapping[str, tuple],
    ci: bool = True,
    band: str | None = "bootstrap",
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    title: str | None = None,
    note: str | None = None,
    ax=None,
    figsize=(5.5, 5.0),
) -> Figure:
    """ROC curves of several models on one plot.

    Parameters
    ----------
    curves : mapping name -> (y_true, y_score)
        One entry per model/cohort.
    ci : bool
        Show the DeLong 95% CI of the AUC in the legend.
    band : {"bootstrap", None}
        Shade a pointwise stratified-bootstrap band of sensitivity at each
        1 - specificity (as pROC ``ci.se``).
    n_boot, alpha, seed : int, float, int
        Bootstrap replicates, level and seed of the band.
    title, note : str, optional
        Axes title; small corner note (e.g. "SYNTHETIC DATA").
    ax : matplotlib Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not curves:
        raise ValueError("curves is empty")
    if band not in ("bootstrap", None):
        raise ValueError("band must be 'bootstrap' or None")
    fig, ax = _setup(ax, figsize)
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, 101)
    level = int(round(100 * (1 - alpha)))
    for name, (y_true, y_score) in curves.items():
        y, s = check_binary_inputs(y_true, y_score, name=f"score of {name!r}")
        res = auc_delong(y, s, alpha=alpha)
        fpr, tpr = _roc_points(y, s)
        label = f"{name}: AUC {res.auc:.3f}"
        if ci:
            label += f" ({level}% CI {res.ci_low:.3f}\u2013{res.ci_high:.3f})"
        (line,) = ax.plot(fpr, tpr, drawstyle="steps-post", lw=1.8, label=label)
        if band == "bootstrap":
            lo, hi = _roc_band(y, s, grid, n_boot, alpha, rng)
            ax.fill_between(grid, lo, hi, step="post", color=line.get_color(), alpha=0.15, lw=0)
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 \u2212 Specificity", ylabel="Sensitivity")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8, title="DeLong CI" if ci else None, title_fontsize=8)
    return _finish(fig, ax, title, note)


def plot_calibration(
    curves: Mapping[str, tuple],
    n_bins: int = 10,
    strategy: str = "quantile",
    smooth: bool = True,
    title: str | None = None,
    note: str | None = None,
    ax=None,
    figsize=(5.5, 5.0),
) -> Figure:
    """Calibration plot: binned observed rates (Wilson CIs) and LOWESS curves.

    Parameters
    ----------
    curves : mapping name -> (y_true, prob)
        Predicted probabilities per model/cohort.
    n_bins, strategy : int, str
        Binning passed to :func:`calibration_curve_binned`.
    smooth : bool
        Add the LOWESS curve of :func:`calibration_smoothed`.
    title, note : str, optional
        Axes title; small corner note.
    ax : matplotlib Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not curves:
        raise ValueError("curves is empty")
    fig, ax = _setup(ax, figsize)
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="Ideal")
    for name, (y_true, prob) in curves.items():
        tab = calibration_curve_binned(y_true, prob, n_bins=n_bins, strategy=strategy)
        err = np.clip(np.vstack([tab.observed - tab.ci_low, tab.ci_high - tab.observed]), 0, None)
        cont = ax.errorbar(
            tab.mean_predicted,
            tab.observed,
            yerr=err,
            fmt="o",
            ms=4,
            capsize=2,
            label=f"{name} (Brier {brier_score(y_true, prob):.3f})",
        )
        if smooth:
            sm = calibration_smoothed(y_true, prob)
            ax.plot(sm.predicted, sm.observed, color=cont.lines[0].get_color(), lw=1.5)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Predicted probability", ylabel="Observed proportion")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    return _finish(fig, ax, title, note)


def plot_dca(
    decision_curve_df: pd.DataFrame,
    y: str = "net_benefit",
    ylim: tuple[float, float] | None = None,
    title: str | None = None,
    note: str | None = None,
    ax=None,
    figsize=(6.0, 4.5),
) -> Figure:
    """Plot decision curves from :func:`decision_curve` output.

    Parameters
    ----------
    decision_curve_df : pandas.DataFrame
        Long-form table with columns ``variable, label, threshold`` and ``y``.
    y : {"net_benefit", "net_intervention_avoided"}
        Quantity on the vertical axis.
    ylim : tuple, optional
        Vertical limits; by default net benefit is shown from slightly below
        0 to slightly above its maximum (the steep "treat all" tail is cut).
    title, note : str, optional
        Axes title; small corner note.
    ax : matplotlib Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    df = decision_curve_df
    missing = {"variable", "label", "threshold", y} - set(df.columns)
    if missing:
        raise ValueError(f"decision_curve_df lacks columns {sorted(missing)}")
    fig, ax = _setup(ax, figsize)
    styles = {"all": dict(color="0.5", lw=1.2), "none": dict(color="black", lw=1.2, ls=":")}
    for var, sub in df.groupby("variable", sort=False):
        if y == "net_intervention_avoided" and var in ("all", "none"):
            continue
        vals = sub[y].to_numpy(float)
        ok = np.isfinite(vals)
        ax.plot(
            sub.threshold.to_numpy()[ok],
            vals[ok],
            label=str(sub.label.iloc[0]),
            **styles.get(var, dict(lw=1.8)),
        )
    if ylim is None and y == "net_benefit":
        top = float(np.nanmax(df[y].to_numpy(float)))
        span = top if top > 0 else 1.0
        ylim = (-0.15 * span, top + 0.05 * span)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("Threshold probability")
    ax.set_ylabel("Net benefit" if y == "net_benefit" else "Net interventions avoided")
    ax.legend(fontsize=8)
    return _finish(fig, ax, title, note)


def _cv_columns(cv_curve):
    cv = pd.DataFrame(dict(cv_curve)) if isinstance(cv_curve, Mapping) else pd.DataFrame(cv_curve)
    if "log_lambda" in cv:
        loglam = cv["log_lambda"].to_numpy(float)
    elif "lambda" in cv:
        lam = cv["lambda"].to_numpy(float)
        if (lam <= 0).any():
            raise ValueError("lambda values must be > 0")
        loglam = np.log(lam)
    else:
        raise ValueError("cv_curve needs a 'lambda' or 'log_lambda' column")
    if "mean" not in cv:
        raise ValueError("cv_curve needs a 'mean' column (CV metric per lambda)")
    return cv, loglam


def _one_se(loglam, mean, se, higher_is_better):
    """log(lambda_min) and log(lambda_1se) by the glmnet one-SE rule."""
    best = int(np.nanargmax(mean) if higher_is_better else np.nanargmin(mean))
    if se is None:
        return loglam[best], None
    if higher_is_better:
        ok = mean >= mean[best] - se[best]
    else:
        ok = mean <= mean[best] + se[best]
    return loglam[best], float(np.max(loglam[ok]))


def plot_lasso_path(
    cv_curve,
    lambda_min: float | None = None,
    lambda_1se: float | None = None,
    higher_is_better: bool = False,
    ylabel: str = "Binomial deviance",
    title: str | None = None,
    note: str | None = None,
    ax=None,
    figsize=(6.0, 4.5),
) -> Figure:
    """Cross-validation curve versus log(lambda) with lambda.min / lambda.1se lines.

    Parameters
    ----------
    cv_curve : DataFrame or mapping of arrays
        ``lambda`` (or ``log_lambda``, natural log), ``mean`` (CV metric),
        optional ``se`` (error bars) and ``n_nonzero`` (top axis labels).
    lambda_min, lambda_1se : float, optional
        Penalties to mark (on the lambda scale). If omitted they are computed
        from the curve (best mean; largest lambda within one SE of the best).
    higher_is_better : bool
        True for AUC-type metrics, False for deviance.
    ylabel : str
        Label of the CV metric.
    title, note : str, optional
        Axes title; small corner note.
    ax : matplotlib Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    cv, loglam = _cv_columns(cv_curve)
    mean = cv["mean"].to_numpy(float)
    se = cv["se"].to_numpy(float) if "se" in cv else None
    auto_min, auto_1se = _one_se(loglam, mean, se, higher_is_better)
    x_min = np.log(lambda_min) if lambda_min is not None else auto_min
    x_1se = np.log(lambda_1se) if lambda_1se is not None else auto_1se
    fig, ax = _setup(ax, figsize)
    ax.errorbar(
        loglam,
        mean,
        yerr=se,
        fmt="o",
        ms=3,
        color="tab:red",
        ecolor="0.6",
        capsize=2,
        label="CV mean \u00b1 SE" if se is not None else "CV mean",
    )
    ax.axvline(x_min, ls="--", color="0.2", lw=1, label=f"\u03bb.min (log \u03bb = {x_min:.2f})")
    if x_1se is not None:
        ax.axvline(x_1se, ls=":", color="0.2", lw=1, label=f"\u03bb.1se (log \u03bb = {x_1se:.2f})")
    if "n_nonzero" in cv:
        top = ax.secondary_xaxis("top")
        step = max(1, len(loglam) // 10)
        top.set_xticks(loglam[::step], [str(int(k)) for k in cv["n_nonzero"].to_numpy()[::step]])
        top.tick_params(labelsize=7)
        top.set_xlabel("Non-zero coefficients", fontsize=8)
    ax.set(xlabel="log(\u03bb)", ylabel=ylabel)
    ax.legend(fontsize=8)
    return _finish(fig, ax, title, note)


def plot_coefficient_paths(
    lambdas,
    coefs,
    feature_names=None,
    lambda_min: float | None = None,
    lambda_1se: float | None = None,
    title: str | None = None,
    note: str | None = None,
    ax=None,
    figsize=(6.0, 4.5),
) -> Figure:
    """LASSO coefficient profiles versus log(lambda).

    Parameters
    ----------
    lambdas : array-like of shape (L,)
        Penalty values (> 0).
    coefs : array-like of shape (L, p) or DataFrame
        Coefficients per lambda (rows) and feature (columns).
    feature_names : sequence of str, optional
        Used for a legend when p <= 12 (DataFrame columns by default).
    lambda_min, lambda_1se : float, optional
        Penalties to mark with vertical lines.
    title, note : str, optional
        Axes title; small corner note.
    ax : matplotlib Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    lam = np.asarray(lambdas, dtype=float)
    if isinstance(coefs, pd.DataFrame) and feature_names is None:
        feature_names = [str(c) for c in coefs.columns]
    b = np.asarray(coefs, dtype=float)
    if b.ndim != 2 or b.shape[0] != lam.size:
        raise ValueError("coefs must have shape (len(lambdas), n_features)")
    if (lam <= 0).any():
        raise ValueError("lambda values must be > 0")
    if feature_names is not None and len(feature_names) != b.shape[1]:
        raise ValueError("feature_names must have one name per column of coefs")
    fig, ax = _setup(ax, figsize)
    lines = ax.plot(np.log(lam), b, lw=1)
    if feature_names is not None and len(feature_names) <= 12:
        for line, nm in zip(lines, feature_names, strict=True):
            line.set_label(nm)
        ax.legend(fontsize=7, ncol=2)
    for val, ls in ((lambda_min, "--"), (lambda_1se, ":")):
        if val is not None:
            ax.axvline(np.log(val), ls=ls, color="0.2", lw=1)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set(xlabel="log(\u03bb)", ylabel="Coefficient")
    return _finish(fig, ax, title, note)


def plot_coefficients(
    series,
    drop_zero: bool = True,
    sort: bool = True,
    xlabel: str = "Coefficient",
    title: str | None = None,
    note: str | None = None,
    ax=None,
    figsize=None,
) -> Figure:
    """Horizontal bar chart of model coefficients (positive red, negative blue).

    Parameters
    ----------
    series : pandas.Series, mapping or array-like
        Coefficients indexed by feature name (arrays get ``x0, x1, ...``).
    drop_zero : bool
        Omit exactly-zero coefficients (features removed by LASSO).
    sort : bool
        Sort bars by value.
    xlabel : str
        Horizontal-axis label.
    title, note : str, optional
        Axes title; small corner note.
    ax : matplotlib Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(series, pd.Series):
        s = series.astype(float)
    elif isinstance(series, Mapping):
        s = pd.Series(dict(series), dtype=float)
    else:
        arr = np.asarray(series, dtype=float).ravel()
        s = pd.Series(arr, index=[f"x{i}" for i in range(arr.size)])
    if s.isna().any():
        raise ValueError("coefficients contain NaN")
    if drop_zero:
        s = s[s != 0]
    if s.empty:
        raise ValueError("no (non-zero) coefficients to plot")
    if sort:
        s = s.sort_values()
    if figsize is None:
        figsize = (6.0, max(2.5, 0.28 * len(s) + 1.2))
    fig, ax = _setup(ax, figsize)
    colors = np.where(s.to_numpy() > 0, "tab:red", "tab:blue")
    ax.barh(np.arange(len(s)), s.to_numpy(), color=colors)
    ax.set_yticks(np.arange(len(s)), [str(i) for i in s.index], fontsize=8)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlabel(xlabel)
    return _finish(fig, ax, title, note)
