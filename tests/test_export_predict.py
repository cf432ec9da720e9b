"""Search -> export -> re-run and predict, end to end on real files: a small synthetic cohort with
real pyradiomics features, an Optuna SQLite study, a real MLflow SQLite store in tmp; and the one
model format (her2study.model_artifact): its threshold, and what its loader refuses."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL, compose_config, run_cli
from omegaconf import open_dict

from her2study.errors import ConfigError
from her2study.model_artifact import load_model

SPACE = {
    "ring_width_mm": {"type": "categorical", "choices": [0.5, 1]},
    "use_clinical": True,  # fixed: the model needs clinical columns (predict checks them)
    "mw_alpha": {"type": "categorical", "choices": [0.05, 0.1]},
    "model": {"type": "categorical", "choices": ["logistic", "ridge"]},
    "ridge": {"C": {"type": "float", "low": 0.01, "high": 10, "log": True}},
}


def with_predict(cfg, **values):
    with open_dict(cfg):
        for k, v in values.items():
            cfg.predict[k] = v
    return cfg


@pytest.fixture(scope="module")
def searched(tmp_path_factory, synthetic_cache):
    """A finished search (nested + final) on the shared synthetic cohort (conftest.SMALL: 100
    cases, its cached features), tracked in MLflow."""
    import os

    from her2study.tasks.search import run

    root = tmp_path_factory.mktemp("exp")
    common = [
        *SMALL,
        "region.ring_widths_mm=[0.5,1]",
        "selection.lasso_cv=3",
        f"cache_dir={synthetic_cache}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        "study=ep",
        f"search.storage=sqlite:///{root / 'optuna.db'}",
        "search.outer_folds=3",
        "search.inner_folds=3",
        "search.n_trials=4",
    ]
    cwd = Path.cwd()
    try:
        os.chdir(root)
        run(compose_config("task=search", *common, space=SPACE))
    finally:
        os.chdir(cwd)
    return root, common


def test_search_is_tracked_in_mlflow(searched):
    from her2study.tracking import child_runs, runs_table

    root, _ = searched
    runs = runs_table(f"sqlite:///{root / 'mlflow.db'}", "ep", "tags.task = 'search'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.data.synthetic"] == "True" and run["tags.data_source"] == "synthetic"
    assert 0 <= run["metrics.pooled_auc"] <= 1 and "metrics.mean_outer_auc_ci_low" in run
    kids = child_runs(f"sqlite:///{root / 'mlflow.db'}", run["run_id"])
    assert len(kids) == 3 and set(kids["tags.kind"]) == {"outer_fold"}
    assert kids["metrics.outer_auc"].between(0, 1).all()
    out = next((root / "outputs").glob("ep*"))
    assert "SYNTHETIC" in (out / "outer_folds.md").read_text().splitlines()[0]


def test_export_then_rerun_reproduces_the_metrics(searched, synthetic_cache, tmp_path, monkeypatch):
    from her2study.tasks.export import run

    root, common = searched
    monkeypatch.chdir(root)
    (tmp_path / "exp").mkdir()
    run(compose_config("task=export", *common, f"search.export_dir={tmp_path / 'exp'}"))
    out = root / "outputs" / "ep"
    first = json.loads((out / "metrics.json").read_text())
    model, card = load_model(out / "model")
    assert (out / "model" / "MLmodel").is_file() and not (out / "model" / "model.joblib").exists()
    text = (tmp_path / "exp" / "best_ep.yaml").read_text()
    head = text.splitlines()
    assert head[0] == "# @package _global_"
    assert "Nested cross-validated estimate" in text and "SYNTHETIC" in text
    assert "optimistic" in text and "task: export" in text and "export_source: config" in text
    est = card["nested_estimate"]
    assert f"{est['pooled_auc']:.3f}" in text
    assert card["candidate"]["use_clinical"] is True and card["threshold"] == first["threshold"]
    assert card["data"]["synthetic"] is True and card["mlflow_model_uri"].startswith("models:/")
    assert card["estimate_kind"].startswith("nested cross-validation (3-fold x 1 outer)")
    assert card["extraction"]["regions"] and card["her2study_version"]
    # the input example is a row of zeros, not a training case
    example = json.loads((out / "model" / "input_example.json").read_text())
    assert example["columns"] == card["columns"] and example["data"] == [[0] * len(card["columns"])]

    # the experiment file re-runs the configuration: same model, same metrics, same seed
    (out / "metrics.json").unlink()
    rerun = compose_config(
        "execution.progress=false",
        "+exp=best_ep",
        f"cache_dir={synthetic_cache}",
        "tracking=off",
        searchpath=tmp_path,
    )
    assert rerun.search.export_source == "config" and rerun.task.name == "export"
    run(rerun)
    second = json.loads((out / "metrics.json").read_text())
    assert second == first
    again, card2 = load_model(out / "model")
    assert card["estimate_kind"].endswith("from the search")
    assert card2["estimate_kind"] == card["estimate_kind"].replace("search", "experiment file")
    from her2study.tasks.common import cohort_and_features

    cohort, fs = cohort_and_features(rerun)
    X = fs.table.join(cohort.table[card["clinical_columns"]])[card["columns"]]
    np.testing.assert_array_equal(model.pipeline.predict_proba(X), again.pipeline.predict_proba(X))


def _new_cases(cache: Path, tmp_path: Path, n_ok=4):
    """A user's manifest of new cases (no label column) in its own folder, with four broken
    cases: a missing image, a missing clinical value, an empty mask, a 2-pixel tumour."""
    import SimpleITK as sitk

    from her2study.cohort.source import ensure_synthetic

    manifest = ensure_synthetic(compose_config(*SMALL, f"cache_dir={cache}").data)
    src = pd.read_csv(manifest, dtype={"case_id": str})
    rows = src.head(n_ok + 4).copy()
    for col in ("image", "mask"):
        rows[col] = [str((manifest.parent / p).resolve()) for p in rows[col]]
    ids = list(rows["case_id"])
    rows.loc[rows.index[n_ok], "image"] = str(tmp_path / "missing.nii.gz")
    rows.loc[rows.index[n_ok + 1], "er_pct"] = np.nan  # a clinical value the model needs
    masks = tmp_path / "masks"
    masks.mkdir()
    for k, n_pixels in ((2, 0), (3, 2)):  # an empty mask; a tumour too small for pyradiomics
        i = rows.index[n_ok + k]
        ref = sitk.ReadImage(rows.at[i, "mask"])
        arr = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint8)
        arr[arr.shape[0] // 2, arr.shape[1] // 2 : arr.shape[1] // 2 + n_pixels] = 1
        mask = sitk.GetImageFromArray(arr)
        mask.CopyInformation(ref)
        sitk.WriteImage(mask, str(masks / f"{ids[n_ok + k]}.nii.gz"))
        rows.at[i, "mask"] = str(masks / f"{ids[n_ok + k]}.nii.gz")
    user = tmp_path / "user"
    user.mkdir()
    rows.drop(columns=["label"]).to_csv(user / "new.csv", index=False)
    return user / "new.csv", ids


def test_predict_writes_the_models_probabilities_and_lists_failures(
    searched, synthetic_cache_copy, tmp_path, monkeypatch
):
    """Predict extracts the new cases into its cache: a private copy of the shared one (the
    training cohort's features are found there, the broken cases' are new)."""
    from her2study.tasks.common import cohort_and_features
    from her2study.tasks.export import run as export
    from her2study.tasks.predict import run

    root, common = searched
    monkeypatch.chdir(tmp_path)
    export(compose_config("task=export", *common, f"search.export_dir={tmp_path}"))
    model_dir = tmp_path / "outputs" / "ep" / "model"
    model, card = load_model(model_dir)
    manifest, ids = _new_cases(synthetic_cache_copy, tmp_path)
    cfg = with_predict(
        compose_config(
            "execution.progress=false",
            "task=predict",
            "data=manifest",
            f"data.manifest={manifest}",
            f"cache_dir={synthetic_cache_copy}",
            "tracking=off",
            "study=pred",
        ),
        model_uri=str(model_dir),
    )
    run(cfg)
    pred = pd.read_csv(tmp_path / "outputs" / "pred" / "predictions.csv", dtype={"case_id": str})
    assert list(pred["case_id"]) == ids  # every case listed, in the manifest's order
    assert "label" not in pred.columns  # none given, none made up
    failed = pred[pred["status"] == "failed"].set_index("case_id")
    assert list(failed.index) == ids[4:]
    assert "file not found" in failed.loc[ids[4], "problem"]
    assert "er_pct" in failed.loc[ids[5], "problem"]
    assert "empty" in failed.loc[ids[6], "problem"]
    assert "only 2 pixels" in failed.loc[ids[7], "problem"]
    assert failed["probability"].isna().all()
    ok = pred[pred["status"] == "ok"].set_index("case_id")
    # the model's own probabilities on the same cases' features (training cohort's table)
    train_cfg = compose_config(*common, "task=search", space=SPACE)  # the space the search had
    cohort, fs = cohort_and_features(train_cfg)
    X = fs.table.join(cohort.table[card["clinical_columns"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model.pipeline.predict_proba(X.loc[ids[:4], card["columns"]])[:, 1]
    np.testing.assert_allclose(ok["probability"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert (ok["class"] == (expected >= card["threshold"]).astype(int)).all()
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["new.csv"]  # only read

    # the same model from the MLflow store
    cfg = with_predict(
        compose_config(
            "execution.progress=false",
            "task=predict",
            "data=manifest",
            f"data.manifest={manifest}",
            f"cache_dir={synthetic_cache_copy}",
            "study=pred2",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        ),
        model_uri=card["mlflow_model_uri"],
    )
    run(cfg)
    pred2 = pd.read_csv(tmp_path / "outputs" / "pred2" / "predictions.csv", dtype={"case_id": str})
    np.testing.assert_allclose(
        pred2["probability"].to_numpy(),
        pred["probability"].to_numpy(),
        rtol=0,
        atol=1e-12,
        equal_nan=True,
    )

    # only broken cases: the table still lists every one with its reason, and the run fails
    # (exit 2 on the command line) instead of ending as if something had been predicted
    new = pd.read_csv(manifest, dtype={"case_id": str})
    bad = manifest.parent / "only_broken.csv"
    new[new["case_id"].isin(ids[4:])].to_csv(bad, index=False)
    cfg = with_predict(
        compose_config(
            "execution.progress=false",
            "task=predict",
            "data=manifest",
            f"data.manifest={bad}",
            f"cache_dir={synthetic_cache_copy}",
            "tracking=off",
            "study=pred3",
        ),
        model_uri=str(model_dir),
    )
    with pytest.raises(ConfigError, match="no case could be predicted"):
        run(cfg)
    pred3 = pd.read_csv(tmp_path / "outputs" / "pred3" / "predictions.csv", dtype={"case_id": str})
    assert list(pred3["case_id"]) == ids[4:] and (pred3["status"] == "failed").all()


def test_predict_needs_a_model(tmp_path, monkeypatch):
    from her2study.tasks.predict import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="predict.model_uri"):
        run(
            with_predict(compose_config("execution.progress=false", "task=predict", "tracking=off"))
        )
    with pytest.raises(ConfigError, match="no model at"):
        run(
            with_predict(
                compose_config("execution.progress=false", "task=predict", "tracking=off"),
                model_uri=str(tmp_path / "x"),
            )
        )
    with pytest.raises(ConfigError, match="holds no MLmodel file"):
        run(
            with_predict(
                compose_config("execution.progress=false", "task=predict", "tracking=off"),
                model_uri=str(tmp_path),
            )
        )


def test_export_without_a_finished_search_says_so(tmp_path, monkeypatch):
    from her2study.tasks.export import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="run the search first"):
        run(
            compose_config(
                "execution.progress=false",
                "task=export",
                "study=nothing",
                "tracking=off",
                f"search.storage=sqlite:///{tmp_path / 'x.db'}",
            )
        )


# ------------------------------------------------------------------------------------------
# The model format itself: threshold inside, pyfunc and our loader agree, what is refused
# ------------------------------------------------------------------------------------------

CARD = {
    "columns": ["intra_a", "intra_b"],
    "extraction": {
        "params": {},
        "regions": ["intra"],
        "fov": "nonzero",
        "mask_label": None,
        "ring_widths_mm": [],
    },
    "estimate_kind": "none (test)",
}


def small_model(seed=0):
    """A fitted scikit-learn pipeline on synthetic numbers (no patient anywhere)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"intra_a": rng.normal(size=80), "intra_b": rng.normal(size=80)})
    y = (X["intra_a"] + rng.normal(scale=0.7, size=80) > 0).astype(int)
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)


