"""The study's result tables from fitted signatures: every number labelled with its estimate kind.

``metrics.csv`` has one row per (``set``, ``signature``), where ``set`` says what kind of estimate
the row is:

- ``train_apparent``: the full-training fit scored on its own training cases (optimistic;
  shown for comparison with the paper, never as performance);
- ``train_corrected``: Harrell's bootstrap optimism correction of the apparent ``auc``,
  ``cal_slope``, ``cal_intercept`` and ``brier`` (``rms::validate``);
- ``train_oof``: out-of-fold predictions of the training cases on shared folds;
- ``test``: the held-out test set, scored once with the threshold chosen on training.

Thresholds are chosen on training predictions only (out-of-fold by default,
``evaluation.threshold_on``) and applied unchanged to every set. Paired DeLong comparisons run on
the test set and on the out-of-fold training predictions, never on apparent predictions, with
Holm-adjusted p-values within each set.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from her2study.evaluation import choose_threshold, delong_test
from her2study.evaluation.evaluate import evaluate
from her2study.evaluation.metrics import holm_adjust

log = logging.getLogger(__name__)

SETS = {
    "train_apparent": "apparent",
    "train_corrected": "optimism_corrected",
    "train_oof": "out_of_fold",
    "test": "test",
}
CORRECTED_INDICES = ("auc", "cal_slope", "cal_intercept", "brier")


def signature_threshold(fit, y: pd.Series, split: pd.Series, ecfg) -> float:
    """The signature's classification threshold, from training predictions only."""
    train = split == "train"
    ytr = y[train].to_numpy()
    if str(ecfg.threshold) == "fixed":
        return choose_threshold(ytr, fit.prob[train].to_numpy(), "fixed", ecfg.fixed_threshold)
    on_oof = str(ecfg.threshold_on) == "out_of_fold" and fit.oof is not None
    p = fit.oof.loc[y.index[train]].to_numpy() if on_oof else fit.prob[train].to_numpy()
    return choose_threshold(ytr, p, method="youden")


def _predictions(fit, y, split):
    """(set name, labels, probabilities) of every set with predictions."""
    train, test = split == "train", split == "test"
    out = [("train_apparent", y[train].to_numpy(), fit.prob[train].to_numpy())]
    if fit.oof is not None:
        idx = y.index[train]
        out.append(("train_oof", y[idx].to_numpy(), fit.oof.loc[idx].to_numpy()))
    out.append(("test", y[test].to_numpy(), fit.prob[test].to_numpy()))
    return out


def evaluate_signatures(fits, y: pd.Series, split: pd.Series, cfg) -> pd.DataFrame:
    """``metrics.csv``: one row per set x signature (see the module docstring)."""
    ecfg = cfg.evaluation
    rows = []
    for fit in fits:
        thr = signature_threshold(fit, y, split, ecfg)
        for set_name, yy, pp in _predictions(fit, y, split):
            if len(np.unique(yy)) < 2:
                raise ValueError(
                    f"the {set_name} set has one class only: the split cannot be evaluated"
                )
            m = evaluate(
                yy,
                pp,
                kind=SETS[set_name],
                threshold=thr,
                ci=ecfg.ci,
                n_boot=ecfg.n_boot,
                seed=int(cfg.seed),
                hl_groups=ecfg.hl_groups,
                net_benefit_at=ecfg.net_benefit_at,
            )
            m["threshold_on"] = str(ecfg.threshold_on) if str(ecfg.threshold) != "fixed" else "-"
            if set_name == "train_apparent":
                _warn_separation(fit, m)
            if set_name == "train_oof":
                m.update(_cv_interval(fit))
            rows.append({"set": set_name, "signature": fit.name, **m})
            if set_name == "train_apparent" and fit.validation is not None:
                rows.append(_corrected_row(fit, len(yy)))
    return pd.DataFrame(rows)


def _cv_interval(fit) -> dict:
    """Mean fold AUC of the training CV with the corrected resampled t interval."""
    from her2study.evaluation.resampling import corrected_t_interval

    cv = fit.details.get("cv_folds")
    if cv is None or not len(cv):
        return {}
    ci = corrected_t_interval(cv["auc"], cv["n_train"].mean(), cv["n_test"].mean())
    return {
        "cv_auc": ci["mean"],
        "cv_auc_ci_low": ci["ci_low"],
        "cv_auc_ci_high": ci["ci_high"],
        "cv_n_folds": ci["n"],
        "cv_ci_method": ci["method"],
    }


