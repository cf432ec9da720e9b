"""The nested search's estimates: the pooled and per-width nested AUCs with their intervals,
the outer-fold summaries, and the result container (see :mod:`her2study.search.nested`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from her2study.evaluation.resampling import (
    NADEAU_BENGIO,
    corrected_t_interval,
    naive_t_interval,
)
from her2study.search.candidate import (
    DEFAULT_KIND,
    Candidate,
    region_choice,
)

REGION_COLUMNS = ["region", "width_mm", "nested_auc", "ci_low", "ci_high"]
DIFFERENCE_COLUMNS = ["region", "width_mm", "reference", "auc_difference", "ci_low", "ci_high"]

# what each number of the estimate is (written with it: nested_estimate.json "kinds")
KINDS = {
    "estimate_kind": "the outer loop: 'nested stratified K-fold' (outer test folds drawn from all "
    "cases), 'nested leave-one-site-out' (each outer test fold is exactly one site of "
    "data.site_column, which neither the search nor the refit saw: performance on a site never "
    "seen) or 'nested train-on-sites test-on-sites' (one outer fold: split.train_sites -> "
    "split.test_sites); by site, J is the number of held-out sites and n_test differs by site",
    "mean_outer_auc": "nested CV estimate: mean AUC of the J = outer_folds x outer_repeats outer "
    "test folds, each scored once by the configuration its inner search chose; estimates the "
    "performance of the whole procedure (search + fit) trained on about n_train cases",
    "ci_low/ci_high": "95% Nadeau-Bengio corrected resampled t interval of mean_outer_auc "
    "(variance of the mean of the J fold AUCs x (1/J + n_test/n_train), t on J-1 df); the same "
    "as mean_outer_auc_ci_low/high",
    "naive_t_ci_low/high": "t-interval treating the J outer folds as independent: too narrow "
    "(folds share training cases; repeats shrink it with no new information); comparison only",
    "pooled_*": "metrics of the pooled out-of-fold predictions (per case, mean over repeats) of "
    "J different fitted models; pooled_auc_ci_* is DeLong's as if they were one model: "
    "descriptive, not an interval for the procedure",
    "pooled_auc_per_repeat, sd_between_repeats": "pooled AUC of each outer repeat and their SD: "
    "the spread due to the fold assignment alone (not sampling variability)",
    "mean_inner_auc_of_winners": "inner-CV AUC of the winners: optimistic (chosen for being "
    "high), not an estimate",
    "ring_width_counts, region_counts, model_counts": "how often each value won an outer "
    "fold's search: a selection frequency, not a performance estimate",
    "region_estimates": "per region choice (ring width, or region kind x width / band): nested "
    "CV estimate of the procedure restricted to that region (best inner trial of that region, "
    "refitted, scored once on the outer test fold), mean over outer folds, Nadeau-Bengio "
    "interval; the regions got unequal trial budgets",
    "permutation_p": "permutation test of the whole nested procedure: (1 + #{permuted "
    "mean_outer_auc >= observed}) / (1 + permutations); labels permuted within each site when "
    "data.site_column is set",
}


def region_name(width, kind: str = DEFAULT_KIND, band=None) -> str:
    """``intra`` (tumour only, 0), ``intra+ring<w>mm`` (tumour + ring of w mm, ``:g``), or
    ``all`` (every region of the features table: no ``ring_width_mm`` dimension); with ``kind``
    also ``ring<w>mm``, ``intra+band<a>-<b>mm``, ``band<a>-<b>mm`` (:func:`region_choice`)."""
    if width is not None and isinstance(width, float) and math.isnan(width):
        width = None
    return region_choice(kind, width, band)[0]


def region_of_params(params: dict, defaults: dict) -> tuple[str, float | None]:
    """(region name, outer edge mm) of a trial's full assignment (see :func:`resolve`); the
    dimensions that are not searched take ``defaults`` (:func:`search_defaults`)."""
    kind = str(params.get("region_kind", defaults.get("region_kind", DEFAULT_KIND)))
    ring = params.get("ring_width_mm")
    band = params.get("band_mm", defaults.get("band_mm"))
    if kind == "tumour":
        ring = 0.0
    return region_choice(kind, None if ring is None else float(ring), band)


@dataclass
class NestedResult:
    """Everything the nested search produced."""

    folds: pd.DataFrame  # one row per outer fold
    oof: pd.DataFrame  # case_id, repeat, fold, label, prob
    features: pd.DataFrame  # feature, n_selected, frequency
    estimate: dict  # the nested estimate (numbers)
    chosen: dict | None = None  # final search: full assignment
    chosen_candidate: Candidate | None = None
    final_inner_auc: float | None = None
    timings: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    regions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REGION_COLUMNS))
    region_differences: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=DIFFERENCE_COLUMNS)
    )
    region_folds: pd.DataFrame = field(default_factory=pd.DataFrame)  # outer fold x width
    region_oof: pd.DataFrame = field(default_factory=pd.DataFrame)  # + region, width_mm
    warnings: list[str] = field(default_factory=list)
    permutation_aucs: list[float] = field(default_factory=list)


def _fold_sizes(folds: pd.DataFrame) -> tuple[float, float]:
    return float(folds["n_train"].mean()), float(folds["n_test"].mean())


def selected_features(pipe) -> list[str]:
    from her2study.models import selected_coefficients

    return [str(c) for c in selected_coefficients(pipe).index]


def summarise(oof: pd.DataFrame, folds: pd.DataFrame, cfg) -> dict:
    """The nested estimate from outer-fold results and pooled out-of-fold predictions (the
    pooled metrics in :func:`her2study.evaluation.evaluate`'s names, prefixed ``pooled_``).

    The interval of ``mean_outer_auc`` (``ci_low``/``ci_high``, also under the old names
    ``mean_outer_auc_ci_low/high``) is Nadeau and Bengio's corrected resampled t
    (``ci_method``); ``naive_t_ci_low/high`` is the t-interval across folds as if they were
    independent, for comparison. What each number is: :data:`KINDS`."""
    from her2study.evaluation import auc_delong
    from her2study.evaluation.evaluate import evaluate, prefixed

    n_train, n_test = _fold_sizes(folds)
    by_site = "held_out_site" in folds and folds["held_out_site"].notna().any()
    kind = "nested stratified K-fold"
    if by_site:
        kind = {"leave_one_site_out": "nested leave-one-site-out"}.get(
            str(cfg.split.method), "nested train-on-sites test-on-sites"
        )
    nb = corrected_t_interval(folds["outer_auc"], n_train, n_test)
    naive = naive_t_interval(folds["outer_auc"])
    pooled = oof.groupby("case_id").agg(label=("label", "first"), prob=("prob", "mean"))
    y, p = pooled["label"].to_numpy(int), pooled["prob"].to_numpy(float)
    at = list(cfg.search.metrics_at) or list(cfg.evaluation.net_benefit_at)
    metrics = evaluate(
        y, p, kind="nested", hl_groups=int(cfg.evaluation.hl_groups), net_benefit_at=at
    )
    per_repeat = [
        float(auc_delong(g["label"].to_numpy(int), g["prob"].to_numpy(float)).auc)
        for _, g in oof.groupby("repeat")
    ]
    mean_per_repeat = [float(v) for v in folds.groupby("repeat")["outer_auc"].mean()]
    est = {
        "estimate_kind": kind,
        "n_cases": int(len(pooled)),
        "n_outer": int(len(folds)),
        "outer_folds": int(len(folds) if by_site else cfg.search.outer_folds),
        "outer_repeats": int(1 if by_site else cfg.search.outer_repeats),
        "n_train_mean": n_train,
        "n_test_mean": n_test,
        "mean_outer_auc": nb["mean"],
        "sd_outer_auc": nb["sd"],
        "ci_method": NADEAU_BENGIO,
        "ci_level": 0.95,
        "ci_low": nb["ci_low"],
        "ci_high": nb["ci_high"],
        "se_corrected": nb["se"],
        "mean_outer_auc_ci_low": nb["ci_low"],
        "mean_outer_auc_ci_high": nb["ci_high"],
        "naive_t_ci_low": naive["ci_low"],
        "naive_t_ci_high": naive["ci_high"],
        **prefixed("pooled_", metrics, drop=("kind", "n")),
        "pooled_auc_per_repeat": per_repeat,
        "mean_outer_auc_per_repeat": mean_per_repeat,
        "sd_between_repeats": float(np.std(per_repeat, ddof=1)) if len(per_repeat) > 1 else None,
        "mean_inner_auc_of_winners": float(folds["inner_auc"].mean()),
        "ring_width_counts": _counts(folds["ring_width_mm"]),
        "region_counts": _counts(folds["region"]) if "region" in folds else {},
        "model_counts": _counts(folds["model"]),
    }
    if by_site:
        est["held_out_sites"] = [str(v) for v in folds["held_out_site"]]
    return est


def region_estimates(region_folds: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Per region (ring width): mean outer AUC over the outer folds and its Nadeau-Bengio
    interval; columns :data:`REGION_COLUMNS` + ``n_outer_folds``."""
    if region_folds is None or not len(region_folds):
        return pd.DataFrame(columns=[*REGION_COLUMNS, "n_outer_folds"])
    n_train, n_test = _fold_sizes(folds)
    rows = []
    for region, g in region_folds.groupby("region", sort=False):
        ci = corrected_t_interval(g["outer_auc"], n_train, n_test)
        rows.append(
            {
                "region": region,
                "width_mm": g["width_mm"].iloc[0],
                "nested_auc": ci["mean"],
                "ci_low": ci["ci_low"],
                "ci_high": ci["ci_high"],
                "n_outer_folds": int(len(g)),
            }
        )
    return _by_width(pd.DataFrame(rows))


def region_differences(region_folds: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Each region minus tumour only (``intra``), paired on the same outer test folds: mean
    difference of outer AUCs and its Nadeau-Bengio interval (not clipped)."""
    cols = [*DIFFERENCE_COLUMNS, "n_outer_folds"]
    if region_folds is None or not len(region_folds) or "intra" not in set(region_folds.region):
        return pd.DataFrame(columns=cols)
    n_train, n_test = _fold_sizes(folds)
    wide = region_folds.pivot_table(
        index=["repeat", "fold"], columns="region", values="outer_auc", aggfunc="first"
    )
    widths = region_folds.groupby("region", sort=False)["width_mm"].first()
    rows = []
    for region in widths.index:
        if region == "intra":
            continue
        d = (wide[region] - wide["intra"]).dropna()
        ci = corrected_t_interval(d, n_train, n_test, bounds=None)
        rows.append(
            {
                "region": region,
                "width_mm": widths[region],
                "reference": "intra",
                "auc_difference": ci["mean"],
                "ci_low": ci["ci_low"],
                "ci_high": ci["ci_high"],
                "n_outer_folds": int(len(d)),
            }
        )
    return _by_width(pd.DataFrame(rows, columns=cols))


def _by_width(df: pd.DataFrame) -> pd.DataFrame:
    if not len(df):
        return df
    key = df["width_mm"].astype(float).fillna(np.inf)  # "all" last
    return df.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def _counts(s: pd.Series) -> dict:
    out: dict = {}
    for v in s:
        k = (
            "all"
            if v is None or (isinstance(v, float) and math.isnan(v))
            else (f"{v:g}" if isinstance(v, (int, float)) else str(v))
        )
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
