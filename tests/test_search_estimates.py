"""The nested estimate's numbers: the corrected interval, per-width estimates, the permutation
test of the whole procedure, and the search's hygiene (warnings, data digest, per-study sampler
seeds, reader-2 columns, ICC refused).

Real Optuna SQLite storages in tmp, the real pipelines, small synthetic features tables."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import REPO, compose_config

from her2study.errors import ConfigError
from her2study.search import (
    NADEAU_BENGIO,
    REGION_COLUMNS,
    Candidate,
    Design,
    corrected_t_interval,
    data_digest,
    naive_t_interval,
    nested_search,
    open_storage,
    open_study,
    permutation_p,
    permuted_design,
    region_name,
    search_defaults,
)

QUIET = {"progress": lambda s: None}

SPACE = {
    "ring_width_mm": {"type": "categorical", "choices": [0, 1]},
    "mw_alpha": {"type": "categorical", "choices": [0.05, 0.2]},
    "model": {"type": "categorical", "choices": ["logistic", "ridge"]},
}
TINY = {"model": {"type": "categorical", "choices": ["logistic"]}}


# every config of this file: a quick search task (3 x 3 folds, no final fit), no tracking; the
# space is SPACE unless a test passes another
QUICK_SEARCH = [
    "task=search",
    "tracking=off",
    "execution.progress=false",
    "search.inner_folds=3",
    "search.outer_folds=3",
    "search.final=false",
    "selection.lasso_cv=3",
    "selection.lasso_n_lambdas=8",
    "data.clinical_columns=[]",
]


def features(n=60, p=10, seed=0, delta=1.2, shuffle=False):
    """Tumour (``intra_*``) and 1 mm ring (``peri1mm_*``) columns; the first two of each carry
    the label (shifted by ``delta`` SD); ``shuffle``: labels permuted (no signal)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    rng.shuffle(y)
    cols = [f"{r}_f{i}" for r in ("intra", "peri1mm") for i in range(p)]
    X = pd.DataFrame(rng.standard_normal((n, len(cols))), columns=cols)
    for c in ("intra_f0", "intra_f1", "peri1mm_f0", "peri1mm_f1"):
        X[c] += delta * y
    X.index = pd.Index([f"E{i:03d}" for i in range(n)], name="case_id")
    if shuffle:
        y = rng.permutation(y)
    return X, pd.Series(y, index=X.index, name="label")


def design_of(X, y):
    return Design.from_tables(X, y, None, synthetic=True)


# ------------------------------------------------------------------------------------------
# the interval and the permutation p
# ------------------------------------------------------------------------------------------


