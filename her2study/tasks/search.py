"""task=search (``+exp=search``): nested cross-validated search of ring width, selection and model.

Cohort -> features (from the cache) -> outer repeated stratified K-fold; in each outer training
fold an Optuna study maximises the inner-CV AUC; its winner is refitted and scored once on the
outer test fold -> the nested estimate (mean outer AUC with the Nadeau-Bengio corrected t
interval, pooled out-of-fold metrics, calibration, decision curve, ring-width and
feature-selection frequencies), per ring width the same for the best trial of that width
(``region_estimates.csv``, ``region_differences.csv``), optionally a permutation test of the whole
procedure -> one more study on all cases gives the configuration to export (``task=export``),
whose performance estimate is the nested one. Tracked in MLflow: a parent run, a child run per
outer fold (and per trial with ``search.log_trials``).
"""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pandas as pd
import yaml

from her2study.errors import ConfigError
from her2study.preflight import raise_config_problems
from her2study.report import search_design_items, search_report
from her2study.search import (
    REGION_COLUMNS,
    nested_search,
    open_storage,
    parse_space,
    search_defaults,
    storage_url,
)
from her2study.tasks.common import (
    check_design_config,
    final_paths,
    load_design,
    log_run_config,
    open_run,
    output_dir,
    result_set,
    run_tags,
    save_table,
)
from her2study.tracking import check_tracking_uri

log = logging.getLogger(__name__)