def grid():
    """Rows whose P(label=1) rises with intra_a from ~0 to ~1."""
    return pd.DataFrame({"intra_a": np.linspace(-4, 4, 401), "intra_b": 0.0})


def test_pyfunc_model_gives_probability_and_class_at_the_stored_threshold(tmp_path):
    import mlflow

    from her2study.model_artifact import save_model

    pipe = small_model()
    folder = save_model(tmp_path / "model", pipe, CARD, threshold=0.8)
    X = grid()
    p = pipe.predict_proba(X)[:, 1]
    below = int(np.flatnonzero(p < 0.8).max())  # the last row under the threshold
    above = int(np.flatnonzero(p >= 0.8).min())
    assert above == below + 1 and p[below] > 0.5  # a row a 0.5 cut would call positive
    ours, card = load_model(folder)
    assert card["threshold"] == 0.8 and card["columns"] == CARD["columns"]
    theirs = mlflow.pyfunc.load_model(str(folder))  # MLflow's own loader, as a user would
    for model in (ours, theirs):
        out = model.predict(X)
        assert list(out.columns) == ["probability", "predicted_class"]
        np.testing.assert_allclose(out["probability"], p, rtol=0, atol=1e-12)
        assert out["predicted_class"].iloc[below] == 0 and out["predicted_class"].iloc[above] == 1
        assert (out["predicted_class"] == (p >= 0.8)).all()
        moved = model.predict(X, params={"threshold": 0.5})  # a threshold given at call time
        assert moved["predicted_class"].iloc[below] == 1
    # the card is inside the folder; nothing in it is a pickle; the example is zeros
    assert json.loads((folder / "artifacts" / "card.json").read_text())["threshold"] == 0.8
    assert not [f for f in folder.rglob("*") if f.suffix in (".pkl", ".joblib", ".pickle")]
    example = json.loads((folder / "input_example.json").read_text())
    assert example == {"columns": ["intra_a", "intra_b"], "data": [[0.0, 0.0]]}
    # saving again replaces our own model; another folder is never overwritten
    save_model(folder, pipe, CARD, threshold=0.3)
    assert load_model(folder)[1]["threshold"] == 0.3
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a her2study model folder"):
        save_model(other, pipe, CARD, threshold=0.3)
    assert (other / "keep.txt").read_text() == "mine"


