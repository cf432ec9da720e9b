"""task=paper (``+exp=paper``): the source paper's protocol end to end, tracked in MLflow.

Cohort -> regions -> features (cached) -> split -> signatures fitted on training only ->
Table-3-like results beside the paper's, figures, MLflow parent + child runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from her2study.cohort.source import describe_source
from her2study.digest import canonical_digest
from her2study.features.qa import annotation_summary
from her2study.fitcache import active_fit_cache, content_key, skops_bytes, use_fit_cache
from her2study.model_artifact import log_model, portable_pipeline
from her2study.report import paper_report
from her2study.report.transport import (
    leave_one_site_out_report,
    robustness_section,
    robustness_table,
    transportability_section,
)
from her2study.reporting import (
    compact_comparison,
    compare_with_paper,
    paper_reference_on,
    to_text,
)
from her2study.results import (
    by_site_table,
    evaluate_signatures,
    leave_one_site_out,
    overfitting_note,
    paired_delong,
    validation_table,
)
from her2study.split import check_site_config, site_values, split_from_config
from her2study.study import fit_signatures, planned_signatures
from her2study.tasks.common import (
    SECRET_KEYS,
    clinical_columns,
    cohort_and_features,
    dashboard_params,
    extraction_settings,
    extractor_params,
    final_paths,
    log_run_config,
    open_run,
    output_dir,
    result_set,
    run_tags,
    save_table,
    signature_role,
)

log = logging.getLogger(__name__)


def run(cfg) -> float:
    """Run the study; return a training-side estimate for sweepers: the best optimism-corrected
    (else out-of-fold) training AUC among the signatures. Never a test-set number: a sweep that
    maximised the test AUC would tune on the test set."""
    check_site_config(cfg.split, cfg.data.get("site_column"), cfg.selection.get("harmonise"))
    widths = [float(w) for w in cfg.region.ring_widths_mm]
    run_name = "paper rings=" + ("+".join(f"{w:g}" for w in widths) or "none") + "mm"
    if str(cfg.split.method) == "leave_one_site_out":
        run_name = "paper leave-one-site-out"
    # config checked; the run opens before any work (its Duration is the study's)
    with open_run(cfg, "paper", run_name) as tracker:
        return study(cfg, tracker)


def study(cfg, tracker) -> float:
    """The paper protocol inside the open parent run ``tracker``."""
    cohort, fs = cohort_and_features(cfg)
    out = output_dir(cfg)
    source = describe_source(cohort)
    y = cohort.labels
    site_column = cfg.data.get("site_column")
    sites = site_values(cohort.table, site_column, "site") if site_column else None
    widths = [float(w) for w in cfg.region.ring_widths_mm]
    clinical = cohort.table[clinical_columns(cfg)]
    bands = [[float(a), float(b)] for a, b in cfg.region.bands_mm]
    if str(cfg.split.method) == "leave_one_site_out":
        sites = site_values(cohort.table, site_column, "leave_one_site_out")
        return run_leave_one_site_out(
            cfg, tracker, cohort, fs, out, source, sites, clinical, widths, bands
        )
    split = split_from_config(
        cohort.table, cfg.split, cohort.label_column, int(cfg.seed), site_column
    )
    with use_fit_cache(cfg.cache_dir):  # out-of-fold fits and bootstrap validations reused
        fits = fit_signatures(
            fs.table, clinical, y, split, widths, cfg, bands, sites=sites, covariates=cohort.table
        )
    metrics = evaluate_signatures(fits, y, split, cfg)
    by_site = by_site_table(fits, y, split, sites) if sites is not None else None
    with_paper = paper_reference_on(cfg, cohort.synthetic)
    comparison = compare_with_paper(metrics, with_paper)
    regions = {str(c).split("_", 1)[0] for c in fs.table.columns}
    missing = planned_signatures(cfg, regions, bool(clinical.shape[1]))[1]
    tests = paired_delong(fits, y, split)

    validation = validation_table(fits)
    robust = robustness_table(fits)
    extra = [robustness_section(robust, cfg)] if len(robust) else []
    if by_site is not None:
        extra.append(transportability_section(by_site, cfg))
    with use_fit_cache(cfg.cache_dir):  # figures whose inputs are unchanged: not redrawn
        figures = make_figures(fits, y, split, cfg, source)
    with result_set(out) as stage:  # moved into out at the end: no partial result set
        tables = write_tables(stage, fits, metrics, comparison, tests, split, source, validation)
        if by_site is not None:
            tables += save_table(stage, "by_site", by_site, source, True)
        if len(robust):
            tables += save_table(stage, "robustness", robust, source, True)
        for name, png in figures.items():
            (stage / f"{name}.png").write_bytes(png)
        report = paper_report(
            stage,
            cfg=cfg,
            cohort=cohort,
            split=split,
            fits=fits,
            metrics=metrics,
            comparison=comparison,
            tests=tests,
            figures=figures,
            clinical_columns=clinical_columns(cfg),
            features=fs.table,
            validation=validation,
            checklist={"Burned-in annotations": annotation_summary(fs.region_stats)},
            extra_sections=extra,
            missing=missing,
        )
    tables, report = final_paths(tables, stage, out), out / report.name

    n_train, n_test = int((split == "train").sum()), int((split == "test").sum())
    log.info(f"\nData: {source}; training {n_train}, test {n_test} cases")
    log.info(to_text(auc_overview(metrics)))
    for note in overfitting_note(metrics):
        log.warning(note)
    log.info(to_text(compact_comparison(comparison)))
    paper_words = " with the paper's figures" if with_paper else ""
    log.info(f"(thresholds: {threshold_words(cfg)}; full table{paper_words}: {out}/table3.md)")
    log.info(f"report: {report}")

    tags = run_tags(
        "paper",
        cfg,
        cohort,
        data_digest=data_digest(y, split),
        extractor_digest=canonical_digest(extractor_params(cfg))[:16],
    )
    tracker.set_tags(tags)
    with use_fit_cache(cfg.cache_dir):  # model files and checks reused
        log_to_mlflow(tracker, cfg, fits, metrics, tables, figures, out, fs, cohort)
    if tracker.run_id:
        log.info(
            f"MLflow run {tracker.run_id}, experiment '{cfg.tracking.experiment}' "
            f"({cfg.tracking.tracking_uri})"
        )
    return training_estimate(metrics)


def run_leave_one_site_out(
    cfg, tracker, cohort, fs, out, source, sites, clinical, widths, bands
) -> float:
    """``split.method=leave_one_site_out``: each site held out in turn (the whole protocol refitted
    on the others), beside a CV over all sites; ``by_site.csv`` and a transportability report.
    Returns the best signature's mean out-of-fold AUC over sites from the all-sites CV (a
    training-side number, never a held-out one)."""
    y = cohort.labels
    by_site, _ = leave_one_site_out(
        fs.table, clinical, y, sites, widths, cfg, bands, covariates=cohort.table
    )
    tables = save_table(out, "by_site", by_site, source, True)
    report = leave_one_site_out_report(out, cfg=cfg, cohort=cohort, by_site=by_site)
    held = by_site[by_site["set"] == "held_out_site"]
    log.info(f"\nData: {source}; leave-one-site-out over {sorted(sites.unique())}")
    log.info(to_text(held[["site", "signature", "n", "auc", "auc_ci_low", "auc_ci_high"]]))
    log.info(f"report: {report}")
    tags = run_tags("paper", cfg, cohort, data_digest=data_digest(y, sites.rename("split")))
    tracker.set_tags(tags)  # the run opened when the task started
    if tracker.enabled:
        log_run_config(tracker, cfg, cohort, len(cohort.ids))
        flat = {}
        for _, r in by_site[by_site["set"].isin(["held_out_site", "cv_all_sites"])].iterrows():
            if pd.notna(r["auc"]):
                flat[f"{r['set']}.{r['site']}.{r['signature']}.auc"] = float(r["auc"])
        tracker.log_metrics(flat)
        for path in tables:
            tracker.log_artifact(path, "tables")
        tracker.log_artifact(report, "report")
    seen = by_site[by_site["set"] == "cv_all_sites"].groupby("signature")["auc"].mean()
    return float(seen.max()) if seen.notna().any() else float("nan")


def data_digest(y: pd.Series, split: pd.Series) -> str:
    """SHA-256 (16 hex) of the cohort a run used: case ids, labels and split (ids only hashed);
    the runs of one margin sweep share it, whatever regions they extracted."""
    ids, labels = list(map(str, y.index)), [int(v) for v in y]
    rows = sorted(zip(ids, labels, split.loc[y.index].astype(str).tolist(), strict=True))
    return canonical_digest(rows)[:16]


def cv_fold_table(fits) -> pd.DataFrame:
    """AUC per signature, repeat and fold of the training CV (``cv_folds.csv``; task=compare
    pairs these across the runs of a sweep, which share their folds)."""
    parts = []
    for fit in fits:
        cv = fit.details.get("cv_folds")
        if cv is not None and len(cv):
            kind = fit.details.get("region_kind", fit.kind)
            parts.append(cv.assign(signature=fit.name, region_kind=kind))
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    return df[["signature", "region_kind", "repeat", "fold", "n_train", "n_test", "auc"]]


def training_estimate(metrics: pd.DataFrame) -> float:
    """The best optimism-corrected (else out-of-fold) training AUC: what sweepers may use."""
    for set_name in ("train_corrected", "train_oof"):
        auc = metrics.loc[metrics["set"] == set_name, "auc"]
        if auc.notna().any():
            return float(auc.max())
    return float("nan")


def threshold_words(cfg) -> str:
    e = cfg.evaluation
    if str(e.threshold) == "fixed":
        return f"fixed at {e.fixed_threshold:g}"
    on = (
        "out-of-fold training predictions"
        if str(e.threshold_on) == "out_of_fold"
        else "apparent (in-sample) training predictions"
    )
    return f"Youden on {on}, applied unchanged to test"


def auc_overview(metrics: pd.DataFrame) -> pd.DataFrame:
    """AUC of every signature by kind of estimate, for the terminal and the report."""
    names = {
        "train_apparent": "apparent (train)",
        "train_corrected": "optimism-corrected (train)",
        "train_oof": "out-of-fold (train)",
        "test": "test",
    }
    rows = []
    for sig, g in metrics.groupby("signature", sort=False):
        row = {"signature": sig}
        for set_name, label in names.items():
            r = g[g["set"] == set_name]
            if not len(r):
                continue
            r = r.iloc[0]
            lo, hi = r.get("auc_ci_low", np.nan), r.get("auc_ci_high", np.nan)
            ci = f" ({lo:.3f}-{hi:.3f})" if pd.notna(lo) and pd.notna(hi) else ""
            row[label] = f"{r['auc']:.3f}{ci}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("-")


def write_tables(
    out: Path, fits, metrics, comparison, tests, split, source, validation=None
) -> list[Path]:
    """CSV (and Markdown, headed by the data source) for every table of the study."""
    paths: list[Path] = []

    def save(name: str, df: pd.DataFrame, md: bool = True) -> None:
        paths.extend(save_table(out, name, df, source, md))

    save("table3", comparison)
    save("metrics", metrics, md=False)
    save("delong_tests", tests)
    if validation is not None and len(validation):
        save("validation", validation)
    save("auc_by_estimate", auc_overview(metrics))
    folds = cv_fold_table(fits)
    if len(folds):
        save("cv_folds", folds, md=False)
    save("split", split.rename_axis("case_id").reset_index(), md=False)
    for fit in fits:
        tag = fit.name.replace(" ", "_")
        if fit.coefficients is not None:
            save(f"features_{tag}", fit.coefficients.rename_axis("feature").reset_index())
        for key in ("univariable", "multivariable"):
            if fit.details.get(key) is not None:
                save(f"clinical_{key}", fit.details[key])
        if "icc" in fit.details:
            save(f"icc_{tag}", fit.details["icc"].reset_index(), md=False)
        if "vif" in fit.details:
            save(
                "nomogram_vif",
                fit.details["vif"].rename("vif").rename_axis("predictor").reset_index(),
            )
    return paths


def make_figures(fits, y, split, cfg, source) -> dict[str, bytes]:
    """ROC, calibration and decision curves per set; LASSO CV curve and coefficients; nomogram.

    Each figure as PNG bytes, rendered once (and reused from the active fit cache while its
    inputs, the code and matplotlib are unchanged): written to the run folder, embedded in the
    report and logged to MLflow as they are."""
    from her2study.evaluation.figure_cache import plot_decision_curves, rendered_png
    from her2study.evaluation.figures import (
        plot_calibration,
        plot_coefficients,
        plot_lasso_path,
        plot_roc,
    )
    from her2study.evaluation.nomogram_plot import plot_nomogram

    note = source if "SYNTHETIC" in source else None
    figs = {}
    thresholds = np.round(np.arange(0.01, cfg.evaluation.dca_max_threshold + 1e-9, 0.01), 2)
    train = y.index[split == "train"]
    test = y.index[split == "test"]
    sets = {
        "train_apparent": ("training set, APPARENT (in-sample; optimistic)", train, "prob"),
        "train_oof": ("training set, out-of-fold", train, "oof"),
        "test": ("test set", test, "prob"),
    }
    for set_name, (title, idx, attr) in sets.items():
        with_preds = [f for f in fits if getattr(f, attr) is not None]
        if not with_preds:
            continue
        yy = y[idx].to_numpy()
        curves = {f.name: (yy, getattr(f, attr).loc[idx].to_numpy()) for f in with_preds}
        figs[f"roc_{set_name}"] = rendered_png(plot_roc, curves, title=f"ROC, {title}", note=note)
        figs[f"calibration_{set_name}"] = rendered_png(
            plot_calibration, curves, title=f"Calibration, {title}", note=note
        )
        figs[f"dca_{set_name}"] = rendered_png(
            plot_decision_curves,
            yy,
            {k: v[1] for k, v in curves.items()},
            thresholds,
            title=f"Decision curves, {title}",
            note=note,
        )
    for fit in fits:
        tag = fit.name.replace(" ", "_")
        d = fit.details
        if "lasso_cv" in d:
            figs[f"lasso_cv_{tag}"] = rendered_png(
                plot_lasso_path,
                d["lasso_cv"],
                lambda_min=d["lasso_lambda_min"],
                higher_is_better=d["lasso_metric"] == "AUC",
                ylabel=d["lasso_metric"],
                title=f"LASSO {cfg.selection.lasso_cv}-fold CV, {fit.name}",
                note=note,
            )
        if fit.kind == "radiomics" and fit.coefficients.notna().any():
            figs[f"coefficients_{tag}"] = rendered_png(
                plot_coefficients,
                fit.coefficients,
                title=f"Selected features, {fit.name}",
                note=note,
            )
        if fit.kind == "nomogram":
            train = d["design"].loc[split.index[split == "train"]]
            ranges = {c: (float(train[c].min()), float(train[c].max())) for c in train.columns}
            figs["nomogram"] = rendered_png(
                plot_nomogram,
                fit.model.combined_.params_,  # what the drawing reads: const + coefficients
                ranges,
                title=f"Nomogram ({d['base_signature']} rad-score)",
                note=note,
            )
    return figs


def _numbers(row: pd.Series, prefix: str = "") -> dict[str, float]:
    """The numeric cells of a metrics row as ``<prefix><metric>``; NaN (a metric that does not
    apply to this set or signature) is left out, so the tracker only flags unexpected values."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in row.items()
        if k not in ("set", "signature")
        and isinstance(v, (int, float, np.integer, np.floating))
        and not np.isnan(v)
    }


