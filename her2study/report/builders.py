"""The reports of ``task=paper``, ``task=search`` and ``task=compare``, built from what they pass.

Each writes ``<out_dir>/report.html`` (see :mod:`her2study.report.html`) and returns its path.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from her2study.report.checklist import reviewer_checklist, sel
from her2study.report.html import Captioned, Grid, Heading, Html, Section, esc, write_report
from her2study.report.table1 import cohort_summary, format_p, format_summary

__all__ = [
    "design_items",
    "figure_blocks",
    "paper_report",
    "search_design_items",
    "split_table",
]

REPORT_NAME = "report.html"

TABLE1_NOTE = (
    "Continuous: median (Q1, Q3), Mann-Whitney U test. Categorical (at most 5 values): n (%), "
    "chi-squared test, or Fisher's exact test for a 2x2 table with an expected count below 5. "
    "Two-sided p."
)

# figure name prefix -> (order, caption template)
_FIGURES = [
    ("roc_", "ROC curves, {set} (AUC with DeLong 95% CI; shaded: bootstrap band)"),
    ("calibration_", "Calibration, {set} (binned observed vs predicted risk)"),
    ("dca_", "Decision curves, {set} (net benefit against threshold probability)"),
    ("lasso_cv_", "LASSO cross-validation curve, {set}"),
    ("coefficients_", "Selected features and their coefficients, {set}"),
    ("nomogram", "Nomogram"),
    ("margins", "AUC against peritumoral ring width"),
    ("ring_frequency", "Ring widths of the winning configurations"),
]
_SETS = {
    "train": "training set",
    "train_apparent": "training set, apparent (in-sample: optimistic)",
    "train_oof": "training set, out-of-fold",
    "test": "test set",
    "nested_oof": "pooled outer folds (nested)",
}
_SET_ORDER = {"train_apparent": 0, "train_corrected": 1, "train_oof": 2, "train": 0, "test": 3}
CLINICAL_CAVEAT = (
    "Stepwise clinical model: its odds ratios, confidence intervals and p-values are reported "
    "after data-driven selection (univariable screening, then backward elimination) on the same "
    "cases, so they are optimistic (post-selection inference) and are descriptive only. A "
    "pre-specified model (model.clinical.method=prespecified) or a penalised one "
    "(model.clinical.method=penalised) avoids this."
)
SETS_NOTE = (
    "Kinds of estimate: train_apparent = the model scored on the cases it was fitted on "
    "(optimistic; shown beside the paper's training column, never as performance); "
    "train_corrected = Harrell's bootstrap optimism correction of the apparent values (the whole "
    "procedure, selection included, refitted on each bootstrap sample); train_oof = out-of-fold "
    "training predictions; test = the held-out test set, scored once."
)


def _caption(name: str) -> tuple[int, str]:
    for i, (prefix, template) in enumerate(_FIGURES):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            what = _SETS.get(rest, rest.replace("_", " "))
            return i, template.format(set=what) if "{set}" in template else template
    return len(_FIGURES), name.replace("_", " ")


def figure_blocks(figures: dict) -> list:
    """Figures grouped by kind (ROC, calibration, DCA, LASSO, ...), pairs side by side."""
    groups: dict[int, list] = {}
    for name, fig in figures.items():
        order, caption = _caption(name)
        groups.setdefault(order, []).append(Captioned(fig, caption))
    blocks: list = []
    for order in sorted(groups):
        items = groups[order]
        blocks.append(Grid(items) if len(items) > 1 else items[0])
    return blocks


def split_table(y: pd.Series, split: pd.Series, class_names=("negative", "positive")):
    """n per set (rows) and class (columns), with totals."""
    rows = []
    for name, mask in (
        ("training", split == "train"),
        ("test", split == "test"),
        ("total", pd.Series(True, index=split.index)),
    ):
        yy = y[mask[mask].index]
        rows.append(
            {
                "set": name,
                f"{class_names[0]} (label 0)": int((yy == 0).sum()),
                f"{class_names[1]} (label 1)": int((yy == 1).sum()),
                "total": len(yy),
            }
        )
    return pd.DataFrame(rows)


def design_items(cfg, fits=None, missing: dict | None = None) -> dict[str, str]:
    """The paper design's settings, in words; ``missing``: signature -> why it was not fitted
    (the design then says so instead of describing it)."""
    method = sel(cfg, "split.method", "block")
    if method == "block":
        split = (
            f"stratified block randomisation, block size {sel(cfg, 'split.block_size')}, test "
            f"fraction {float(sel(cfg, 'split.test_size', 0)):.4g}, ordered by "
            f"{sel(cfg, 'split.balance_on') or 'nothing'} within class, seed {sel(cfg, 'seed')}"
        )
    else:
        split = "the cohort's own split column (train/test)"
    corr = sel(cfg, "selection.corr_threshold")
    mwc = sel(cfg, "selection.mw_correction")
    selection = (
        f"z-score -> {sel(cfg, 'selection.corr_method', 'spearman')} |rho| > {corr} (one of each "
        f"pair dropped: {sel(cfg, 'selection.corr_rule')}) -> Mann-Whitney p < "
        f"{sel(cfg, 'selection.mw_alpha')}"
        + (f" ({mwc})" if mwc else "")
        + f" -> LASSO logistic, {sel(cfg, 'selection.lasso_cv')}-fold CV, lambda "
        f"{sel(cfg, 'selection.lasso_rule')} ({sel(cfg, 'selection.lasso_scoring')}, "
        f"{sel(cfg, 'selection.lasso_n_lambdas')} lambdas)"
    )
    if sel(cfg, "selection.max_features") is not None:
        selection += f", at most {sel(cfg, 'selection.max_features')} features"
    params = sel(cfg, "model.params") or {}
    model = str(sel(cfg, "model.name", "logistic")) + (f" {params}" if params else "")
    base = "-"
    for fit in fits or []:
        if fit.kind == "nomogram":
            base = fit.details.get("base_signature", "-")
    ci = sel(cfg, "evaluation.ci", "delong")
    gone = set(missing or {})
    items = {
        "Split": split,
        "Regions": ", ".join(
            ["tumour"] * bool(sel(cfg, "region.include_intra", True) and "Intra" not in gone)
            + [
                f"tumour + {float(w):g} mm ring"
                for w in sel(cfg, "region.ring_widths_mm", [])
                if f"IntraPeri {float(w):g} mm" not in gone
            ]
        )
        or "-",
        "Feature selection (inside the training fit)": selection,
        "Radiomics model": model,
        "Clinical model": _clinical_words(cfg),
        "Nomogram": f"rad-score of {base} + the clinical model's factors; the combined model is "
        f"fitted on {_rad_score_words(cfg)} (signature: {sel(cfg, 'model.nomogram.signature')}; "
        f"VIF warning above {sel(cfg, 'model.nomogram.vif_limit')})",
        "Signatures fitted": ", ".join(f.name for f in fits or []) or "-",
        "Threshold": f"Youden index on the {_threshold_data(cfg)} training predictions, applied "
        "unchanged to test"
        if str(sel(cfg, "evaluation.threshold")) == "youden"
        else f"fixed {sel(cfg, 'evaluation.fixed_threshold')}",
        "Internal validation": f"{sel(cfg, 'evaluation.cv_folds')}-fold out-of-fold predictions "
        "on folds shared by every signature; Harrell's optimism bootstrap with "
        f"{sel(cfg, 'evaluation.bootstrap_reps')} repetitions (whole procedure refitted)",
        "AUC confidence interval": "DeLong"
        if ci == "delong"
        else f"bootstrap ({sel(cfg, 'evaluation.n_boot')} replicates)",
    }
    for name, why in (missing or {}).items():
        key = {"Clinic": "Clinical model", "Nomogram": "Nomogram"}.get(name)
        if key is not None:
            items[key] = f"not fitted: {why}"
    if missing:
        items["Signatures not fitted"] = "; ".join(f"{k} ({v})" for k, v in missing.items())
    if not any(f.kind == "radiomics" for f in fits or []) and fits is not None:
        for key in ("Feature selection (inside the training fit)", "Radiomics model"):
            items[key] = "not fitted: no radiomics signature"
    return items


def search_design_items(cfg, n_cases: int | None = None) -> dict[str, str]:
    """The nested-search design (``cfg.search``) in words, for :func:`search_report`."""
    space = sel(cfg, "search.space", {}) or {}
    seed = sel(cfg, "search.seed")
    items = {
        "Outer CV (the estimate)": f"{sel(cfg, 'search.outer_folds')}-fold stratified x "
        f"{sel(cfg, 'search.outer_repeats')} repeat(s); the search never sees the outer test "
        "fold",
        "Inner CV (the objective)": f"{sel(cfg, 'search.inner_folds')}-fold stratified, mean AUC",
        "Trials": f"{sel(cfg, 'search.n_trials')} per study ({sel(cfg, 'search.sampler')} "
        f"sampler, {sel(cfg, 'search.n_startup_trials')} start-up trials)",
        "Search space": "\n".join(f"{k}: {v}" for k, v in space.items()) or "-",
        "Final configuration": "one more search on all cases (its own inner AUC is optimistic; "
        "its performance estimate is the nested one)"
        if sel(cfg, "search.final", True)
        else "not searched (search.final=false)",
        "Seed": str(seed if seed is not None else sel(cfg, "seed")),
        "Interval": "Nadeau-Bengio corrected resampled t across the outer folds (they share "
        "training cases; the naive t-interval beside it is too narrow)",
        "Permutation test": f"{sel(cfg, 'search.permutations')} reruns of the whole nested search "
        "on permuted labels"
        if sel(cfg, "search.permutations", 0)
        else "off (search.permutations=0)",
    }
    if n_cases is not None:
        items = {"Cases": str(n_cases), **items}
    return items


def _coefficients(coef: pd.Series) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "feature": [str(i) for i in coef.index],
            "region": [str(i).split("_", 1)[0] for i in coef.index],
            "coefficient": coef.to_numpy(dtype=float),
        }
    )
    if df["coefficient"].notna().any():
        df = df.reindex(df["coefficient"].abs().sort_values(ascending=False).index)
    return df.reset_index(drop=True)


def _p_cols(df: pd.DataFrame) -> pd.DataFrame:
    """p-value columns as text (<0.001)."""
    out = df.copy()
    for c in out.columns:
        if c == "p" or str(c).endswith("_p"):
            out[c] = out[c].map(format_p)
    return out


def _feature_blocks(fits, cfg) -> list:
    blocks: list = [
        "Coefficients are on the z-scored scale of the training set (the pipeline's scaling "
        "step), sorted by absolute size."
    ]
    for fit in fits:
        d = fit.details
        blocks.append(Heading(f"{fit.name} ({fit.kind})"))
        if fit.kind == "radiomics":
            coef = fit.coefficients if fit.coefficients is not None else pd.Series(dtype=float)
            text = f"{len(coef)} of {len(fit.columns)} candidate features selected."
            if "lasso_lambda" in d:
                text += (
                    f" LASSO lambda {d['lasso_lambda']:.4g} "
                    f"(rule {sel(cfg, 'selection.lasso_rule', 'min')}; lambda.min "
                    f"{d['lasso_lambda_min']:.4g}; CV metric: {d.get('lasso_metric', '-')})."
                )
            blocks.append(text)
            blocks.append(_coefficients(coef))
            if "icc" in d and len(d["icc"]):
                icc = d["icc"]["icc"]
                low = int((icc < sel(cfg, "selection.icc_threshold", 0)).sum())
                blocks.append(
                    f"Inter-reader ICC of this signature's candidate features: median "
                    f"{icc.median():.3f}, {low} below the threshold (removed)."
                )
        elif fit.kind == "clinical":
            chosen = list(getattr(fit.model, "selected_", []))
            blocks.append(
                f"Candidates: {', '.join(map(str, fit.columns))}. Kept: "
                f"{', '.join(map(str, chosen)) or '-'}."
            )
            for key, caption in (
                ("univariable", "Univariable logistic regression (training set)"),
                ("multivariable", "Multivariable logistic regression (training set)"),
            ):
                if d.get(key) is not None:
                    blocks.append(Captioned(_p_cols(d[key]), caption))
        elif fit.kind == "nomogram":
            blocks.append(
                f"Rad-score of {d.get('base_signature', '-')} plus "
                f"{', '.join(c for c in fit.columns if c != 'rad_score') or 'no clinical factor'}."
            )
            cv = {k: v for k, v in (d.get("cv_auc") or {}).items() if pd.notna(v)}
            if cv:
                blocks.append(
                    "Signature chosen by training cross-validated AUC: "
                    + "; ".join(f"{k} {v:.3f}" for k, v in cv.items())
                )
            if d.get("table") is not None:
                blocks.append(Captioned(_p_cols(d["table"]), "Nomogram logistic regression"))
            if d.get("vif") is not None:
                vif = d["vif"].rename("VIF").rename_axis("predictor").reset_index()
                blocks.append(Captioned(vif, "Variance inflation factors"))
    return blocks


def _by_set(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered training first, then test (stable within a set); set, signature first."""
    if "set" not in df:
        return df.reset_index(drop=True)
    order = df["set"].map(_SET_ORDER).fillna(4).to_numpy()
    df = df.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    first = [c for c in ("set", "signature") if c in df]
    return df[first + [c for c in df.columns if c not in first]]


