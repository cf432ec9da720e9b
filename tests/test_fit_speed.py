"""Issue 14, round 3: the cheap pipeline fit must not change a selection or a prediction.

The Mann-Whitney and LASSO-path memos (shared by every column subset, alpha and lambda rule of
a fold), the inner CV that uses them, and outer folds in separate processes are compared with
fresh fits / one process. Speed itself is measured in ``experiments/benchmarks/``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from her2study.selection import LassoCVSelector, MannWhitneyFilter
from her2study.selection.lasso import LassoPathMemo
from her2study.selection.mannwhitney import MannWhitneyMemo


def _radiomics_like(n=70, p=60, seed=0):
    """Correlated blocks, a few informative columns, tied and constant columns."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], [n // 2, n - n // 2]))
    base = rng.normal(size=(n, 6))
    X = np.repeat(base, p // 6, axis=1) + rng.normal(scale=0.7, size=(n, p))
    X[:, :4] += 0.9 * y[:, None]
    X[:, 10] = np.round(X[:, 10])  # ties
    X[:, 11] = 1.0  # constant
    return X, y


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_mann_whitney_memo_gives_a_fresh_fits_p_values_on_every_column_subset():
    X, y = _radiomics_like()
    memo = MannWhitneyMemo()
    subsets = [np.arange(60), np.arange(0, 60, 2), np.arange(5, 40), np.array([10, 11, 3])]
    for cols in subsets:
        for alpha in (0.01, 0.05, 0.2):
            alone = _quiet(MannWhitneyFilter(alpha=alpha).fit, X[:, cols], y)
            with memo.active():
                shared = _quiet(MannWhitneyFilter(alpha=alpha).fit, X[:, cols], y)
            np.testing.assert_array_equal(shared.pvalues_, alone.pvalues_)
            np.testing.assert_array_equal(shared.statistic_, alone.statistic_)
            np.testing.assert_array_equal(shared.support_, alone.support_)
    # every column was tested once: the first subset covers them all
    assert memo.misses == 60
    assert memo.hits == sum(3 * len(c) for c in subsets) - 60
    # another y (the same columns) is another entry, not a stale hit
    with memo.active():
        other = _quiet(MannWhitneyFilter().fit, X, y[::-1])
    np.testing.assert_array_equal(
        other.pvalues_, _quiet(MannWhitneyFilter().fit, X, y[::-1]).pvalues_
    )
    assert memo.misses == 120


def test_mann_whitney_memo_is_not_used_where_scipy_could_go_exact():
    X, y = _radiomics_like(n=16, p=12)  # 8 cases per class: exact unless some column ties
    memo = MannWhitneyMemo()
    with memo.active():
        shared = _quiet(MannWhitneyFilter().fit, X[:, [0, 1]], y)
    np.testing.assert_array_equal(
        shared.pvalues_, _quiet(MannWhitneyFilter().fit, X[:, [0, 1]], y).pvalues_
    )
    assert (memo.hits, memo.misses) == (0, 0)


@pytest.mark.parametrize("scoring", ["neg_log_loss", "roc_auc"])
def test_lasso_path_memo_gives_a_fresh_fits_selection_for_every_rule(scoring):
    X, y = _radiomics_like(n=80, p=30, seed=2)
    X = np.delete(X, 11, axis=1)  # no constant column (the scaler's output has none either)
    memo = LassoPathMemo()
    settings = [
        {"rule": "min"},
        {"rule": "1se"},
        {"rule": "min", "max_features": 2},
        {"rule": "1se", "max_features": 1},
    ]
    for extra in settings:
        params = {"cv": 4, "n_lambdas": 12, "scoring": scoring, "random_state": 3, **extra}
        alone = _quiet(LassoCVSelector(**params).fit, X, y)
        with memo.active():
            shared = _quiet(LassoCVSelector(**params).fit, X, y)
        np.testing.assert_array_equal(shared.coef_, alone.coef_)
        assert shared.intercept_ == alone.intercept_ and shared.C_ == alone.C_
        np.testing.assert_array_equal(shared.support_, alone.support_)
        np.testing.assert_array_equal(shared.coef_path_, alone.coef_path_)
        for k in ("mean_score", "se_score", "split_scores", "Cs"):
            np.testing.assert_array_equal(shared.cv_results_[k], alone.cv_results_[k])
    assert memo.misses == 1 and memo.hits == len(settings) - 1
    chosen = {
        _quiet(
            LassoCVSelector(cv=4, n_lambdas=12, scoring=scoring, random_state=3, **e).fit, X, y
        ).support_.tobytes()
        for e in settings
    }
    assert len(chosen) > 1  # the settings select differently: the test can tell them apart
    # another seed (other folds) is another path
    with memo.active():
        _quiet(LassoCVSelector(cv=4, n_lambdas=12, scoring=scoring, random_state=4).fit, X, y)
    assert memo.misses == 2


def _design(n=90, p=30, seed=4):
    from her2study.search.candidate import Design

    X, y = _radiomics_like(n, 2 * p, seed)
    X[:, 11] += np.linspace(0, 1e-3, n)
    idx = pd.Index([f"C{i:03d}" for i in range(n)], name="case_id")
    cols = [f"intra_f{i}" for i in range(p)] + [f"peri1mm_f{i}" for i in range(p)]
    return Design.from_tables(pd.DataFrame(X, index=idx, columns=cols), pd.Series(y, idx), None)


def test_inner_cv_with_every_selection_memo_predicts_as_refitting(compose):
    """Same trials -> same predictions: candidates that differ in the correlation threshold,
    alpha, lambda rule and model, with the memos on (reuse) and off (a plain refit)."""
    from her2study.search.candidate import Candidate, base_selection
    from her2study.search.memo import InnerCV

    sel = {**base_selection(compose()), "lasso_cv": 3, "lasso_n_lambdas": 10}
    design = _design(n=72, p=24)
    cands = [
        Candidate(1.0, False, {**sel, "corr_threshold": t, "mw_alpha": a, "lasso_rule": r}, m, {})
        for t, a, r, m in [
            (0.8, 0.05, "min", "ridge"),
            (0.8, 0.05, "1se", "ridge"),
            (0.9, 0.05, "min", "ridge"),
            (0.9, 0.2, "min", "ridge"),
            (0.9, 0.2, "1se", "lasso_logistic"),
            (0.9, 0.2, "min", "lasso_logistic"),
        ]
    ]
    fast = InnerCV(design, design.X.index, 3, seed=2, reuse=True)
    plain = InnerCV(design, design.X.index, 3, seed=2, reuse=False)
    probs = set()
    for cand in cands:
        a_all, b_all = _quiet(fast.fold_probs, cand), _quiet(plain.fold_probs, cand)
        for a, b in zip(a_all, b_all, strict=True):
            np.testing.assert_array_equal(a, b)
        probs.add(np.concatenate(a_all).round(12).tobytes())
    assert len(probs) > 3  # the candidates predict differently: the test can tell them apart
    # each (fold, column set) tested its columns once; each LASSO path served both rules
    assert fast.mw_memo.hits > fast.mw_memo.misses
    assert fast.lasso_memo.hits >= fast.lasso_memo.misses > 0


SPACE = {
    "ring_width_mm": {"type": "categorical", "choices": [0, 1]},
    "corr_threshold": {"type": "categorical", "choices": [0.8, 0.9]},
    "mw_alpha": {"type": "categorical", "choices": [0.05, 0.2]},
    "lasso_rule": {"type": "categorical", "choices": ["min", "1se"]},
    "model": {"type": "categorical", "choices": ["logistic", "ridge"]},
    "ridge": {"C": {"type": "float", "low": 0.01, "high": 10, "log": True}},
}


@pytest.mark.slow
def test_outer_folds_in_separate_processes_give_the_results_of_one(tmp_path):
    """search.outer_n_jobs=2 (loky worker processes, one shared SQLite file) against one
    process: the same trials, winners, out-of-fold predictions, per-width estimates, and the
    same final search (run beside the folds)."""
    import optuna
    from conftest import compose_config

    from her2study.search import nested_search, open_storage
    from her2study.search.fold_run import fold_processes

    design = _design(n=72, p=15)
    common = [
        "task=search",
        "tracking=off",
        "execution.progress=false",
        "selection.lasso_cv=3",
        "search.outer_folds=3",
        "search.inner_folds=3",
        "search.n_trials=4",
        "search.n_startup_trials=3",
    ]
    runs = {}
    for n_jobs in (1, 2):
        cfg = compose_config(*common, f"search.outer_n_jobs={n_jobs}", space=SPACE)
        storage = open_storage(f"sqlite:///{tmp_path / f'jobs{n_jobs}.db'}")
        assert fold_processes(cfg, storage, 4) == n_jobs
        runs[n_jobs] = (
            _quiet(nested_search, cfg, design, storage, "par", final=True, progress=lambda s: None),
            storage,
        )
    (one, s1), (two, s2) = runs[1], runs[2]
    pd.testing.assert_frame_equal(
        one.folds.drop(columns="seconds"), two.folds.drop(columns="seconds")
    )
    pd.testing.assert_frame_equal(one.oof, two.oof)
    pd.testing.assert_frame_equal(one.region_folds, two.region_folds)
    pd.testing.assert_frame_equal(one.region_oof, two.region_oof)
    assert one.estimate["pooled_auc"] == two.estimate["pooled_auc"]
    # the final search on all cases ran beside the folds in a worker: the same choice
    assert one.chosen == two.chosen and one.final_inner_auc == two.final_inner_auc
    for k in ["final"] + [
        f"outer0_{i}" for i in range(3)
    ]:  # every trial of every study, as stored by the worker processes
        t1 = optuna.load_study(study_name=f"par/{k}", storage=s1).trials
        t2 = optuna.load_study(study_name=f"par/{k}", storage=s2).trials
        assert [(t.params, t.value) for t in t1] == [(t.params, t.value) for t in t2]
        assert len(t1) == 4
    assert len(set(one.folds["params"])) > 1  # the folds chose differently: not a constant
    # the worker processes really ran them (their pids are the trials' worker ids)
    workers = {
        t.user_attrs["worker"]
        for k in ["final", "outer0_0", "outer0_1", "outer0_2"]
        for t in optuna.load_study(study_name=f"par/{k}", storage=s2).trials
    }
    own = {
        t.user_attrs["worker"]
        for t in optuna.load_study(study_name="par/outer0_0", storage=s1).trials
    }
    assert own.isdisjoint(workers) and len(workers) >= 2