def test_log_model_in_a_child_run_loads_by_models_and_runs_uri(tmp_path):
    """What the paper task's per-signature child runs call: log_model(tracker, ...)."""
    from mlflow import MlflowClient

    from her2study.model_artifact import log_model
    from her2study.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipe = small_model()
    with Tracker(uri, "e") as tr, tr.child("signature") as cid:
        model_uri = log_model(tr, "model", pipe, CARD, 0.7)
    assert model_uri.startswith("models:/")
    assert MlflowClient(uri).get_logged_model(model_uri.split("/", 1)[1]).source_run_id == cid
    X = grid()
    for u in (model_uri, f"runs:/{cid}/model"):
        model, card = load_model(u, uri)
        assert card["threshold"] == 0.7
        np.testing.assert_allclose(
            model.predict(X)["probability"], pipe.predict_proba(X)[:, 1], rtol=0, atol=1e-12
        )
    with Tracker(uri, "e", enabled=False) as off:
        assert log_model(off, "model", pipe, CARD, 0.7) is None
    with pytest.raises(ConfigError, match="no MLflow database"):
        load_model(model_uri, f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert not (tmp_path / "elsewhere.db").exists()


class _Payload:
    """Unpickling this runs code: it writes the marker file (what a crafted model.joblib does)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_crafted_joblib_is_refused_before_it_is_read(tmp_path):
    import joblib

    # the payload works: reading it runs the code
    joblib.dump({"pipeline": _Payload(tmp_path / "probe"), "card": {}}, tmp_path / "probe.joblib")
    joblib.load(tmp_path / "probe.joblib")
    assert (tmp_path / "probe").read_text() == "ran"
    # handed to predict, as a file and inside an old-style export folder: refused, not read
    marker = tmp_path / "marker"
    old = tmp_path / "old_export"
    old.mkdir()
    bundle = {"pipeline": _Payload(marker), "card": {"columns": ["x"]}}
    joblib.dump(bundle, old / "model.joblib")
    (old / "card.json").write_text("{}")
    for given, reason in (
        (old / "model.joblib", "is a file, not a her2study model folder"),
        (old, "model.joblib is the old export format"),
    ):
        res = run_cli(
            ["task=predict", f"predict.model_uri={given}", "tracking=off", "study=p"],
            tmp_path,
            code=None,
            timeout=300,
        )
        err = res.stdout + res.stderr
        assert res.returncode == 2, err[-2000:]
        assert reason in err and str(given) in err
        assert "Traceback" not in err
        assert len([ln for ln in err.splitlines() if "ERROR" in ln]) == 1
        assert not marker.exists()


def test_foreign_and_forged_mlflow_models_are_refused(tmp_path):
    import shutil

    import mlflow
    import skops.io as sio
    import yaml
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from her2study.model_artifact import save_model
    from her2study.tracking import Tracker

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 2)), np.r_[np.zeros(15, int), np.ones(15, int)]
    foreign = LogisticRegression().fit(X, y)
    reqs = ["scikit-learn"]  # given: MLflow need not infer them (slow)
    mlflow.sklearn.save_model(foreign, str(tmp_path / "sk"), pip_requirements=reqs)
    with pytest.raises(ConfigError, match="not a her2study model.*sklearn") as info:
        load_model(tmp_path / "sk")
    assert str(tmp_path / "sk" / "MLmodel") in str(info.value)
    # the same from an MLflow store
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, "e") as tr:
        logged = mlflow.sklearn.log_model(
            foreign, name="m", run_id=tr.run_id, pip_requirements=reqs
        ).model_uri
    with pytest.raises(ConfigError, match=f"{logged}.*not a her2study model"):
        load_model(logged, uri)
    # a real her2study folder whose marker was removed
    ours = save_model(tmp_path / "ours", small_model(), CARD, 0.5)
    unmarked = tmp_path / "unmarked"
    shutil.copytree(ours, unmarked)
    conf = yaml.safe_load((unmarked / "MLmodel").read_text())
    del conf["metadata"]["her2study_model"]
    (unmarked / "MLmodel").write_text(yaml.safe_dump(conf))
    with pytest.raises(ConfigError, match="no 'her2study_model' marker"):
        load_model(unmarked)
    # a forged her2study folder whose pipeline names a function that runs commands
    forged = tmp_path / "forged"
    shutil.copytree(ours, forged)
    import os

    sio.dump(make_pipeline(FunctionTransformer(os.system)), forged / "artifacts/pipeline.skops")
    with pytest.raises(ConfigError, match="refused: it names types outside.*system"):
        load_model(forged)


def test_every_model_the_search_can_choose_is_saved_and_loaded(tmp_path):
    """The skops allow-list admits each model's own classes (forest trees, calibrated SVM,
    her2study's selectors): the loaded pipeline gives the same probabilities."""
    from conftest import noise_features

    from her2study.model_artifact import save_model
    from her2study.models import MODELS, make_radiomics_pipeline

    X, _, y = noise_features(n=60, p=5)
    card = {**CARD, "columns": list(X.columns)}
    for name in MODELS:
        params = {"n_estimators": 20} if name == "random_forest" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = make_radiomics_pipeline(
                mw_alpha=0.5, lasso_cv=3, model=name, model_params=params
            ).fit(X, y)
        model, _ = load_model(save_model(tmp_path / name, pipe, card, 0.5))
        np.testing.assert_array_equal(
            model.predict(X)["probability"], pipe.predict_proba(X)[:, 1], err_msg=name
        )


# ------------------------------------------------------------------------------------------
# Results are all or nothing: a failure mid-way leaves no partial result set, inputs untouched
# ------------------------------------------------------------------------------------------


def _fill(folder: Path) -> None:
    """Fill the file system of ``folder`` (a tiny tmpfs) to the last byte."""
    import os

    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)