def run(cfg) -> float:
    """Run (or resume) the search; return the pooled out-of-fold AUC."""
    url = storage_url(cfg.search, cfg.study)
    storage = open_storage(url, create_dirs=cfg.search.storage is None)  # fail before any work
    if cfg.tracking.enabled:
        check_tracking_uri(cfg.tracking.tracking_uri)
    dims = parse_space(cfg.search.space, search_defaults(cfg))
    if not dims:
        raise ConfigError(
            "search.space is empty: use +exp=search (conf/search/default.yaml) or "
            "give dimensions, e.g. 'search.space.model={type: categorical, "
            "choices: [logistic, svm]}'"
        )
    # the config alone (params file, search settings, space against the widths) is checked
    # before the run opens, so a config error leaves no MLflow run; the data checks follow in
    # load_design (her2study.preflight), inside the run, before any extraction
    raise_config_problems(cfg)
    check_design_config(cfg)  # site column, split by site, ComBat's covariates
    with open_run(cfg, "search", f"search {cfg.study}", optuna_storage=url) as tracker:
        design, cohort = load_design(cfg)
        out = output_dir(cfg)
        source = design.source
        note = source if cohort.synthetic else None
        log.info(f"Data: {source}; {len(design.y)} cases; Optuna storage {url}")
        tracker.set_tags(run_tags("search", cfg, cohort, optuna_storage=url))
        log_run_config(tracker, cfg, cohort, len(design.y))
        result = nested_search(cfg, design, storage, cfg.study, tracker, progress=_progress)
        est = result.estimate
        by_site = by_site_table(result, design)
        items = search_design_items(cfg, len(design.y))
        if est.get("held_out_sites"):
            items["Outer CV (the estimate)"] = (
                f"{est['estimate_kind']}: one outer fold per held-out site of "
                f"{cfg.data.site_column} ({', '.join(est['held_out_sites'])}); the search and "
                "the refit see the other sites only"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # tight_layout notes of the figures
            figures = make_figures(result, cfg, note)
        with result_set(out) as stage:  # moved into out at the end: no partial result set
            tables = write_tables(stage, result, source, cfg)
            if by_site is not None:
                tables += save_table(stage, "by_site", by_site, source, True)
            for name, fig in figures.items():
                fig.savefig(stage / f"{name}.png", dpi=120)
            report = search_report(
                stage,
                title=f"{cfg.study}: nested search",
                source=source,
                synthetic=cohort.synthetic,
                design=items,
                tables={
                    "nested estimate": {
                        k: v
                        for k, v in est.items()
                        if not isinstance(v, dict) and k not in NOT_SHOWN
                    },
                    "per ring width (nested; Nadeau-Bengio 95% CI)": result.regions,
                    "per ring width minus tumour only (paired)": result.region_differences,
                    "outer folds": result.folds,
                    "feature selection frequency": result.features.head(50),
                    **site_tables(by_site),
                },
                figures=figures,
                notes=result.warnings,
            )
        tables, report = final_paths(tables, stage, out), out / report.name
        metrics = {k: v for k, v in est.items() if isinstance(v, (int, float))}
        if result.final_inner_auc is not None:
            metrics["final_inner_auc"] = result.final_inner_auc
        metrics.update({f"time_{k}": v for k, v in result.timings.items()})
        if by_site is not None:  # the winners' AUC per site: <set>.<site>.auc
            won = by_site[(by_site["signature"] == "nested search") & by_site["auc"].notna()]
            won = won[won["site"].isin(set(design.sites))]
            metrics.update({f"{r.set}.{r.site}.auc": float(r.auc) for r in won.itertuples()})
        tracker.log_metrics(metrics)
        for path in tables:
            tracker.log_artifact(path, "tables")
        for name, fig in figures.items():
            tracker.log_figure(fig, f"figures/{name}.png")
        tracker.log_artifact(report, "report")
        if result.chosen is not None:
            tracker.set_tags({"chosen": result.chosen_candidate.label()})
        if tracker.run_id and result.chosen is not None:
            import optuna

            optuna.load_study(study_name=f"{cfg.study}/final", storage=storage).set_user_attr(
                "mlflow_run_id", tracker.run_id
            )
    print_summary(result, cfg, out)
    return float(est["pooled_auc"])


NOT_SHOWN = ("warnings", "region_estimates", "permutation_aucs")


def _progress(line: str) -> None:
    (log.warning if line.startswith("WARNING") else log.info)(line)


def by_site_table(result, design) -> pd.DataFrame | None:
    """``by_site.csv`` of the search (the paper task's per-site rows, :func:`site_rows`): per
    site the pooled outer-fold predictions of the winners (``nested search``) and of each
    region's best trial; by site (``split.method=leave_one_site_out`` / ``site``) each site's
    cases were predicted by the outer fold that held that site out (set ``held_out_site``),
    otherwise by stratified outer folds (set ``nested_oof``); ``kind`` is the estimate's kind.
    None without ``data.site_column``."""
    from her2study.results import POOLED, _site_frame, site_rows

    if design.sites is None or not len(result.oof):
        return None
    kind = str(result.estimate["estimate_kind"])
    held = result.folds.set_index(["repeat", "fold"])["held_out_site"]
    by_site = held.notna().any()
    set_name = "held_out_site" if by_site else "nested_oof"
    parts = [("nested search", result.oof)]
    if len(result.region_oof):
        parts += list(result.region_oof.groupby("region", sort=False))
    rows, tags = [], []
    for name, oof in parts:
        pooled = oof.groupby("case_id", sort=False).agg(
            label=("label", "first"),
            prob=("prob", "mean"),
            repeat=("repeat", "first"),
            fold=("fold", "first"),
        )
        ids = pooled.index
        fold_of = held.reindex(pd.MultiIndex.from_frame(pooled[["repeat", "fold"]]))
        sites = design.sites.loc[ids]
        for where in (sites, pd.Series(POOLED, index=ids)):
            for r in site_rows(str(name), set_name, pooled["label"], pooled["prob"], where, kind):
                rows.append(r)
                if not by_site:
                    tags.append("-")
                elif r["site"] == POOLED:
                    tags.append("each")
                else:  # the outer fold that held this site out
                    tags.append(str(fold_of.to_numpy()[(sites == r["site"]).to_numpy()][0]))
    table = _site_frame(rows)
    table.insert(0, "held_out", tags)
    return table


def site_tables(by_site: pd.DataFrame | None) -> dict:
    """The per-site table of the search report (AUC and calibration with CIs, as text)."""
    if by_site is None:
        return {}
    from her2study.report.transport import site_display

    return {"per site (AUC, calibration; kind: the estimate's)": site_display(by_site)}


def _pooled(result):
    pooled = result.oof.groupby("case_id").agg(label=("label", "first"), prob=("prob", "mean"))
    return pooled["label"].to_numpy(int), pooled["prob"].to_numpy(float)


def decision_table(result, cfg) -> pd.DataFrame:
    from her2study.evaluation import decision_curve

    y, p = _pooled(result)
    thresholds = np.round(np.arange(0.01, cfg.evaluation.dca_max_threshold + 1e-9, 0.01), 2)
    return decision_curve(y, {"nested out-of-fold": p}, thresholds=thresholds)


def write_tables(out, result, source: str, cfg) -> list:
    est = result.estimate
    paths = []

    def save(name: str, df: pd.DataFrame, md: bool = True) -> None:
        paths.extend(save_table(out, name, df, source, md))

    save("outer_folds", result.folds)
    save("oof_predictions", result.oof, md=False)
    save("feature_frequency", result.features, md=False)
    rings = pd.DataFrame(
        {
            "ring_width_mm": list(est["ring_width_counts"]),
            "n_outer_folds_won": list(est["ring_width_counts"].values()),
        }
    )
    save("ring_frequency", rings)
    if len(result.regions):
        save("region_estimates", result.regions[REGION_COLUMNS])  # exactly these columns
        save("region_outer_folds", result.region_folds, md=False)
        save("region_oof_predictions", result.region_oof, md=False)
    if len(result.region_differences):
        save("region_differences", result.region_differences)
    save("decision_curve", decision_table(result, cfg), md=False)
    (out / "nested_estimate.json").write_text(
        json.dumps({"data": source, **est}, indent=2, default=float) + "\n"
    )
    paths.append(out / "nested_estimate.json")
    if result.chosen is not None:
        chosen = {
            "chosen": result.chosen,
            "candidate": result.chosen_candidate.as_dict(),
            "final_inner_auc_optimistic": result.final_inner_auc,
            "performance_estimate": "the nested estimate (nested_estimate.json)",
        }
        (out / "chosen.yaml").write_text(yaml.safe_dump(chosen, sort_keys=False))
        paths.append(out / "chosen.yaml")
    return paths


def make_figures(result, cfg, note) -> dict:
    from matplotlib.figure import Figure

    from her2study.evaluation.figures import plot_calibration, plot_dca, plot_roc

    y, p = _pooled(result)
    name = "nested out-of-fold"
    figs = {
        "roc_nested_oof": plot_roc(
            {name: (y, p)}, title="ROC, pooled outer-fold predictions", note=note
        ),
        "calibration_nested_oof": plot_calibration(
            {name: (y, p)}, title="Calibration, pooled outer-fold predictions", note=note
        ),
    }
    dca = decision_table(result, cfg)
    figs["dca_nested_oof"] = plot_dca(
        dca, title="Decision curve, pooled outer-fold predictions", note=note
    )
    counts = result.estimate["ring_width_counts"]
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    ax.bar(list(counts), list(counts.values()), color="#1f77b4")
    ax.set_xlabel("ring width of the winning configuration (mm; 0 = tumour only)")
    ax.set_ylabel("outer folds won")
    ax.set_title("Which margin won? (nested search)", fontsize=10)
    if note:
        fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7, color="grey")
    fig.tight_layout()
    figs["ring_frequency"] = fig
    if len(result.regions):
        figs["region_estimates"] = region_figure(result.regions, note)
    return figs


