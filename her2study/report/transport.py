"""Beyond the paper: the transportability section (per-device / per-site results) and the
robustness section (features kept per region by the contour-perturbation filter), each saying
how it was computed.

Used by the paper report (a split with a site column, ``split.method=site``) and by the
leave-one-site-out report (``split.method=leave_one_site_out``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from her2study.report.builders import REPORT_NAME, design_items
from her2study.report.checklist import sel
from her2study.report.html import Captioned, Heading, Html, Section, esc, write_report

HOW = {
    "train_oof": "out-of-fold training predictions (stratified CV on the training cases, every "
    "training site in every fold), split by site",
    "test": "the held-out test set, scored once, split by site",
    "held_out_site": "test: the site held out, every signature refitted (selection included) on "
    "the other sites only and scored once on this site",
    "cv_all_sites": "out-of-fold: stratified CV over all cases with every site in training, "
    "split by site (the reference the held-out-site AUC is compared with)",
}


def _ci(row, key: str) -> str:
    v, lo, hi = row.get(key), row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if v is None or not np.isfinite(v):
        return "-"
    if lo is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{v:.3f}"
    return f"{v:.3f} ({lo:.3f}-{hi:.3f})"


def site_display(by_site: pd.DataFrame) -> pd.DataFrame:
    """by_site rows as text: AUC (DeLong 95% CI), calibration intercept and slope (Wald CIs)."""
    keep = [
        c
        for c in ("held_out", "signature", "set", "kind", "site", "n", "n_positive")
        if c in by_site
    ]
    out = by_site[keep].copy()
    rows = by_site.to_dict("records")
    out["AUC (95% CI)"] = [_ci(r, "auc") for r in rows]
    out["cal. intercept (95% CI)"] = [_ci(r, "cal_intercept") for r in rows]
    out["cal. slope (95% CI)"] = [_ci(r, "cal_slope") for r in rows]
    return out


def drop_table(by_site: pd.DataFrame) -> pd.DataFrame:
    """Per signature and site: AUC when the site is held out vs when it is seen in training."""
    held = by_site[by_site["set"] == "held_out_site"].set_index(["signature", "site"])["auc"]
    seen = by_site[by_site["set"] == "cv_all_sites"].set_index(["signature", "site"])["auc"]
    df = pd.DataFrame({"auc_site_seen (out-of-fold)": seen, "auc_site_held_out (test)": held})
    df["drop"] = df.iloc[:, 0] - df.iloc[:, 1]
    return df.reset_index()


def transportability_section(by_site: pd.DataFrame, cfg) -> Section:
    """Per-site AUC and calibration, each set with the words saying how it was computed."""
    site_col = sel(cfg, "data.site_column", "site")
    harmonise = sel(cfg, "selection.harmonise", None)
    words = (
        f"Sites are the values of the manifest column '{site_col}'. "
        + (
            "ComBat harmonisation across sites is the first step of every radiomics pipeline, "
            "fitted on the training rows of each fit only (combatlearn's ComBat"
            + (
                f", protecting {list(sel(cfg, 'selection.harmonise_covariates', []))}"
                if sel(cfg, "selection.harmonise_covariates", [])
                else ", no covariates"
            )
            + "); a site absent from training is harmonised to the harmonised training data "
            "from its own cases' features (no labels)."
            if harmonise
            else "No harmonisation across sites (selection.harmonise=null)."
        )
        + " AUC with DeLong 95% CI; calibration intercept (calibration-in-the-large) and slope "
        "from logistic recalibration within the site, Wald 95% CIs; '-' where a site has one "
        "class only or too few cases."
    )
    blocks: list = [Html(f"<p class=note>{esc(words)}</p>")]
    for set_name in [s for s in HOW if s in set(by_site["set"])]:
        part = by_site[by_site["set"] == set_name]
        blocks += [Heading(f"{set_name}"), Captioned(site_display(part), HOW[set_name])]
    if {"held_out_site", "cv_all_sites"} <= set(by_site["set"]):
        blocks += [
            Heading("What an unseen site costs"),
            Captioned(
                drop_table(by_site),
                "drop = AUC of the site seen in training (out-of-fold) - AUC of the site held "
                "out (test); positive: the model travels worse to a device it never saw",
            ),
        ]
    return Section("Transportability (per site)", blocks)


def leave_one_site_out_report(out_dir, *, cfg, cohort, by_site, date=None) -> Path:
    """The report of a ``split.method=leave_one_site_out`` run: design and transportability."""
    source = (
        "SYNTHETIC cohort (simulated ultrasound; not clinical data)"
        if cohort.synthetic
        else str(cohort.source)
    )
    sections = [
        Section("Design", [design_items(cfg)]),
        transportability_section(by_site, cfg),
    ]
    return write_report(
        Path(out_dir) / REPORT_NAME,
        title=f"{sel(cfg, 'study', 'her2study')}: leave-one-site-out report",
        source=source,
        synthetic=bool(cohort.synthetic),
        sections=sections,
        date=date,
    )


def robustness_table(fits) -> pd.DataFrame:
    """Features kept by the contour-robustness filter, per signature and region."""
    parts = [
        f.details["robustness"].assign(signature=f.name)
        for f in fits
        if f.details.get("robustness") is not None
    ]
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    return df[
        ["signature", "region", "n_features", "n_kept", "threshold", "icc_kind", "n_perturbations"]
    ]


def robustness_section(table: pd.DataFrame, cfg) -> Section:
    """How many features survive the contour-perturbation ICC filter in each region."""
    p = sel(cfg, "region.perturb", {}) or {}
    words = (
        f"Each case's tumour mask was perturbed {p.get('n')} times (grown or shrunk by up to "
        f"{p.get('grow_mm')} mm, a smooth random boundary displacement of RMS "
        f"{p.get('displace_mm')} mm, rotation up to {p.get('rotate_deg')} degrees and translation "
        f"up to {p.get('translate_mm')} mm about the centroid; seeded), every ring rebuilt from "
        "the perturbed tumour mask and its features extracted with the same settings. The ICC of "
        "each feature across the original and perturbed masks was computed on the training cases "
        "of the final fit (and refitted inside every CV fold and bootstrap sample); features below "
        "the threshold were dropped before selection. No second reader was needed."
    )
    return Section(
        "Robustness to the contour",
        [
            Html(f"<p class=note>{esc(words)}</p>"),
            Captioned(table, "Features kept per signature and region (ICC >= threshold)"),
        ],
    )
