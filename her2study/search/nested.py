"""The nested search: outer folds, an Optuna study per outer training fold, the estimate.

Per outer fold the study's winner is refitted on the outer training fold and scored once on the
outer test fold (the nested estimate); so is, for every ring width of the space, the best trial
of that width (the per-width estimates); with ``search.permutations`` the whole procedure is
rerun on permuted labels (the permutation test). Intervals: :mod:`her2study.evaluation.resampling`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold

from her2study.errors import ConfigError
from her2study.evaluation.resampling import (
    NADEAU_BENGIO,
    corrected_t_interval,
    naive_t_interval,
    permutation_p,
)
from her2study.search.candidate import (
    Candidate,
    Design,
    _plain,
    base_config,
    build_pipeline,
    candidate_from_params,
    search_defaults,
)
from her2study.search.memo import InnerCV
from her2study.search.space import parse_space, resolve, space_digest
from her2study.search.storage import (
    FIT_ERRORS,
    best_params,
    make_objective,
    open_study,
    run_study,
    study_seed,
)

REGION_COLUMNS = ["region", "width_mm", "nested_auc", "ci_low", "ci_high"]
DIFFERENCE_COLUMNS = ["region", "width_mm", "reference", "auc_difference", "ci_low", "ci_high"]

# what each number of the estimate is (written with it: nested_estimate.json "kinds")
KINDS = {
    "mean_outer_auc": "nested CV estimate: mean AUC of the J = outer_folds x outer_repeats outer "
    "test folds, each scored once by the configuration its inner search chose; estimates the "
    "performance of the whole procedure (search + fit) trained on about n_train cases",
    "ci_low/ci_high": "95% Nadeau-Bengio corrected resampled t interval of mean_outer_auc "
    "(variance of the mean of the J fold AUCs x (1/J + n_test/n_train), t on J-1 df); the same "
    "as mean_outer_auc_ci_low/high",
    "naive_t_ci_low/high": "t-interval treating the J outer folds as independent: too narrow "
    "(folds share training cases; repeats shrink it with no new information); comparison only",
    "pooled_*": "metrics of the pooled out-of-fold predictions (per case, mean over repeats) of "
    "J different fitted models; pooled_auc_ci_* is DeLong's as if they were one model: "
    "descriptive, not an interval for the procedure",
    "pooled_auc_per_repeat, sd_between_repeats": "pooled AUC of each outer repeat and their SD: "
    "the spread due to the fold assignment alone (not sampling variability)",
    "mean_inner_auc_of_winners": "inner-CV AUC of the winners: optimistic (chosen for being "
    "high), not an estimate",
    "ring_width_counts, model_counts": "how often each value won an outer fold's search: a "
    "selection frequency, not a performance estimate",
    "region_estimates": "per ring width: nested CV estimate of the procedure restricted to that "
    "width (best inner trial of that width, refitted, scored once on the outer test fold), "
    "mean over outer folds, Nadeau-Bengio interval; the widths got unequal trial budgets",
    "permutation_p": "permutation test of the whole nested procedure: (1 + #{permuted "
    "mean_outer_auc >= observed}) / (1 + permutations)",
}


def region_name(width) -> str:
    """``intra`` (tumour only, 0), ``intra+ring<w>mm`` (tumour + ring of w mm, ``:g``), or
    ``all`` (every region of the features table: no ``ring_width_mm`` dimension)."""
    if width is None or (isinstance(width, float) and math.isnan(width)):
        return "all"
    return "intra" if float(width) == 0 else f"intra+ring{float(width):g}mm"


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
    regions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REGION_COLUMNS))
    region_differences: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=DIFFERENCE_COLUMNS)
    )
    region_folds: pd.DataFrame = field(default_factory=pd.DataFrame)  # outer fold x width
    region_oof: pd.DataFrame = field(default_factory=pd.DataFrame)  # + region, width_mm
    warnings: list[str] = field(default_factory=list)
    permutation_aucs: list[float] = field(default_factory=list)


def _fold_sizes(folds: pd.DataFrame) -> tuple[float, float]:
    return float(folds["n_train"].mean()), float(folds["n_test"].mean())


def selected_features(pipe) -> list[str]:
    from her2study.models import selected_coefficients

    return [str(c) for c in selected_coefficients(pipe).index]


def summarise(oof: pd.DataFrame, folds: pd.DataFrame, cfg) -> dict:
    """The nested estimate from outer-fold results and pooled out-of-fold predictions (the
    pooled metrics in :func:`her2study.evaluation.evaluate`'s names, prefixed ``pooled_``).

    The interval of ``mean_outer_auc`` (``ci_low``/``ci_high``, also under the old names
    ``mean_outer_auc_ci_low/high``) is Nadeau and Bengio's corrected resampled t
    (``ci_method``); ``naive_t_ci_low/high`` is the t-interval across folds as if they were
    independent, for comparison. What each number is: :data:`KINDS`."""
    from her2study.evaluation import auc_delong
    from her2study.evaluation.evaluate import evaluate, prefixed

    n_train, n_test = _fold_sizes(folds)
    nb = corrected_t_interval(folds["outer_auc"], n_train, n_test)
    naive = naive_t_interval(folds["outer_auc"])
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
    mean_per_repeat = [float(v) for v in folds.groupby("repeat")["outer_auc"].mean()]
    est = {
        "n_cases": int(len(pooled)),
        "n_outer": int(len(folds)),
        "outer_folds": int(cfg.search.outer_folds),
        "outer_repeats": int(cfg.search.outer_repeats),
        "n_train_mean": n_train,
        "n_test_mean": n_test,
        "mean_outer_auc": nb["mean"],
        "sd_outer_auc": nb["sd"],
        "ci_method": NADEAU_BENGIO,
        "ci_level": 0.95,
        "ci_low": nb["ci_low"],
        "ci_high": nb["ci_high"],
        "se_corrected": nb["se"],
        "mean_outer_auc_ci_low": nb["ci_low"],
        "mean_outer_auc_ci_high": nb["ci_high"],
        "naive_t_ci_low": naive["ci_low"],
        "naive_t_ci_high": naive["ci_high"],
        **prefixed("pooled_", metrics, drop=("kind", "n")),
        "pooled_auc_per_repeat": per_repeat,
        "mean_outer_auc_per_repeat": mean_per_repeat,
        "sd_between_repeats": float(np.std(per_repeat, ddof=1)) if len(per_repeat) > 1 else None,
        "mean_inner_auc_of_winners": float(folds["inner_auc"].mean()),
        "ring_width_counts": _counts(folds["ring_width_mm"]),
        "model_counts": _counts(folds["model"]),
    }
    return est


def region_estimates(region_folds: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Per region (ring width): mean outer AUC over the outer folds and its Nadeau-Bengio
    interval; columns :data:`REGION_COLUMNS` + ``n_outer_folds``."""
    if region_folds is None or not len(region_folds):
        return pd.DataFrame(columns=[*REGION_COLUMNS, "n_outer_folds"])
    n_train, n_test = _fold_sizes(folds)
    rows = []
    for region, g in region_folds.groupby("region", sort=False):
        ci = corrected_t_interval(g["outer_auc"], n_train, n_test)
        rows.append(
            {
                "region": region,
                "width_mm": g["width_mm"].iloc[0],
                "nested_auc": ci["mean"],
                "ci_low": ci["ci_low"],
                "ci_high": ci["ci_high"],
                "n_outer_folds": int(len(g)),
            }
        )
    return _by_width(pd.DataFrame(rows))


def region_differences(region_folds: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Each region minus tumour only (``intra``), paired on the same outer test folds: mean
    difference of outer AUCs and its Nadeau-Bengio interval (not clipped)."""
    cols = [*DIFFERENCE_COLUMNS, "n_outer_folds"]
    if region_folds is None or not len(region_folds) or "intra" not in set(region_folds.region):
        return pd.DataFrame(columns=cols)
    n_train, n_test = _fold_sizes(folds)
    wide = region_folds.pivot_table(
        index=["repeat", "fold"], columns="region", values="outer_auc", aggfunc="first"
    )
    widths = region_folds.groupby("region", sort=False)["width_mm"].first()
    rows = []
    for region in widths.index:
        if region == "intra":
            continue
        d = (wide[region] - wide["intra"]).dropna()
        ci = corrected_t_interval(d, n_train, n_test, bounds=None)
        rows.append(
            {
                "region": region,
                "width_mm": widths[region],
                "reference": "intra",
                "auc_difference": ci["mean"],
                "ci_low": ci["ci_low"],
                "ci_high": ci["ci_high"],
                "n_outer_folds": int(len(d)),
            }
        )
    return _by_width(pd.DataFrame(rows, columns=cols))


def _by_width(df: pd.DataFrame) -> pd.DataFrame:
    if not len(df):
        return df
    key = df["width_mm"].astype(float).fillna(np.inf)  # "all" last
    return df.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


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


def data_digest(design: Design, cfg=None) -> str:
    """Identifies what a study's trials scored: case ids, labels, every column's name and values
    (features + clinical), and -- when the features were extracted -- the extractor settings
    (``extractor``, and the content of ``extractor.params_file``)."""
    h = hashlib.sha256(design.digest(list(design.X.columns)).encode())
    if cfg is not None and str(OmegaConf.select(cfg, "data.source", default="")) != "features":
        ext = _plain(OmegaConf.select(cfg, "extractor", default=None))
        h.update(json.dumps(ext, sort_keys=True, default=str).encode())
        params_file = (ext or {}).get("params_file") if isinstance(ext, dict) else None
        if params_file and Path(params_file).is_file():
            h.update(Path(params_file).read_bytes())
    return h.hexdigest()[:16]


def check_search_config(cfg) -> list[str]:
    """Refuse what the search does not do; the warnings of a search that will not search as
    meant (TPE never modelling). Called before any extraction."""
    s = cfg.search
    icc = OmegaConf.select(cfg, "selection.icc_threshold", default=None)
    if icc is not None:
        raise ConfigError(
            f"selection.icc_threshold={icc} is not supported by task=search: the search does not "
            "apply the inter-reader ICC filter inside its outer training folds (nor does "
            "task=export to the model it exports). Set selection.icc_threshold=null for the "
            "search (reliability analysis: +exp=paper with selection.icc_threshold)"
        )
    perms = int(OmegaConf.select(cfg, "search.permutations", default=0) or 0)
    if perms < 0:
        raise ConfigError(f"search.permutations={perms}: use 0 (off) or a number of permutations")
    out = []
    if str(s.sampler) == "tpe":
        budgets = [("search.n_trials", int(s.n_trials))]
        if perms:
            budgets.append(("search.permutation_trials", _permutation_trials(cfg)))
        for key, n in budgets:
            if n <= int(s.n_startup_trials):
                out.append(
                    f"{key}={n} <= search.n_startup_trials={s.n_startup_trials}: every trial is "
                    "one of TPE's random start-up trials, so TPE never models the results (a "
                    "random search); raise the trials or lower search.n_startup_trials"
                )
    return out


def _permutation_trials(cfg) -> int:
    n = OmegaConf.select(cfg, "search.permutation_trials", default=None)
    n = int(cfg.search.n_trials if n is None else n)
    if n < 1:
        raise ConfigError(f"search.permutation_trials={n}: use >= 1 or null (= search.n_trials)")
    return n


def _fit_predict(cand: Candidate, design: Design, tr, te, seed: int) -> tuple:
    cols = design.columns(cand)
    y = design.y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = build_pipeline(cand, seed).fit(design.X.iloc[tr][cols], y.iloc[tr])
        prob = pipe.predict_proba(design.X.iloc[te][cols])[:, 1]
    return pipe, prob


def _best_per_width(study, dims, defaults) -> dict:
    """Per ring width (None: every region): (best COMPLETE trial of that width by inner AUC,
    its assignment, the number of COMPLETE trials of that width). Ties: the earliest trial, as
    Optuna's best_trial."""
    from optuna.trial import TrialState

    best: dict = {}
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in sorted(trials, key=lambda t: t.number):
        params = resolve(dims, t.params, defaults)
        w = params.get("ring_width_mm")
        key = None if w is None else float(w)
        if key not in best:
            best[key] = [t, params, 0]
        elif t.value > best[key][0].value:
            best[key][:2] = [t, params]
        best[key][2] += 1
    return best


def _space_widths(dims) -> list | None:
    for dim in dims:
        if dim.name == "ring_width_mm":
            values = dim.choices if dim.kind == "categorical" else (dim.value,)
            return [float(v) for v in values]
    return None


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
) -> dict:
    """The outer repeated K-fold: one study per outer training fold, its winner (and, with
    ``per_width``, the best trial of each ring width) refitted and scored on the outer test
    fold."""
    s = cfg.search
    y = design.y
    outer = RepeatedStratifiedKFold(
        n_splits=s.outer_folds, n_repeats=s.outer_repeats, random_state=seed
    )
    rows, oof_rows, selections, region_rows, region_oof, warns = [], [], [], [], [], []
    cache_stats = {"hits": 0, "misses": 0, "fits": 0}
    idx = design.X.index
    for j, (tr, te) in enumerate(outer.split(np.zeros(len(y)), y.to_numpy())):
        r, k = divmod(j, s.outer_folds)
        name = f"{study_name}/outer{r}_{k}"
        t_fold = time.monotonic()
        sampler_seed = study_seed(seed, name, attrs["data"])
        study = open_study(storage, name, s.sampler, sampler_seed, s.n_startup_trials, attrs)
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
            t_study = time.monotonic()
            done = run_study(study, objective, n_trials, s.timeout_s, s.n_jobs)
            if done == 0:
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
                "seconds": 0.0,
                "cache_hits": inner.hits,
                "cache_misses": inner.misses,
                "fits": inner.fits,
            }
            if per_width:
                for w, (trial, wparams, n_w) in _best_per_width(study, dims, defaults).items():
                    if wparams == params:
                        wprob = prob  # the fold's winner: already refitted
                    else:
                        try:
                            _, wprob = _fit_predict(
                                candidate_from_params(wparams, cfg), design, tr, te, seed
                            )
                        except FIT_ERRORS as exc:
                            warns.append(
                                f"outer {r}.{k}: the best {region_name(w)} trial failed to "
                                f"refit on the outer training fold ({exc}); that region has no "
                                "estimate from this fold"
                            )
                            continue
                    region_rows.append(
                        {
                            "repeat": r,
                            "fold": k,
                            "region": region_name(w),
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
                                "region": region_name(w),
                                "width_mm": w,
                                "label": int(lab),
                                "prob": float(pv),
                            }
                        )
            row["seconds"] = round(time.monotonic() - t_fold, 2)
            rows.append(row)
            for key in cache_stats:
                cache_stats[key] += getattr(inner, key)
            selections.append(sel)
            for cid, lab, pv in zip(idx[te], yte, prob, strict=True):
                oof_rows.append(
                    {"case_id": cid, "repeat": r, "fold": k, "label": int(lab), "prob": float(pv)}
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
    if per_width:
        widths = _space_widths(dims)
        seen = pd.DataFrame(region_rows, columns=["region", "width_mm"])
        for w in widths or []:
            n_w = int((seen["region"] == region_name(w)).sum())
            if n_w < len(rows):
                warns.append(
                    f"ring width {w:g} mm ({region_name(w)}) has no trial in {len(rows) - n_w} "
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
    }


def _shortfall(name: str, done: int, n_trials: int, timeout_s, t_start: float) -> str:
    timed_out = timeout_s is not None and time.monotonic() - t_start >= float(timeout_s)
    why = (
        f"search.timeout_s={timeout_s:g} cut it"
        if timed_out
        else "the other trials failed to fit (see the log)"
    )
    return f"study '{name}' stopped at {done} of {n_trials} COMPLETE trials: {why}"


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


def permuted_design(design: Design, seed: int, k: int) -> Design:
    """The design with its labels permuted (plain permutation, seeded by ``seed`` and ``k``)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 104_729, int(k)]))
    y = pd.Series(rng.permutation(design.y.to_numpy()), index=design.y.index, name=design.y.name)
    return dataclasses.replace(design, y=y)


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
    (``search.permutations``) and, when ``final``, the search on all cases."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per outer fold instead
    s = cfg.search
    warns = check_search_config(cfg)
    for w in warns:
        progress(f"WARNING: {w}")
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
        "data": data_digest(design, cfg),
        "design": f"outer {s.outer_folds}x{s.outer_repeats} inner {s.inner_folds} seed {seed}",
        "selection": json.dumps(defaults, sort_keys=True, default=str),
    }
    t0 = time.monotonic()
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

    if s.final if final is None else final:
        t1 = time.monotonic()
        name = f"{study_name}/final"
        sampler_seed = study_seed(seed, name, attrs["data"])
        study = open_study(storage, name, s.sampler, sampler_seed, s.n_startup_trials, attrs)
        inner = InnerCV(
            design, design.X.index, s.inner_folds, seed, reuse=s.reuse, cache_mb=s.cache_mb
        )
        objective = make_objective(
            inner, dims, defaults, cfg, seed, tracker if s.log_trials else None, "final "
        )
        t_study = time.monotonic()
        done = run_study(study, objective, s.n_trials, s.timeout_s, s.n_jobs)
        if done == 0:
            raise ConfigError(f"no trial of study '{name}' completed")
        if done < s.n_trials:
            warns.append(_shortfall(name, done, int(s.n_trials), s.timeout_s, t_study))
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
        result.timings["final_s"] = round(time.monotonic() - t1, 2)
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