def test_corrected_t_interval_is_the_nadeau_bengio_formula():
    from scipy import stats

    v = np.array([0.71, 0.64, 0.80, 0.69, 0.75])
    r = corrected_t_interval(v, n_train=120, n_test=30)
    s2 = v.var(ddof=1)
    half = stats.t.ppf(0.975, 4) * math.sqrt((1 / 5 + 30 / 120) * s2)
    assert r["method"] == NADEAU_BENGIO == "nadeau_bengio_corrected_t"
    assert r["mean"] == pytest.approx(v.mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((v.mean() - half, v.mean() + half))
    naive = naive_t_interval(v)
    assert naive["ci_high"] - naive["ci_low"] < r["ci_high"] - r["ci_low"]
    # repeats add no cases: ten copies of the same folds shrink the naive interval ~ 1/sqrt(10),
    # the corrected one only down to its n_test/n_train floor
    ten = np.tile(v, 10)
    n10 = naive_t_interval(ten)
    c10 = corrected_t_interval(ten, 120, 30)
    assert (n10["ci_high"] - n10["ci_low"]) < 0.4 * (naive["ci_high"] - naive["ci_low"])
    floor = 2 * stats.t.ppf(0.975, 49) * math.sqrt(30 / 120 * ten.var(ddof=1))
    assert c10["ci_high"] - c10["ci_low"] > floor
    # bounds and degenerate inputs
    assert corrected_t_interval([0.97, 0.99, 0.995], 40, 20)["ci_high"] == 1.0
    d = corrected_t_interval([-0.05, 0.02, 0.01], 40, 20, bounds=None)
    assert d["ci_low"] < -0.1
    assert math.isnan(corrected_t_interval([0.7], 40, 20)["ci_low"])
    with pytest.raises(ValueError):
        corrected_t_interval(v, 0, 30)


def test_permutation_p_counts_ties_and_the_observed_run():
    assert permutation_p(0.8, [0.5] * 19) == pytest.approx(1 / 20)
    assert permutation_p(0.8, [0.8, 0.9, 0.5, 0.4]) == pytest.approx(3 / 5)  # ties count
    assert permutation_p(0.5, []) == 1.0


# ------------------------------------------------------------------------------------------
# the task's outputs: the estimate, per-width estimates, warnings
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """task=search on a 72-case features table: 3-fold x 2 outer, 4 trials per study."""
    import os

    from her2study.tasks.search import run

    root = tmp_path_factory.mktemp("est")
    X, y = features(n=72, seed=1)
    X.assign(label=y).reset_index().to_csv(root / "features.csv", index=False)
    cfg = compose_config(
        *QUICK_SEARCH,
        "study=est",
        "data=features",
        f"data.features_table={root / 'features.csv'}",
        f"search.storage=sqlite:///{root / 'est.db'}",
        "search.n_trials=4",
        "search.outer_repeats=2",
        space=SPACE,
    )
    cwd = os.getcwd()
    os.chdir(root)  # outside Hydra the outputs go to ./outputs/<study>
    try:
        run(cfg)
    finally:
        os.chdir(cwd)
    return root, root / "outputs" / "est"


def test_estimate_states_its_interval_and_spread(searched):
    root, out = searched
    est = json.loads((out / "nested_estimate.json").read_text())
    assert est["ci_method"] == "nadeau_bengio_corrected_t"
    folds = pd.read_csv(out / "outer_folds.csv")
    assert len(folds) == 6 == est["n_outer"]
    expected = corrected_t_interval(folds["outer_auc"], 48, 24)
    assert est["ci_low"] == pytest.approx(expected["ci_low"])
    assert est["ci_high"] == pytest.approx(expected["ci_high"])
    assert est["mean_outer_auc_ci_low"] == est["ci_low"]  # old key, new method
    assert est["ci_low"] < est["naive_t_ci_low"] <= est["naive_t_ci_high"] < est["ci_high"]
    assert len(est["pooled_auc_per_repeat"]) == 2
    assert est["sd_between_repeats"] == pytest.approx(np.std(est["pooled_auc_per_repeat"], ddof=1))
    assert "mean_outer_auc" in est["kinds"] and "pooled_*" in est["kinds"]
    # 4 trials <= 10 start-up trials: said in the json, the report and the log
    assert any("TPE never models" in w for w in est["warnings"])
    report = (out / "report.html").read_text()
    assert "WARNING: search.n_trials=4 &lt;= search.n_startup_trials=10" in report


def test_region_estimates_are_the_best_trial_of_each_width_scored_once(searched):
    root, out = searched
    regions = pd.read_csv(out / "region_estimates.csv")
    assert list(regions.columns) == REGION_COLUMNS
    assert (
        list(regions["region"]) == ["intra", "intra+ring1mm"] == [region_name(0), "intra+ring1mm"]
    )
    assert list(regions["width_mm"]) == [0, 1]
    per_fold = pd.read_csv(out / "region_outer_folds.csv")
    folds = pd.read_csv(out / "outer_folds.csv")
    storage = open_storage(f"sqlite:///{root / 'est.db'}")
    for f in folds.itertuples():
        study = optuna.load_study(study_name=f.study, storage=storage)
        rows = per_fold[(per_fold["repeat"] == f.repeat) & (per_fold["fold"] == f.fold)]
        for row in rows.itertuples():
            same = [
                t
                for t in study.trials
                if t.state == optuna.trial.TrialState.COMPLETE
                and float(t.params["ring_width_mm"]) == row.width_mm
            ]
            assert row.inner_auc == pytest.approx(max(t.value for t in same))
            assert row.n_trials_of_width == len(same)
        # the fold's winner is the best trial of its width: the same outer AUC
        won = rows[rows["width_mm"] == f.ring_width_mm]
        assert won["outer_auc"].iloc[0] == pytest.approx(f.outer_auc)
    for r in regions.itertuples():
        g = per_fold[per_fold["region"] == r.region]
        ci = corrected_t_interval(g["outer_auc"], 48, 24)
        assert r.nested_auc == pytest.approx(g["outer_auc"].mean())
        assert (r.ci_low, r.ci_high) == pytest.approx((ci["ci_low"], ci["ci_high"]))
    oof = pd.read_csv(out / "region_oof_predictions.csv")
    for (region, rep), g in oof.groupby(["region", "repeat"]):
        n_folds = ((per_fold["region"] == region) & (per_fold["repeat"] == rep)).sum()
        assert g["case_id"].is_unique and len(g) == 24 * n_folds  # each case once per repeat
    est = json.loads((out / "nested_estimate.json").read_text())
    for r in regions.itertuples():  # a width missing from an outer fold's trials is said
        said = any(f"({r.region}) has no trial in" in w for w in est["warnings"])
        assert said == ((per_fold["region"] == r.region).sum() < 6)
    diffs = pd.read_csv(out / "region_differences.csv")
    assert diffs["region"].tolist() == ["intra+ring1mm"] and diffs["reference"].eq("intra").all()
    wide = per_fold.pivot_table(index=["repeat", "fold"], columns="region", values="outer_auc")
    d = (wide["intra+ring1mm"] - wide["intra"]).dropna()
    assert diffs["auc_difference"].iloc[0] == pytest.approx(d.mean())
    assert pd.read_csv(out / "ring_frequency.csv")["n_outer_folds_won"].sum() == 6  # kept
    assert (out / "region_estimates.png").stat().st_size > 5_000


# ------------------------------------------------------------------------------------------
# permutation test of the whole procedure
# ------------------------------------------------------------------------------------------


def test_permutation_runs_are_whole_nested_searches_in_their_own_studies(tmp_path):
    X, y = features(n=60, p=6, seed=2, delta=2.0)
    design = design_of(X, y)
    cfg = compose_config(*QUICK_SEARCH, "search.n_trials=2", "search.permutations=3", space=TINY)
    storage = open_storage(f"sqlite:///{tmp_path / 'p.db'}")
    res = nested_search(cfg, design, storage, "pt", **QUIET)
    e = res.estimate
    assert e["permutations"] == 3 and len(e["permutation_aucs"]) == 3
    assert e["permutation_p"] == pytest.approx(
        (1 + sum(a >= e["mean_outer_auc"] for a in e["permutation_aucs"])) / 4
    )
    assert e["mean_outer_auc"] > 0.8 and max(e["permutation_aucs"]) < e["mean_outer_auc"]
    assert e["permutation_p"] == pytest.approx(0.25)  # the smallest p with 3 permutations
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert {f"pt/perm{k}/outer0_{j}" for k in range(3) for j in range(3)} <= names
    # each permuted study scored permuted labels (its own data digest), seeded: reproducible
    for k in range(3):
        dk = permuted_design(design, int(cfg.seed), k)
        assert sorted(dk.y) == sorted(y) and not dk.y.equals(y)
        attrs = optuna.load_study(study_name=f"pt/perm{k}/outer0_0", storage=storage).user_attrs
        assert attrs["data"] == data_digest(dk, cfg) != data_digest(design, cfg)


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", [False, True])
def test_permutation_p_small_on_a_planted_signal_not_on_shuffled_labels(tmp_path, shuffle):
    """P = 20 permuted nested searches (the smallest p is 1/21): a planted signal gives p < 0.05;
    the same table with shuffled labels does not. Recorded in experiments/search/README.md."""
    X, y = features(n=60, p=6, seed=4, delta=1.0, shuffle=shuffle)
    cfg = compose_config(*QUICK_SEARCH, "search.n_trials=2", "search.permutations=20", space=TINY)
    storage = open_storage(f"sqlite:///{tmp_path / 'p.db'}")
    res = nested_search(cfg, design_of(X, y), storage, "ps", **QUIET)
    e = res.estimate
    print(f"\nshuffle={shuffle}: observed {e['mean_outer_auc']:.3f}, p {e['permutation_p']:.3f}")
    print("permuted:", [round(a, 3) for a in e["permutation_aucs"]])
    if shuffle:
        assert e["permutation_p"] > 0.2
    else:
        assert e["permutation_p"] < 0.05


# ------------------------------------------------------------------------------------------
# hygiene
# ------------------------------------------------------------------------------------------


def test_a_resumed_study_on_changed_feature_values_is_refused(tmp_path):
    X, y = features(n=48, p=5, seed=3)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    cfg = compose_config(*QUICK_SEARCH, "search.n_trials=1", "search.outer_folds=2", space=TINY)
    nested_search(cfg, design_of(X, y), open_storage(url), "r", **QUIET)
    nested_search(cfg, design_of(X, y), open_storage(url), "r", **QUIET)  # same data: resumes
    X2 = X.copy()
    X2.iloc[0, 3] += 1e-6  # one value of one feature; same ids, labels and columns
    with pytest.raises(ConfigError) as err:
        nested_search(cfg, design_of(X2, y), open_storage(url), "r", **QUIET)
    msg = str(err.value)
    assert "'r/outer0_0' was made on other data" in msg
    assert "new study name (study=...)" in msg and "search.storage" in msg
    with pytest.raises(ConfigError, match="made on other data"):  # a renamed column
        X3 = X.rename(columns={"intra_f4": "intra_g4"})
        nested_search(cfg, design_of(X3, y), open_storage(url), "r", **QUIET)


def test_extractor_settings_enter_the_data_digest():
    X, y = features(n=40, p=3)
    design = design_of(X, y)
    fast = compose_config(*QUICK_SEARCH, "extractor=fast", space=SPACE)
    paper = compose_config(*QUICK_SEARCH, "extractor=paper", space=SPACE)
    assert data_digest(design, fast) != data_digest(design, paper)
    table = compose_config(*QUICK_SEARCH, "extractor=fast", "data=features", space=SPACE)
    assert data_digest(design, table) == data_digest(
        design, compose_config(*QUICK_SEARCH, "data=features", space=SPACE)
    )


def test_the_data_digest_counts_a_params_files_content_not_its_path_nor_check_switches(
    tmp_path,
):
    """The digest seeds the study's sampler: the same settings must give the same trials
    whichever folder the params file lies in, and a QA switch changes no feature."""
    X, y = features(n=40, p=3)
    design = design_of(X, y)
    text = "setting: {binWidth: 10, force2D: false}\nimageType: {Original: {}}\n"
    a, b, c = tmp_path / "a.yaml", tmp_path / "sub" / "b.yaml", tmp_path / "c.yaml"
    b.parent.mkdir()
    a.write_text(text)
    b.write_text(text)
    c.write_text(text.replace("10", "25"))

    def digest(*overrides):
        return data_digest(design, compose_config(*QUICK_SEARCH, *overrides, space=SPACE))

    assert digest(f"extractor.params_file={a}") == digest(f"extractor.params_file={b}")
    assert digest(f"extractor.params_file={a}") != digest(f"extractor.params_file={c}")
    assert digest("extractor.check_bins=false") == digest("extractor.check_bins=true")


def test_a_study_with_trials_but_no_data_digest_is_refused(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'old.db'}")
    old = optuna.create_study(storage=storage, study_name="old/outer0_0", direction="maximize")
    old.set_user_attr("cohort", "abc")
    old.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ConfigError, match="no record of the data they scored"):
        open_study(storage, "old/outer0_0", "random", 0, 10, {"cohort": "abc", "data": "d"})
    fresh = open_study(storage, "new/outer0_0", "random", 0, 10, {"data": "d"})
    assert fresh.user_attrs["data"] == "d"  # a new study records it