def region_figure(regions: pd.DataFrame, note=None):
    """Per-width nested AUC with its Nadeau-Bengio interval (the honest answer to "which
    margin?", beside how often each width won)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(regions))
    m = regions["nested_auc"].to_numpy(float)
    lo = m - regions["ci_low"].to_numpy(float)
    hi = regions["ci_high"].to_numpy(float) - m
    ax.errorbar(x, m, yerr=np.vstack([lo, hi]), fmt="o", color="#1f77b4", capsize=4)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, [str(r).replace("intra+", "+") for r in regions["region"]], fontsize=8)
    ax.set_xlabel("region (tumour only = intra; +ring<w>mm = tumour + ring of w mm)")
    ax.set_ylabel("nested AUC (mean outer fold)")
    ax.set_title("Per-width nested AUC, 95% corrected t interval", fontsize=10)
    if note:
        fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7, color="grey")
    fig.tight_layout()
    return fig


def print_summary(result, cfg, out) -> None:
    e = result.estimate
    s = cfg.search
    outer = (
        f"{e['estimate_kind']}: held out {', '.join(e['held_out_sites'])}"
        if e.get("held_out_sites")
        else f"{s.outer_folds}-fold x {s.outer_repeats} outer"
    )
    log.info(
        f"\nNested estimate ({outer}; the search never saw the outer test folds):\n"
        f"  mean outer AUC {e['mean_outer_auc']:.3f} (95% CI {e['ci_low']:.3f}-"
        f"{e['ci_high']:.3f}, Nadeau-Bengio corrected t across {e['n_outer']} folds; naive t "
        f"{e['naive_t_ci_low']:.3f}-{e['naive_t_ci_high']:.3f})\n"
        f"  pooled out-of-fold AUC {e['pooled_auc']:.3f} (DeLong 95% CI "
        f"{e['pooled_auc_ci_low']:.3f}-{e['pooled_auc_ci_high']:.3f}, as if one model); "
        f"calibration slope "
        f"{e['pooled_cal_slope']:.2f}, intercept {e['pooled_cal_intercept']:.2f}, HL p "
        f"{e['pooled_hl_p']:.3f}\n"
        f"  ring widths that won: {e['ring_width_counts']}; models: {e['model_counts']}\n"
        f"  (winners' mean inner AUC {e['mean_inner_auc_of_winners']:.3f}: optimistic, "
        "chosen for being high)"
    )
    if len(result.regions):
        log.info(
            "Per ring width (nested AUC, 95% corrected t):\n"
            + "\n".join(
                f"  {r.region}: {r.nested_auc:.3f} ({r.ci_low:.3f}-{r.ci_high:.3f})"
                for r in result.regions.itertuples()
            )
        )
    if "permutation_p" in e:
        log.info(
            f"Permutation test ({e['permutations']} permuted runs): p = {e['permutation_p']:.3f}"
        )
    for w in result.warnings:
        log.warning(f"search warning: {w}")
    if result.chosen is not None:
        log.info(
            f"Final configuration (search on all cases): {result.chosen_candidate.label()}\n"
            f"  its own inner-CV AUC {result.final_inner_auc:.3f} is optimistic; its performance "
            f"estimate is the nested one above.\n"
            f"  export it: python -m her2study task=export study={cfg.study}"
        )
    log.info(f"outputs: {out}")
