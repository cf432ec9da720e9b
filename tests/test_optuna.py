"""Optuna as its users expect: MaxTrialsCallback bounds the trials, a pruner over inner folds
(intermediate values per fold), a module-level picklable sampler, Optuna's verbosity left as
found, config errors raised from inside a trial, and the storage readable with Optuna's public
API (what optuna-dashboard reads).

Real Optuna storages (SQLite files in tmp), real pipelines on small literal-seeded designs."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import optuna
import pytest
from conftest import compose_config
from optuna.trial import TrialState
from test_search import MODELS_ONLY, SEARCH, _noise_design

from her2study.errors import ConfigError
from her2study.search import (
    InnerCV,
    PerTrialSeedSampler,
    counted_states,
    make_objective,
    nested_search,
    open_storage,
    open_study,
    parse_space,
    run_study,
    search_defaults,
)

SMALL_SPACE = {
    "ring_width_mm": {"type": "categorical", "choices": [0, 1]},
    "mw_alpha": {"type": "categorical", "choices": [0.05, 0.2]},
    "model": {"type": "categorical", "choices": ["logistic", "ridge"]},
    "ridge": {"C": {"type": "float", "low": 0.01, "high": 10, "log": True}},
}


def _study_and_objective(tmp_path, cfg, design, name="s", pruner="none"):
    dims = parse_space(cfg.search.space, search_defaults(cfg))
    defaults = search_defaults(cfg)
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study = open_study(storage, name, cfg.search.sampler, 11, 3, {"data": "d"}, pruner)
    inner = InnerCV(design, design.X.index, int(cfg.search.inner_folds), 0)
    return study, make_objective(inner, dims, defaults, cfg, 0), storage


# ------------------------------------------------------------------------------------------
# sampler, verbosity, MaxTrialsCallback
# ------------------------------------------------------------------------------------------


def test_sampler_is_module_level_picklable_and_draws_the_same_after_pickling(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'p.db'}")
    study = open_study(storage, "p", "tpe", 123, 2, {"data": "d"})
    assert isinstance(study.sampler, PerTrialSeedSampler)
    clone = pickle.loads(pickle.dumps(study.sampler))
    assert isinstance(clone, PerTrialSeedSampler)
    assert (clone.kind, clone.seed, clone.n_startup_trials) == ("tpe", 123, 2)

    def draws(sampler):
        s = optuna.create_study(sampler=sampler)
        s.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("k", 0, 9), n_trials=5)
        return [t.params for t in s.trials]

    with _verbosity(logging.WARNING):
        assert draws(clone) == draws(PerTrialSeedSampler("tpe", 123, 2))
        assert draws(clone) != draws(PerTrialSeedSampler("tpe", 124, 2))


class _verbosity:
    def __init__(self, level):
        self.level = level

    def __enter__(self):
        self.before = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(self.level)

    def __exit__(self, *exc):
        optuna.logging.set_verbosity(self.before)


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG, logging.ERROR])
def test_search_leaves_optuna_verbosity_as_found(tmp_path, level):
    cfg = compose_config(*SEARCH, "search.n_trials=2", "search.outer_folds=2", space=MODELS_ONLY)
    seen = []
    score = InnerCV.score

    def spy(self, *a, **k):  # records the verbosity while the search runs
        seen.append(optuna.logging.get_verbosity())
        return score(self, *a, **k)

    with _verbosity(level):
        InnerCV.score = spy
        try:
            nested_search(
                cfg,
                _noise_design(40, 10),
                open_storage(f"sqlite:///{tmp_path / 'v.db'}"),
                "v",
                final=False,
                progress=lambda s: None,
            )
        finally:
            InnerCV.score = score
        assert optuna.logging.get_verbosity() == level
    # Optuna's default INFO (a line per trial) is quietened while the search runs, a level the
    # caller chose is kept
    assert set(seen) == {logging.WARNING if level == logging.INFO else level}


def test_max_trials_callback_counts_earlier_runs(tmp_path):
    cfg = compose_config(
        *SEARCH, "search.sampler=random", "search.inner_folds=3", space=SMALL_SPACE
    )
    study, objective, _ = _study_and_objective(tmp_path, cfg, _noise_design(60, 20))
    assert run_study(study, objective, 3) == 3
    assert run_study(study, objective, 5) == 5  # resumes: 2 more, not 5 more
    assert run_study(study, objective, 4) == 5  # already there: nothing runs
    assert len(study.trials) == 5


# ------------------------------------------------------------------------------------------
# errors inside a trial
# ------------------------------------------------------------------------------------------


def test_config_error_inside_a_trial_is_raised_not_a_failed_trial(tmp_path):
    """search.use_clinical=true on a design without clinical columns (not a dimension, so the
    space check does not see it): the first trial raises the config error with its fix."""
    cfg = compose_config(
        *SEARCH,
        "search.use_clinical=true",
        "search.n_trials=4",
        "search.outer_folds=2",
        space=MODELS_ONLY,
    )
    design = _noise_design(40, 10)
    design.clinical.clear()
    storage = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(ConfigError, match="use_clinical needs clinical columns"):
        nested_search(cfg, design, storage, "c", final=False, progress=lambda s: None)
    trials = optuna.load_study(study_name="c/outer0_0", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL]  # stopped at once, not retried


def test_fit_errors_fail_the_trial_and_the_search_goes_on(tmp_path):
    """Tumour-only candidates on constant tumour columns fail to fit (the correlation filter
    refuses constant features): FAILED trials, and the study still reaches n_trials COMPLETE."""
    design = _noise_design(60, 20)
    design.X[[c for c in design.X.columns if c.startswith("intra_")]] = 1.0
    cfg = compose_config(
        *SEARCH, "search.sampler=random", "search.inner_folds=3", space=SMALL_SPACE
    )
    study, objective, _ = _study_and_objective(tmp_path, cfg, design)
    assert run_study(study, objective, 4) == 4
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["ring_width_mm"] == 0 for t in failed)
    assert all(
        t.params["ring_width_mm"] == 1
        for t in study.trials
        if t.state.is_finished() and t.state == TrialState.COMPLETE
    )


# ------------------------------------------------------------------------------------------
# the pruner over inner folds
# ------------------------------------------------------------------------------------------


def test_default_search_does_not_prune_or_report():
    cfg = compose_config(*SEARCH)
    assert str(cfg.search.pruner) == "none"
    assert counted_states("none") == (TrialState.COMPLETE,)


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_pruner_stops_trials_between_inner_folds(tmp_path, pruner):
    cfg = compose_config(
        *SEARCH,
        "search.sampler=random",
        "search.inner_folds=4",
        f"search.pruner={pruner}",
        space=SMALL_SPACE,
    )
    study, objective, _ = _study_and_objective(tmp_path, cfg, _noise_design(80, 20), pruner=pruner)
    assert isinstance(study.pruner, optuna.pruners.BasePruner)
    n = run_study(study, objective, 14, states=counted_states(pruner))
    states = [t.state for t in study.trials]
    assert n == 14 and states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 14
    assert TrialState.PRUNED in states, states  # random candidates on noise: some trail
    for t in study.trials:
        aucs = t.user_attrs["fold_auc"]
        steps = sorted(t.intermediate_values)
        assert steps == list(range(len(aucs)))  # one intermediate value per inner fold run
        for i in steps:  # the value at fold i: the mean AUC of folds 0..i
            assert t.intermediate_values[i] == pytest.approx(np.mean(aucs[: i + 1]), abs=1e-5)
        if t.state == TrialState.COMPLETE:
            assert len(aucs) == 4 and t.value == pytest.approx(np.mean(aucs), abs=1e-5)
        else:
            assert len(aucs) < 4  # pruned before the last fold: the time saved


def test_pruned_search_is_a_nested_search_all_the_same(tmp_path):
    """With the pruner on, the best trial is still a COMPLETE one, refitted and scored on the
    outer test fold; outer_folds.csv counts COMPLETE + PRUNED trials."""
    cfg = compose_config(
        *SEARCH,
        "search.pruner=median",
        "search.sampler=random",
        "search.n_trials=8",
        "search.n_startup_trials=2",
        "search.inner_folds=3",
        "search.outer_folds=2",
        space=SMALL_SPACE,
    )
    storage = open_storage(f"sqlite:///{tmp_path / 'n.db'}")
    res = nested_search(
        cfg, _noise_design(80, 20), storage, "n", final=False, progress=lambda s: None
    )
    assert res.folds["n_trials"].tolist() == [8, 8]
    for k in range(2):
        study = optuna.load_study(study_name=f"n/outer0_{k}", storage=storage)
        assert study.best_trial.state == TrialState.COMPLETE
        assert res.folds["inner_auc"][k] == study.best_value


def test_pruner_is_recorded_and_a_study_is_not_resumed_with_another(tmp_path):
    """The pruner (with its settings) is a study attr like the design; resuming with another
    pruner, or the median pruner with other start-up trials, is refused before any trial."""
    storage = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    study = open_study(storage, "r/outer0_0", "random", 0, 3, {"data": "d"}, "median")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    stored = optuna.load_study(study_name="r/outer0_0", storage=storage).user_attrs
    assert stored["pruner"] == "median(n_startup_trials=3, n_warmup_steps=0)"
    for pruner, startup in (("none", 3), ("successive_halving", 3), ("median", 5)):
        with pytest.raises(ConfigError, match=r"made with the pruner median\(n_startup_trials=3"):
            open_study(storage, "r/outer0_0", "random", 0, startup, {"data": "d"}, pruner)
    resumed = open_study(storage, "r/outer0_0", "random", 0, 3, {"data": "d"}, "median")
    assert len(resumed.trials) == 2 and isinstance(resumed.pruner, optuna.pruners.MedianPruner)
    fresh = open_study(storage, "other/outer0_0", "random", 0, 3, {"data": "d"})
    assert fresh.user_attrs["pruner"] == "none"


# ------------------------------------------------------------------------------------------
# the storage through Optuna's public API (what optuna-dashboard reads)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A small finished search (2 outer folds + final, median pruner) in a SQLite file."""
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'optuna_d.db'}"
    cfg = compose_config(
        *SEARCH,
        "search.n_trials=4",
        "search.n_startup_trials=2",
        "search.pruner=median",
        "search.outer_folds=2",
        "search.inner_folds=3",
        space=MODELS_ONLY,
    )
    nested_search(
        cfg, _noise_design(40, 10), open_storage(url), "d", final=True, progress=lambda s: None
    )
    return url


