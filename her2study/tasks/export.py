"""task=export: the searched configuration as a model, and as a Hydra experiment file.

``python -m her2study task=export study=NAME`` (with the data options of the search) reads the
configuration chosen by the search on all cases (Optuna study ``NAME/final``) and

1. fits it on the whole cohort (seed ``search.seed`` or ``seed``), computes its K-fold
   out-of-fold predictions (``search.inner_folds``) and the Youden threshold on them;
2. saves the fitted pipeline with its model card (feature columns, threshold, extraction
   settings, the nested estimate) as a her2study MLflow pyfunc model in ``<run folder>/model/``
   (:func:`her2study.model_artifact.save_model`) and logs the same model to the MLflow run
   (:func:`her2study.model_artifact.log_model`; ``tracking.log_model``). Through pyfunc or
   ``mlflow models serve`` it returns the probability and the class at the exported threshold;
3. writes ``exp/best_NAME.yaml`` under ``<search.output_root>/configs`` (or
   ``search.export_dir``; never into the installed package): a normal experiment file setting the
   ring width, selection thresholds, model and parameters, with ``override /task: export`` and
   ``search.export_source: config``. ``conf/config.yaml`` puts ``outputs/configs`` on Hydra's
   search path, so ``+exp=best_NAME`` finds it from the folder the search ran in.

``python -m her2study +exp=best_NAME`` re-runs step 1-2 from that file: the same configuration,
seed and data give the same model and the same metrics (``metrics.json``). The performance
estimate of the configuration is the nested one quoted in the file, not these metrics: the
cross-validated AUC here is of a configuration chosen on the same cases (optimistic) and the
apparent AUC is on the training cases.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from her2study import __version__
from her2study.errors import ConfigError
from her2study.model_artifact import log_model, portable_pipeline, save_model
from her2study.search import (
    Candidate,
    _plain,
    build_pipeline,
    candidate_from_config,
    candidate_from_params,
    load_final,
    open_storage,
    selected_features,
    storage_url,
)
from her2study.tasks.common import (
    extraction_settings,
    load_design,
    open_run,
    output_dir,
    result_set,
    run_tags,
    write_atomic,
)
from her2study.tracking import check_tracking_uri

log = logging.getLogger(__name__)


def _packaged_config(group: str, name: str) -> bool:
    """Whether the package ships ``conf/<group>/<name>.yaml`` (read only; editable or installed)."""
    from importlib import resources

    return resources.files("her2study.conf").joinpath(group, f"{name}.yaml").is_file()


def export_dir(cfg) -> Path:
    """Where ``best_<study>.yaml`` goes: ``search.export_dir``, else ``<output_root>/configs/exp``,
    which ``conf/config.yaml`` puts on Hydra's search path (never the installed package)."""
    if cfg.search.export_dir:
        return Path(cfg.search.export_dir)
    return Path(cfg.search.output_root) / "configs" / "exp"


def _with_regions(cfg, cand: Candidate):
    """The run's config with the regions this candidate needs (features come from the cache)."""
    if cand.region_kind != "tumour+ring":
        raise ConfigError(
            f"task=export supports tumour (+ ring) candidates; this one is {cand.region()[0]} "
            f"(region_kind {cand.region_kind}); ring-only and band candidates cannot be "
            "exported yet: search with search.space.region_kind=tumour+ring to export a model"
        )
    if cand.ring_width_mm is None:
        return cfg
    widths = [] if cand.ring_width_mm == 0 else [float(cand.ring_width_mm)]
    return OmegaConf.merge(cfg, {"region": {"ring_widths_mm": widths, "include_intra": True}})


