"""The paper's protocol on a training/test split: signatures fitted on training only.

Signatures: ``Clinic`` (clinical model), ``Intra`` (tumour features), ``IntraPeri <w> mm`` (tumour
+ ring of width w) for each configured ring, and ``Nomogram`` (rad-score of one ring signature +
the clinical factors, :class:`~her2study.models.NomogramModel`). Every label-dependent step —
scaling, correlation and Mann-Whitney filters, LASSO, the model — is a step of one estimator
fitted on the training cases only; the test cases are only ever predicted.

Besides the fit on all training cases (whose training predictions are *apparent*), every
signature gets out-of-fold training predictions on shared folds (``evaluation.cv_folds``; the
``train_oof`` rows, the threshold, the nomogram's ring choice and its cross-fitted rad-scores)
and, with ``evaluation.bootstrap_reps``, Harrell's optimism-corrected estimates (the whole
estimator refitted on each bootstrap sample; ``train_corrected`` rows).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone

from her2study.errors import ConfigError
from her2study.evaluation import auc_delong
from her2study.fitcache import cached_fit
from her2study.models import (
    ClinicalModel,
    CombinedModel,
    PenalisedClinicalModel,
    lasso_details,
    pipeline_from_config,
    selected_coefficients,
)
from her2study.models.nomogram import NomogramModel, out_of_fold, stratified_folds
from her2study.regions import band_spec, ring_label, ring_spec
from her2study.selection.robustness import column_region, robustness_by_region

log = logging.getLogger(__name__)


@dataclass
class SignatureFit:
    """One fitted signature and its predicted probabilities for every case."""

    name: str
    kind: str  # clinical | radiomics | nomogram
    model: object
    prob: pd.Series  # index: case ids (train and test); train cases: apparent
    columns: list[str]
    coefficients: pd.Series | None = None  # selected features -> coefficient
    details: dict = field(default_factory=dict)  # tables: clinical ORs, VIFs, LASSO CV curve
    oof: pd.Series | None = None  # out-of-fold probabilities of the training cases
    estimator: object = None  # the unfitted estimator (what the bootstrap refits)
    inputs: pd.DataFrame | None = None  # its input columns, every case
    validation: pd.DataFrame | None = None  # bootstrap: index x apparent/optimism/corrected


def check_class_sizes(y_train: pd.Series, cfg) -> None:
    """Every CV inside the fit needs each class in each fold: say so before any work (the rule
    of the up-front checks, :func:`her2study.split.training_fold_problems`, on the training set
    itself; a caller that makes its own splits, such as leave-one-site-out, meets it here.
    LASSO's CV inside a fold falls back to fewer folds with a warning, as it always did)."""
    from her2study.split import training_fold_problems

    names = {0: str(cfg.data.negative_class), 1: str(cfg.data.positive_class)}
    k, lasso = int(cfg.evaluation.cv_folds), int(cfg.selection.lasso_cv)
    problems = training_fold_problems(y_train, k, lasso, names, inside_folds=False)
    if problems:
        raise ConfigError(f"{problems[0].message}: {problems[0].fix}")


def icc_filter(features: pd.DataFrame, train, sel) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop features whose inter-reader ICC on the training cases is below the threshold.

    The ICC uses no labels, so computing it on the training cases outside the CV pipeline
    leaks nothing; test cases are never used. Reader-2 columns are removed either way.
    """
    from her2study.selection import icc

    r2 = [c for c in features.columns if c.startswith("reader2__")]
    base = features.drop(columns=r2)
    if sel.icc_threshold is None or not r2:
        if sel.icc_threshold is not None:
            log.warning("selection.icc_threshold is set but no reader-2 features exist")
        return base, pd.DataFrame(columns=["icc"])
    pairs = [c[len("reader2__") :] for c in r2 if c[len("reader2__") :] in base.columns]
    rows = features.loc[train, [f"reader2__{c}" for c in pairs]].notna().all(axis=1)
    idx = rows.index[rows]
    if len(idx) < 5:
        raise ConfigError(
            f"selection.icc_threshold needs >= 5 training cases read twice, found {len(idx)}"
        )
    with np.errstate(all="ignore"):
        values = icc(
            features.loc[idx, pairs].to_numpy(),
            features.loc[idx, [f"reader2__{c}" for c in pairs]].to_numpy(),
            kind=sel.icc_kind,
        )
    table = pd.DataFrame({"icc": values}, index=pd.Index(pairs, name="feature"))
    keep = [
        c for c in base.columns if c not in table.index or table.at[c, "icc"] >= sel.icc_threshold
    ]
    log.info(
        "ICC filter (%s >= %.2f on %d training cases read twice): kept %d of %d features",
        sel.icc_kind,
        sel.icc_threshold,
        len(idx),
        len(keep),
        base.shape[1],
    )
    return base[keep], table


def clinical_estimator(ccfg):
    """The configured clinical model (unfitted): stepwise (the paper), prespecified, penalised."""
    method = str(ccfg.method)
    if method == "stepwise":
        return ClinicalModel(univariable_p=ccfg.univariable_p, multivariable_p=ccfg.multivariable_p)
    if method == "prespecified":  # every column, no data-driven selection
        return ClinicalModel(univariable_p=float("inf"), multivariable_p=1.0, backward=False)
    return PenalisedClinicalModel()


def fit_signatures(
    features: pd.DataFrame,
    clinical: pd.DataFrame,
    y: pd.Series,
    split: pd.Series,
    ring_widths_mm: list[float],
    cfg,
    bands_mm=(),
    sites: pd.Series | None = None,
    covariates: pd.DataFrame | None = None,
) -> list[SignatureFit]:
    """Fit the paper's signatures on the training cases; predict every case; out-of-fold
    training predictions on shared folds; optimism-corrected validation when configured.

    ``sites`` (the device/site of every case) and ``covariates`` feed the ComBat step that
    ``selection.harmonise=combat`` puts first in every radiomics pipeline
    (:func:`signature_pipeline`).

    Signatures per region kind (``region.signature_kinds``): ``tumour`` (Intra), ``tumour+ring``
    (IntraPeri w mm, the paper's), ``ring`` (Peri w mm), ``tumour+band`` (IntraBand a-b mm) and
    ``band`` (Band a-b mm). Feature classes in ``region.ring_exclude_classes`` (shape2D by
    default: a ring's shape is the tumour's shape again) are left out of ring and band regions.
    """
    train = split.index[split == "train"]
    ytr = y.loc[train]
    check_class_sizes(ytr, cfg)
    fits: list[SignatureFit] = []
    seed = int(cfg.seed)
    n_jobs = int(cfg.execution.n_jobs)
    k = int(cfg.evaluation.cv_folds)
    folds = stratified_folds(ytr, k, seed)
    repeats = [folds] + [
        stratified_folds(ytr, k, seed + r) for r in range(1, int(cfg.evaluation.cv_repeats))
    ]

    features, icc_table = icc_filter(features, train, cfg.selection)

    if clinical.shape[1]:
        est = clinical_estimator(cfg.model.clinical)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = clone_fit(est, clinical.loc[train], ytr)
        prob = pd.Series(cm.predict_proba(clinical)[:, 1], index=clinical.index)
        oof, _ = out_of_fold(est, clinical.loc[train], ytr, folds)
        cv = cv_folds_table(est, clinical.loc[train], ytr, repeats, oof, n_jobs)
        details = {
            "cv_folds": cv,
            "multivariable": cm.multivariable_table_,
            "method": str(cfg.model.clinical.method),
        }
        if getattr(cm, "univariable_table_", None) is not None:
            details["univariable"] = cm.univariable_table_
        fits.append(
            SignatureFit(
                "Clinic",
                "clinical",
                cm,
                prob,
                list(clinical.columns),
                details=details,
                oof=oof,
                estimator=est,
                inputs=clinical,
            )
        )

    groups = signature_groups(cfg, ring_widths_mm, bands_mm)
    outside = {g for _, regions in groups.values() for g in regions if g != "intra"}
    dropped = [c for c in features.columns if _excluded(c, outside, cfg)]
    if dropped:
        log.info(
            "left out of ring/band regions: %d %s feature columns (region.ring_exclude_classes)",
            len(dropped),
            "/".join(map(str, cfg.region.ring_exclude_classes)),
        )
    for name, (kind, regions) in groups.items():
        cols = [
            c
            for c in features.columns
            if column_region(c) in regions and not _excluded(c, outside, cfg)
        ]
        if {column_region(c) for c in cols} != set(regions):
            cols = []  # a tumour + ring signature needs both regions (not the tumour's alone)
        if not cols:  # said once, before the work (planned_signatures, her2study.preflight)
            log.debug("signature %s: no feature columns for regions %s; skipped", name, regions)
            continue
        est = signature_pipeline(cfg, sites, covariates)
        pipe = clone_fit(est, features.loc[train, cols], ytr)
        prob = pd.Series(pipe.predict_proba(features[cols])[:, 1], index=features.index)
        oof, score = out_of_fold(est, features.loc[train, cols], ytr, folds, n_jobs=n_jobs)
        cv = cv_folds_table(est, features.loc[train, cols], ytr, repeats, oof, n_jobs)
        fit = SignatureFit(
            name,
            "radiomics",
            pipe,
            prob,
            cols,
            selected_coefficients(pipe),
            lasso_details(pipe),
            oof=oof,
            estimator=est,
            inputs=features[cols],
        )
        fit.details["oof_rad_score"] = score
        fit.details["cv_folds"] = cv
        fit.details["region_kind"] = kind
        if "robust" in pipe.named_steps:
            fit.details["robustness"] = robustness_by_region(pipe.named_steps["robust"])
        if len(icc_table):
            fit.details["icc"] = icc_table[icc_table.index.str.split("_", n=1).str[0].isin(regions)]
        log.info("%s: %d features selected of %d", name, len(fit.coefficients), len(cols))
        fits.append(fit)

    rings = [f for f in fits if f.details.get("region_kind") == "tumour+ring"]
    clinic = next((f for f in fits if f.kind == "clinical"), None)
    if rings and clinic is not None:
        signature = signature_pipeline(cfg, sites, covariates)
        fits.append(
            _fit_nomogram(rings, clinic, features, clinical, ytr, train, folds, cfg, signature)
        )
    if not fits:
        raise ConfigError(
            "no signature could be fitted: no feature columns of the configured regions and no "
            "clinical columns -> fix: give intra_/peri<w>mm_ feature columns or "
            "data.clinical_columns"
        )
    if int(cfg.evaluation.bootstrap_reps) > 0:
        validate_fits(fits, ytr, train, cfg)
    return fits


def signature_pipeline(cfg, sites=None, covariates=None):
    """The configured radiomics pipeline (unfitted), from the one factory
    (:func:`~her2study.models.pipeline_from_config`): with ``selection.robustness_threshold`` a
    contour-robustness filter and with ``selection.harmonise=combat`` a ComBat step across
    ``sites`` (each fitted on each fit's training rows) come first."""
    return pipeline_from_config(
        cfg.selection,
        cfg.model,
        int(cfg.seed),
        sites=sites,
        covariates=covariates,
        label_column=str(cfg.data.label_column),
    )


def signature_groups(cfg, ring_widths_mm, bands_mm=()) -> dict[str, tuple[str, list[str]]]:
    """Signature name -> (region kind, regions) for the configured kinds, widths and bands."""
    kinds = [str(k) for k in cfg.region.signature_kinds]
    groups: dict[str, tuple[str, list[str]]] = {}
    if "tumour" in kinds:
        groups["Intra"] = ("tumour", ["intra"])
    for w in ring_widths_mm:
        ring = ring_spec(w).name
        if "tumour+ring" in kinds:
            groups[ring_label(w)] = ("tumour+ring", ["intra", ring])
        if "ring" in kinds:
            groups[f"Peri {float(w):g} mm"] = ("ring", [ring])
    for a, b in bands_mm:
        band = band_spec(float(a), float(b)).name
        label = f"{float(a):g}-{float(b):g} mm"
        if "tumour+band" in kinds:
            groups[f"IntraBand {label}"] = ("tumour+band", ["intra", band])
        if "band" in kinds:
            groups[f"Band {label}"] = ("band", [band])
    return groups


def planned_signatures(cfg, regions, has_clinical: bool) -> tuple[list[str], dict[str, str]]:
    """The signatures :func:`fit_signatures` fits given the available ``regions`` (column
    prefixes) and clinical columns, and the configured ones it cannot fit -> why."""
    widths = [float(w) for w in cfg.region.ring_widths_mm]
    bands = [[float(a), float(b)] for a, b in cfg.region.bands_mm]
    planned, missing = [], {}
    if has_clinical:
        planned.append("Clinic")
    else:
        missing["Clinic"] = "no clinical columns: data.clinical_columns is empty"
    ring_fitted = False
    for name, (kind, needed) in signature_groups(cfg, widths, bands).items():
        absent = [r for r in needed if r not in regions]
        if absent:
            missing[name] = f"no {'/'.join(a + '_' for a in absent)} feature columns"
        else:
            planned.append(name)
            ring_fitted = ring_fitted or kind == "tumour+ring"
    if has_clinical and ring_fitted:
        planned.append("Nomogram")
    elif "tumour+ring" in [str(k) for k in cfg.region.signature_kinds]:
        missing["Nomogram"] = "needs " + " and ".join(
            ["clinical columns"] * (not has_clinical)
            + ["a tumour + ring signature"] * (not ring_fitted)
        )
    return planned, missing


def _excluded(column: str, outside: set[str], cfg) -> bool:
    """A ring/band column of an excluded feature class (e.g. ``peri1mm_original_shape2D_*``)."""
    region = column_region(column)
    if region not in outside:
        return False
    return any(f"_{cls}_" in column for cls in cfg.region.ring_exclude_classes)


def cv_folds_table(estimator, X, y, repeats, oof_first, n_jobs: int = 1) -> pd.DataFrame:
    """AUC of every (repeat, fold) of repeated stratified CV (repeat 0 = the shared folds, from
    the out-of-fold predictions already made): what the margin comparison is made on."""
    rows = []
    for r, folds in enumerate(repeats):
        prob = oof_first if r == 0 else out_of_fold(estimator, X, y, folds, n_jobs=n_jobs)[0]
        for f, (tr, te) in enumerate(folds):
            yy = y.iloc[te].to_numpy()
            auc = auc_delong(yy, prob.iloc[te].to_numpy()).auc if len(set(yy)) == 2 else np.nan
            rows.append({"repeat": r, "fold": f, "auc": auc, "n_train": len(tr), "n_test": len(te)})
    return pd.DataFrame(rows)


def clone_fit(estimator, X, y):
    """A fitted clone of ``estimator`` (reused from the active fit cache when it holds one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cached_fit(estimator, X, y)


def _choose_ring(rings, ytr, ncfg):
    if ncfg.signature != "auto":
        matches = [f for f in rings if f.name == ncfg.signature]
        if not matches:
            raise ConfigError(
                f"model.nomogram.signature={ncfg.signature!r} is not one of "
                f"{[f.name for f in rings]} or auto"
            )
        return matches[0]
    if len(rings) == 1:
        log.info("nomogram uses %s (the only ring signature: no choice made)", rings[0].name)
        return rings[0]
    scores = {f.name: auc_delong(ytr.to_numpy(), f.oof.to_numpy()).auc for f in rings}
    base = max(rings, key=lambda f: scores[f.name])
    log.info(
        "nomogram uses %s (best out-of-fold training AUC: %s)",
        base.name,
        ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
    )
    return base


def _fit_nomogram(
    rings, clinic, features, clinical, ytr, train, folds, cfg, signature
) -> SignatureFit:
    ncfg = cfg.model.nomogram
    base = _choose_ring(rings, ytr, ncfg)
    mode = str(ncfg.rad_score)
    est = NomogramModel(
        signature=signature,
        radiomics_columns=list(base.columns),
        clinical=clinic.estimator,
        clinical_columns=list(clinical.columns),
        rad_score=mode,
        cv=int(cfg.evaluation.cv_folds),
        random_state=int(cfg.seed),
        vif_limit=ncfg.vif_limit,
        n_jobs=int(cfg.execution.n_jobs),
    )
    X = features[base.columns].join(clinical)
    oof_score = base.details["oof_rad_score"]
    nom = clone(est)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nom.fit(X.loc[train], ytr, oof_rad_score=oof_score if mode == "cross_fitted" else None)
    prob = pd.Series(nom.predict_proba(X)[:, 1], index=X.index)
    oof = _nomogram_oof(nom, X.loc[train], ytr, oof_score, folds)
    cv = cv_folds_table(None, X.loc[train], ytr, [folds], oof)
    design = nom.design(X)
    design.loc[train, "rad_score"] = nom.design_["rad_score"]  # what the combined model saw
    combined = nom.combined_
    details = {"base_signature": base.name, "rad_score": mode, "design": design, "cv_folds": cv}
    for attr in ("vif_", "table_", "coef_table_"):
        if hasattr(combined, attr):
            details[attr.rstrip("_")] = getattr(combined, attr)
    return SignatureFit(
        "Nomogram",
        "nomogram",
        nom,
        prob,
        list(design.columns),
        details=details,
        oof=oof,
        estimator=est,
        inputs=X,
    )


def _nomogram_oof(nom, X, ytr, oof_score, folds) -> pd.Series:
    """Out-of-fold nomogram predictions: in each fold the clinical selection and the combined
    model are refitted on the other folds' cross-fitted rad-scores and clinical columns, and
    the fold's cases are scored with their own cross-fitted rad-score (so no case is scored by
    anything fitted on it)."""
    cand = list(nom.clinical_columns or [])
    design = pd.DataFrame({"rad_score": np.asarray(oof_score, dtype=float)}, index=X.index)
    out = pd.Series(np.nan, index=X.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tr, te in folds:
            idx_tr, idx_te = X.index[tr], X.index[te]
            chosen = cand
            if nom.clinical is not None and cand:
                chosen = list(
                    clone(nom.clinical).fit(X.loc[idx_tr, cand], ytr.loc[idx_tr]).selected_
                )
            d = design.join(X[chosen])
            cm = CombinedModel(vif_limit=np.inf).fit(d.loc[idx_tr], ytr.loc[idx_tr])
            out.loc[idx_te] = cm.predict_proba(d.loc[idx_te])[:, 1]
    return out


def validate_fits(fits, ytr, train, cfg) -> None:
    """Harrell's optimism bootstrap for every signature (``fit.validation``)."""
    from her2study.evaluation.validation import optimism_bootstrap

    reps = int(cfg.evaluation.bootstrap_reps)
    for fit in fits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = optimism_bootstrap(
                fit.estimator,
                fit.inputs.loc[train],
                ytr,
                n_boot=reps,
                seed=int(cfg.seed),
                n_jobs=int(cfg.execution.n_jobs),
                apparent_prob=fit.prob.loc[train].to_numpy(),
            )
        fit.validation = res.to_frame()
        log.info(
            "%s: optimism-corrected AUC %.3f (apparent %.3f; %d bootstrap fits, %d failed)",
            fit.name,
            fit.validation.loc["auc", "corrected"],
            fit.validation.loc["auc", "apparent"],
            reps,
            int(fit.validation["n_failed"].iloc[0]),
        )