def _first_params(design, cfg, url, name):
    nested_search(cfg, design, open_storage(url), name, **QUIET)
    study = optuna.load_study(study_name=f"{name}/outer0_0", storage=open_storage(url))
    return [json.dumps(t.params, sort_keys=True) for t in study.trials]


def test_sampler_seed_comes_from_the_study_name_and_the_data(tmp_path):
    space = {
        "mw_alpha": {"type": "float", "low": 0.01, "high": 0.5},
        "model": {"type": "categorical", "choices": ["ridge"]},
        "ridge": {"C": {"type": "float", "low": 0.01, "high": 10, "log": True}},
    }
    cfg = compose_config(
        *QUICK_SEARCH,
        "search.n_trials=3",
        "search.outer_folds=2",
        "search.sampler=random",
        space=space,
    )
    X, y = features(n=40, p=4, seed=5)
    a = _first_params(design_of(X, y), cfg, f"sqlite:///{tmp_path / 'a.db'}", "s")
    b = _first_params(design_of(X, y), cfg, f"sqlite:///{tmp_path / 'b.db'}", "s")
    assert a == b  # same data, name and seed: the same candidates
    X2, y2 = features(n=40, p=4, seed=6)
    c = _first_params(design_of(X2, y2), cfg, f"sqlite:///{tmp_path / 'c.db'}", "s")
    assert not set(a) & set(c)  # other data: other candidates
    st = open_storage(f"sqlite:///{tmp_path / 'a.db'}")
    o1 = [t.params for t in optuna.load_study(study_name="s/outer0_1", storage=st).trials]
    assert [json.dumps(p, sort_keys=True) for p in o1] != a  # another outer fold: others


