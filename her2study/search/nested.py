"""The nested search: outer folds, an Optuna study per outer training fold, the estimate."""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold

from her2study.errors import ConfigError
from her2study.search.candidate import (
    Candidate,
    Design,
    base_config,
    build_pipeline,
    candidate_from_params,
    search_defaults,
)
from her2study.search.memo import InnerCV
from her2study.search.space import parse_space, space_digest
from her2study.search.storage import (
    best_params,
    make_objective,
    open_study,
    run_study,
)


@dataclass
class NestedResult:
    """Everything the nested search produced."""

    folds: pd.DataFrame  # one row per outer fold
    oof: pd.DataFrame  # case_id, repeat, fold, label, prob
    features: pd.DataFrame  # feature, n_selected, frequency
    estimate: dict  # the nested estimate (numbers)
    chosen: dict | None = None  # final search: full assignment
    chosen_candidate: Candidate | None = None
    final_inner_auc: float | None = None
    timings: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


def _mean_ci(values, alpha: float = 0.05) -> tuple[float, float, float, float]:
    from scipy import stats

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan"), float("nan")
    sd = float(v.std(ddof=1))
    h = float(stats.t.ppf(1 - alpha / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return m, sd, max(m - h, 0.0), min(m + h, 1.0)  # an AUC stays in [0, 1]


def selected_features(pipe) -> list[str]:
    from her2study.models import selected_coefficients

    return [str(c) for c in selected_coefficients(pipe).index]


def summarise(oof: pd.DataFrame, folds: pd.DataFrame, cfg) -> dict:
    """The nested estimate from outer-fold results and pooled out-of-fold predictions (the
    pooled metrics in :func:`her2study.evaluation.evaluate`'s names, prefixed ``pooled_``)."""
    from her2study.evaluation import auc_delong
    from her2study.evaluation.evaluate import evaluate, prefixed

    m, sd, lo, hi = _mean_ci(folds["outer_auc"])
    pooled = oof.groupby("case_id").agg(label=("label", "first"), prob=("prob", "mean"))
    y, p = pooled["label"].to_numpy(int), pooled["prob"].to_numpy(float)
    at = list(cfg.search.metrics_at) or list(cfg.evaluation.net_benefit_at)
    metrics = evaluate(
        y, p, kind="nested", hl_groups=int(cfg.evaluation.hl_groups), net_benefit_at=at
    )
    per_repeat = [
        float(auc_delong(g["label"].to_numpy(int), g["prob"].to_numpy(float)).auc)
        for _, g in oof.groupby("repeat")
    ]
    est = {
        "n_cases": int(len(pooled)),
        "n_outer": int(len(folds)),
        "outer_folds": int(cfg.search.outer_folds),
        "outer_repeats": int(cfg.search.outer_repeats),
        "mean_outer_auc": m,
        "sd_outer_auc": sd,
        "mean_outer_auc_ci_low": lo,
        "mean_outer_auc_ci_high": hi,
        **prefixed("pooled_", metrics, drop=("kind", "n")),
        "pooled_auc_per_repeat": per_repeat,
        "mean_inner_auc_of_winners": float(folds["inner_auc"].mean()),
        "ring_width_counts": _counts(folds["ring_width_mm"]),
        "model_counts": _counts(folds["model"]),
    }
    return est


def _counts(s: pd.Series) -> dict:
    out: dict = {}
    for v in s:
        k = (
            "all"
            if v is None or (isinstance(v, float) and math.isnan(v))
            else (f"{v:g}" if isinstance(v, (int, float)) else str(v))
        )
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def nested_search(
    cfg,
    design: Design,
    storage,
    study_name: str,
    tracker=None,
    final: bool | None = None,
    progress=print,
) -> NestedResult:
    """Run (or resume) the nested search and, when ``final``, the search on all cases."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per outer fold instead
    s = cfg.search
    seed = int(s.seed if s.seed is not None else cfg.seed)
    defaults = search_defaults(cfg)
    dims = parse_space(s.space, defaults)
    design.check_space(dims)
    if s.outer_folds < 2 or s.inner_folds < 2 or s.outer_repeats < 1 or s.n_trials < 1:
        raise ConfigError(
            "search.outer_folds and search.inner_folds must be >= 2, "
            "search.outer_repeats and search.n_trials >= 1"
        )
    y = design.y
    minority = int(min(y.sum(), len(y) - y.sum()))
    if minority < s.outer_folds:
        raise ConfigError(
            f"search.outer_folds={s.outer_folds} exceeds the minority class count ({minority})"
        )
    attrs = {
        "space": space_digest(dims),
        "cohort": design.digest(),
        "design": f"outer {s.outer_folds}x{s.outer_repeats} inner {s.inner_folds} seed {seed}",
        "selection": json.dumps(defaults, sort_keys=True, default=str),
    }
    outer = RepeatedStratifiedKFold(
        n_splits=s.outer_folds, n_repeats=s.outer_repeats, random_state=seed
    )
    rows, oof_rows, selections = [], [], []
    cache_stats = {"hits": 0, "misses": 0, "fits": 0}
    t0 = time.monotonic()
    idx = design.X.index
    for j, (tr, te) in enumerate(outer.split(np.zeros(len(y)), y.to_numpy())):
        r, k = divmod(j, s.outer_folds)
        name = f"{study_name}/outer{r}_{k}"
        t_fold = time.monotonic()
        study = open_study(storage, name, s.sampler, seed + j, s.n_startup_trials, attrs)
        inner = InnerCV(design, idx[tr], s.inner_folds, seed, reuse=s.reuse, cache_mb=s.cache_mb)
        child = (
            tracker.child(f"outer {r}.{k}", tags={"kind": "outer_fold", "repeat": r, "fold": k})
            if tracker is not None
            else contextlib.nullcontext()
        )
        with child:
            objective = make_objective(
                inner,
                dims,
                defaults,
                cfg,
                seed,
                tracker if s.log_trials else None,
                f"outer {r}.{k} ",
            )
            done = run_study(study, objective, s.n_trials, s.timeout_s, s.n_jobs)
            if done == 0:
                raise ConfigError(
                    f"no trial of study '{name}' completed: every configuration "
                    "failed to fit; see the log, or widen search.space"
                )
            params = best_params(study, dims, defaults)
            cand = candidate_from_params(params, cfg)
            cols = design.columns(cand)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe = build_pipeline(cand, seed).fit(design.X.iloc[tr][cols], y.iloc[tr])
                prob = pipe.predict_proba(design.X.iloc[te][cols])[:, 1]
            sel = selected_features(pipe)
            yte = y.iloc[te].to_numpy()
            outer_auc = float(roc_auc_score(yte, prob))
            row = {
                "repeat": r,
                "fold": k,
                "study": name,
                "n_train": len(tr),
                "n_test": len(te),
                "n_trials": done,
                "inner_auc": float(study.best_value),
                "outer_auc": outer_auc,
                "ring_width_mm": cand.ring_width_mm,
                "use_clinical": cand.use_clinical,
                "model": cand.model,
                "n_selected": len(sel),
                "params": json.dumps(params, sort_keys=True, default=str),
                "seconds": round(time.monotonic() - t_fold, 2),
                "cache_hits": inner.hits,
                "cache_misses": inner.misses,
                "fits": inner.fits,
            }
            rows.append(row)
            for key in cache_stats:
                cache_stats[key] += getattr(inner, key)
            selections.append(sel)
            for cid, lab, p in zip(idx[te], yte, prob, strict=True):
                oof_rows.append(
                    {"case_id": cid, "repeat": r, "fold": k, "label": int(lab), "prob": float(p)}
                )
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
                        "outer_auc": outer_auc,
                        "n_selected": len(sel),
                        "n_trials": done,
                    }
                )
        progress(
            f"outer {r}.{k}: inner AUC {row['inner_auc']:.3f} -> outer AUC {outer_auc:.3f}"
            f"  [{cand.label()}]  ({row['seconds']:.0f} s, {done} trials)"
        )
    folds = pd.DataFrame(rows)
    oof = pd.DataFrame(oof_rows)
    counts: dict[str, int] = {}
    for sel in selections:
        for f in sel:
            counts[f] = counts.get(f, 0) + 1
    features = pd.DataFrame({"feature": list(counts), "n_selected": list(counts.values())})
    if len(features):
        features["frequency"] = features["n_selected"] / len(selections)
        features = features.sort_values(["n_selected", "feature"], ascending=[False, True])
        features = features.reset_index(drop=True)
    else:
        features = pd.DataFrame(columns=["feature", "n_selected", "frequency"])
    estimate = summarise(oof, folds, cfg)
    result = NestedResult(
        folds=folds, oof=oof, features=features, estimate=estimate, cache=cache_stats
    )
    result.timings["nested_s"] = round(time.monotonic() - t0, 2)

    if s.final if final is None else final:
        t1 = time.monotonic()
        name = f"{study_name}/final"
        study = open_study(storage, name, s.sampler, seed + 10_000, s.n_startup_trials, attrs)
        inner = InnerCV(design, idx, s.inner_folds, seed, reuse=s.reuse, cache_mb=s.cache_mb)
        objective = make_objective(
            inner, dims, defaults, cfg, seed, tracker if s.log_trials else None, "final "
        )
        done = run_study(study, objective, s.n_trials, s.timeout_s, s.n_jobs)
        if done == 0:
            raise ConfigError(f"no trial of study '{name}' completed")
        result.chosen = best_params(study, dims, defaults)
        result.chosen_candidate = candidate_from_params(result.chosen, cfg)
        result.final_inner_auc = float(study.best_value)
        study.set_user_attr("nested_estimate", json.loads(json.dumps(estimate, default=float)))
        study.set_user_attr("chosen", json.loads(json.dumps(result.chosen, default=str)))
        study.set_user_attr("seed", seed)
        study.set_user_attr("inner_folds", int(s.inner_folds))
        study.set_user_attr("base", json.loads(json.dumps(base_config(cfg), default=str)))
        study.set_user_attr("chosen_data", design.digest(design.columns(result.chosen_candidate)))
        result.timings["final_s"] = round(time.monotonic() - t1, 2)
        progress(
            f"final search on all {len(idx)} cases: inner AUC {result.final_inner_auc:.3f}"
            f"  [{result.chosen_candidate.label()}]"
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