def _hashes(root: Path) -> dict:
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _errors(caplog) -> list[str]:
    import logging

    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_export_to_a_full_disk_leaves_no_partial_result_set(
    searched, tmp_path, monkeypatch, tiny_mount, caplog
):
    """The experiment file, written last, meets a full disk: exit 3 naming it; the model, the
    metrics and the selected features already staged are discarded (no result set in the run
    folder), the earlier experiment file is still whole (temp file + os.replace), no temp file."""
    import logging

    from her2study.__main__ import run

    root, common = searched
    exp_dir = tiny_mount("exp", "size=8k")
    (exp_dir / "best_ep.yaml").write_text("# the earlier export\n")
    _fill(exp_dir)
    study = _hashes(root)
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("task=export", *common, "tracking=off", f"search.export_dir={exp_dir}")
    with caplog.at_level(logging.ERROR, logger="her2study"):
        assert run(cfg) == 3
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert f"cannot write {exp_dir / 'best_ep.yaml'}: No space left" in errors[0]
    out = tmp_path / "outputs" / "ep"
    assert out.is_dir() and not list(out.iterdir())  # no model, metrics.json, features list
    assert not [p.name for p in (tmp_path / "outputs").iterdir() if p.name.startswith(".")]
    assert (exp_dir / "best_ep.yaml").read_text() == "# the earlier export\n"
    assert sorted(p.name for p in exp_dir.iterdir()) == ["best_ep.yaml", "filler"]
    assert _hashes(root) == study  # the study, its features and store only read