def test_reader2_columns_are_never_predictors(tmp_path):
    X, y = features(n=48, p=4, seed=7)
    r2 = X.add_prefix("reader2__") + 0.01
    design = Design.from_tables(X.join(r2), y, None)
    assert not [c for c in design.X.columns if c.startswith("reader2__")]
    assert "reader2" not in design.regions
    sel = dict(search_defaults(compose_config(*QUICK_SEARCH, space=SPACE)))
    sel.pop("model"), sel.pop("use_clinical")
    every = Candidate(None, False, sel, "logistic", {})  # every region of the table
    assert design.columns(every) == list(X.columns)
    # no ring dimension
    cfg = compose_config(*QUICK_SEARCH, "search.n_trials=1", "search.outer_folds=2", space=TINY)
    res = nested_search(cfg, design, open_storage(f"sqlite:///{tmp_path / 'r2.db'}"), "r2", **QUIET)
    assert res.regions["region"].tolist() == ["all"]
    assert not res.features["feature"].str.startswith("reader2__").any()


def test_icc_threshold_is_refused_before_any_work(tmp_path, monkeypatch):
    from her2study.tasks.search import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_config(
        *QUICK_SEARCH,
        "selection.icc_threshold=0.75",
        f"search.storage=sqlite:///{tmp_path / 'i.db'}",
        space=SPACE,
    )
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert "selection.icc_threshold=0.75 is not supported by task=search" in str(err.value)
    assert "selection.icc_threshold=null" in str(err.value)
    assert not (tmp_path / ".her2study_cache").exists()