def _corrected_row(fit, n: int) -> dict:
    v = fit.validation
    row = {"set": "train_corrected", "signature": fit.name, "kind": SETS["train_corrected"]}
    row["n"] = n
    for idx in CORRECTED_INDICES:
        if idx in v.index:
            row[idx] = float(v.loc[idx, "corrected"])
            row[f"{idx}_optimism"] = float(v.loc[idx, "optimism"])
    row["n_boot"] = int(v["n_boot"].iloc[0])
    row["n_boot_failed"] = int(v["n_failed"].iloc[0])
    return row


def _warn_separation(fit, m: dict) -> None:
    if fit.kind == "clinical" or m["auc"] < 0.999:
        return
    log.warning(
        "%s separates the training set perfectly (apparent AUC %.3f): its coefficients are "
        "unstable and its apparent calibration meaningless; a penalised model (model=lasso_"
        "logistic or model=ridge) or fewer features (selection.lasso_rule=1se, "
        "selection.max_features) is advisable",
        fit.name,
        m["auc"],
    )


def overfitting_note(metrics: pd.DataFrame, gap: float = 0.1) -> list[str]:
    """Signatures whose apparent AUC exceeds their out-of-fold (or corrected) AUC by > gap."""
    notes = []
    wide = metrics.pivot_table(index="signature", columns="set", values="auc", aggfunc="first")
    for sig, r in wide.iterrows():
        ref = r.get("train_corrected", r.get("train_oof", np.nan))
        if np.isfinite(ref) and r.get("train_apparent", np.nan) - ref > gap:
            notes.append(
                f"{sig}: apparent training AUC {r['train_apparent']:.3f} vs "
                f"{'optimism-corrected' if 'train_corrected' in r else 'out-of-fold'} {ref:.3f}"
                " (overfitted: read the corrected and test rows, not the apparent one)"
            )
    return notes


def paired_delong(fits, y: pd.Series, split: pd.Series) -> pd.DataFrame:
    """Paired DeLong tests between every two signatures on the test set and on the out-of-fold
    training predictions (never on apparent ones), Holm-adjusted within each set."""
    rows = []
    train = y.index[split == "train"]
    test = split == "test"
    sets = {"test": (y[test].to_numpy(), {f.name: f.prob[test].to_numpy() for f in fits})}
    oof = {f.name: f.oof.loc[train].to_numpy() for f in fits if f.oof is not None}
    if len(oof) >= 2:
        sets["train_oof"] = (y[train].to_numpy(), oof)
    for set_name, (yy, scores) in sets.items():
        names = list(scores)
        block = []
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                r = delong_test(yy, scores[a], scores[b])
                block.append(
                    {
                        "set": set_name,
                        "a": a,
                        "b": b,
                        "auc_a": r.auc_a,
                        "auc_b": r.auc_b,
                        "diff": r.diff,
                        "diff_ci_low": r.diff_ci_low,
                        "diff_ci_high": r.diff_ci_high,
                        "z": r.z,
                        "p": r.p,
                    }
                )
        if block:
            adj = holm_adjust([r["p"] for r in block])
            for r, p in zip(block, adj, strict=True):
                r["p_holm"] = float(p)
        rows += block
    cols = ["set", "a", "b", "auc_a", "auc_b", "diff", "diff_ci_low", "diff_ci_high", "z", "p"]
    return pd.DataFrame(rows, columns=[*cols, "p_holm"])


def validation_table(fits) -> pd.DataFrame:
    """The bootstrap validation in ``rms::validate``'s shape: signature x index rows with
    apparent, optimism, corrected, n_boot and n_failed."""
    parts = []
    for fit in fits:
        if fit.validation is None:
            continue
        v = fit.validation.rename_axis("index").reset_index()
        v.insert(0, "signature", fit.name)
        parts.append(v)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# ----------------------------------------------------------------------------------------------
# per-site (per-device) results: transportability

SITE_SETS = {"train_oof": "out_of_fold", "test": "test"}
POOLED = "all (pooled)"  # the site value of rows over every case together


def site_rows(name: str, set_name: str, y, prob, sites, kind: str | None = None) -> list[dict]:
    """Per-site rows of one signature's predictions on one set: n, events, AUC with its DeLong
    95% CI, calibration intercept and slope with Wald CIs (NaN where a site has one class)."""
    from her2study.evaluation import auc_delong
    from her2study.evaluation.calibration import calibration_slope_intercept

    y, prob, sites = (pd.Series(v).reset_index(drop=True) for v in (y, prob, sites))
    rows = []
    for site in sorted(sites.unique()):
        at = (sites == site).to_numpy()
        yy, pp = y[at].to_numpy(dtype=int), prob[at].to_numpy(dtype=float)
        row = {
            "signature": name,
            "set": set_name,
            "kind": kind or SITE_SETS.get(set_name, set_name),
        }
        row.update(site=str(site), n=int(at.sum()), n_positive=int(yy.sum()))
        if len(np.unique(yy)) == 2:
            a = auc_delong(yy, pp)
            row.update(auc=a.auc, auc_ci_low=a.ci_low, auc_ci_high=a.ci_high)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    cal = calibration_slope_intercept(yy, pp)
                except Exception:  # perfect separation within a small site
                    cal = {}
            for key in ("intercept", "slope"):
                for suffix in ("", "_ci_low", "_ci_high"):
                    row[f"cal_{key}{suffix}"] = cal.get(f"{key}{suffix}", np.nan)
        rows.append(row)
    return rows