def fit_candidate(cand: Candidate, design, seed: int, folds: int) -> tuple[object, dict, list]:
    """Fit on all cases; K-fold out-of-fold predictions -> CV AUC and Youden threshold."""
    from her2study.evaluation import choose_threshold
    from her2study.evaluation.evaluate import evaluate, prefixed

    cols = design.columns(cand)
    X, y = design.X[cols], design.y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = build_pipeline(cand, seed, design).fit(X, y)  # design: ComBat's side inputs
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        oof = cross_val_predict(
            build_pipeline(cand, seed, design), X, y, cv=cv, method="predict_proba"
        )[:, 1]
    yy = y.to_numpy()
    thr = choose_threshold(yy, oof, method="youden")
    sel = selected_features(pipe)
    metrics = {
        "n_cases": int(len(yy)),
        "n_columns": len(cols),
        "n_selected": len(sel),
        **prefixed(
            "cv_",
            evaluate(yy, oof, kind="out_of_fold", threshold=thr),
            drop=("kind", "n", "threshold"),
        ),
        "apparent_auc": float(roc_auc_score(yy, pipe.predict_proba(X)[:, 1])),
        "threshold": float(thr),
    }
    return pipe, metrics, sel


def model_card(cfg, cand, design, cohort, metrics, estimate, origin: dict) -> dict:
    """The card of an exported model; ``cfg`` has the candidate's regions (``_with_regions``)."""
    cols = design.columns(cand)
    return {
        "her2study_version": __version__,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "study": cfg.study,
        "origin": origin,
        "candidate": cand.as_dict(),
        "columns": cols,
        "clinical_columns": list(design.clinical) if cand.use_clinical else [],
        "threshold": metrics["threshold"],
        "threshold_rule": f"Youden on {cfg.search.inner_folds}-fold out-of-fold predictions "
        "of all training cases",
        "metrics": metrics,
        "estimate_kind": _estimate_kind(estimate, origin),
        "nested_estimate": estimate,
        "positive_class": cfg.data.positive_class,
        "negative_class": cfg.data.negative_class,
        "data": {
            "synthetic": bool(cohort.synthetic),
            "source": design.source,
            "n_cases": int(len(design.y)),
        },
        "extraction": extraction_settings(cfg, cols, design.clinical),
    }


def _estimate_kind(estimate: dict, origin: dict) -> str:
    """What the card's performance estimate is (the card's ``metrics`` are not one)."""
    if not estimate or "pooled_auc" not in estimate:
        return "none (cv_auc and apparent_auc in metrics are not performance estimates)"
    where = "the search" if origin.get("kind") == "study" else "the experiment file"
    return (
        f"nested cross-validation ({estimate.get('outer_folds')}-fold x "
        f"{estimate.get('outer_repeats')} outer), from {where}"
    )


def _fmt(e: dict, key: str) -> str:
    return (
        f"{e[key]:.3f} (95% CI {e[key + '_ci_low']:.3f}-{e[key + '_ci_high']:.3f})"
        if key in e
        else "n/a"
    )