def test_a_study_cut_by_the_timeout_is_warned(tmp_path):
    X, y = features(n=60, p=8, seed=8)
    cfg = compose_config(
        *QUICK_SEARCH,
        "search.n_trials=500",
        "search.outer_folds=2",
        "search.timeout_s=2",
        space=SPACE,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = nested_search(
            cfg, design_of(X, y), open_storage(f"sqlite:///{tmp_path / 't.db'}"), "t", **QUIET
        )
    cut = [w for w in res.warnings if "search.timeout_s=2 cut it" in w]
    assert len(cut) == 2 and "'t/outer0_0' stopped at" in cut[0]
    assert res.estimate["warnings"] == res.warnings


@pytest.mark.slow
def test_corrected_interval_covers_the_fresh_auc_of_the_final_model():
    """A few repetitions of experiments/search/coverage.py (150 cases, fresh cohort of 4,000):
    the corrected interval holds the final model's fresh AUC in most; the naive one is inside
    it every time. The full simulation (100+ repetitions) is in experiments/search/README.md."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "coverage", REPO / "experiments" / "search" / "coverage.py"
    )
    cov = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cov)
    args = argparse.Namespace(n=150, fresh=4000, outer=5, repeats=1, inner=3, trials=4)
    rows = pd.DataFrame([cov.one_rep(r, args) for r in range(8)])
    covered = (rows["nb_low"] <= rows["fresh_auc"]) & (rows["fresh_auc"] <= rows["nb_high"])
    print("\n", rows[["mean_outer_auc", "nb_low", "nb_high", "fresh_auc"]].round(3))
    assert covered.sum() >= 6
    assert ((rows["nb_low"] <= rows["naive_low"]) & (rows["naive_high"] <= rows["nb_high"])).all()
