"""The nested search: outer folds, an Optuna study per outer training fold, the estimate.

Per outer fold the study's winner is refitted on the outer training fold and scored once on the
outer test fold (the nested estimate); so is, for every ring width of the space, the best trial
of that width (the per-width estimates); with ``search.permutations`` the whole procedure is
rerun on permuted labels (the permutation test). Intervals: :mod:`her2study.evaluation.resampling`.
"""

from __future__ import annotations

import contextlib
import json
import time

import pandas as pd
from omegaconf import OmegaConf

from her2study.errors import ConfigError
from her2study.evaluation.resampling import (
    permutation_p,
)
from her2study.search.candidate import (
    Design,
    base_config,
    candidate_from_params,
    permuted_design,
    region_choice,
    search_defaults,
    space_regions,
)
from her2study.search.checks import (  # noqa: F401
    _permutation_trials,
    check_search_config,
    data_digest,
)
from her2study.search.estimates import (  # noqa: F401
    DIFFERENCE_COLUMNS,
    KINDS,
    REGION_COLUMNS,
    NestedResult,
    _by_width,
    _counts,
    _fold_sizes,
    region_differences,
    region_estimates,
    region_name,
    region_of_params,
    selected_features,
    summarise,
)
from her2study.search.fold_run import (
    _pruner,
    fold_processes,
    parallel_folds,
    run_final_study,
    run_outer_fold,
)
from her2study.search.outer import outer_design, outer_folds
from her2study.search.space import parse_space, space_digest
from her2study.search.storage import (
    best_params,
    n_complete,
    open_study,
    quiet_optuna,
    study_seed,
)


def _space_widths(dims, defaults) -> list[tuple]:
    """(name, outer edge mm) of every region choice of the space."""
    return [region_choice(*c) for c in space_regions(dims, defaults)]


def _outer_loop(
    cfg,
    design: Design,
    storage,
    study_name: str,
    dims,
    defaults: dict,
    attrs: dict,
    seed: int,
    n_trials: int,
    tracker=None,
    progress=print,
    per_width: bool = True,
    final_job: tuple | None = None,
) -> dict:
    """The outer repeated K-fold: one study per outer training fold, its winner (and, with
    ``per_width``, the best trial of each ring width) refitted and scored on the outer test
    fold (:func:`~her2study.search.fold_run.run_outer_fold`); the folds run in
    ``search.outer_n_jobs`` processes (:func:`~her2study.search.fold_run.fold_processes`), and with
    them, first, the final study's trials when ``final_job`` gives its arguments
    (:func:`~her2study.search.fold_run.run_final_study`; ``run["final"]``)."""
    s = cfg.search
    y = design.y
    splits = outer_folds(cfg, y, design.sites, seed)  # stratified, or by site
    rows, oof_rows, selections, region_rows, region_oof, warns = [], [], [], [], [], []
    cache_stats = {"hits": 0, "misses": 0, "fits": 0}

    def job(fold):
        r, k = fold.repeat, fold.fold
        name = f"{study_name}/outer{r}_{k}"
        args = (cfg, design, storage, name, (r, k), fold.train, fold.test, dims, defaults, attrs)
        return (*args, seed, n_trials, per_width, fold.site)

    def child(r, k):
        if tracker is None:
            return contextlib.nullcontext()
        return tracker.child(f"outer {r}.{k}", tags={"kind": "outer_fold", "repeat": r, "fold": k})

    n_proc = fold_processes(cfg, storage, len(splits) + (final_job is not None), tracker)
    final_res = None
    if n_proc > 1:
        jobs = [(run_outer_fold, job(fold)) for fold in splits]
        if final_job is not None:
            jobs.insert(0, (run_final_study, final_job))  # the largest study starts first
        results = parallel_folds(n_proc, jobs)
        if final_job is not None:
            final_res = next(results)
    else:
        results = None
    for fold in splits:
        r, k = fold.repeat, fold.fold
        with child(r, k):
            if results is None:  # in this process, trials logged to the fold's run if asked
                res = run_outer_fold(*job(fold), tracker if s.log_trials else None)
            else:
                res = next(results)
            row, cand, params = res["row"], res["cand"], res["params"]
            if tracker is not None:
                tracker.log_params(
                    {
                        "ring_width_mm": cand.ring_width_mm,
                        "model": cand.model,
                        **{f"param.{k2}": v for k2, v in params.items()},
                    }
                )
                tracker.log_metrics(
                    {
                        "inner_auc": row["inner_auc"],
                        "outer_auc": row["outer_auc"],
                        "n_selected": row["n_selected"],
                        "n_trials": row["n_trials"],
                    }
                )
        warns += res["warnings"]
        rows.append(row)
        oof_rows += res["oof"]
        selections.append(res["selected"])
        region_rows += res["region_rows"]
        region_oof += res["region_oof"]
        cache_stats["hits"] += row["cache_hits"]
        cache_stats["misses"] += row["cache_misses"]
        cache_stats["fits"] += row["fits"]
        progress(
            f"outer {r}.{k}: inner AUC {row['inner_auc']:.3f} -> outer AUC {row['outer_auc']:.3f}"
            f"  [{cand.label()}]  ({row['seconds']:.0f} s, {row['n_trials']} trials)"
        )
    if per_width:
        seen = pd.DataFrame(region_rows, columns=["region", "width_mm"])
        for wname, _ in _space_widths(dims, defaults):
            n_w = int((seen["region"] == wname).sum())
            if n_w < len(rows) and wname != "all":
                warns.append(
                    f"region choice ({wname}) has no trial in {len(rows) - n_w} "
                    f"of {len(rows)} outer folds' studies: its per-width estimate uses "
                    f"{n_w} fold(s); raise search.n_trials"
                )
    return {
        "folds": pd.DataFrame(rows),
        "oof": pd.DataFrame(oof_rows),
        "selections": selections,
        "region_folds": pd.DataFrame(region_rows),
        "region_oof": pd.DataFrame(region_oof),
        "cache": cache_stats,
        "warnings": warns,
        "final": final_res,
    }