@pytest.fixture
def model_and_table(tmp_path):
    """A her2study model of two columns and a features table of new cases for it."""
    from her2study.model_artifact import save_model

    user = tmp_path / "user"
    save_model(user / "model", small_model(), CARD, threshold=0.5)
    rng = np.random.default_rng(1)
    table = pd.DataFrame(
        {"case_id": [f"N{i}" for i in range(12)], "intra_a": rng.normal(size=12)}
    ).assign(intra_b=rng.normal(size=12))
    table.to_csv(user / "new.csv", index=False)
    return user


@pytest.mark.parametrize("where", ["run folder", "predict.output"])
def test_predict_on_a_full_disk_names_the_file_and_leaves_nothing(
    where, model_and_table, tmp_path, tiny_mount, monkeypatch, caplog
):
    import logging

    from her2study.__main__ import run

    user = model_and_table
    inputs = _hashes(user)
    full = tiny_mount("full", "size=8k")
    _fill(full)
    work = full if where == "run folder" else tmp_path / "work"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    values = {"model_uri": str(user / "model")}
    if where == "predict.output":
        values["output"] = str(full / "predictions.csv")
    cfg = with_predict(
        compose_config(
            "execution.progress=false",
            "task=predict",
            "data=features",
            f"data.features_table={user / 'new.csv'}",
            "tracking=off",
            "study=pred",
        ),
        **values,
    )
    with caplog.at_level(logging.ERROR, logger="her2study"):
        assert run(cfg) == 3
    errors = _errors(caplog)
    named = "outputs/pred/predictions.csv" if where == "run folder" else full / "predictions.csv"
    assert len(errors) == 1 and "No space left" in errors[0], errors
    assert f"cannot write {named}" in errors[0], errors
    assert not list(work.rglob("predictions.csv")) and not list(work.rglob("predict_card.json"))
    assert not list(full.rglob("*.tmp")) and not list(work.rglob("*.results.tmp"))
    assert _hashes(user) == inputs


