"""The nested search: space specs, reuse equals refitting, no leakage through the search, the
planted ring found, storage errors, resume after SIGKILL, two workers on one SQLite study.

Real Optuna storages (SQLite / journal files in tmp), real pyradiomics features, real
subprocesses. Configs are composed with Hydra's compose API (the tasks also run from the CLI once
registered)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import CONF, SHARED_RINGS, SMALL, compose_config

from her2study.errors import ConfigError
from her2study.search import (
    Candidate,
    Design,
    InnerCV,
    candidate_from_params,
    nested_search,
    open_storage,
    parse_space,
    search_defaults,
    suggest,
)

# every config of this file: the search task, no tracking, no progress bar
SEARCH = ["task=search", "tracking=off", "execution.progress=false"]

NOISE_SPACE = {
    "ring_width_mm": {"type": "categorical", "choices": [0, 1]},
    "corr_threshold": {"type": "categorical", "choices": [0.8, 0.9]},
    "mw_alpha": {"type": "categorical", "choices": [0.05, 0.2]},
    "model": {"type": "categorical", "choices": ["logistic", "ridge"]},
    "ridge": {"C": {"type": "float", "low": 0.01, "high": 10, "log": True}},
}
MODELS_ONLY = {"model": {"type": "categorical", "choices": ["logistic", "ridge"]}}


@pytest.fixture(scope="module")
def noise_table(tmp_path_factory):
    """A features table of noise with shuffled labels: 120 cases, tumour + 1 mm ring columns."""
    rng = np.random.default_rng(7)
    n = 120
    df = pd.DataFrame(
        rng.standard_normal((n, 100)),
        columns=[f"intra_f{i}" for i in range(50)] + [f"peri1mm_f{i}" for i in range(50)],
    )
    df.insert(0, "case_id", [f"N{i:03d}" for i in range(n)])
    df["label"] = rng.permutation(np.repeat([0, 1], n // 2))
    path = tmp_path_factory.mktemp("noise") / "noise.csv"
    df.to_csv(path, index=False)
    return path


def noise_overrides(table, storage, study="noise"):
    return [
        "task=search",
        f"study={study}",
        "data=features",
        f"data.features_table={table}",
        "data.clinical_columns=[]",
        "search.inner_folds=3",
        "selection.lasso_cv=3",
        f"search.storage={storage}",
        "search.final=false",
    ]


# ------------------------------------------------------------------------------------------
# the space
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"ring_widht_mm": {"type": "categorical", "choices": [1]}},
            "search.space.ring_widht_mm: unknown dimension",
        ),
        (
            {"corr_threshold": {"type": "float", "low": 0.95, "high": 0.8}},
            "search.space.corr_threshold: low (0.95) must be below high (0.8)",
        ),
        (
            {"mw_alpha": {"type": "float", "low": 0, "high": 0.1, "log": True}},
            "search.space.mw_alpha: log: true needs low > 0",
        ),
        (
            {"model": {"type": "categorical", "choices": ["logistic", "xgboost"]}},
            "search.space.model: ['xgboost'] not allowed",
        ),
        (
            {"model": {"type": "categorical", "choices": ["svm"]}, "svm": {"Cee": 1.0}},
            "search.space.svm.Cee: 'Cee' is not a parameter of the svm estimator",
        ),
        (
            {"ridge.C": {"type": "float", "low": 1e-3, "high": 10}},
            "search.space.ridge.C applies only when model is in ['ridge']",
        ),
        (
            {"lasso_rule": {"type": "categorical", "choices": ["min", "max"]}},
            "search.space.lasso_rule: ['max'] not allowed",
        ),
        (
            {"ring_width_mm": {"type": "categorical", "choices": [-1, 1]}},
            "search.space.ring_width_mm: [-1] not allowed",
        ),
        ({"corr_threshold": {"type": "gaussian"}}, "search.space.corr_threshold.type must be"),
        (
            {"corr_threshold": {"type": "float", "low": 0.8, "high": 0.9, "stepp": 0.1}},
            "search.space.corr_threshold: unknown spec key(s) ['stepp']",
        ),
        (
            {"mw_alpha": {"type": "categorical", "choices": [0.05], "when": {"modle": "svm"}}},
            "search.space.mw_alpha.when.modle: 'modle' is not a dimension",
        ),
    ],
)
def test_bad_specs_name_the_key(space, message):
    with pytest.raises(ConfigError) as err:
        parse_space(space, {"model": "logistic"})
    assert message in str(err.value)


def test_default_space_is_conditional_and_maps_to_optuna():
    cfg = compose_config(*SEARCH)
    defaults = search_defaults(cfg)
    dims = parse_space(cfg.search.space, defaults)
    names = [d.name for d in dims]
    assert names.index("model") < names.index("svm.C")  # conditions first
    dist = {d.name: d.distribution() for d in dims}
    assert isinstance(dist["ridge.C"], optuna.distributions.FloatDistribution)
    assert dist["ridge.C"].log and dist["random_forest.n_estimators"] is None  # fixed
    assert dist["ring_width_mm"].choices == (0, 0.5, 1, 1.5, 2, 3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []

    def objective(trial):
        params = suggest(trial, dims, defaults)
        seen.append(params)
        return 0.0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=40)
    for p in seen:
        own = {k.split(".")[0] for k in p if "." in k}
        assert own <= {p["model"]}, p  # a model's parameters only in its own trials
        if p["model"] == "random_forest":
            assert p["random_forest.n_estimators"] == 200
        cand = candidate_from_params(p, cfg)
        assert cand.selection["corr_threshold"] in (0.8, 0.85, 0.9, 0.95)  # stepped, tidy
    assert {p["model"] for p in seen} == {"logistic", "ridge", "svm", "random_forest"}


def test_space_widths_must_be_extracted(noise_table, tmp_path, monkeypatch):
    from her2study.tasks.search import run

    monkeypatch.chdir(tmp_path)  # the default cache_dir and outputs/ are relative to the cwd
    cfg = compose_config(*SEARCH, "study=w", "search.storage=sqlite:///" + str(tmp_path / "w.db"))
    with pytest.raises(ConfigError, match=r"width\(s\) \[0.5, 1.5, 3\] mm whose features are"):
        run(cfg)  # region.ring_widths_mm=[1, 2] by default; fails before any extraction
    assert not (tmp_path / ".her2study_cache").exists()
    over = noise_overrides(noise_table, "sqlite:///" + str(tmp_path / "n.db"))
    space = {"ring_width_mm": {"type": "categorical", "choices": [0, 2]}}
    with pytest.raises(ConfigError, match=r"no features for width\(s\) \[2\] mm"):
        run(compose_config(*SEARCH, *over, space=space))


# ------------------------------------------------------------------------------------------
# storage
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("not-a-url", "is not a storage URL"),
        ("sqlite:////no/such/folder/x.db", "does not exist"),
        ("sqlite:///:memory:", "in-memory or malformed"),
        ("journal:////no/such/folder/x.log", "does not exist"),
        ("postgresql+psycopg2://u:p@127.0.0.1:1/db", "cannot be opened"),
        ("nosuchdialect://x", "cannot be opened"),
    ],
)
def test_unopenable_storage_is_a_config_error(url, message):
    with pytest.raises(ConfigError, match=message):
        open_storage(url)


def test_bad_storage_fails_before_any_work(tmp_path, monkeypatch):
    from her2study.tasks.search import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="cannot be opened"):
        run(compose_config(*SEARCH, "search.storage=nosuchdialect://x"))
    assert not (tmp_path / ".her2study_cache").exists()


def test_journal_storage_runs_and_resumes(tmp_path):
    url = f"journal:///{tmp_path / 'journal.log'}"
    cfg = compose_config(
        *SEARCH,
        "study=j",
        "search.n_trials=3",
        "search.sampler=random",
        "search.outer_folds=2",
        space=MODELS_ONLY,
    )
    design = _noise_design(60, 30)
    storage = open_storage(url)
    res = nested_search(cfg, design, storage, "j", final=False, progress=lambda s: None)
    assert len(res.folds) == 2
    study = optuna.load_study(study_name="j/outer0_0", storage=storage)
    assert len(study.trials) == 3
    cfg2 = compose_config(
        *SEARCH,
        "study=j",
        "search.n_trials=4",
        "search.sampler=random",
        "search.outer_folds=2",
        space=MODELS_ONLY,
    )
    nested_search(cfg2, design, open_storage(url), "j", final=False, progress=lambda s: None)
    assert len(optuna.load_study(study_name="j/outer0_0", storage=storage).trials) == 4


def test_changed_space_is_not_resumed(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    design = _noise_design(60, 30)
    cfg = compose_config(
        *SEARCH,
        "search.n_trials=1",
        "search.outer_folds=2",
        space={"model": {"type": "categorical", "choices": ["logistic"]}},
    )
    nested_search(cfg, design, open_storage(url), "s", final=False, progress=lambda s: None)
    cfg2 = compose_config(
        *SEARCH,
        "search.n_trials=1",
        "search.outer_folds=2",
        space={"model": {"type": "categorical", "choices": ["ridge"]}},
    )
    with pytest.raises(ConfigError, match="exists with another space"):
        nested_search(cfg2, design, open_storage(url), "s", final=False, progress=lambda s: None)


# ------------------------------------------------------------------------------------------
# reuse of fitted steps
# ------------------------------------------------------------------------------------------


def _noise_design(n=80, p=60, seed=3):
    rng = np.random.default_rng(seed)
    idx = pd.Index([f"C{i:03d}" for i in range(n)], name="case_id")
    y = pd.Series(rng.permutation(np.repeat([0, 1], n // 2)), index=idx)
    X = pd.DataFrame(
        rng.standard_normal((n, 2 * p)),
        index=idx,
        columns=[f"intra_f{i}" for i in range(p)] + [f"peri1mm_f{i}" for i in range(p)],
    )
    X.iloc[:, :5] += 0.8 * y.to_numpy()[:, None]  # some signal, so selection is not empty
    clinical = pd.DataFrame({"age": rng.normal(50, 10, n)}, index=idx)
    return Design.from_tables(X, y, clinical)


def test_reuse_gives_the_same_predictions_as_refitting():
    cfg = compose_config(*SEARCH)
    design = _noise_design()
    sel = dict(search_defaults(cfg))
    sel.pop("model"), sel.pop("use_clinical")
    sel["lasso_cv"] = 3
    cands = [
        Candidate(1.0, False, {**sel, "corr_threshold": 0.9}, "logistic", {}),
        Candidate(1.0, False, {**sel, "corr_threshold": 0.9}, "ridge", {"C": 0.1}),
        Candidate(1.0, False, {**sel, "corr_threshold": 0.9}, "svm", {"C": 3.0}),
        Candidate(
            1.0,
            True,
            {**sel, "corr_threshold": 0.9, "lasso_rule": "1se"},
            "random_forest",
            {"max_depth": 3, "n_estimators": 50},
        ),
        Candidate(0.0, False, {**sel, "mw_alpha": 0.2}, "lasso_logistic", {}),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = InnerCV(design, design.X.index, 3, seed=5, reuse=True)
        plain = InnerCV(design, design.X.index, 3, seed=5, reuse=False)
        for cand in cands:
            for a, b in zip(fast.fold_probs(cand), plain.fold_probs(cand), strict=True):
                np.testing.assert_array_equal(a, b)
        for cand in cands:  # second time: all from the memo
            fast.fold_probs(cand)
    assert plain.fits == 3 * (4 * 5 + 4) and plain.hits == 0  # steps: lasso_logistic has 4
    # ridge and svm reuse logistic's scale/corr/mw/lasso prefix; the repeats reuse everything
    assert fast.hits >= 2 * 4 * 3 + 5 * 3
    assert fast.fits <= plain.fits - 3 * 2 * 4  # ridge and svm refit only their model


# ------------------------------------------------------------------------------------------
# no leakage through the search
# ------------------------------------------------------------------------------------------


def test_nested_auc_on_shuffled_noise_is_chance(noise_table, tmp_path, monkeypatch):
    from her2study.tasks.search import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_config(
        *SEARCH,
        *noise_overrides(noise_table, f"sqlite:///{tmp_path / 'noise.db'}"),
        "search.n_trials=5",
        "search.outer_folds=4",
        "search.outer_repeats=2",
        space=NOISE_SPACE,
    )
    pooled = run(cfg)
    out = tmp_path / "outputs" / "noise"
    est = json.loads((out / "nested_estimate.json").read_text())
    folds = pd.read_csv(out / "outer_folds.csv")
    assert len(folds) == 8
    assert abs(pooled - 0.5) < 0.15, est
    assert abs(est["mean_outer_auc"] - 0.5) < 0.12, est
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert oof.groupby("repeat")["case_id"].nunique().tolist() == [120, 120]  # each case once
    freq = pd.read_csv(out / "feature_frequency.csv")
    assert freq["frequency"].between(0, 1).all()
    assert (out / "roc_nested_oof.png").stat().st_size > 10_000
    report = (out / "report.html").read_text()
    assert "nested" in report.lower() and "data:image/png;base64," in report


# ------------------------------------------------------------------------------------------
# resume after SIGKILL, two workers on one study (real subprocesses)
# ------------------------------------------------------------------------------------------

WORKER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from hydra import compose, initialize_config_dir
    from her2study.config import register_configs
    from her2study.search import Design, nested_search, open_storage
    import her2study.search as hs
    register_configs()
    conf, slow, space, over = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=over)
    cfg.search.space = json.loads(space)
    if slow:  # make each trial last a while, so the kill lands mid-search
        score = hs.InnerCV.score
        def slow_score(self, *a, **k):
            time.sleep(slow)
            return score(self, *a, **k)
        hs.InnerCV.score = slow_score
    from her2study.tasks.search import load_design
    design, _ = load_design(cfg)
    storage = open_storage(hs.storage_url(cfg.search, cfg.study))
    res = nested_search(cfg, design, storage, cfg.study, final=False)
    print("POOLED", res.estimate["pooled_auc"])
    """
)