def _feature_frequency(selections: list) -> pd.DataFrame:
    counts: dict[str, int] = {}
    for sel in selections:
        for f in sel:
            counts[f] = counts.get(f, 0) + 1
    features = pd.DataFrame({"feature": list(counts), "n_selected": list(counts.values())})
    if not len(features):
        return pd.DataFrame(columns=["feature", "n_selected", "frequency"])
    features["frequency"] = features["n_selected"] / len(selections)
    features = features.sort_values(["n_selected", "feature"], ascending=[False, True])
    return features.reset_index(drop=True)


def nested_search(
    cfg,
    design: Design,
    storage,
    study_name: str,
    tracker=None,
    final: bool | None = None,
    progress=print,
) -> NestedResult:
    """Run (or resume) the nested search, the per-width estimates, the permutation test
    (``search.permutations``) and, when ``final``, the search on all cases. Optuna's per-trial
    log lines are off while it runs (:func:`~her2study.search.storage.quiet_optuna`)."""
    with quiet_optuna():
        return _nested_search(cfg, design, storage, study_name, tracker, final, progress)


def _nested_search(cfg, design, storage, study_name, tracker, final, progress) -> NestedResult:
    s = cfg.search
    warns = check_search_config(cfg)
    for w in warns:
        progress(f"WARNING: {w}")
    seed = int(s.seed if s.seed is not None else cfg.seed)
    defaults = search_defaults(cfg)
    dims = parse_space(s.space, defaults)
    design.check_space(dims, defaults)
    if s.outer_folds < 2 or s.inner_folds < 2 or s.outer_repeats < 1 or s.n_trials < 1:
        raise ConfigError(
            "search.outer_folds and search.inner_folds must be >= 2, "
            "search.outer_repeats and search.n_trials >= 1"
        )
    attrs = {
        "space": space_digest(dims),
        "cohort": design.digest(),
        "data": data_digest(design, cfg),
        "design": outer_design(cfg, design.sites, seed),
        "selection": json.dumps(defaults, sort_keys=True, default=str),
    }
    t0 = time.monotonic()
    do_final = s.final if final is None else final
    final_name = f"{study_name}/final"
    final_args = (cfg, design, storage, final_name, dims, defaults, attrs, seed)
    n_studies = s.outer_folds * s.outer_repeats + 1
    # the final study's trials run beside the outer folds when these run in worker processes
    final_job = (
        final_args if do_final and fold_processes(cfg, storage, n_studies, tracker) > 1 else None
    )
    run = _outer_loop(
        cfg,
        design,
        storage,
        study_name,
        dims,
        defaults,
        attrs,
        seed,
        int(s.n_trials),
        tracker,
        progress,
        final_job=final_job,
    )
    warns += [w for w in run["warnings"] if w not in warns]
    folds, oof = run["folds"], run["oof"]
    estimate = summarise(oof, folds, cfg)
    regions = region_estimates(run["region_folds"], folds)
    estimate["region_estimates"] = json.loads(regions.to_json(orient="records"))
    diffs = region_differences(run["region_folds"], folds)
    result = NestedResult(
        folds=folds,
        oof=oof,
        features=_feature_frequency(run["selections"]),
        estimate=estimate,
        cache=run["cache"],
        regions=regions,
        region_differences=diffs,
        region_folds=run["region_folds"],
        region_oof=run["region_oof"],
    )
    result.timings["nested_s"] = round(time.monotonic() - t0, 2)

    n_perm = int(OmegaConf.select(cfg, "search.permutations", default=0) or 0)
    if n_perm:
        t_perm = time.monotonic()
        trials = _permutation_trials(cfg)
        observed = float(estimate["mean_outer_auc"])
        aucs = []
        for k in range(n_perm):
            dk = permuted_design(design, seed, k)
            attrs_k = {**attrs, "cohort": dk.digest(), "data": data_digest(dk, cfg)}
            attrs_k["permutation"] = f"labels permuted, seed {seed}, k {k}"
            run_k = _outer_loop(
                cfg,
                dk,
                storage,
                f"{study_name}/perm{k}",
                dims,
                defaults,
                attrs_k,
                seed,
                trials,
                None,
                lambda line: None,
                per_width=False,
            )
            warns += [w for w in run_k["warnings"] if w not in warns]
            aucs.append(float(run_k["folds"]["outer_auc"].mean()))
            progress(
                f"permutation {k + 1}/{n_perm}: mean outer AUC {aucs[-1]:.3f} "
                f"(observed {observed:.3f})"
            )
        result.permutation_aucs = aucs
        estimate.update(
            {
                "permutations": n_perm,
                "permutation_trials": trials,
                "permutation_statistic": "mean_outer_auc",
                "permutation_aucs": aucs,
                "permutation_p": permutation_p(observed, aucs),
            }
        )
        if trials != int(s.n_trials):
            warns.append(
                f"search.permutation_trials={trials} differs from search.n_trials={s.n_trials}: "
                "the permuted runs are a cheaper procedure than the observed one, so the "
                "permutation p-value is approximate"
            )
        result.timings["permutations_s"] = round(time.monotonic() - t_perm, 2)
    estimate["warnings"] = list(warns)
    estimate["kinds"] = dict(KINDS)
    result.warnings = list(warns)

    if do_final:
        t1 = time.monotonic()
        fin = run["final"]
        if fin is None:  # not run beside the outer folds: here, trials logged if asked
            fin = run_final_study(*final_args, tracker if s.log_trials else None)
        name = final_name
        sampler_seed = study_seed(seed, name, attrs["data"])
        study = open_study(
            storage, name, s.sampler, sampler_seed, s.n_startup_trials, attrs, _pruner(s)
        )
        if n_complete(study) == 0:
            raise ConfigError(f"no trial of study '{name}' completed")
        if fin["warning"]:
            warns.append(fin["warning"])
            estimate["warnings"] = list(warns)
            result.warnings = list(warns)
        result.chosen = best_params(study, dims, defaults)
        result.chosen_candidate = candidate_from_params(result.chosen, cfg)
        result.final_inner_auc = float(study.best_value)
        study.set_user_attr("nested_estimate", json.loads(json.dumps(estimate, default=float)))
        study.set_user_attr("chosen", json.loads(json.dumps(result.chosen, default=str)))
        study.set_user_attr("seed", seed)
        study.set_user_attr("inner_folds", int(s.inner_folds))
        study.set_user_attr("base", json.loads(json.dumps(base_config(cfg), default=str)))
        study.set_user_attr("chosen_data", design.digest(design.columns(result.chosen_candidate)))
        result.timings["final_s"] = round(
            time.monotonic() - t1 + (fin["seconds"] if run["final"] is not None else 0.0), 2
        )
        progress(
            f"final search on all {len(design.X.index)} cases: inner AUC "
            f"{result.final_inner_auc:.3f}  [{result.chosen_candidate.label()}]"
        )
    return result


def load_final(storage, study_name: str) -> tuple[dict, dict, dict]:
    """(chosen assignment, nested estimate, all user attrs) of ``<study>/final``."""
    import optuna

    name = f"{study_name}/final"
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(
            f"no Optuna study '{name}' in the storage: run the search first "
            f"(python -m her2study +exp=search study={study_name}), or point search.storage at "
            "the storage it used"
        ) from None
    attrs = study.user_attrs
    if "chosen" not in attrs or "nested_estimate" not in attrs:
        raise ConfigError(
            f"study '{name}' has no finished search (no chosen configuration): "
            f"rerun python -m her2study +exp=search study={study_name} to finish it"
        )
    return attrs["chosen"], attrs["nested_estimate"], attrs
