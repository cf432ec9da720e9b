"""One outer fold of the nested search, in this process or in a worker process (the folds
themselves, stratified or by site: :mod:`her2study.search.outer`).

Per outer fold: an Optuna study on the outer training fold (inner CV), its winner refitted on the
training fold and scored once on the outer test fold, and (``per_width``) the best trial of every
region choice likewise. Folds do not share state (each study's sampler is seeded from its name and
the data), so folds run as separate processes (``search.outer_n_jobs``) give the results of one
process (tested); the parent logs each fold to MLflow as it arrives.
"""

from __future__ import annotations

import json
import os
import time
import warnings

from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from her2study.errors import ConfigError
from her2study.search.candidate import Candidate, Design, build_pipeline, candidate_from_params
from her2study.search.estimates import region_of_params, selected_features
from her2study.search.memo import InnerCV
from her2study.search.space import resolve
from her2study.search.storage import (
    FIT_ERRORS,
    best_params,
    counted_states,
    make_objective,
    n_complete,
    open_study,
    quiet_optuna,
    run_study,
    study_seed,
)


def _fit_predict(cand: Candidate, design: Design, tr, te, seed: int) -> tuple:
    cols = design.columns(cand)
    y = design.y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = build_pipeline(cand, seed, design).fit(design.X.iloc[tr][cols], y.iloc[tr])
        prob = pipe.predict_proba(design.X.iloc[te][cols])[:, 1]
    return pipe, prob


def _best_per_width(study, dims, defaults) -> dict:
    """Per region choice ((name, outer edge mm), :func:`region_of_params`; a ring width without a
    region_kind dimension): (best COMPLETE trial of that region by inner AUC, its assignment,
    the number of COMPLETE trials of that region). Ties: the earliest trial, as Optuna's
    best_trial."""
    from optuna.trial import TrialState

    best: dict = {}
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in sorted(trials, key=lambda t: t.number):
        params = resolve(dims, t.params, defaults)
        key = region_of_params(params, defaults)
        if key not in best:
            best[key] = [t, params, 0]
        elif t.value > best[key][0].value:
            best[key][:2] = [t, params]
        best[key][2] += 1
    return best


def _pruner(s) -> str:
    return str(OmegaConf.select(s, "pruner", default="none") or "none")


def _shortfall(name: str, done: int, n_trials: int, timeout_s, t_start: float) -> str:
    timed_out = timeout_s is not None and time.monotonic() - t_start >= float(timeout_s)
    why = (
        f"search.timeout_s={timeout_s:g} cut it"
        if timed_out
        else "the other trials failed to fit (see the log)"
    )
    return f"study '{name}' stopped at {done} of {n_trials} COMPLETE trials: {why}"


def run_outer_fold(
    cfg,
    design: Design,
    storage,
    name: str,
    fold: tuple[int, int],
    tr,
    te,
    dims,
    defaults: dict,
    attrs: dict,
    seed: int,
    n_trials: int,
    per_width: bool = True,
    site: str | None = None,
    trial_tracker=None,
) -> dict:
    """The study of one outer fold ``(repeat, fold)`` and its scores on the outer test fold:
    ``row`` (a line of folds.csv), ``oof``, ``selected``, ``region_rows``, ``region_oof``,
    ``warnings``, ``cand``, ``params``."""
    s = cfg.search
    r, k = fold
    y = design.y
    idx = design.X.index
    t_fold = time.monotonic()
    warns: list[str] = []
    sampler_seed = study_seed(seed, name, attrs["data"])
    study = open_study(
        storage, name, s.sampler, sampler_seed, s.n_startup_trials, attrs, _pruner(s)
    )
    inner = InnerCV(design, idx[tr], s.inner_folds, seed, reuse=s.reuse, cache_mb=s.cache_mb)
    objective = make_objective(inner, dims, defaults, cfg, seed, trial_tracker, f"outer {r}.{k} ")
    t_study = time.monotonic()
    done = run_study(study, objective, n_trials, s.timeout_s, s.n_jobs, counted_states(_pruner(s)))
    if n_complete(study) == 0:
        raise ConfigError(
            f"no trial of study '{name}' completed: every configuration "
            "failed to fit; see the log, or widen search.space"
        )
    if done < n_trials:
        warns.append(_shortfall(name, done, n_trials, s.timeout_s, t_study))
    params = best_params(study, dims, defaults)
    cand = candidate_from_params(params, cfg)
    pipe, prob = _fit_predict(cand, design, tr, te, seed)
    sel = selected_features(pipe)
    yte = y.iloc[te].to_numpy()
    outer_auc = float(roc_auc_score(yte, prob))
    row = {
        "repeat": r,
        "fold": k,
        "held_out_site": site,
        "study": name,
        "n_train": len(tr),
        "n_test": len(te),
        "n_trials": done,
        "inner_auc": float(study.best_value),
        "outer_auc": outer_auc,
        "ring_width_mm": cand.ring_width_mm,
        "region": cand.region()[0],
        "use_clinical": cand.use_clinical,
        "model": cand.model,
        "n_selected": len(sel),
        "params": json.dumps(params, sort_keys=True, default=str),
        "seconds": 0.0,
        "cache_hits": inner.hits,
        "cache_misses": inner.misses,
        "fits": inner.fits,
    }
    region_rows, region_oof = [], []
    if per_width:
        for (wname, w), (trial, wparams, n_w) in _best_per_width(study, dims, defaults).items():
            if wparams == params:
                wprob = prob  # the fold's winner: already refitted
            else:
                try:
                    _, wprob = _fit_predict(
                        candidate_from_params(wparams, cfg), design, tr, te, seed
                    )
                except FIT_ERRORS as exc:
                    warns.append(
                        f"outer {r}.{k}: the best {wname} trial failed to "
                        f"refit on the outer training fold ({exc}); that region has no "
                        "estimate from this fold"
                    )
                    continue
            region_rows.append(
                {
                    "repeat": r,
                    "fold": k,
                    "region": wname,
                    "width_mm": w,
                    "trial": trial.number,
                    "n_trials_of_width": n_w,
                    "inner_auc": float(trial.value),
                    "outer_auc": float(roc_auc_score(yte, wprob)),
                }
            )
            for cid, lab, pv in zip(idx[te], yte, wprob, strict=True):
                region_oof.append(
                    {
                        "case_id": cid,
                        "repeat": r,
                        "fold": k,
                        "region": wname,
                        "width_mm": w,
                        "label": int(lab),
                        "prob": float(pv),
                    }
                )
    oof = [
        {"case_id": cid, "repeat": r, "fold": k, "label": int(lab), "prob": float(pv)}
        for cid, lab, pv in zip(idx[te], yte, prob, strict=True)
    ]
    row["seconds"] = round(time.monotonic() - t_fold, 2)
    return {
        "row": row,
        "oof": oof,
        "selected": sel,
        "region_rows": region_rows,
        "region_oof": region_oof,
        "warnings": warns,
        "cand": cand,
        "params": params,
    }