def _spawn(tmp_path, overrides, slow=0.0):
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    cmd = [
        sys.executable,
        str(script),
        str(CONF),
        str(slow),
        json.dumps(NOISE_SPACE),
        "search=default",
        "tracking=off",
        "execution.progress=false",
        *overrides,
    ]
    return subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _complete(storage, name):
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return []
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_resume_after_sigkill_keeps_completed_trials(noise_table, tmp_path):
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    over = noise_overrides(noise_table, url, "resume") + [
        "search.n_trials=6",
        "search.outer_folds=2",
    ]
    proc = _spawn(tmp_path, over, slow=0.3)
    storage = open_storage(url)
    deadline = time.time() + 120
    while time.time() < deadline and len(_complete(storage, "resume/outer0_1")) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.params for t in _complete(storage, "resume/outer0_0")}
    before_1 = {t.number: t.params for t in _complete(storage, "resume/outer0_1")}
    assert len(before) == 6 and 2 <= len(before_1) < 6
    proc = _spawn(tmp_path, over)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    after = {t.number: t.params for t in _complete(storage, "resume/outer0_0")}
    after_1 = {t.number: t.params for t in _complete(storage, "resume/outer0_1")}
    assert after == before  # the finished study was not rerun
    assert len(after_1) == 6  # resumed up to n_trials, not n_trials more
    assert all(after_1[k] == v for k, v in before_1.items())  # completed trials kept
    assert "6 trials" in out