def _clinical_words(cfg) -> str:
    method = str(sel(cfg, "model.clinical.method", "stepwise"))
    if method == "prespecified":
        return "pre-specified logistic regression on every clinical column (no selection)"
    if method == "penalised":
        return "ridge logistic regression on every clinical column (C by inner CV; no selection)"
    return (
        f"univariable logistic screening p < {sel(cfg, 'model.clinical.univariable_p')}, "
        f"multivariable backward elimination p < {sel(cfg, 'model.clinical.multivariable_p')} "
        "(post-selection inference: see the caveat)"
    )


def _rad_score_words(cfg) -> str:
    if str(sel(cfg, "model.nomogram.rad_score", "cross_fitted")) == "in_sample":
        return "in-sample rad-scores (the paper's way: optimistic)"
    return "cross-fitted (out-of-fold) rad-scores of the training cases"


def _threshold_data(cfg) -> str:
    on = str(sel(cfg, "evaluation.threshold_on", "out_of_fold"))
    return "out-of-fold" if on == "out_of_fold" else "apparent (in-sample)"


def split_comparison(comparison: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``compare_with_paper`` output as two page-wide tables (AUC; threshold metrics), by set."""
    df = _by_set(comparison)
    keys = [c for c in ("set", "signature") if c in df]
    auc_cols = [c for c in df.columns if "AUC" in str(c)]
    rest = [c for c in df.columns if c not in keys and c not in auc_cols]
    return df[keys + auc_cols], df[keys + rest]


_CAL_COLS = [
    "signature",
    "set",
    "n",
    "threshold",
    "cal_slope",
    "cal_intercept",
    "cal_slope_ci_low",
    "cal_slope_ci_high",
    "hl_chi2",
    "hl_df",
    "hl_p",
    "brier",
]


def paper_report(
    out_dir,
    *,
    cfg,
    cohort,
    split: pd.Series,
    fits,
    metrics: pd.DataFrame,
    comparison: pd.DataFrame,
    tests: pd.DataFrame,
    figures: dict,
    clinical_columns: list[str],
    features: pd.DataFrame | None = None,
    checklist: dict | None = None,
    date: str | None = None,
    validation: pd.DataFrame | None = None,
    missing: dict | None = None,
    extra_sections: list | None = None,
) -> Path:
    """The ``task=paper`` report: ``out_dir/report.html``. ``missing``: the configured
    signatures not fitted -> why (said in the design); the paper's figures appear when
    ``comparison`` has them (``report.paper_reference``).

    ``extra_sections`` (e.g. transportability per site) come after the results.

    ``features`` (optional) is only used to count missing values; ``checklist`` adds to or
    replaces items of the generated reviewer checklist.
    """
    pos = sel(cfg, "data.positive_class", "positive")
    neg = sel(cfg, "data.negative_class", "negative")
    names = (neg, pos)
    label = cohort.label_column
    source = (
        "SYNTHETIC cohort (simulated ultrasound; not clinical data)"
        if cohort.synthetic
        else str(cohort.source)
    )
    table = cohort.table.loc[split.index] if len(split) else cohort.table
    y = table[label].astype(int)
    cols = [c for c in clinical_columns if c in table.columns]

    # cohort
    cohort_blocks: list = [
        f"{len(table)} cases: {int((y == 1).sum())} {pos} (label 1) and {int((y == 0).sum())} "
        f"{neg} (label 0). Data: {source}."
    ]
    if cols:
        for heading, idx in (
            ("All cases", table.index),
            ("Training set", split.index[split == "train"]),
            ("Test set", split.index[split == "test"]),
        ):
            summary = cohort_summary(table.loc[idx], label, cols, class_names=names)
            cohort_blocks += [Heading(heading), format_summary(summary)]
        cohort_blocks.append(Html(f"<p class=note>{esc(TABLE1_NOTE)}</p>"))
    else:
        cohort_blocks.append("No clinical columns were configured (data.clinical_columns).")

    # design
    design_blocks: list = [
        Captioned(split_table(y, split, names), "Cases per set and class"),
        design_items(cfg, fits, missing),
    ]
    if missing:
        design_blocks.insert(
            0,
            "Not fitted: "
            + "; ".join(f"{k} ({v})" for k, v in missing.items())
            + ". Their rows are absent from every table below.",
        )

    # results
    cal = _by_set(metrics[[c for c in _CAL_COLS if c in metrics.columns]])
    nb_cols = [c for c in metrics.columns if c.startswith("net_benefit")]
    nb = _by_set(metrics[["set", "signature", *nb_cols]])
    auc, thr = split_comparison(comparison)
    with_paper = any(str(c).startswith("paper ") for c in comparison.columns)
    results_blocks: list = [
        Heading("Discrimination"),
        Captioned(
            auc,
            "AUC (95% CI) beside the paper's Table 3 ('-': the paper has no such signature)"
            if with_paper
            else "AUC (95% CI)",
        ),
        Heading("Threshold metrics"),
        Captioned(
            thr,
            "At the threshold chosen on the training set"
            + ("; the paper's values in the shaded 'paper' columns" if with_paper else ""),
        ),
        Heading("Calibration"),
        Captioned(
            _p_cols(cal),
            "Calibration slope/intercept (ideal 1/0), Hosmer-Lemeshow test, Brier score",
        ),
        Heading("Net benefit"),
        Captioned(nb, "Net benefit at the configured threshold probabilities"),
        Heading("Paired DeLong tests"),
        Captioned(
            _p_cols(tests),
            "Paired DeLong tests between signatures on the test set and on the out-of-fold "
            "training predictions (never on apparent ones): AUC difference with its 95% CI, "
            "unadjusted p and Holm-adjusted p within each set",
        ),
    ]
    results_blocks.insert(0, Html(f"<p class=note>{esc(SETS_NOTE)}</p>"))
    if validation is not None and len(validation):
        results_blocks[1:1] = [
            Heading("Internal validation (bootstrap)"),
            Captioned(
                validation,
                "Optimism-corrected indices (rms::validate): apparent on the training set, "
                "optimism = mean(bootstrap-sample fit scored on its sample - the same fit scored "
                "on the training set), corrected = apparent - optimism",
            ),
        ]
    if str(sel(cfg, "model.clinical.method", "stepwise")) == "stepwise" and any(
        f.kind == "clinical" for f in fits
    ):
        results_blocks.append(Html(f"<p class=note>{esc(CLINICAL_CAVEAT)}</p>"))

    items = reviewer_checklist(cfg, cohort, split, fits, metrics, cols, features)
    items.update(checklist or {})
    sections = [
        Section("Cohort", cohort_blocks),
        Section("Design", design_blocks),
        Section("Selected features", _feature_blocks(fits, cfg)),
        Section("Results", results_blocks),
        *(extra_sections or []),
        Section("Figures", figure_blocks(figures) or ["No figures."]),
        Section("Reviewer checklist", [items]),
    ]
    study = sel(cfg, "study", "her2study")
    return write_report(
        Path(out_dir) / REPORT_NAME,
        title=f"{study}: study report",
        source=source,
        synthetic=bool(cohort.synthetic),
        sections=sections,
        date=date,
    )


def _title(name: str) -> str:
    text = re.sub(r"[_]+", " ", str(name)).strip()
    return text[:1].upper() + text[1:]