def test_predict_failing_after_its_first_file_leaves_no_partial_result_set(
    make_cohort, tmp_path, monkeypatch, caplog
):
    """A manifest of real images for a model whose columns these settings do not extract: the
    checked manifest copy was already written when the column check fails; exit 2, and the run
    folder holds nothing of it; the user's manifest, images and model are only read."""
    import logging

    from her2study.__main__ import run
    from her2study.model_artifact import save_model

    manifest = make_cohort(n=4)
    save_model(tmp_path / "model", small_model(), CARD, threshold=0.5)
    inputs = {**_hashes(tmp_path / "cohort"), **_hashes(tmp_path / "model")}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = with_predict(
        compose_config(
            "execution.progress=false",
            "task=predict",
            "data=manifest",
            f"data.manifest={manifest}",
            f"cache_dir={tmp_path / 'cache'}",
            "tracking=off",
            "study=pred",
        ),
        model_uri=str(tmp_path / "model"),
    )
    with caplog.at_level(logging.ERROR, logger="her2study"):
        assert run(cfg) == 2
    errors = _errors(caplog)
    assert len(errors) == 1 and "absent from the new cases' features" in errors[0], errors
    out = work / "outputs" / "pred"
    assert out.is_dir() and not list(out.iterdir())  # no manifest_checked.csv left behind
    assert not [p for p in (work / "outputs").iterdir() if p.name.startswith(".")]
    assert {**_hashes(tmp_path / "cohort"), **_hashes(tmp_path / "model")} == inputs