def test_study_storage_reads_with_optunas_public_api(searched):
    url = searched
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(url)}
    assert set(summaries) == {"d/outer0_0", "d/outer0_1", "d/final"}
    for name, summary in summaries.items():
        assert summary.n_trials == 4 and summary.direction == optuna.study.StudyDirection.MAXIMIZE
        study = optuna.load_study(study_name=name, storage=url)  # a plain URL, no her2study
        assert {"data", "space", "design", "cohort"} <= set(study.user_attrs)
        for t in study.trials:
            assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            assert t.params["model"] in ("logistic", "ridge") and ":" in t.user_attrs["worker"]
            aucs = t.user_attrs["fold_auc"]
            assert sorted(t.intermediate_values) == list(range(len(aucs)))
            if t.state == TrialState.COMPLETE:
                assert len(aucs) == 3 and t.value == pytest.approx(np.mean(aucs), abs=1e-5)
    final = optuna.load_study(study_name="d/final", storage=url)
    assert final.user_attrs["chosen"]["model"] in ("logistic", "ridge")
    assert "mean_outer_auc" in final.user_attrs["nested_estimate"]


def test_nested_search_records_its_pruner_and_refuses_another_on_resume(searched):
    """Every study of the search (outer folds, final) records the median pruner it ran with; the
    same search resumed with search.pruner=none stops with the reason, nothing added."""
    url = searched
    for summary in optuna.get_all_study_summaries(url):
        attrs = optuna.load_study(study_name=summary.study_name, storage=url).user_attrs
        assert attrs["pruner"] == "median(n_startup_trials=2, n_warmup_steps=0)"
    cfg = compose_config(
        *SEARCH,
        "search.n_trials=4",
        "search.n_startup_trials=2",
        "search.pruner=none",
        "search.outer_folds=2",
        "search.inner_folds=3",
        space=MODELS_ONLY,
    )
    n_before = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(url)}
    with pytest.raises(ConfigError, match="made with the pruner median.*now none"):
        nested_search(
            cfg, _noise_design(40, 10), open_storage(url), "d", final=True, progress=lambda s: None
        )
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(url)} == n_before


