"""Harmonised and robustness-filtered signatures as models (issue 15): the ComBat step keeps only
per-device statistics and reads the device from an input column once exported; the robustness
filter becomes a column mask; the one model format carries both (skops, trusted types only)."""

from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from her2study.errors import ConfigError
from her2study.model_artifact import load_model, portable_pipeline, save_model
from her2study.models import make_pipeline
from her2study.models.harmonise import ComBatHarmoniser
from her2study.selection.robustness import RobustnessFilter, perturbed_column

pytest.importorskip("combatlearn")
from combatlearn.core import ComBatModel  # noqa: E402

FAST = {"lasso_cv": 3, "lasso_n_lambdas": 10, "mw_alpha": 0.5}


def cohort(seed=0, n=90, p=12, devices="ABC"):
    """Device shift and scale on every feature, a label effect on the first three, age and a
    0/1 covariate; case ids that look like a hospital's (``MRN-...``)."""
    rng = np.random.default_rng(seed)
    dev = np.array([devices[i % len(devices)] for i in range(n)])
    y = rng.integers(0, 2, n)
    shift = {d: rng.normal(0, 1.5, p) for d in devices}
    scale = {d: np.exp(rng.normal(0, 0.4, p)) for d in devices}
    X = np.array([shift[d] + scale[d] * rng.normal(size=p) for d in dev])
    X[:, :3] += 1.5 * y[:, None]
    ids = [f"MRN-{483920 + 7 * i}" for i in range(n)]
    cols = [f"intra_original_firstorder_f{j}" for j in range(p)]
    cov = pd.DataFrame(
        {"age": rng.normal(55, 10, n), "postmenopausal": rng.integers(0, 2, n)}, index=ids
    )
    X = pd.DataFrame(X, index=ids, columns=cols)
    X["intra_original_firstorder_f4"] += 0.1 * (cov["age"] - 55)
    return X, pd.Series(y, index=ids), pd.Series(dev, index=ids, name="device"), cov


