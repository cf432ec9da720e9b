"""The reviewer checklist (TRIPOD / CLEAR style): what a reader needs to judge a radiomics study.

Built only from what the task passes in (config, cohort, split, fits, metrics): no image or DICOM
header is read here.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from her2study import __version__
from her2study.provenance import git_head

__all__ = ["code_version", "extractor_block", "reviewer_checklist", "sel"]


def sel(cfg, key: str, default=None):
    """``cfg.a.b.c`` or ``default`` when absent (a DictConfig, a dict or None)."""
    if cfg is None:
        return default
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    value = OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def pyradiomics_version() -> str:
    for dist in ("pyradiomics-bhklab", "pyradiomics"):
        v = _version(dist)
        if v != "not installed":
            return f"{v} ({dist})"
    return "not installed"


def git_commit() -> str | None:
    """The package's git commit (+ "with local changes"), when it runs from a checkout."""
    state = git_head()
    if state is None:
        return None
    head, dirty = state
    return head[:12] + (" with local changes" if dirty else "")


def code_version() -> str:
    lines = [f"her2study {__version__}"]
    commit = git_commit()
    if commit:
        lines[0] += f" (git {commit})"
    lines.append(
        f"Python {platform.python_version()}; "
        + ", ".join(
            f"{d} {_version(d)}"
            for d in ("numpy", "pandas", "scipy", "scikit-learn", "statsmodels", "matplotlib")
        )
    )
    return "\n".join(lines)


def extractor_block(cfg) -> str:
    """The pyradiomics parameter block as YAML (the file's content when a params file is used)."""
    params_file = sel(cfg, "extractor.params_file")
    if params_file:
        try:
            text = Path(params_file).read_text(encoding="utf-8")
        except OSError as exc:
            return f"params file {params_file} (unreadable here: {exc.strerror})"
        return f"# {params_file}\n{text.strip()}"
    params = sel(cfg, "extractor.params", {}) or {}
    name = sel(cfg, "extractor.name", "custom")
    return f"# extractor={name}\n" + yaml.safe_dump(params, sort_keys=False).strip()


def _segmentation(cohort, cfg) -> str:
    if cohort.synthetic:
        return (
            "synthetic: lesion masks written by the generator with each simulated image "
            f"(reader-1 boundary perturbation {sel(cfg, 'data.synthetic.reader1_perturb_mm', '?')}"
            " mm RMS); not a human segmentation"
        )
    if not cohort.cases:
        return (
            f"not applicable here: features were supplied in {cohort.source} "
            "(segmentation and extraction done upstream)"
        )
    n2 = sum(c.mask_reader2 is not None for c in cohort.cases)
    text = f"manifest 'mask' column: {len(cohort.cases)} tumour masks (reader 1)"
    if n2:
        text += f"; a second reader's mask for {n2} cases (mask_reader2)"
    label = sel(cfg, "data.mask_label")
    if label is not None:
        text += f"; lesion label {label} of multi-label masks"
    return text


def _spacing(cohort, cfg) -> str:
    if cohort.synthetic:
        sx = sel(cfg, "data.synthetic.spacing_x_mm", "?")
        sy = sel(cfg, "data.synthetic.spacing_y_mm", "?")
        fmt = sel(cfg, "data.synthetic.image_format", "nifti")
        where = "NIfTI header" if fmt == "nifti" else "manifest spacing columns"
        return f"synthetic images: {sx} x {sy} mm per pixel, from the {where}"
    if not cohort.cases:
        return "not applicable here (features supplied; spacing handled upstream)"
    given = [c for c in cohort.cases if c.spacing_mm is not None]
    parts = []
    if given:
        values = sorted({c.spacing_mm for c in given})
        shown = "; ".join(f"{x:g} x {y:g} mm" for x, y in values[:4])
        if len(values) > 4:
            shown += f"; ... ({len(values)} distinct)"
        global_mm = sel(cfg, "data.spacing_mm")
        src = "manifest spacing_x_mm/spacing_y_mm" + (
            f" or data.spacing_mm={global_mm:g}" if global_mm is not None else ""
        )
        parts.append(f"{len(given)} cases from {src} ({shown})")
    n_header = len(cohort.cases) - len(given)
    if n_header:
        parts.append(
            f"{n_header} cases from the image header (DICOM Sequence of Ultrasound Regions "
            "PhysicalDeltaX/Y; NIfTI/NRRD/MHA header); a missing spacing stops the run, 1 mm is "
            "never assumed"
        )
    return "\n".join(parts)


def _epv(fits, y: pd.Series, split: pd.Series) -> str:
    ytr = y[split == "train"]
    events, non = int((ytr == 1).sum()), int((ytr == 0).sum())
    lines = [
        f"training {len(ytr)} cases ({events} label 1, {non} label 0); "
        f"test {int((split == 'test').sum())} cases ({int((y[split == 'test'] == 1).sum())} "
        f"label 1, {int((y[split == 'test'] == 0).sum())} label 0)"
    ]
    limiting = min(events, non)
    for fit in fits:
        if fit.kind == "radiomics":
            k = len(fit.coefficients) if fit.coefficients is not None else len(fit.columns)
            cand = len(fit.columns)
            what = f"{k} selected of {cand} candidate features"
        elif fit.kind == "clinical":
            k = len(getattr(fit.model, "selected_", fit.columns))
            what = f"{k} clinical predictor(s) of {len(fit.columns)} screened"
        else:
            k = len(fit.columns)
            what = f"{k} predictors ({', '.join(map(str, fit.columns))})"
        epv = f"{limiting / k:.1f}" if k else "-"
        lines.append(f"{fit.name}: {what}; events per variable {epv}")
    return "\n".join(lines)