def exp_yaml(cfg, cand: Candidate, estimate: dict, origin: dict, final_auc, source: str) -> str:
    """The text of conf/exp/best_<study>.yaml."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    seed = int(cfg.search.seed if cfg.search.seed is not None else cfg.seed)
    e = estimate
    header = [
        "# @package _global_",
        f"# Exported by `python -m her2study task=export study={cfg.study}` on {now}",
        f"# from Optuna study '{origin.get('study')}' ({origin.get('storage')}).",
        f"# Data: {source}, {e.get('n_cases')} cases.",
        f"# Nested cross-validated estimate ({e.get('outer_folds')}-fold x "
        f"{e.get('outer_repeats')} outer; the search never saw the outer test folds):",
        f"#   mean outer AUC {_fmt(e, 'mean_outer_auc')};",
        f"#   pooled out-of-fold AUC {_fmt(e, 'pooled_auc')} (DeLong).",
        "# THIS is the performance estimate of the configuration below. Its own inner-CV AUC in "
        "the final",
        f"# search on all cases ({final_auc:.3f}) is optimistic: it was chosen for being high."
        if final_auc is not None
        else "# (no final inner-CV AUC recorded)",
        f"# Re-run: python -m her2study +exp=best_{cfg.study}  -> refits this configuration on "
        f"all cases (seed {seed}),",
        "# same model, same metrics; apply it: task=predict predict.model_uri=<run folder>/model",
    ]
    ext = cfg.extractor.name
    defaults: list = [{"override /task": "export"}, {"override /model": str(cand.model)}]
    if ext and _packaged_config("extractor", ext):
        defaults.append({"override /extractor": ext})
    if cand.ring_width_mm is None:  # the ring width was not searched: every extracted region
        widths = [float(w) for w in cfg.region.ring_widths_mm]
    else:
        widths = [float(cand.ring_width_mm)] if cand.ring_width_mm else []
    data = _plain(cfg.data)
    keep = [
        "source",
        "case_column",
        "label_column",
        "positive_class",
        "negative_class",
        "clinical_columns",
    ]
    if data["source"] == "synthetic":
        keep.append("synthetic")
    elif data["source"] == "manifest":
        keep += ["manifest", "spacing_mm", "mask_label"]
    else:
        keep.append("features_table")
    body: dict = {"defaults": defaults}
    body.update(
        {
            "study": cfg.study,
            "seed": int(cfg.seed),
            "data": {k: data[k] for k in keep if k in data},
            "region": {
                "include_intra": True,
                "ring_widths_mm": widths,
                "bands_mm": [],
                "fov": str(cfg.region.fov),
            },
            "selection": dict(cand.selection),
            "model": {"params": dict(cand.model_params)},
            "search": {
                "seed": seed,
                "inner_folds": int(cfg.search.inner_folds),
                "use_clinical": bool(cand.use_clinical),
                "export_source": "config",
                "estimate": {k: v for k, v in estimate.items() if not isinstance(v, (dict, list))},
            },
        }
    )
    if ext and len(defaults) == 2:
        body["extractor"] = {
            "name": ext,
            "params_file": cfg.extractor.params_file,
            "params": _plain(cfg.extractor.params),
        }
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=100)
    return "\n".join(header) + "\n" + text


def run(cfg) -> float:
    """Fit the chosen configuration on all cases, save it, and (from a study) export it."""

    seed = int(cfg.search.seed if cfg.search.seed is not None else cfg.seed)
    folds = int(cfg.search.inner_folds)
    if cfg.tracking.enabled:
        check_tracking_uri(cfg.tracking.tracking_uri)
    if cfg.search.export_source == "study":
        url = storage_url(cfg.search, cfg.study)
        storage = open_storage(url)
        chosen, estimate, attrs = load_final(storage, cfg.study)
        seed = int(attrs.get("seed", seed))
        folds = int(attrs.get("inner_folds", folds))
        cand = candidate_from_params(chosen, cfg, attrs.get("base"))  # as searched
        cfg = OmegaConf.merge(cfg, {"search": {"seed": seed, "inner_folds": folds}})
        origin = {
            "kind": "study",
            "study": f"{cfg.study}/final",
            "storage": url,
            "chosen": chosen,
            "final_inner_auc": _final_auc(storage, cfg.study),
            "cohort": attrs.get("cohort"),
            "mlflow_search_run": attrs.get("mlflow_run_id"),
        }
    elif cfg.search.export_source == "config":
        cand = candidate_from_config(cfg)
        estimate = dict(_plain(cfg.search.estimate) or {})
        origin = {"kind": "config"}
    else:
        raise ConfigError(f"search.export_source={cfg.search.export_source!r}: use study or config")
    run_cfg = _with_regions(cfg, cand)
    exp_path = _exp_path(cfg) if origin["kind"] == "study" else None  # checked before any work
    # the run opens before the data is loaded and the model fitted (Duration = the export's)
    with open_run(cfg, "export", f"export {cfg.study}", export_source=origin["kind"]) as tracker:
        design, cohort = load_design(run_cfg)
        if origin.get("chosen_data") and origin["chosen_data"] != design.digest(
            design.columns(cand)
        ):
            raise ConfigError(
                f"the search '{cfg.study}' ran on other data (case ids, labels or feature values "
                "differ): export with the same data, extractor and region options (data=..., "
                "data.manifest=..., data.synthetic.*, extractor=...) as the search"
            )
        pipe, metrics, sel = fit_candidate(cand, design, seed, folds)
        out = output_dir(cfg)
        card = model_card(run_cfg, cand, design, cohort, metrics, estimate, origin)
        # what a model file holds: no case-id lookups, no perturbed features (model_artifact)
        pipe, inputs = portable_pipeline(pipe, card["columns"], cfg.data.get("site_column"))
        card.update(
            inputs, extraction=extraction_settings(run_cfg, inputs["columns"], design.clinical)
        )
        model_uri = None
        tracker.set_tags(run_tags("export", cfg, cohort, export_source=origin["kind"]))
        tracker.log_params(
            {
                "candidate": cand.label(),
                "ring_width_mm": cand.ring_width_mm,
                "model": cand.model,
                "use_clinical": cand.use_clinical,
                "data.synthetic": cohort.synthetic,
                "seed": seed,
                **{f"selection.{k}": v for k, v in cand.selection.items()},
                **{f"model.params.{k}": v for k, v in cand.model_params.items()},
            }
        )
        tracker.log_metrics(
            {
                **metrics,
                **{f"nested.{k}": v for k, v in estimate.items() if isinstance(v, (int, float))},
            }
        )
        tracker.log_dict(card, "model_card.json")
        if cfg.tracking.log_model:
            with tracker.mlflow_operation():  # a SIGTERM waits until it is written
                model_uri = log_model(tracker, "model", pipe, card, metrics["threshold"])
        if model_uri:
            card["mlflow_model_uri"] = model_uri
        with result_set(out) as stage:  # moved into out at the end: no partial result set
            save_model(stage / "model", pipe, card, metrics["threshold"])
            (stage / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            pd.DataFrame({"feature": sel}).to_csv(stage / "selected_features.csv", index=False)
            if exp_path is not None:  # last: a failure before it leaves no experiment file
                write_atomic(
                    exp_path,
                    exp_yaml(cfg, cand, estimate, origin, origin["final_inner_auc"], design.source),
                )
        folder = out / "model"
        if exp_path is not None:
            tracker.log_artifact(exp_path, "config")
    print_report(cfg, cand, metrics, estimate, design, folder, exp_path, model_uri)
    return metrics["cv_auc"]


def _exp_path(cfg) -> Path:
    """``<export dir>/best_<study>.yaml``, its folder made (the default one) or checked."""
    target = export_dir(cfg)
    if cfg.search.export_dir is None:
        target.mkdir(parents=True, exist_ok=True)
    if not target.is_dir():
        raise ConfigError(f"search.export_dir {str(target)!r} is not a folder")
    return target / f"best_{cfg.study}.yaml"


def _final_auc(storage, study_name: str):
    import optuna

    try:
        return float(
            optuna.load_study(study_name=f"{study_name}/final", storage=storage).best_value
        )
    except (KeyError, ValueError):
        return None


def print_report(cfg, cand, metrics, estimate, design, folder, exp_path, model_uri) -> None:
    e = estimate
    log.info(f"\nData: {design.source}; {metrics['n_cases']} cases")
    log.info(f"Configuration: {cand.label()}")
    log.info(
        f"Fitted on all cases: {metrics['n_selected']} features selected of "
        f"{metrics['n_columns']}; threshold {metrics['threshold']:.4f} (Youden on "
        f"{cfg.search.inner_folds}-fold out-of-fold predictions)"
    )
    log.info(
        f"  cross-validated AUC of this configuration {metrics['cv_auc']:.3f} and apparent AUC "
        f"{metrics['apparent_auc']:.3f}: NOT performance estimates (chosen on these cases)"
    )
    if "pooled_auc" in e:
        log.info(
            f"Performance estimate (nested CV): pooled out-of-fold AUC {_fmt(e, 'pooled_auc')}; "
            f"mean outer AUC {_fmt(e, 'mean_outer_auc')}"
        )
    log.info(
        f"model: {folder} (MLflow pyfunc model; card in artifacts/card.json)"
        + (f"; MLflow {model_uri}" if model_uri else "")
    )
    if exp_path is not None:
        log.info(f"experiment file: {exp_path}  (re-run: python -m her2study +exp={exp_path.stem})")
    log.info(
        f"apply it: python -m her2study task=predict predict.model_uri={folder} data=manifest "
        "data.manifest=<new cases.csv>"
    )
