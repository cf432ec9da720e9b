"""The paper's protocol on a training/test split: signatures fitted on training only.

Signatures: ``Clinic`` (clinical model), ``Intra`` (tumour features), ``IntraPeri <w> mm`` (tumour
+ ring of width w) for each configured ring, and ``Nomogram`` (rad-score of one ring signature +
the clinical factors). Every label-dependent step — scaling, correlation and Mann-Whitney filters,
LASSO, the model — is a step of a scikit-learn Pipeline fitted on the training cases only; the
test cases are only ever predicted.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from her2study.errors import ConfigError
from her2study.evaluation import auc_delong, choose_threshold, delong_test
from her2study.evaluation.evaluate import evaluate
from her2study.models import (
    ClinicalModel,
    CombinedModel,
    pipeline_from_config,
    rad_score,
    selected_coefficients,
)
from her2study.regions import ring_label, ring_spec

log = logging.getLogger(__name__)


@dataclass
class SignatureFit:
    """One fitted signature and its predicted probabilities for every case."""

    name: str
    kind: str  # clinical | radiomics | nomogram
    model: object
    prob: pd.Series  # index: case ids (train and test)
    columns: list[str]
    coefficients: pd.Series | None = None  # selected features -> coefficient
    details: dict = field(default_factory=dict)  # tables: clinical ORs, VIFs, LASSO CV curve


def lasso_details(pipe) -> dict:
    """The LASSO CV curve in glmnet's terms (binomial deviance, or AUC) for plotting/logging."""
    lasso = pipe.named_steps.get("lasso")
    if lasso is None or not hasattr(lasso, "cv_results_"):
        return {}
    r = lasso.cv_results_
    auc = getattr(lasso, "scoring", "neg_log_loss") == "roc_auc"
    scale = 1.0 if auc else -2.0  # neg_log_loss -> deviance = 2 x log loss
    curve = pd.DataFrame(
        {
            "lambda": np.asarray(r["lambdas"], dtype=float),
            "mean": scale * np.asarray(r["mean_score"], dtype=float),
            "se": abs(scale) * np.asarray(r["se_score"], dtype=float),
            "n_nonzero": np.asarray(r["n_nonzero"]),
        }
    )
    return {
        "lasso_cv": curve,
        "lasso_metric": "AUC" if auc else "Binomial deviance",
        "lasso_lambda_min": float(curve["lambda"].iloc[int(r["best_index"])]),
        "lasso_lambda": float(curve["lambda"].iloc[int(r["chosen_index"])]),
    }


def cv_auc(
    estimator, X: pd.DataFrame, y: pd.Series, folds: int, seed: int, n_jobs: int = 1
) -> float:
    """Training-set cross-validated AUC (every fold refits the whole pipeline)."""
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob = cross_val_predict(
            clone(estimator), X, y, cv=cv, method="predict_proba", n_jobs=n_jobs
        )[:, 1]
    return auc_delong(y.to_numpy(), prob).auc


def check_class_sizes(y_train: pd.Series, cfg) -> None:
    """Every CV inside the fit needs each class in each fold: say so before any work."""
    counts = y_train.value_counts()
    folds = {
        "selection.lasso_cv": int(cfg.selection.lasso_cv),
        "evaluation.cv_folds": int(cfg.evaluation.cv_folds),
    }
    smallest = int(counts.min()) if len(counts) == 2 else 0
    for key, k in folds.items():
        if smallest < k:
            names = {0: cfg.data.negative_class, 1: cfg.data.positive_class}
            which = names.get(int(counts.idxmin()), counts.idxmin()) if len(counts) else "-"
            raise ConfigError(
                f"the training set has {smallest} case(s) of class {which}; {key}={k} needs at "
                f"least {k} per class: lower {key} (e.g. {key}={max(2, smallest)}) or add cases"
            )


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


def fit_signatures(
    features: pd.DataFrame,
    clinical: pd.DataFrame,
    y: pd.Series,
    split: pd.Series,
    ring_widths_mm: list[float],
    cfg,
) -> list[SignatureFit]:
    """Fit the paper's signatures on the training cases; predict every case."""
    train = split.index[split == "train"]
    ytr = y.loc[train]
    check_class_sizes(ytr, cfg)
    fits: list[SignatureFit] = []
    seed = int(cfg.seed)

    features, icc_table = icc_filter(features, train, cfg.selection)

    if clinical.shape[1]:
        ccfg = cfg.model.clinical
        cm = ClinicalModel(univariable_p=ccfg.univariable_p, multivariable_p=ccfg.multivariable_p)
        cm.fit(clinical.loc[train], ytr)
        prob = pd.Series(cm.predict_proba(clinical)[:, 1], index=clinical.index)
        fits.append(
            SignatureFit(
                "Clinic",
                "clinical",
                cm,
                prob,
                list(clinical.columns),
                details={
                    "univariable": cm.univariable_table_,
                    "multivariable": cm.multivariable_table_,
                },
            )
        )

    groups = {"Intra": ["intra"]}
    for w in ring_widths_mm:
        groups[ring_label(w)] = ["intra", ring_spec(w).name]
    for name, regions in groups.items():
        cols = [c for c in features.columns if c.split("_", 1)[0] in regions]
        if not cols:
            log.warning("signature %s: no feature columns for regions %s; skipped", name, regions)
            continue
        pipe = pipeline_from_config(cfg.selection, cfg.model, seed)
        Xtr = features.loc[train, cols]
        pipe.fit(Xtr, ytr)
        prob = pd.Series(pipe.predict_proba(features[cols])[:, 1], index=features.index)
        fit = SignatureFit(
            name, "radiomics", pipe, prob, cols, selected_coefficients(pipe), lasso_details(pipe)
        )
        if len(icc_table):
            fit.details["icc"] = icc_table[icc_table.index.str.split("_", n=1).str[0].isin(regions)]
        log.info("%s: %d features selected of %d", name, len(fit.coefficients), len(cols))
        fits.append(fit)

    rings = [f for f in fits if f.name.startswith("IntraPeri")]
    clinic = next((f for f in fits if f.kind == "clinical"), None)
    if rings and clinic is not None:
        fits.append(_fit_nomogram(rings, clinic, features, clinical, y, train, cfg))
    return fits