def run_final_study(
    cfg,
    design: Design,
    storage,
    name: str,
    dims,
    defaults: dict,
    attrs: dict,
    seed: int,
    trial_tracker=None,
) -> dict:
    """The trials of the search on all cases (``<study>/final``): the study is read back from the
    storage by the caller. Returns ``done`` (counted trials), ``warning`` (a shortfall or None),
    ``seconds``."""
    s = cfg.search
    t0 = time.monotonic()
    pruner = _pruner(s)
    sampler_seed = study_seed(seed, name, attrs["data"])
    study = open_study(storage, name, s.sampler, sampler_seed, s.n_startup_trials, attrs, pruner)
    inner = InnerCV(design, design.X.index, s.inner_folds, seed, reuse=s.reuse, cache_mb=s.cache_mb)
    objective = make_objective(inner, dims, defaults, cfg, seed, trial_tracker, "final ")
    t_study = time.monotonic()
    done = run_study(study, objective, s.n_trials, s.timeout_s, s.n_jobs, counted_states(pruner))
    warning = None
    if done < s.n_trials:
        warning = _shortfall(name, done, int(s.n_trials), s.timeout_s, t_study)
    return {"done": done, "warning": warning, "seconds": round(time.monotonic() - t0, 2)}


def _in_worker(fn, *args) -> dict:
    """``fn(*args)`` in a worker process: Optuna's per-trial lines off, as in the parent."""
    with quiet_optuna(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def fold_processes(cfg, storage, n_folds: int, tracker=None) -> int:
    """How many processes run the outer folds: ``search.outer_n_jobs`` (null =
    ``execution.n_jobs``; -1 = all cores), at most one per fold; 1 when the studies cannot be
    shared between processes (in-memory storage) or trials are logged to MLflow one by one
    (``search.log_trials``: the run lives in this process)."""
    import optuna

    n_jobs = OmegaConf.select(cfg, "search.outer_n_jobs", default=1)
    if n_jobs is None:
        n_jobs = OmegaConf.select(cfg, "execution.n_jobs", default=1)
    n_jobs = int(n_jobs or 1)
    if n_jobs < 0:
        n_jobs = max((os.cpu_count() or 1) + 1 + n_jobs, 1)
    if isinstance(storage, optuna.storages.InMemoryStorage):
        return 1
    if tracker is not None and getattr(tracker, "enabled", True) and cfg.search.log_trials:
        return 1
    return max(1, min(n_jobs, n_folds))


def parallel_folds(n_jobs: int, jobs: list[tuple]):
    """``fn(*args)`` of every ``(fn, args)`` job in ``n_jobs`` worker processes, in job order, as
    they finish (a generator)."""
    from joblib import Parallel, delayed

    yield from Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(_in_worker)(fn, *args) for fn, args in jobs
    )