def test_export_into_a_full_run_folder_names_the_model_file_and_leaves_nothing(
    tmp_path, tiny_mount, monkeypatch, caplog
):
    """The model folder is written into the results' temporary folder on a disk that fills:
    exit 3 naming the file by its place in the run folder (not the temporary copy MLflow made
    elsewhere), no model, metrics or features list left, the features table only read."""
    import logging

    from conftest import noise_features

    from her2study.__main__ import run

    X, clinical, y = noise_features(n=80, p=5)
    X.join(clinical).assign(label=y).reset_index().to_csv(tmp_path / "f.csv", index=False)
    inputs = _hashes(tmp_path)
    full = tiny_mount("full", "size=40k")
    monkeypatch.chdir(full)
    cfg = compose_config(
        "execution.progress=false",
        "task=export",
        "search.export_source=config",
        "data=features",
        f"data.features_table={tmp_path / 'f.csv'}",
        "data.clinical_columns=[age]",
        "tracking=off",
        "study=ex",
    )
    with caplog.at_level(logging.ERROR, logger="her2study"):
        assert run(cfg) == 3
    errors = _errors(caplog)
    assert len(errors) == 1 and "No space left" in errors[0], errors
    assert "cannot write outputs/ex/" in errors[0], errors  # in the run folder, by its place
    out = full / "outputs" / "ex"
    assert not list(out.iterdir()) and not list((full / "outputs").glob(".*"))
    assert _hashes(tmp_path)[tmp_path / "f.csv"] == inputs[tmp_path / "f.csv"]