def _thresholds(metrics: pd.DataFrame, cfg) -> str:
    rule = sel(cfg, "evaluation.threshold", "youden")
    if rule == "youden":
        on = str(sel(cfg, "evaluation.threshold_on", "out_of_fold")).replace("_", "-")
        head = f"Youden index on the {on} training predictions, applied unchanged to the test set"
    else:
        head = f"fixed at {sel(cfg, 'evaluation.fixed_threshold', 0.5)}, the same on both sets"
    if metrics is None or "threshold" not in metrics:
        return head
    thr = metrics[metrics["set"] == "train_apparent"].set_index("signature")["threshold"]
    return head + "\n" + "; ".join(f"{k} {v:.3f}" for k, v in thr.items())


def _missing(cohort, clinical_columns, features) -> str:
    cols = [c for c in clinical_columns if c in cohort.table.columns]
    n_clin = int(cohort.table[cols].isna().sum().sum()) if cols else 0
    text = (
        f"no imputation. Clinical: {n_clin} missing value(s) in {len(cols)} column(s) (a "
        "missing or non-numeric clinical value stops the run at validation)."
    )
    if features is not None:
        own = features[[c for c in features.columns if not str(c).startswith("reader2__")]]
        n_feat = int(np.isnan(own.select_dtypes("number").to_numpy(float)).sum())
        text += f" Radiomics: {n_feat} missing value(s) in {own.shape[1]} feature columns"
        n_r2 = features.shape[1] - own.shape[1]
        text += (
            f" (plus {n_r2} second-reader columns, empty where a case was read once)."
            if n_r2
            else "."
        )
    text += " A failed feature extraction stops the run, listing each case and region."
    return text


def reviewer_checklist(
    cfg,
    cohort,
    split: pd.Series,
    fits,
    metrics: pd.DataFrame | None = None,
    clinical_columns: list[str] | None = None,
    features: pd.DataFrame | None = None,
) -> dict[str, str]:
    """The checklist items for a ``task=paper`` run, as ``{item: text}``."""
    y = cohort.labels
    n_train = int((split == "train").sum())
    widths = sel(cfg, "region.ring_widths_mm", []) or []
    bands = sel(cfg, "region.bands_mm", []) or []
    regions = ["tumour (mask)"] if sel(cfg, "region.include_intra", True) else []
    regions += [f"ring 0-{float(w):g} mm" for w in widths]
    regions += [f"band {a:g}-{b:g} mm" for a, b in bands]
    pos = sel(cfg, "data.positive_class", "positive")
    neg = sel(cfg, "data.negative_class", "negative")
    icc = sel(cfg, "selection.icc_threshold")
    ci = sel(cfg, "evaluation.ci", "delong")
    nb_at = sel(cfg, "evaluation.net_benefit_at", []) or []
    features_supplied = not cohort.synthetic and not cohort.cases
    items = {
        "Data source": "SYNTHETIC cohort (simulated ultrasound; not clinical data)"
        if cohort.synthetic
        else str(cohort.source),
        "Outcome": f"label 1 = {pos}, label 0 = {neg} (from the cohort's label column)",
        "Segmentation source": _segmentation(cohort, cfg),
        "Pixel spacing source": _spacing(cohort, cfg),
        "Regions": "as in the supplied feature columns"
        if features_supplied
        else (", ".join(regions) or "-"),
        "Ring geometry": "as computed upstream (features supplied)"
        if features_supplied
        else "rings are 0 < d <= w mm outside the mask on one physical (mm) distance map; "
        f"clipped to the image's field of view (region.fov={sel(cfg, 'region.fov', '?')}); "
        f"coverage warning below {sel(cfg, 'region.min_coverage', '?')}",
        "Extractor settings": extractor_block(cfg)
        if not features_supplied
        else "not used (features supplied)",
        "pyradiomics version": pyradiomics_version()
        + (" installed; not used here (features supplied)" if features_supplied else ""),
        "Inter-reader reliability": f"features with {sel(cfg, 'selection.icc_kind')} < {icc} "
        "on training cases read twice removed"
        if icc is not None
        else "not applied (selection.icc_threshold=null)",
        "Leakage controls": (
            "z-scoring, Spearman and Mann-Whitney filters, LASSO-CV and the model are steps of "
            f"one scikit-learn Pipeline fitted on the {n_train} training cases only; test cases "
            "are only predicted. The clinical model's screening, the nomogram's signature choice "
            f"(training {sel(cfg, 'evaluation.cv_folds', '?')}-fold CV) and the ICC filter use "
            "training cases only."
        ),
        "Seeds": f"seed={sel(cfg, 'seed')}: block randomisation of the split, LASSO CV folds, "
        "training CV of the nomogram's signature"
        + (f", {sel(cfg, 'evaluation.n_boot')} bootstrap replicates" if ci == "bootstrap" else "")
        + (
            f"; synthetic cohort seed {sel(cfg, 'data.synthetic.seed')}" if cohort.synthetic else ""
        ),
        "Thresholds": _thresholds(metrics, cfg),
        "Missing data": _missing(cohort, clinical_columns or [], features),
        "Sample size and events per variable": _epv(fits, y, split),
        "Discrimination": f"AUC with {'DeLong' if ci == 'delong' else 'bootstrap'} 95% CI; "
        "pairwise paired DeLong tests (not adjusted for multiple comparisons)",
        "Calibration and clinical utility": (
            "reported on both sets: calibration curves, Hosmer-Lemeshow test "
            f"({sel(cfg, 'evaluation.hl_groups', 10)} groups), calibration slope and intercept, "
            "Brier score; decision curves with net benefit at "
            + (", ".join(f"{t:g}" for t in nb_at) or "-")
        ),
        "Validation": "internal: one held-out test set from the same cohort (no external "
        "validation)",
        "Code version": code_version(),
    }
    return items