def _fit_nomogram(rings, clinic, features, clinical, y, train, cfg) -> SignatureFit:
    ncfg = cfg.model.nomogram
    if ncfg.signature == "auto":
        if len(rings) == 1:
            base = rings[0]
            scores = {base.name: np.nan}
        else:
            scores = {
                f.name: cv_auc(
                    pipeline_from_config(cfg.selection, cfg.model, int(cfg.seed)),
                    features.loc[train, f.columns],
                    y.loc[train],
                    cfg.evaluation.cv_folds,
                    int(cfg.seed),
                    n_jobs=int(cfg.execution.n_jobs),
                )
                for f in rings
            }
            base = max(rings, key=lambda f: scores[f.name])
        log.info("nomogram uses %s (training CV AUC: %s)", base.name, scores)
    else:
        matches = [f for f in rings if f.name == ncfg.signature]
        if not matches:
            raise ConfigError(
                f"model.nomogram.signature={ncfg.signature!r} is not one of "
                f"{[f.name for f in rings]} or auto"
            )
        base, scores = matches[0], {}
    clin_cols = list(getattr(clinic.model, "selected_", clinical.columns))
    design = pd.DataFrame(
        {"rad_score": rad_score(base.model, features[base.columns])}, index=features.index
    )
    design = design.join(clinical[clin_cols])
    combined = CombinedModel(vif_limit=ncfg.vif_limit)
    combined.fit(design.loc[train], y.loc[train])
    prob = pd.Series(combined.predict_proba(design)[:, 1], index=design.index)
    details = {"base_signature": base.name, "cv_auc": scores, "design": design}
    for attr in ("vif_", "table_", "coef_table_"):
        if hasattr(combined, attr):
            details[attr.rstrip("_")] = getattr(combined, attr)
    return SignatureFit(
        "Nomogram", "nomogram", combined, prob, list(design.columns), details=details
    )


def evaluate_signatures(
    fits: list[SignatureFit], y: pd.Series, split: pd.Series, cfg
) -> pd.DataFrame:
    """Table-3-like rows (set x signature) in :func:`her2study.evaluation.evaluate`'s names."""
    ecfg = cfg.evaluation
    rows = []
    for fit in fits:
        ytr, ptr = y[split == "train"].to_numpy(), fit.prob[split == "train"].to_numpy()
        if ecfg.threshold == "youden":
            thr = choose_threshold(ytr, ptr, method="youden")
        else:
            thr = choose_threshold(ytr, ptr, method="fixed", value=ecfg.fixed_threshold)
        for set_name in ("train", "test"):
            mask = split == set_name
            yy, pp = y[mask].to_numpy(), fit.prob[mask].to_numpy()
            if len(np.unique(yy)) < 2:
                raise ValueError(
                    f"the {set_name} set has one class only: the split cannot be evaluated"
                )
            m = evaluate(
                yy,
                pp,
                kind="apparent" if set_name == "train" else "test",
                threshold=thr,
                ci=ecfg.ci,
                n_boot=ecfg.n_boot,
                seed=int(cfg.seed),
                hl_groups=ecfg.hl_groups,
                net_benefit_at=ecfg.net_benefit_at,
            )
            if set_name == "train" and m["auc"] >= 0.999 and fit.kind != "clinical":
                log.warning(
                    "%s separates the training set perfectly (AUC %.3f): its coefficients are "
                    "unstable and its calibration meaningless; a penalised model "
                    "(model=lasso_logistic or model=ridge) or fewer features (selection.lasso_rule="
                    "1se, selection.max_features) is advisable",
                    fit.name,
                    m["auc"],
                )
            rows.append({"set": set_name, "signature": fit.name, **m})
    return pd.DataFrame(rows)


def paired_delong(fits: list[SignatureFit], y: pd.Series, split: pd.Series) -> pd.DataFrame:
    """Paired DeLong tests between every two signatures, per set."""
    rows = []
    for set_name in ("train", "test"):
        mask = split == set_name
        yy = y[mask].to_numpy()
        for i, a in enumerate(fits):
            for b in fits[i + 1 :]:
                r = delong_test(yy, a.prob[mask].to_numpy(), b.prob[mask].to_numpy())
                rows.append(
                    {
                        "set": set_name,
                        "a": a.name,
                        "b": b.name,
                        "auc_a": r.auc_a,
                        "auc_b": r.auc_b,
                        "z": r.z,
                        "p": r.p,
                    }
                )
    return pd.DataFrame(rows)
