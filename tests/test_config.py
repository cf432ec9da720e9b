"""The configuration as a user meets it: typed choices fail at compose time naming the allowed
values, tasks and models are Hydra groups whose ``_target_`` is real, each task composes only its
own settings, and importing the schema stays cheap. Real Hydra composition and real subprocesses.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import REPO, noise_features, run_cli, write_features_table
from hydra.errors import ConfigCompositionException
from hydra.utils import get_method
from omegaconf.errors import ValidationError

from her2study.models import MODEL_FACTORIES


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("evaluation.threshold=Youden", "[youden, fixed]"),
        ("evaluation.ci=bootsrap", "[delong, bootstrap]"),
        ("selection.lasso_rule=1SE", "[min, 1se]"),
        ("region.fov=None", "[nonzero, none]"),
        ("execution.backend=daks", "dask"),
        ("data.source=manifests", "[synthetic, manifest, features]"),
        ("model.name=ridg", "ridge"),
    ],
)
def test_a_mistyped_choice_fails_at_compose_time_naming_the_allowed_values(
    compose, override, allowed
):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose("+exp=paper", override)
    text = str(err.value) + str(getattr(err.value, "__cause__", ""))
    assert allowed in text


def test_typo_in_a_choice_on_the_command_line_exits_2_before_any_work(tmp_path):
    res = run_cli(["+exp=paper", "evaluation.threshold=Youden"], tmp_path, code=None, timeout=120)
    assert res.returncode == 2
    assert "expected one of [youden, fixed]" in res.stderr + res.stdout
    assert not (tmp_path / ".her2study_cache").exists()
    assert not (tmp_path / "outputs").exists()


def test_unknown_model_exits_2_listing_the_models(tmp_path):
    res = run_cli(["+exp=paper", "model=ridg"], tmp_path, code=None, timeout=120)
    assert res.returncode == 2
    err = res.stderr + res.stdout
    assert "Could not find 'model/ridg'" in err
    for name in MODEL_FACTORIES:
        assert name in err
    assert not (tmp_path / ".her2study_cache").exists()


def test_every_model_file_names_its_estimator_factory(compose):
    files = sorted((REPO / "conf" / "model").glob("*.yaml"))
    assert {f.stem for f in files} == set(MODEL_FACTORIES)
    for f in files:
        cfg = compose("+exp=paper", f"model={f.stem}")
        assert cfg.model.name == f.stem
        assert get_method(cfg.model._target_) is MODEL_FACTORIES[f.stem]


def test_every_task_file_targets_a_run_function(compose):
    files = sorted((REPO / "conf" / "task").glob("*.yaml"))
    assert {f.stem for f in files} >= {"synth", "extract", "paper", "search", "export", "predict"}
    for f in files:
        cfg = compose(f"task={f.stem}")
        assert cfg.task.name == f.stem
        fn = get_method(cfg.task._target_)
        assert callable(fn) and fn.__module__ == f"her2study.tasks.{f.stem}"


def test_each_task_composes_only_its_own_settings(compose):
    paper = compose("+exp=paper")
    assert paper.task.name == "paper"
    assert paper.search is None and paper.predict is None
    search = compose("+exp=search")
    assert search.search is not None and search.search.n_trials > 0 and search.predict is None
    predict = compose("task=predict")
    assert predict.predict is not None and predict.search is None


def test_a_search_setting_on_a_paper_run_is_one_clear_error(tmp_path):
    res = run_cli(["+exp=paper", "search.n_trials=3"], tmp_path, code=None, timeout=120)
    assert res.returncode == 2
    err = res.stderr + res.stdout
    assert "search.* settings do not apply to task=paper" in err and "Traceback" not in err


def test_the_synthetic_defaults_have_one_source(compose):
    """The YAML the CLI uses adds nothing to the generator's spec but the case count."""
    from her2study.config import SyntheticSpec

    cfg = compose("+exp=paper")
    spec = SyntheticSpec()
    for key, value in cfg.data.synthetic.items():
        assert getattr(spec, key) == value, key
    raw = yaml.safe_load((REPO / "conf" / "data" / "synthetic.yaml").read_text())
    assert set(raw["synthetic"]) == {"n_cases"}


def test_importing_the_schema_imports_no_image_model_or_tracking_library():
    code = (
        "import sys, her2study.config, her2study.choices;"
        "heavy = ['SimpleITK', 'radiomics', 'sklearn', 'mlflow', 'optuna', 'matplotlib', 'scipy'];"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_paper_task_imports_matplotlib_only_to_draw():
    """A warm run takes every figure from the fit cache: importing the task (and the figure
    modules) costs no matplotlib import; drawing one does."""
    code = (
        "import sys, her2study.tasks.paper, her2study.evaluation.figures as f;"
        "before = 'matplotlib' in sys.modules;"
        "f.plot_roc({'a': ([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.6])}, band=None);"
        "print(before, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_model_sweep_runs_one_job_per_model(tmp_path):
    """``-m model=logistic,ridge`` on a small features table: two real paper jobs."""
    X, clinical, y = noise_features(n=80, p=15)
    write_features_table(tmp_path / "features.csv", X, clinical, y)
    run_cli(
        [
            "-m",
            "+exp=paper",
            "evaluation.bootstrap_reps=0",
            "model=logistic,ridge",
            "data=features",
            f"data.features_table={tmp_path / 'features.csv'}",
            "data.clinical_columns=[age,er_pct]",
            "region.ring_widths_mm=[1.0]",
            "split.balance_on=null",
            "selection.lasso_cv=3",
            "evaluation.cv_folds=3",
            "tracking=off",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
        ],
        tmp_path,
        timeout=600,
    )
    jobs = sorted((tmp_path / "multirun").glob("*/metrics.csv"))
    assert len(jobs) == 2
    chosen = [yaml.safe_load((j.parent / ".hydra" / "overrides.yaml").read_text()) for j in jobs]
    assert sorted(o for c in chosen for o in c if o.startswith("model=")) == [
        "model=logistic",
        "model=ridge",
    ]
