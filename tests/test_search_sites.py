"""The nested search by site (issue 15): leave-one-site-out (and train-on/test-on sites) as the
outer loop, ComBat and the contour-robustness filter inside every fit of the search, the
estimate's kind, per-site rows, and the preflight's class counts per held-out site.

Real Optuna storages (SQLite files in tmp), real combatlearn, real scikit-learn pipelines; the
end-to-end test runs ``python -m her2study`` on the synthetic generator's three devices with real
pyradiomics features."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, run_cli

from her2study.errors import ConfigError
from her2study.search import Design, InnerCV, nested_search, open_storage
from her2study.search.candidate import build_pipeline, candidate_from_params, permuted_design
from her2study.search.outer import outer_folds, site_fold_problems
from her2study.selection.robustness import perturbed_column

pytest.importorskip("combatlearn")
from combatlearn.core import ComBatModel  # noqa: E402

SEARCH = ["task=search", "tracking=off", "execution.progress=false"]
BY_SITE = ["data.site_column=device", "split.method=leave_one_site_out"]
FAST = [
    "search.n_trials=2",
    "search.sampler=random",
    "search.inner_folds=3",
    "selection.lasso_cv=3",
    "selection.lasso_n_lambdas=8",
    "search.final=false",
]
# the default space narrowed for the end-to-end run: corr_threshold and the model are searched
NOT_SEARCHED = ("ring_width_mm", "use_clinical", "mw_alpha", "lasso_rule", "ridge", "svm")
NOT_SEARCHED += ("random_forest",)
SPACE = {"corr_threshold": {"type": "categorical", "choices": [0.8, 0.95]}}


def device_design(seed=0, n=72, p=24, effect=1.5, perturb=0) -> Design:
    """Three devices (A, B, C) that shift and scale every feature; a label effect on the first 4
    tumour features, balanced classes within each device; ``perturb`` perturbed copies of every
    column (``perturb<k>__<col>``: the column plus a little noise)."""
    rng = np.random.default_rng(seed)
    devices = np.repeat(["A", "B", "C"], n // 3)
    y = np.tile([0, 1], n // 2)
    shift = {d: rng.normal(0, 1.5, p) for d in "ABC"}
    scale = {d: np.exp(rng.normal(0, 0.5, p)) for d in "ABC"}
    X = np.array([shift[d] + scale[d] * rng.normal(size=p) for d in devices])
    X[:, :4] += effect * y[:, None] * np.array([scale[d][:4] for d in devices])
    ids = [f"case{i:03d}" for i in range(n)]
    cols = [f"intra_f{j}" for j in range(p // 2)] + [f"peri1mm_f{j}" for j in range(p - p // 2)]
    table = pd.DataFrame(X, index=ids, columns=cols)
    for k in range(1, perturb + 1):
        noise = rng.normal(0, 0.05, X.shape) * X.std(axis=0)
        table = table.join(
            pd.DataFrame(X + noise, index=ids, columns=cols).add_prefix(f"perturb{k}__")
        )
    sites = pd.Series(devices, index=ids, name="device")
    return Design.from_tables(table, pd.Series(y, index=ids), None, sites=sites)


def _search(tmp_path, *over, design=None, name="s"):
    cfg = compose_config(*SEARCH, *BY_SITE, *FAST, *over, space=SPACE)
    design = design if design is not None else device_design()
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return cfg, design, nested_search(cfg, design, storage, name, progress=lambda s: None)


@pytest.mark.filterwarnings("ignore")
def test_leave_one_site_out_outer_folds_hold_out_exactly_one_site_each(tmp_path):
    cfg, design, res = _search(tmp_path, "selection.harmonise=combat")
    folds = res.folds
    assert list(folds["held_out_site"]) == ["A", "B", "C"] and len(folds) == 3
    for row in folds.itertuples():
        test_ids = res.oof.loc[(res.oof["repeat"] == row.repeat) & (res.oof["fold"] == row.fold)]
        held = set(design.sites.loc[test_ids["case_id"]])
        assert held == {row.held_out_site}  # the fold's test cases: exactly one site ...
        assert len(test_ids) == (design.sites == row.held_out_site).sum()  # ... all of it
        assert row.n_train == (design.sites != row.held_out_site).sum()
    assert res.oof["case_id"].is_unique and len(res.oof) == len(design.y)
    est = res.estimate
    assert est["estimate_kind"] == "nested leave-one-site-out"
    assert est["held_out_sites"] == ["A", "B", "C"] and est["outer_folds"] == 3
    assert est["outer_repeats"] == 1 and "estimate_kind" in est["kinds"]
    assert est["mean_outer_auc"] == pytest.approx(folds["outer_auc"].mean())


@pytest.mark.filterwarnings("ignore")
def test_combat_in_the_outer_refit_and_the_inner_cv_learns_from_training_rows_only(tmp_path):
    """The outer predictions of the search are those of a pipeline whose ComBat step was fitted
    on the training sites' rows only: its batch statistics equal combatlearn's fitted on exactly
    those rows, and differ from a fit that saw the held-out site too."""
    cfg, design, res = _search(tmp_path, "selection.harmonise=combat")
    seed = int(cfg.seed)
    row = res.folds.iloc[1]  # site B held out
    cand = candidate_from_params(json.loads(row["params"]), cfg)
    assert cand.selection["harmonise"] == "combat"
    train = design.sites.index[design.sites != row["held_out_site"]]
    test = design.sites.index[design.sites == row["held_out_site"]]
    cols = design.columns(cand)
    pipe = build_pipeline(cand, seed, design)
    assert pipe.steps[0][0] == "harmonise"
    pipe.fit(design.X.loc[train, cols], design.y.loc[train])
    oof = res.oof.set_index("case_id")["prob"]
    np.testing.assert_allclose(pipe.predict_proba(design.X.loc[test, cols])[:, 1], oof.loc[test])
    step = pipe.named_steps["harmonise"]
    assert list(step.batches_) == ["A", "C"]  # the held-out site is no batch of the fit

    def combat(ids):
        model = ComBatModel(method="johnson")
        model.fit(
            design.X.loc[ids, cols].reset_index(drop=True),
            batch=design.sites.loc[ids].reset_index(drop=True),
        )
        return model

    own, everyone = combat(train), combat(design.X.index)
    for attr in ("_grand_mean", "_gamma_star", "_delta_star"):  # the step keeps them as arrays
        np.testing.assert_allclose(
            np.asarray(getattr(step, attr[1:] + "_")), np.asarray(getattr(own, attr))
        )
    assert not np.allclose(step.grand_mean_, np.asarray(everyone._grand_mean))
    # the inner CV: stratified within the training sites, ComBat refitted in each inner fold;
    # the memoised prefixes give what whole pipelines refitted per fold give
    inner = InnerCV(design, train, 3, seed, reuse=True)
    plain = InnerCV(design, train, 3, seed, reuse=False)
    assert inner.score(cand)[0] == pytest.approx(plain.score(cand)[0])
    for tr, _ in inner.splits:
        assert set(design.sites.loc[train[tr]]) == {"A", "C"}  # every training site in each


@pytest.mark.filterwarnings("ignore")
def test_robustness_filter_and_combat_run_inside_the_search(tmp_path):
    design = device_design(perturb=2)
    assert all(perturbed_column(2, c) in design.regions["intra"] for c in ["intra_f0"])
    cfg, design, res = _search(
        tmp_path,
        "selection.harmonise=combat",
        "selection.robustness_threshold=0.5",
        design=design,
    )
    cand = candidate_from_params(json.loads(res.folds["params"].iloc[0]), cfg)
    pipe = build_pipeline(cand, int(cfg.seed), design)
    assert [n for n, _ in pipe.steps[:3]] == ["robust", "harmonise", "scale"]
    cols = design.columns(cand)
    assert any(c.startswith("perturb") for c in cols)  # the filter's input reaches the fit
    pipe.fit(design.X[cols], design.y)
    assert not any(c.startswith("perturb") for c in pipe[:-1].get_feature_names_out())
    assert res.estimate["mean_outer_auc"] > 0.6  # the planted effect survives both steps


@pytest.mark.filterwarnings("ignore")
def test_train_on_sites_test_on_a_site_is_one_outer_fold(tmp_path):
    cfg, design, res = _search(
        tmp_path, "split.method=site", "split.train_sites=[A,B]", "split.test_sites=[C]"
    )
    assert list(res.folds["held_out_site"]) == ["C"]
    assert set(design.sites.loc[res.oof["case_id"]]) == {"C"}
    assert res.estimate["estimate_kind"] == "nested train-on-sites test-on-sites"


def test_stratified_outer_folds_unchanged_and_site_class_counts(compose):
    cfg = compose_config(*SEARCH, "search.outer_folds=3", "search.outer_repeats=2")
    design = device_design()
    folds = outer_folds(cfg, design.y, design.sites, 0)
    assert len(folds) == 6 and all(f.site is None for f in folds)
    from sklearn.model_selection import RepeatedStratifiedKFold

    ref = RepeatedStratifiedKFold(n_splits=3, n_repeats=2, random_state=0)
    for f, (tr, te) in zip(folds, ref.split(np.zeros(len(design.y)), design.y), strict=True):
        assert (f.train == tr).all() and (f.test == te).all()
    # a held-out site with one class cannot give an AUC: said before any work
    cfg = compose_config(*SEARCH, *BY_SITE, "search.inner_folds=3")
    y = design.y.copy()
    y[design.sites == "B"] = 1
    problems = site_fold_problems(cfg, y, design.sites, {0: "neg", 1: "pos"})
    assert problems and "held-out site B has 0 case(s) of class neg" in problems[0][0]
    with pytest.raises(ConfigError, match="held-out site B"):
        outer_folds(cfg, y, design.sites, 0)
    with pytest.raises(ConfigError, match="data.site_column"):
        outer_folds(cfg, y, None, 0)


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_search_by_site_end_to_end_on_three_synthetic_devices(tmp_path):
    """``python -m her2study +exp=search`` with leave_one_site_out on the generator's three
    devices, ComBat in the fold: outer_folds.csv names each held-out site, by_site.csv has the
    held-out rows of every site, nested_estimate.json says what kind of estimate it is."""
    narrow = [f"search.space.{d}=null" for d in NOT_SEARCHED] + [
        "search.space.model.choices=[logistic]"
    ]
    run_cli(
        [
            "+exp=search",
            "extractor=fast",
            "data.synthetic.n_cases=60",
            "data.synthetic.devices=3",
            "data.synthetic.band_strength=6",
            "data.site_column=device",
            "data.clinical_columns=[]",
            "search.use_clinical=false",
            "region.ring_widths_mm=[1.0]",
            "region.annotation_check=false",
            "split.method=leave_one_site_out",
            "selection.harmonise=combat",
            *narrow,
            *FAST,
            "search.final=true",
            "tracking.enabled=false",
            "execution.n_jobs=1",
            "execution.progress=false",
            f"cache_dir={tmp_path / 'cache'}",
            "hydra.run.dir=out",
        ],
        tmp_path,
        timeout=1700,
    )
    out = tmp_path / "out"
    folds = pd.read_csv(out / "outer_folds.csv")
    assert sorted(folds["held_out_site"]) == ["A", "B", "C"]
    manifest = pd.read_csv(next((tmp_path / "cache" / "synthetic").glob("*/manifest.csv")))
    device = manifest.set_index("case_id")["device"]
    oof = pd.read_csv(out / "oof_predictions.csv")
    for (r, k), g in oof.groupby(["repeat", "fold"]):
        site = folds.loc[(folds["repeat"] == r) & (folds["fold"] == k), "held_out_site"].item()
        assert set(device.loc[g["case_id"]]) == {site}
    by_site = pd.read_csv(out / "by_site.csv")
    winner = by_site[by_site["signature"] == "nested search"]
    assert set(winner["site"]) == {"A", "B", "C", "all (pooled)"}
    assert (winner["kind"] == "nested leave-one-site-out").all()
    assert (winner["set"] == "held_out_site").all()
    each = winner[winner["site"] != "all (pooled)"]
    assert (each["held_out"] == each["site"]).all()
    est = json.loads((out / "nested_estimate.json").read_text())
    assert est["estimate_kind"] == "nested leave-one-site-out" and "estimate_kind" in est["kinds"]
    html = (out / "report.html").read_text()
    assert "nested leave-one-site-out" in html and "Per site (AUC, calibration" in html


def test_labels_are_permuted_within_each_site():
    design = device_design()
    y = design.y.copy()
    y[(design.sites == "A").to_numpy() & (np.arange(len(y)) % 3 == 0)] = 1  # A: more positives
    design = design.__class__(**{**design.__dict__, "y": y})
    perm = permuted_design(design, 0, 0).y
    assert not perm.equals(y)
    pd.testing.assert_series_equal(perm.groupby(design.sites).sum(), y.groupby(design.sites).sum())


def test_preflight_counts_classes_per_held_out_site():
    from her2study.preflight import check_search_folds

    cfg = compose_config(*SEARCH, *BY_SITE, "search.inner_folds=3")
    design = device_design()
    table = pd.DataFrame({"device": design.sites})
    names = {0: "neg", 1: "pos"}
    assert check_search_folds(cfg, design.y, names, "search", table) == []
    y = design.y.copy()
    y[design.sites == "C"] = 0
    problems = check_search_folds(cfg, y, names, "search", table)
    assert [p.message for p in problems] == ["held-out site C has 0 case(s) of class pos"]
    assert "split.test_sites" in problems[0].fix
    gone = check_search_folds(cfg, y, names, "search", table.rename(columns={"device": "x"}))
    assert "data.site_column='device' is not a cohort column" in gone[0].message


@pytest.mark.parametrize(
    "over, words",
    [
        (["split.method=leave_one_site_out"], "needs data.site_column"),
        (["selection.harmonise=combat"], "needs each case's device or site"),
        (
            ["data.site_column=device", "selection.harmonise=combat"]
            + ["selection.harmonise_covariates=[label]"],
            "must not hold the label",
        ),
        (
            ["data.site_column=device", "selection.harmonise=combat"]
            + ["selection.harmonise_covariates=[bmi]"],
            "data.clinical_columns",
        ),
    ],
)
def test_a_site_config_error_is_refused_before_any_work(tmp_path, monkeypatch, over, words):
    from her2study.tasks.search import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=words):
        run(compose_config("+exp=search", *SEARCH, f"cache_dir={tmp_path / 'cache'}", *over))
    assert not (tmp_path / "cache").exists()  # no cohort written, nothing extracted