@pytest.mark.server
@pytest.mark.slow
def test_optuna_dashboard_serves_our_studies(searched, tmp_path):
    """The documented command, ``optuna-dashboard <storage URL>``, on loopback: its REST API
    lists the studies and each trial's user attributes."""
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard (pip install -e '.[cluster]')")
    import json
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    exe = Path(sys.executable).with_name("optuna-dashboard")
    cmd = [str(exe)] if exe.exists() else [shutil.which("optuna-dashboard") or ""]
    if not cmd[0]:
        cmd = [sys.executable, "-c", "import sys; from optuna_dashboard._cli import main; main()"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "dashboard.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*cmd, searched, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
    )
    base = f"http://127.0.0.1:{port}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            return json.loads(resp.read())

    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                studies = get("/api/studies")["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline, "optuna-dashboard did not answer in 120 s"
                time.sleep(0.5)
        by_name = {s["study_name"]: s for s in studies}
        assert set(by_name) == {"d/outer0_0", "d/outer0_1", "d/final"}
        final_attrs = {a["key"] for a in by_name["d/final"]["user_attrs"]}
        assert {"chosen", "nested_estimate", "data"} <= final_attrs
        detail = get(f"/api/studies/{by_name['d/outer0_0']['study_id']}")
        assert len(detail["trials"]) == 4
        for trial in detail["trials"]:
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            assert len(json.loads(attrs["fold_auc"])) >= 1 and ":" in attrs["worker"]
            assert len(trial["intermediate_values"]) == len(json.loads(attrs["fold_auc"]))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