def by_site_table(fits, y: pd.Series, split: pd.Series, sites: pd.Series) -> pd.DataFrame:
    """``by_site.csv``: every signature's out-of-fold training and test predictions, by site.

    Each row is one (signature, set, site): the out-of-fold rows judge the sites seen in training
    (each case predicted by a fit that did not see it), the test rows the held-out sites (or the
    held-out cases of each site with a random split).
    """
    rows = []
    train, test = y.index[split == "train"], y.index[split == "test"]
    for fit in fits:
        if fit.oof is not None:
            rows += site_rows(fit.name, "train_oof", y[train], fit.oof.loc[train], sites[train])
        rows += site_rows(fit.name, "test", y[test], fit.prob.loc[test], sites[test])
    return _site_frame(rows)


def _site_frame(rows) -> pd.DataFrame:
    cols = ["signature", "set", "kind", "site", "n", "n_positive", "auc", "auc_ci_low"]
    cols += ["auc_ci_high"] + [
        f"cal_{k}{s}" for k in ("intercept", "slope") for s in ("", "_ci_low", "_ci_high")
    ]
    return pd.DataFrame(rows).reindex(columns=cols)


def leave_one_site_out(features, clinical, y, sites, widths, cfg, bands=(), covariates=None):
    """Each site held out in turn: the signatures fitted on the other sites (the whole protocol,
    selection included), the held-out site predicted once.

    Returns ``(by_site, predictions)``: per held-out site and signature the test-set rows of
    :func:`site_rows` (kind ``test``, set ``held_out_site``) plus, for comparison, the
    out-of-fold rows of the sites seen in training (set ``train_oof``, within-site CV); and the
    held-out predictions of every case (``case_id``, ``site``, ``signature``, ``prob``).

    The reference for each site is a cross-validation over all sites together (every site seen in
    training; set ``cv_all_sites``, out-of-fold, ``held_out`` = ``-``): the drop from it to the
    ``held_out_site`` AUC is what a device the model never saw costs.
    """
    from her2study.split import site_splits
    from her2study.study import fit_signatures

    rows, preds = [], []
    everyone = pd.Series("train", index=y.index, name="split")
    pooled = pd.Series(POOLED, index=y.index)
    for fit in fit_signatures(
        features, clinical, y, everyone, widths, cfg, bands, sites=sites, covariates=covariates
    ):
        if fit.oof is not None:
            for where in (sites, pooled):
                for r in site_rows(fit.name, "cv_all_sites", y, fit.oof.loc[y.index], where):
                    rows.append({**r, "held_out": "-"})
    for site, split in site_splits(sites).items():
        log.info(
            "leave-one-site-out: holding out site %s (%d cases)", site, (split == "test").sum()
        )
        fits = fit_signatures(
            features, clinical, y, split, widths, cfg, bands, sites=sites, covariates=covariates
        )
        test = y.index[split == "test"]
        train = y.index[split == "train"]
        for fit in fits:
            rows += site_rows(
                fit.name, "held_out_site", y[test], fit.prob.loc[test], sites[test], "test"
            )
            if fit.oof is not None:
                for r in site_rows(
                    fit.name, "train_oof", y[train], fit.oof.loc[train], sites[train]
                ):
                    rows.append({**r, "held_out": site})
            preds.append(
                pd.DataFrame({"site": site, "signature": fit.name, "prob": fit.prob.loc[test]})
            )
        for r in rows:
            r.setdefault("held_out", site)
    predictions = pd.concat(preds).rename_axis("case_id").reset_index()
    for name, p in predictions.groupby("signature", sort=False):  # every case from its LOSO fit
        ids = p["case_id"].to_numpy()
        for r in site_rows(name, "held_out_site", y.loc[ids], p["prob"], pooled.loc[ids], "test"):
            rows.append({**r, "held_out": "each"})
    by_site = _site_frame(rows)
    by_site.insert(0, "held_out", [r["held_out"] for r in rows])
    return by_site, predictions