def test_two_workers_share_one_sqlite_study(noise_table, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    over = noise_overrides(noise_table, url, "shared") + [
        "search.n_trials=8",
        "search.outer_folds=2",
    ]
    procs = [_spawn(tmp_path, over, slow=0.2) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    storage = open_storage(url)
    for name in ("shared/outer0_0", "shared/outer0_1"):
        trials = _complete(storage, name)
        workers = {t.user_attrs["worker"] for t in trials}
        assert len(workers) == 2, (name, workers)  # both processes contributed
        assert 8 <= len(trials) <= 9  # shared n_trials (a trial in flight may finish late)
        # per-trial seeds: the two workers' random start-up draws are not copies
        params = [json.dumps(t.params, sort_keys=True) for t in trials]
        assert len(set(params)) >= len(params) - 2


# ------------------------------------------------------------------------------------------
# the planted band (real pyradiomics features of a small synthetic cohort)
# ------------------------------------------------------------------------------------------

# the shared cohort (conftest.SMALL: 100 cases, signal 0-1 mm outside the lesion) and its
# features for the search space's five ring widths
BAND = [
    *SMALL,
    f"region.ring_widths_mm=[{','.join(map(str, SHARED_RINGS))}]",
    "selection.lasso_cv=3",
]


def test_search_over_ring_widths_finds_the_signal_and_estimates_every_width(
    synthetic_cache, tmp_path, monkeypatch
):
    """A search over the ring width on the shared synthetic cohort (signal planted 0-1 mm outside
    the lesion) finds the signal and gives every width its own nested estimate.

    It used to assert that rings reaching 1 mm *win* most of the 5 outer folds. That premise does
    not hold on this generator: the planted 0-1 mm band reaches the tumour's own features
    (experiments/margins/README.md: label-flip renderings change 22 % of the mask's pixels), and
    with 10 random trials the winners followed the sampler's seed. Which widths carry the signal
    is proven where the signal is away from the tumour: tests/test_band_phantom.py (slow)."""
    from her2study.tasks.search import run

    monkeypatch.chdir(tmp_path)
    widths = [0, 0.5, 1, 1.5, 2, 3]
    space = {
        "ring_width_mm": {"type": "categorical", "choices": widths},
        "mw_alpha": {"type": "categorical", "choices": [0.05, 0.1]},
    }
    cfg = compose_config(
        *SEARCH,
        *BAND,
        f"cache_dir={synthetic_cache}",
        "study=band",
        "search.n_trials=10",
        "search.outer_folds=5",
        "search.inner_folds=3",
        "search.final=false",
        space=space,
    )
    run(cfg)
    out = tmp_path / "outputs" / "band"
    folds = pd.read_csv(out / "outer_folds.csv")
    assert len(folds) == 5 and set(folds["ring_width_mm"]) <= set(widths)
    assert folds["outer_auc"].mean() > 0.7  # the planted signal is found
    regions = pd.read_csv(out / "region_estimates.csv")
    assert list(regions.columns[:5]) == ["region", "width_mm", "nested_auc", "ci_low", "ci_high"]
    est = regions.dropna(subset=["nested_auc"])
    assert len(est) >= 3 and set(est["width_mm"]) <= set(map(float, widths))
    assert ((est["ci_low"] <= est["nested_auc"]) & (est["nested_auc"] <= est["ci_high"])).all()


@pytest.mark.slow
def test_nested_estimate_agrees_with_a_fresh_cohort(tmp_path, monkeypatch):
    """The nested estimate on the 209-case synthetic default (fast features) against the AUC of
    the exported configuration on 600 fresh cases from the same generator (another seed).
    Recorded in experiments/search/README.md; about 10 minutes on two cores."""
    from her2study.evaluation import auc_delong
    from her2study.tasks.common import cohort_and_features
    from her2study.tasks.export import fit_candidate
    from her2study.tasks.search import load_design, run

    monkeypatch.chdir(tmp_path)
    dev = [
        "extractor=fast",
        "region.ring_widths_mm=[0.5,1,1.5,2,3]",
        "selection.lasso_cv=5",
        f"cache_dir={tmp_path / 'cache'}",
        "study=fresh",
        "task=search",
        "search.outer_folds=5",
        "search.inner_folds=3",
        "search.n_trials=15",
    ]
    cfg = compose_config(*SEARCH, *dev)
    pooled = run(cfg)
    est = json.loads((tmp_path / "outputs" / "fresh" / "nested_estimate.json").read_text())
    storage = open_storage(f"sqlite:///{tmp_path / 'outputs' / 'optuna_fresh.db'}")
    chosen = optuna.load_study(study_name="fresh/final", storage=storage).user_attrs["chosen"]
    cand = candidate_from_params(chosen, cfg)
    design, _ = load_design(cfg)
    pipe, metrics, _ = fit_candidate(cand, design, int(cfg.seed), 3)
    fresh_cfg = compose_config(
        *SEARCH, *dev, "data.synthetic.n_cases=600", "data.synthetic.seed=77"
    )
    cohort, fs = cohort_and_features(fresh_cfg)
    X = fs.table.join(cohort.table[list(design.clinical)])[design.columns(cand)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prob = pipe.predict_proba(X)[:, 1]
    fresh = auc_delong(cohort.labels.to_numpy(), prob)
    print(
        f"\nnested: pooled {est['pooled_auc']:.3f} ({est['pooled_auc_ci_low']:.3f}-"
        f"{est['pooled_auc_ci_high']:.3f}), mean outer {est['mean_outer_auc']:.3f} "
        f"({est['mean_outer_auc_ci_low']:.3f}-{est['mean_outer_auc_ci_high']:.3f}); "
        f"winners' inner {est['mean_inner_auc_of_winners']:.3f}; rings "
        f"{est['ring_width_counts']}; models {est['model_counts']}"
    )
    print(f"chosen: {cand.label()}; its CV AUC on the 209 {metrics['cv_auc']:.3f}")
    print(f"fresh 600: AUC {fresh.auc:.3f} ({fresh.ci_low:.3f}-{fresh.ci_high:.3f})")
    assert abs(fresh.auc - pooled) < 0.1