def log_checked_model(tracker, pipeline, card: dict, threshold: float) -> str | None:
    """``model_artifact.log_model`` with the pipeline's skops file from the fit cache, and
    MLflow's input-example check (a load + predict through MLflow's loader that only warns) run
    once per model: skipped when the same files (pipeline bytes, card, threshold, code, MLflow
    version) were checked before, as a marker in the active fit cache records. Returns the
    logged model's id (``m-...``; None when tracking is off)."""
    import hashlib

    import mlflow

    data = skops_bytes(pipeline)
    cache = active_fit_cache()
    key = None
    if data is not None and cache is not None:
        digest = hashlib.sha256(data).hexdigest()
        key = content_key("model_check", pipeline=digest, card=card, threshold=threshold)
        key = content_key("model_check", key=key, mlflow=mlflow.__version__)
    checked = key is not None and cache.get(key) is not None
    uri = log_model(
        tracker, "model", pipeline, card, threshold, pipeline_bytes=data, validate=not checked
    )
    if key is not None and not checked:
        cache.put(key, {}, {"kind": "model_check"})
    return uri.removeprefix("models:/") if uri else None


def log_to_mlflow(tracker, cfg, fits, metrics, tables, figures, out, fs, cohort) -> None:
    """Parent run: config, all metrics, tables, figures; child run per signature with its model."""
    if not tracker.enabled:
        return
    log_run_config(tracker, cfg, cohort, len(cohort.ids))
    scalars = dashboard_params(cfg)
    tracker.log_params(scalars)
    tracker.set_tags({"sweep_id": scalars["sweep_id"]})
    # the features + label as the run's dataset: name, digest, schema, row count; no rows, no ids
    labels = cohort.labels.reindex(fs.table.index).to_numpy()
    frame = fs.table.reset_index(drop=True).assign(label=labels)
    kind = "synthetic" if cohort.synthetic else str(cfg.data.source)
    tracker.log_dataset(frame, f"{kind}-features", targets="label")
    widths = [float(w) for w in cfg.region.ring_widths_mm]
    flat = {}
    for _, r in metrics.iterrows():
        flat.update(_numbers(r, f"{r['signature']}.{r['set']}."))
        role = signature_role(r["signature"], widths)
        if role is not None:  # stable keys for the chart view: test.ring.auc, ...
            flat.update(_numbers(r, f"{r['set']}.{role}."))
    n_nan = int(metrics.select_dtypes("number").isna().sum().sum())
    log.debug("%d NaN metric cells (not applicable to their set) not logged", n_nan)
    tracker.log_metrics(flat)
    groups = {  # one upload; the figures are the PNG files written (rendered once)
        "tables": list(tables),
        "figures": [out / f"{name}.png" for name in figures],
        "report": [p for p in [out / "report.html"] if p.is_file()],
        "logs": sorted(out.glob("*.log")),
    }
    overrides = out / ".hydra" / "overrides.yaml"
    if overrides.is_file() and not any(k in overrides.read_text() for k in SECRET_KEYS):
        groups["config"] = [overrides]
    tracker.log_artifact_groups(groups)
    for fit in fits:
        role = signature_role(fit.name, widths)
        child_tags = {"signature": fit.name, "kind": fit.kind, "sweep_id": scalars["sweep_id"]}
        if role is not None:
            child_tags["role"] = role
        with tracker.child(fit.name, tags=child_tags):
            tracker.log_params(scalars)
            n_sel = len(fit.coefficients) if fit.coefficients is not None else len(fit.columns)
            tracker.log_params(
                {
                    "signature": fit.name,
                    "kind": fit.kind,
                    "n_input_columns": len(fit.columns),
                    "n_selected": n_sel,
                }
            )
            model_id = None
            if cfg.tracking.log_model and fit.kind == "radiomics":
                thr = metrics.loc[metrics["signature"] == fit.name, "threshold"].iloc[0]
                # no case-id lookups, no perturbed features: what predicting a new case needs
                pipe, inputs = portable_pipeline(
                    fit.model, fit.columns, cfg.data.get("site_column")
                )
                card = {
                    "study": cfg.study,
                    "signature": fit.name,
                    **inputs,
                    "extraction": extraction_settings(cfg, inputs["columns"]),
                    "estimate_kind": "fitted on the training split; its estimates are the "
                    "parent run's metrics (apparent, out-of-fold, test)",
                }
                with tracker.mlflow_operation():  # a SIGTERM waits until it is written
                    model_id = log_checked_model(tracker, pipe, card, float(thr))
            # after the model, linked to it (MLflow would otherwise read back every metric of
            # the run to copy it onto the model: one query per metric)
            for _, r in metrics[metrics["signature"] == fit.name].iterrows():
                tracker.log_metrics(_numbers(r, f"{r['set']}."), model_id=model_id)
            if fit.coefficients is not None:
                coef = fit.coefficients.rename_axis("feature").reset_index()
                tracker.log_table(coef, "selected_features.csv")