def test_the_stored_statistics_apply_combatlearn_s_fit():
    """The step fits with combatlearn and keeps arrays; applying them gives combatlearn's own
    transform, with and without protected covariates, and an unseen device harmonised from the
    reference's mean, variance and size equals ComBat's reference fit on the harmonised rows."""
    X, _, dev, cov = cohort()
    seen = dev != "C"
    step = ComBatHarmoniser(batch=dev).fit(X[seen])
    model = ComBatModel(method="johnson").fit(
        X[seen].reset_index(drop=True), batch=dev[seen].reset_index(drop=True)
    )
    expected = model.transform(
        X[seen].reset_index(drop=True), batch=dev[seen].reset_index(drop=True)
    )
    np.testing.assert_allclose(step.transform(X[seen]).to_numpy(), expected, rtol=0, atol=1e-9)

    with_cov = ComBatHarmoniser(batch=dev, covariates=cov, discrete=["postmenopausal"])
    with_cov.fit(X[seen])
    disc = cov.loc[seen, ["postmenopausal"]].astype(str).reset_index(drop=True)
    cont = cov.loc[seen, ["age"]].reset_index(drop=True)
    fortin = ComBatModel(method="fortin").fit(
        X[seen].reset_index(drop=True),
        batch=dev[seen].reset_index(drop=True),
        discrete_covariates=disc,
        continuous_covariates=cont,
    )
    expected = fortin.transform(
        X[seen].reset_index(drop=True),
        batch=dev[seen].reset_index(drop=True),
        discrete_covariates=disc,
        continuous_covariates=cont,
    )
    np.testing.assert_allclose(with_cov.transform(X[seen]).to_numpy(), expected, atol=1e-9)

    # the unseen device C: ComBat with the harmonised training rows as reference batch
    harmonised = step.transform(X[seen]).to_numpy()
    frame = pd.DataFrame(np.vstack([harmonised, X[~seen].to_numpy()]))
    batch = pd.Series(["ref"] * int(seen.sum()) + ["C"] * int((~seen).sum()))
    ref = ComBatModel(method="johnson", reference_batch="ref").fit(frame, batch=batch)
    expected = np.asarray(ref.transform(frame, batch=batch))[int(seen.sum()) :]
    out = step.transform(X)
    np.testing.assert_allclose(out[~seen].to_numpy(), expected, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        step.transform(X[~seen].iloc[:1])


def _strings(obj, seen=None) -> set[str]:
    """Every string reachable from a fitted estimator (attributes, parameters, arrays)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return set()
    seen.add(id(obj))
    if isinstance(obj, str):
        return {obj}
    if isinstance(obj, (pd.Series, pd.DataFrame, pd.Index)):
        return {"<pandas object>"} | {str(v) for v in np.asarray(obj.index, dtype=str)}
    if isinstance(obj, np.ndarray):
        return {str(v) for v in obj.ravel()} if obj.dtype == object else set()
    if isinstance(obj, dict):
        out = set()
        for k, v in obj.items():
            out |= _strings(k, seen) | _strings(v, seen)
        return out
    if isinstance(obj, (list, tuple, set)):
        return set().union(*[_strings(v, seen) for v in obj]) if obj else set()
    if hasattr(obj, "__dict__"):
        return _strings(vars(obj), seen)
    return set()


def _perturbed(X, k=2):
    """The features with ``k`` perturbed partners each: odd features move with the contour."""
    rng = np.random.default_rng(1)
    Xp = X.copy()
    for kk in range(1, k + 1):
        for j, c in enumerate(X.columns):
            noise = 0.05 if j % 2 == 0 else 2.0
            Xp[perturbed_column(kk, c)] = X[c] + rng.normal(0, noise, len(X))
    return Xp


def _fitted(X, y, dev, cov=None, train=None, k=2):
    """A study's pipeline (robustness filter, ComBat by case-id lookup, the signature) fitted on
    the ``train`` rows; the features with their perturbed partners for every case."""
    Xp = _perturbed(X, k)
    steps = [
        ("robust", RobustnessFilter(threshold=0.9)),
        ("harmonise", ComBatHarmoniser(batch=dev, covariates=cov, unseen="reference")),
        *make_pipeline(FAST, "logistic").steps,
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = X.index if train is None else train
        return Pipeline(steps).fit(Xp.loc[rows], y.loc[rows]), Xp


def test_an_exported_harmonised_robust_signature_predicts_as_in_memory_without_case_ids(
    tmp_path,
):
    X, y, dev, cov = cohort(n=120)
    train = X.index[:90]
    pipe, Xp = _fitted(X, y, dev, cov[["age"]], train)
    kept = list(pipe.named_steps["robust"].get_feature_names_out())
    assert kept == [c for i, c in enumerate(X.columns) if i % 2 == 0]  # the mask dropped the rest
    # a study's fitted steps hold the cohort's case ids (the lookups)
    assert set(train) <= _strings(pipe)
    with pytest.raises(ValueError, match="portable_pipeline"):
        save_model(tmp_path / "raw", pipe, {"columns": list(Xp.columns), "extraction": {}}, 0.5)

    stored, inputs = portable_pipeline(pipe, list(Xp.columns), site_column="device")
    assert inputs["columns"] == kept and inputs["site_column"] == "device"
    assert inputs["covariate_columns"] == ["age"]
    assert inputs["harmonise"]["devices"] == ["A", "B", "C"]
    assert [name for name, _ in stored.steps][0] == "harmonise"
    assert not {str(c) for c in X.index} & _strings(stored)  # no case id anywhere
    card = {**inputs, "extraction": {"regions": ["intra"]}}
    folder = save_model(tmp_path / "model", stored, card, 0.5)
    for path in folder.rglob("*"):  # grep every file, and every member of the skops zip
        if path.is_file():
            blobs = [path.read_bytes()]
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as z:
                    blobs += [z.read(m) for m in z.namelist()]
            for blob in blobs:
                assert b"MRN-" not in blob, path

    model, card = load_model(folder)
    assert card["robustness"]["by_region"][0]["n_kept"] == len(kept)  # a number, not text
    new = X.index[90:]  # new cases: only the kept columns, their device and age
    given = X.loc[new, kept].assign(device=dev.loc[new], age=cov.loc[new, "age"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pipe.predict_proba(Xp.loc[new])[:, 1]  # in memory: perturbed columns too
        got = model.predict(given)["probability"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)

    # a device the model never saw: harmonised to the training reference (M-ComBat) ...
    other = given.assign(device="D")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_memory = pipe.set_params(harmonise__batch=dev.where(~dev.index.isin(new), "D"))
        np.testing.assert_allclose(
            model.predict(other)["probability"].to_numpy(),
            in_memory.predict_proba(Xp.loc[new])[:, 1],
            rtol=0,
            atol=1e-12,
        )
    # ... and without the device column the model says what it needs
    with pytest.raises(ConfigError, match="'device'"):
        model.predict(given.drop(columns=["device"]))


def test_an_unseen_device_is_refused_when_the_model_says_error(tmp_path):
    X, y, dev, _ = cohort(n=90)
    pipe, Xp = _fitted(X, y, dev)
    pipe.set_params(harmonise__unseen="error")
    stored, inputs = portable_pipeline(pipe, list(Xp.columns), site_column="device")
    folder = save_model(tmp_path / "m", stored, {**inputs, "extraction": {}}, 0.5)
    model, _ = load_model(folder)
    given = X[inputs["columns"]].assign(device="Z")
    with pytest.raises(ValueError, match=r"\['Z'\]"):
        model.predict(given)


# ------------------------------------------------------------------------------------------
# end to end: task=paper logs the model to a real MLflow store, task=predict applies it
# ------------------------------------------------------------------------------------------

E2E = [
    "+exp=paper",
    "extractor=fast",
    "data.synthetic.n_cases=48",
    "data.synthetic.devices=3",
    "data.site_column=device",
    "data.clinical_columns=[age]",
    "region.ring_widths_mm=[1.0]",
    "region.signature_kinds=[tumour+ring]",
    "region.annotation_check=false",
    "selection.harmonise=combat",
    "selection.harmonise_covariates=[age]",
    "selection.robustness_threshold=0.8",
    "region.perturb.n=2",
    "evaluation.cv_folds=3",
    "selection.lasso_cv=3",
    "evaluation.bootstrap_reps=0",
    "execution.n_jobs=1",
    "execution.progress=false",
]
# new cases: another seed, and a fourth device the model never saw
NEW = ["data.synthetic.seed=7", "data.synthetic.n_cases=16", "data.synthetic.devices=4"]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
@pytest.mark.filterwarnings("ignore")
def test_paper_logs_harmonised_robust_models_that_predict_new_devices_as_in_memory(
    tmp_path, monkeypatch, compose
):
    """task=paper with in-fold ComBat (age protected) and the contour-robustness filter logs its
    signature to MLflow (SQLite); task=predict applies it from the store to new synthetic cases
    (other seed, devices A-D) from their images without perturbed masks, and gives the in-memory
    pipeline's probabilities (which needs the perturbed features); the logged files hold no case
    id; a manifest without the device column is one message and exit code 2."""
    import mlflow
    from conftest import run_cli
    from mlflow import MlflowClient
    from omegaconf import open_dict

    from her2study.cohort.source import ensure_synthetic
    from her2study.split import site_values, split_from_config
    from her2study.study import fit_signatures
    from her2study.tasks.common import cohort_and_features
    from her2study.tasks.paper import run as paper
    from her2study.tasks.predict import run as predict

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [*E2E, f"cache_dir={tmp_path / 'cache'}"]
    cfg = compose(*common, f"tracking.tracking_uri={uri}", "study=train")
    paper(cfg)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("train")  # tracking.experiment = the study
    logged = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert len(logged) == 1  # the one radiomics signature (tumour + 1 mm ring)
    model_uri = f"models:/{logged[0].model_id}"
    name = client.get_run(logged[0].source_run_id).data.tags["signature"]
    # the child run's metrics are the model's (logged after it, linked to it once)
    child = client.get_run(logged[0].source_run_id).data.metrics
    on_model = {m.key: m.value for m in client.get_logged_model(logged[0].model_id).metrics}
    assert on_model == child and "test.auc" in on_model
    model, card = load_model(model_uri, uri)
    assert card["site_column"] == "device" and card["covariate_columns"] == ["age"]
    assert card["harmonise"]["devices"] == ["A", "B", "C"]
    assert card["robustness"]["n_perturbations"] == 2
    by_region = {r["region"]: r for r in card["robustness"]["by_region"]}
    assert set(by_region) == {"intra", "peri1mm"}
    assert all(
        isinstance(r["n_kept"], int) and r["n_kept"] <= r["n_features"] for r in by_region.values()
    )
    assert not any(c.startswith("perturb") for c in card["columns"])  # the original columns only
    assert card["extraction"]["regions"] == ["intra", "peri1mm"]

    # the logged model's files (the store's artifacts) hold no case id of the training cohort
    # (code/ is her2study's own source, the same for every model: its docstrings name SYN0001)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    local = tmp_path / "downloaded"
    mlflow.artifacts.download_artifacts(
        artifact_uri=model_uri, dst_path=str(local), tracking_uri=uri
    )
    ids = [c.encode() for c in cohort_and_features(cfg)[0].ids]
    files = [
        p for p in local.rglob("*") if p.is_file() and "code" not in p.relative_to(local).parts
    ]
    assert any(p.name == "pipeline.skops" for p in files)
    for path in files:
        blobs = [path.read_bytes()]
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs += [z.read(m) for m in z.namelist()]
        assert not any(i in blob for i in ids for blob in blobs), path

    # predict the new cases from their images (no perturbed masks), through the task
    new_cfg = compose(*common, *NEW, "tracking=off")
    manifest = ensure_synthetic(new_cfg.data)
    pcfg = compose(
        "task=predict",
        "extractor=fast",
        "execution.progress=false",
        "data=manifest",
        f"data.manifest={manifest}",
        f"cache_dir={tmp_path / 'predict-cache'}",
        f"tracking.tracking_uri={uri}",
        "study=pred",
    )
    with open_dict(pcfg):
        pcfg.predict.model_uri = model_uri
    predict(pcfg)
    pred = pd.read_csv(tmp_path / "outputs" / "pred" / "predictions.csv", dtype={"case_id": str})
    assert (pred["status"] == "ok").all(), pred
    assert not list((tmp_path / "predict-cache").rglob("perturbed_masks"))

    # in memory: the same fit (same config and seed), its ComBat step looking the new cases'
    # devices up by case id, fed the new cases' features with their perturbed partners
    cohort, fs = cohort_and_features(cfg)
    split = split_from_config(cohort.table, cfg.split, cohort.label_column, int(cfg.seed), "device")
    sites = site_values(cohort.table, "device", "site")
    fits = fit_signatures(
        fs.table,
        cohort.table[["age"]],
        cohort.labels,
        split,
        [1.0],
        cfg,
        [],
        sites=sites,
        covariates=cohort.table,
    )
    fit = next(f for f in fits if f.name == name)
    # (the new cases' features only: inner-loop sizes made to pass the study's preflight)
    new_cohort, new_fs = cohort_and_features(
        compose(*common, *NEW, "tracking=off", "evaluation.cv_folds=2", "selection.lasso_cv=2")
    )
    new_sites = site_values(new_cohort.table, "device", "site")
    assert set(new_sites) == {"A", "B", "C", "D"}
    pipe = fit.model.set_params(
        harmonise__batch=new_sites, harmonise__covariates=new_cohort.table[["age"]]
    )
    expected = pipe.predict_proba(new_fs.table.loc[pred["case_id"], fit.columns])[:, 1]
    np.testing.assert_allclose(pred["probability"].to_numpy(), expected, rtol=0, atol=1e-10)

    # a manifest without the device column: one message naming the file and the fix, exit 2
    bad = tmp_path / "user" / "no_device.csv"
    bad.parent.mkdir()
    src = pd.read_csv(manifest)
    for col in ("image", "mask", "mask_reader2"):
        src[col] = [str((manifest.parent / p).resolve()) for p in src[col]]
    src.drop(columns=["device"]).to_csv(bad, index=False)
    before = bad.read_bytes()
    res = run_cli(
        [
            "task=predict",
            f"predict.model_uri={model_uri}",
            f"tracking.tracking_uri={uri}",
            "data=manifest",
            f"data.manifest={bad}",
            f"cache_dir={tmp_path / 'predict-cache'}",
            "execution.progress=false",
            "hydra.run.dir=nodev",
        ],
        tmp_path,
        code=2,
    )
    text = res.stdout + res.stderr
    assert "no_device.csv" in text and "has no 'device' column" in text
    assert "add a 'device' column" in text and "Traceback" not in text
    assert bad.read_bytes() == before  # the user's file only read


def test_predict_from_a_features_table_needs_the_device_and_refuses_what_the_model_refuses(
    tmp_path, monkeypatch, compose
):
    """task=predict with data=features and a harmonising model: the table must name each case's
    device (one message naming the file and the fix, before anything is predicted); an unseen
    device alone in the table cannot be harmonised (that case fails with the reason, the others
    are predicted); a model exported with unseen=error refuses the table up front."""
    from omegaconf import open_dict

    from her2study.tasks.predict import run as predict

    monkeypatch.chdir(tmp_path)
    X, y, dev, cov = cohort(n=110)
    train, new = X.index[:90], X.index[90:]
    pipe, Xp = _fitted(X, y, dev, cov[["age"]], train)
    stored, inputs = portable_pipeline(pipe, list(Xp.columns), site_column="device")
    folder = save_model(tmp_path / "model", stored, {**inputs, "extraction": {}}, 0.5)
    table = X.loc[new, inputs["columns"]].assign(device=dev.loc[new], age=cov.loc[new, "age"])
    table.loc[new[-1], "device"] = "Z"  # a device the model never saw, alone in the table
    table.rename_axis("case_id").reset_index().to_csv(tmp_path / "new.csv", index=False)
    table.drop(columns=["device"]).rename_axis("case_id").reset_index().to_csv(
        tmp_path / "no_device.csv", index=False
    )

    def run(path, model=folder, study="p"):
        cfg = compose(
            "task=predict",
            "data=features",
            f"data.features_table={path}",
            "tracking=off",
            f"study={study}",
        )
        with open_dict(cfg):
            cfg.predict.model_uri = str(model)
        predict(cfg)
        return pd.read_csv(tmp_path / "outputs" / study / "predictions.csv", dtype={"case_id": str})

    with pytest.raises(
        ConfigError, match=r"no_device\.csv.*has no 'device' column.*add a 'device'"
    ):
        run(tmp_path / "no_device.csv")
    pred = run(tmp_path / "new.csv").set_index("case_id")
    assert pred.loc[new[-1], "status"] == "failed" and "at least 2" in pred.loc[new[-1], "problem"]
    ok = new[:-1]
    assert (pred.loc[ok, "status"] == "ok").all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pipe.predict_proba(Xp.loc[ok])[:, 1]
    np.testing.assert_allclose(pred.loc[ok, "probability"].to_numpy(), expected, atol=1e-12)

    pipe.set_params(harmonise__unseen="error")
    strict, inputs = portable_pipeline(pipe, list(Xp.columns), site_column="device")
    strict_folder = save_model(tmp_path / "strict", strict, {**inputs, "extraction": {}}, 0.5)
    with pytest.raises(ConfigError, match=r"\['Z'\].*selection.harmonise_unseen=error"):
        run(tmp_path / "new.csv", strict_folder, "q")
    assert not (tmp_path / "outputs" / "q" / "predictions.csv").exists()  # refused before work


def test_task_export_fits_a_harmonised_robust_candidate_and_stores_it_portable(tmp_path, compose):
    """What task=export does with a searched configuration that harmonises and filters by
    robustness (the search carries both): fitted with the design's sites as ComBat's side input,
    stored without the lookups and the perturbed columns, predicting as the fitted pipeline."""
    from her2study.search import Design, candidate_from_config
    from her2study.tasks.export import fit_candidate

    X, y, dev, _ = cohort(n=90)
    Xp = _perturbed(X)
    design = Design.from_tables(Xp, y, None, sites=dev)
    cfg = compose(
        "task=export",
        "search.export_source=config",
        "selection.harmonise=combat",
        "selection.robustness_threshold=0.9",
        "region.ring_widths_mm=[]",
        "selection.lasso_cv=3",
        "selection.mw_alpha=0.5",
    )
    cand = candidate_from_config(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe, metrics, _ = fit_candidate(cand, design, 0, 3)
    assert [n for n, _ in pipe.steps][:2] == ["robust", "harmonise"]
    stored, inputs = portable_pipeline(pipe, design.columns(cand), site_column="device")
    model, card = load_model(save_model(tmp_path / "m", stored, {**inputs, "extraction": {}}, 0.5))
    assert card["columns"] == [c for i, c in enumerate(X.columns) if i % 2 == 0]
    given = X[card["columns"]].assign(device=dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pipe.predict_proba(Xp[design.columns(cand)])[:, 1]
    np.testing.assert_allclose(model.predict(given)["probability"], expected, atol=1e-12)
